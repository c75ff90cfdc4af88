//! Keys that must survive receiver restarts: the stateless-reset key, and
//! the key of the connection-ID generator, both derived from one secret in
//! the state directory (`reset.key`, created on first start, mode 0600).
//! With both, a restarted receiver recognises connection IDs its
//! predecessor issued and answers their packets with a stateless reset, so
//! senders notice at once instead of waiting for their idle timeout.

use std::path::Path;

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
            crate::fsutil::write_atomic(&path, &b).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
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
}
