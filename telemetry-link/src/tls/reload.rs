//! TLS material that follows its files: [`ReloadableTls::poll`] reloads it
//! when the modification time or size of the CA, certificate, key or CRL
//! file changed (or always, when forced as on SIGHUP). A broken new file
//! keeps the previous material in use.

use std::{fs, path::Path, time::SystemTime};

use super::{material::TlsMaterial, Role, TlsError, TlsFiles};

/// Modification time and size of a file (`None` if it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

/// TLS material that follows its files.
#[derive(Debug)]
pub struct ReloadableTls {
    role: Role,
    current: TlsMaterial,
    stamps: [Stamp; 4],
}

/// Outcome of a reload check.
#[derive(Debug)]
pub enum Reload {
    /// Files unchanged.
    Unchanged,
    /// New material loaded.
    Reloaded,
    /// Files changed but are unusable; the old material stays.
    Failed(TlsError),
}

fn stamp(p: &Path) -> Stamp {
    let m = fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ReloadableTls {
    /// Loads the initial material (errors are fatal at startup).
    pub fn load(files: &TlsFiles, role: Role) -> Result<Self, TlsError> {
        let stamps = Self::stamps_of(files);
        Ok(Self {
            role,
            current: TlsMaterial::load(files, role)?,
            stamps,
        })
    }

    fn stamps_of(files: &TlsFiles) -> [Stamp; 4] {
        [
            stamp(&files.ca),
            stamp(&files.cert),
            stamp(&files.key),
            files.crl.as_deref().and_then(stamp),
        ]
    }

    /// The material in use.
    pub fn current(&self) -> &TlsMaterial {
        &self.current
    }

    /// Reloads if any file changed (or unconditionally with `force`, as on SIGHUP).
    pub fn poll(&mut self, force: bool) -> Reload {
        let stamps = Self::stamps_of(self.current.files());
        if !force && stamps == self.stamps {
            return Reload::Unchanged;
        }
        self.stamps = stamps;
        match TlsMaterial::load(self.current.files(), self.role) {
            Ok(m) => {
                self.current = m;
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }
}
