//! Writing and reading certificate files with safe permissions.
//!
//! Layout of a certificate directory (`init --out DIR`):
//!
//! ```text
//! DIR/                 0700  what is handed out, file by file
//!   ca.pem                   the CA certificate (every machine)
//!   crl.pem                  the CA's revocation list (the receiver)
//!   receiver.pem  .key       the receiver's pair
//!   sender-ID.pem .key       one pair per sender
//!   private/           0700  never copied anywhere (or --ca-key-dir)
//!     ca.key                 the CA key: issues and revokes
//! ```
//!
//! Files are created with their final mode (keys 0600, certificates and
//! CRLs 0644, directories 0700), never changed afterwards, and replaced
//! atomically (a reader sees the old file or the new one, never a part).
//! Nothing is overwritten unless `force`.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use crate::{
    crl::{Reason, Revocations},
    Authority, CertError, Issued,
};

/// CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// CA key file name.
pub const CA_KEY: &str = "ca.key";
/// Directory under the certificate directory holding the CA key by default.
pub const PRIVATE_DIR: &str = "private";
/// The CA's revocation list file name.
pub const CRL: &str = "crl.pem";
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

/// The directory holding the CA key: `key_dir` if given, else
/// `ca_dir/private`.
pub fn ca_key_dir(ca_dir: &Path, key_dir: Option<&Path>) -> PathBuf {
    key_dir.map_or_else(|| ca_dir.join(PRIVATE_DIR), Path::to_path_buf)
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

/// Creates `dir` and missing parents with mode 0700 (an existing directory
/// is left as it is).
pub fn create_dir(dir: &Path) -> Result<(), CertError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io(dir))
}

/// Writes `contents` to `path`, created with `mode`: a temporary file beside
/// it, renamed over it once complete.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let _ = fs::remove_file(&tmp); // left by a crashed run of this process id
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Writes a certificate (0644) and its key (0600).
pub fn write_pair(cert: &Path, key: &Path, issued: &Issued) -> Result<(), CertError> {
    write_file(key, &issued.key_pem, 0o600)?;
    write_file(cert, &issued.cert_pem, 0o644)
}

/// Writes a CA: its certificate (0644) into `ca_dir`, its key (0600) into
/// `key_dir` (both created 0700 if missing).
pub fn write_authority(ca: &Authority, ca_dir: &Path, key_dir: &Path) -> Result<(), CertError> {
    create_dir(ca_dir)?;
    create_dir(key_dir)?;
    write_file(&key_dir.join(CA_KEY), ca.key_pem(), 0o600)?;
    write_file(&ca_dir.join(CA_CERT), ca.cert_pem(), 0o644)
}

/// Reads a file to a string.
pub fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io(path))
}

/// A CA loaded from its files.
#[derive(Debug)]
pub struct LoadedAuthority {
    /// The CA.
    pub authority: Authority,
    /// Where its key was read from.
    pub key_path: PathBuf,
    /// The key lay beside the certificates (`ca_dir/ca.key`, the layout of
    /// older versions of this tool) instead of in the key directory.
    pub key_beside_certificates: bool,
}

/// Loads the CA whose certificate is in `ca_dir` and whose key is in
/// [`ca_key_dir`]; without an explicit `key_dir`, a key at `ca_dir/ca.key`
/// is used too (and reported, so the caller can warn).
pub fn load_authority(ca_dir: &Path, key_dir: Option<&Path>) -> Result<LoadedAuthority, CertError> {
    let cert = read(&ca_dir.join(CA_CERT))?;
    let mut key_path = ca_key_dir(ca_dir, key_dir).join(CA_KEY);
    let beside = ca_dir.join(CA_KEY);
    let key_beside_certificates = key_dir.is_none() && !key_path.exists() && beside.exists();
    if key_beside_certificates {
        key_path = beside;
    }
    let authority = Authority::from_pem(&cert, &read(&key_path)?)?;
    Ok(LoadedAuthority {
        authority,
        key_path,
        key_beside_certificates,
    })
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial number.
    pub serial: Vec<u8>,
    /// False when it was already listed (the CRL file was left alone).
    pub changed: bool,
    /// The CRL number in effect.
    pub number: u128,
    /// How many certificates the CRL lists.
    pub listed: usize,
}

/// Reads `ca_dir/crl.pem` (an empty list if absent).
pub fn read_crl(ca: &Authority, ca_dir: &Path) -> Result<Revocations, CertError> {
    let path = ca_dir.join(CRL);
    if !path.exists() {
        return Ok(Revocations::new());
    }
    Revocations::parse(ca, &read(&path)?, &path.display().to_string())
}

/// Adds the certificate in `cert_file` to `ca_dir/crl.pem` (created if
/// absent; a new version only if it was not listed yet).
pub fn revoke(
    ca: &Authority,
    ca_dir: &Path,
    cert_file: &Path,
    reason: Reason,
) -> Result<Revoked, CertError> {
    let mut list = read_crl(ca, ca_dir)?;
    let (serial, changed) = list.revoke(
        ca,
        &read(cert_file)?,
        &cert_file.display().to_string(),
        reason,
    )?;
    if changed {
        write_file(&ca_dir.join(CRL), &list.sign(ca)?, 0o644)?;
    }
    Ok(Revoked {
        serial,
        changed,
        number: list.number(),
        listed: list.len(),
    })
}

/// Signs a new version of `ca_dir/crl.pem` with the same entries (an empty
/// list if absent); returns it.
pub fn refresh_crl(ca: &Authority, ca_dir: &Path) -> Result<Revocations, CertError> {
    let mut list = read_crl(ca, ca_dir)?;
    write_file(&ca_dir.join(CRL), &list.sign(ca)?, 0o644)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_nothing_is_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("x.key");
        write_file(&k, "secret", 0o600).unwrap();
        assert_eq!(mode(&k), 0o600);
        assert!(matches!(
            ensure_absent(std::slice::from_ref(&k), false),
            Err(CertError::Exists(_))
        ));
        assert!(ensure_absent(std::slice::from_ref(&k), true).is_ok());
        write_file(&k, "new", 0o600).unwrap();
        assert_eq!(read(&k).unwrap(), "new");
        assert_eq!(mode(&k), 0o600);
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn directories_are_created_private() {
        let d = tempfile::tempdir().unwrap();
        let nested = d.path().join("a/b");
        create_dir(&nested).unwrap();
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
    }

    #[test]
    fn the_ca_key_is_found_apart_or_beside() {
        let d = tempfile::tempdir().unwrap();
        let ca = Authority::generate("t", crate::Validity::days(10)).unwrap();
        let dir = d.path().join("certs");
        write_authority(&ca, &dir, &ca_key_dir(&dir, None)).unwrap();
        assert_eq!(mode(&dir.join(PRIVATE_DIR)), 0o700);
        let loaded = load_authority(&dir, None).unwrap();
        assert!(!loaded.key_beside_certificates);
        assert_eq!(loaded.key_path, dir.join("private/ca.key"));

        fs::rename(dir.join("private/ca.key"), dir.join(CA_KEY)).unwrap();
        let loaded = load_authority(&dir, None).unwrap();
        assert!(loaded.key_beside_certificates);
        assert!(load_authority(&dir, Some(&d.path().join("nowhere"))).is_err());

        let other = Authority::generate("t", crate::Validity::days(10)).unwrap();
        write_file(&dir.join(CA_KEY), other.key_pem(), 0o600).unwrap();
        assert!(matches!(
            load_authority(&dir, None),
            Err(CertError::CaKeyMismatch)
        ));
    }
}
