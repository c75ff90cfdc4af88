//! Keys that must survive receiver restarts: the stateless-reset key, and
//! the key of the connection-ID generator, both derived from one secret in
//! the state directory (`reset.key`, created on first start with mode 0600
//! from its first byte on: written to a fresh temporary file opened with
//! that mode, fsynced, renamed into place).
//! With both, a restarted receiver recognises connection IDs its
//! predecessor issued and answers their packets with a stateless reset, so
//! senders notice at once instead of waiting for their idle timeout.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::Path,
};

use crate::receiver_state::StateError;

const SECRET_FILE: &str = "reset.key";
const SECRET_LEN: usize = 32;

/// The endpoint's long-lived keys.
pub(super) struct EndpointKeys {
    /// Signs stateless resets.
    pub(super) reset: ring::hmac::Key,
    /// Keys the hashed connection-ID generator.
    pub(super) cid: u64,
}

/// Loads the secret from `state_dir`, creating it if it is missing or not
/// exactly 32 bytes, and derives both keys from it.
pub(super) fn endpoint_keys(state_dir: &Path) -> Result<EndpointKeys, StateError> {
    let path = state_dir.join(SECRET_FILE);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    let secret = match std::fs::read(&path) {
        Ok(b) if b.len() == SECRET_LEN => b,
        _ => {
            let mut b = vec![0u8; SECRET_LEN];
            rand::Rng::fill(&mut rand::rng(), &mut b[..]);
            write_secret(&path, &b).map_err(io)?;
            b
        }
    };
    let derived = ring::digest::digest(
        &ring::digest::SHA256,
        &[&secret[..], b"connection-id key"].concat(),
    );
    let mut cid = [0u8; 8];
    cid.copy_from_slice(&derived.as_ref()[..8]);
    Ok(EndpointKeys {
        reset: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        cid: u64::from_le_bytes(cid),
    })
}

/// Writes `secret` to `path` atomically, readable by the owner only from
/// the moment the file exists.
fn write_secret(path: &Path, secret: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    // A leftover from a crash may carry other permissions: never reuse it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    {
        let mut f = options.open(&tmp)?;
        f.write_all(secret)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart_and_a_damaged_secret_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let first = endpoint_keys(d.path()).unwrap();
        let again = endpoint_keys(d.path()).unwrap();
        assert_eq!(first.cid, again.cid);
        let tag = |k: &EndpointKeys| ring::hmac::sign(&k.reset, b"x").as_ref().to_vec();
        assert_eq!(tag(&first), tag(&again));
        std::fs::write(d.path().join(SECRET_FILE), b"short").unwrap();
        let fresh = endpoint_keys(d.path()).unwrap();
        assert_ne!(fresh.cid, first.cid);
        assert_eq!(
            std::fs::read(d.path().join(SECRET_FILE)).unwrap().len(),
            SECRET_LEN
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_secret_is_owner_only_from_creation_even_over_a_loose_leftover() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let leftover = d.path().join("reset.key.tmp");
        std::fs::write(&leftover, b"old").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
        endpoint_keys(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!leftover.exists());
    }
}
