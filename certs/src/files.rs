//! Writing and reading certificate files with safe permissions.
//!
//! Layout of a certificate directory:
//! `ca.pem`, `ca.key`, `receiver.pem`, `receiver.key`, `sender-ID.pem`,
//! `sender-ID.key`. Keys are created with mode 0600 (never readable by
//! others, not even briefly), and nothing is overwritten unless `force`.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use crate::{Authority, CertError, Issued};

/// CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// CA key file name.
pub const CA_KEY: &str = "ca.key";
/// Receiver certificate file name.
pub const RECEIVER_CERT: &str = "receiver.pem";
/// Receiver key file name.
pub const RECEIVER_KEY: &str = "receiver.key";

/// Certificate file name of sender `id`.
pub fn sender_cert(id: &str) -> String {
    format!("sender-{id}.pem")
}

/// Key file name of sender `id`.
pub fn sender_key(id: &str) -> String {
    format!("sender-{id}.key")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Fails if any of `paths` exists (so that nothing is written at all).
pub fn ensure_absent(paths: &[PathBuf], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.display().to_string())),
        None => Ok(()),
    }
}

/// Creates `dir` (mode 0700 when new).
pub fn create_dir(dir: &Path) -> Result<(), CertError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with `mode`, replacing it.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let _ = fs::remove_file(path);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes a certificate (0644) and its key (0600).
pub fn write_pair(cert: &Path, key: &Path, issued: &Issued) -> Result<(), CertError> {
    write_file(key, &issued.key_pem, 0o600)?;
    write_file(cert, &issued.cert_pem, 0o644)
}

/// Reads a file to a string.
pub fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io(path))
}

/// Loads the CA kept in `dir`.
pub fn load_authority(dir: &Path) -> Result<Authority, CertError> {
    Authority::from_pem(&read(&dir.join(CA_CERT))?, &read(&dir.join(CA_KEY))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("x.key");
        write_file(&k, "secret", 0o600).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(matches!(
            ensure_absent(std::slice::from_ref(&k), false),
            Err(CertError::Exists(_))
        ));
        assert!(ensure_absent(&[k], true).is_ok());
    }
}
