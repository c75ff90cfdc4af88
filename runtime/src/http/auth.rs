//! HTTP Basic authentication against a web config's `basic_auth_users`
//! (bcrypt hashes).
//!
//! What it guarantees:
//! - A request passes only with `Authorization: Basic …` naming a configured
//!   user and a password its bcrypt hash accepts.
//! - bcrypt runs on the blocking pool, one verification at a time per
//!   endpoint ([`BCRYPT_CONCURRENCY`]), so a flood of wrong passwords costs
//!   at most one core and never stalls the async workers.
//! - An unknown user is checked against a dummy hash of the same cost as a
//!   typical one, so the answer time does not tell which users exist.
//! - Successful checks are cached per user as an HMAC-SHA256 tag of the
//!   credentials under a key drawn at load time (never the password
//!   itself); a cached check compares tags in constant time
//!   (`ring::hmac::verify`). The cache holds at most one tag per configured
//!   user and belongs to one loaded config: a reload starts empty, so a
//!   password removed from the file stops working at once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use hyper::header::HeaderValue;
use ring::{hmac, rand::SystemRandom};
use tokio::sync::Semaphore;

/// bcrypt verifications running at once, per endpoint.
pub(crate) const BCRYPT_CONCURRENCY: usize = 1;

/// exporter-toolkit's stand-in hash for unknown users (cost 10).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Longest `Authorization` header value looked at.
const MAX_HEADER_BYTES: usize = 4096;

/// The users of one loaded web config.
pub(crate) struct BasicAuth {
    users: BTreeMap<String, String>,
    key: hmac::Key,
    verified: Mutex<HashMap<String, hmac::Tag>>,
    bcrypt: Arc<Semaphore>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the HMAC key could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for the credential cache key")]
pub(crate) struct NoRandomness;

impl BasicAuth {
    /// Checks `users` (user → bcrypt hash); `bcrypt` bounds verifications.
    pub(crate) fn new(
        users: BTreeMap<String, String>,
        bcrypt: Arc<Semaphore>,
    ) -> Result<Self, NoRandomness> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| NoRandomness)?;
        Ok(Self {
            users,
            key,
            verified: Mutex::new(HashMap::new()),
            bcrypt,
        })
    }

    /// Whether `authorization` carries valid credentials.
    pub(crate) async fn check(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let message = credentials_message(&user, &password);
        if self.cached(&user, &message) {
            return true;
        }
        let known = self.users.contains_key(&user);
        let hash = self
            .users
            .get(&user)
            .cloned()
            .unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(_permit) = self.bcrypt.clone().acquire_owned().await else {
            return false;
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if matches && known {
            let tag = hmac::sign(&self.key, &message);
            self.lock().insert(user, tag);
        }
        matches && known
    }

    fn cached(&self, user: &str, message: &[u8]) -> bool {
        self.lock()
            .get(user)
            .is_some_and(|tag| hmac::verify(&self.key, message, tag.as_ref()).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, hmac::Tag>> {
        // Inserting a tag cannot leave the map half-written.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `user NUL password`: what the cache's tags sign.
fn credentials_message(user: &str, password: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(user.len() + 1 + password.len());
    message.extend_from_slice(user.as_bytes());
    message.push(0);
    message.extend_from_slice(password);
    message
}

/// `Basic base64(user:password)` → (user, password bytes).
fn parse_basic(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_HEADER_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn auth() -> Arc<BasicAuth> {
        let users = BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("right", 4).unwrap())]);
        Arc::new(BasicAuth::new(users, Arc::new(Semaphore::new(BCRYPT_CONCURRENCY))).unwrap())
    }

    #[test]
    fn basic_credentials_are_parsed() {
        assert_eq!(
            parse_basic(&header("a", "b:c")),
            Some(("a".to_owned(), b"b:c".to_vec())),
            "the first colon separates"
        );
        let lower = HeaderValue::from_static("basic YTpi");
        assert_eq!(parse_basic(&lower), Some(("a".into(), b"b".to_vec())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer YTpi")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(
            parse_basic(&HeaderValue::from_static("Basic YWI=")),
            None,
            "no colon"
        );
    }

    #[tokio::test]
    async fn right_wrong_and_unknown_credentials() {
        let auth = auth();
        assert!(!auth.check(None).await);
        assert!(!auth.check(Some(&header("prometheus", "wrong"))).await);
        assert!(!auth.check(Some(&header("nobody", "right"))).await);
        assert!(auth.lock().is_empty(), "failures are not cached");
        assert!(auth.check(Some(&header("prometheus", "right"))).await);
        assert_eq!(auth.lock().len(), 1);
        // Cached now; the wrong password is still refused.
        assert!(auth.check(Some(&header("prometheus", "right"))).await);
        assert!(!auth.check(Some(&header("prometheus", "right "))).await);
    }

    #[tokio::test]
    async fn a_cached_check_answers_without_bcrypt() {
        let auth = auth();
        assert!(auth.check(Some(&header("prometheus", "right"))).await);
        // With every bcrypt slot taken, only the cache can answer.
        let _all = auth
            .bcrypt
            .clone()
            .acquire_many_owned(BCRYPT_CONCURRENCY as u32)
            .await
            .unwrap();
        let cached = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            auth.check(Some(&header("prometheus", "right"))),
        )
        .await;
        assert_eq!(cached.ok(), Some(true));
    }
}
