//! What a remote-write URL may show of itself. A URL can carry secrets —
//! credentials (`https://user:password@host/…`) and query parameters
//! (`?api_key=…`) — so wherever one is shown (logs, errors, the `endpoint`
//! metric label, the queue's directory name) only its redacted form
//! `scheme://host:port/path` appears, or a hash of the whole URL.
//!
//! * [`redact`]: the shown form, from the text alone (so it works on URLs
//!   that do not even parse): everything from the first `?` or `#` and
//!   everything up to the last `@` of the authority is removed.
//! * [`labels`]: the `endpoint` label of each configured URL — its redacted
//!   form, plus `#` and 8 hex digits of its hash when two URLs of the
//!   configuration share a redacted form.
//! * [`queue_dir_name`]: the queue directory, `<host>_<port>-<16 hex digits
//!   of the hash>`; [`legacy_queue_dir_name`] is the name earlier releases
//!   used (the whole URL, sanitised), from which a queue is moved on start.

use std::collections::HashMap;

/// `url` without credentials, query and fragment.
pub fn redact(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let base = &url[..end];
    let (scheme, rest) = match base.find("://") {
        Some(i) => base.split_at(i + 3),
        None => ("", base),
    };
    // Credentials end at the last '@': a password may hold a '/' or an '@'.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}{rest}")
}

/// Hex digits of the SHA-256 of the whole URL.
fn hash_hex(url: &str, digits: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(digits)
        .collect()
}

/// The `endpoint` label of each URL, in order: its redacted form, made
/// unique with a short hash where redacted forms collide.
pub fn labels(urls: &[String]) -> Vec<String> {
    let redacted: Vec<String> = urls.iter().map(|u| redact(u)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &redacted {
        *seen.entry(r.as_str()).or_default() += 1;
    }
    urls.iter()
        .zip(&redacted)
        .map(|(url, r)| {
            if seen.get(r.as_str()).copied().unwrap_or(0) > 1 {
                format!("{r}#{}", hash_hex(url, 8))
            } else {
                r.clone()
            }
        })
        .collect()
}

/// Keeps `[A-Za-z0-9.-]`, replaces the rest with `_`, at most 120 characters.
fn sanitize(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    s.trim_matches('_').to_owned()
}

/// The queue directory of `url` (whose host and port are `host_port`):
/// readable by host, unique by the hash of the whole URL.
pub fn queue_dir_name(host_port: &str, url: &str) -> String {
    format!("{}-{}", sanitize(host_port), hash_hex(url, 16))
}

/// The directory name earlier releases gave the queue of the URL whose
/// parsed form prints as `printed`: all of it, sanitised.
pub fn legacy_queue_dir_name(printed: &str) -> String {
    sanitize(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_query_and_fragment_are_removed() {
        for (url, shown) in [
            (
                "http://127.0.0.1:9090/api/v1/write",
                "http://127.0.0.1:9090/api/v1/write",
            ),
            (
                "https://u:p@mimir:443/api/v1/push?api_key=SECRET",
                "https://mimir:443/api/v1/push",
            ),
            ("http://u:pa/ss@w@host/x#frag", "http://host/x"),
            ("user:SECRET@host/path", "host/path"),
            ("not a url ?token=SECRET", "not a url "),
            ("http://[::1]:9090/w?x=y", "http://[::1]:9090/w"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn labels_are_the_redacted_urls_made_unique_by_a_hash_only_where_needed() {
        let urls: Vec<String> = [
            "http://a:1/w?tenant=1",
            "http://a:1/w?tenant=2",
            "http://b:1/w?key=SECRET",
        ]
        .map(String::from)
        .to_vec();
        let l = labels(&urls);
        assert!(l[0].starts_with("http://a:1/w#") && l[0].len() == "http://a:1/w#".len() + 8);
        assert!(l[1].starts_with("http://a:1/w#"));
        assert_ne!(l[0], l[1]);
        assert_eq!(l[2], "http://b:1/w");
        assert!(l
            .iter()
            .all(|l| !l.contains("SECRET") && !l.contains("tenant")));
    }

    #[test]
    fn queue_directories_are_named_by_host_and_hash() {
        let a = queue_dir_name("127.0.0.1:9090", "http://127.0.0.1:9090/w?api_key=SECRET");
        let b = queue_dir_name("127.0.0.1:9090", "http://127.0.0.1:9090/w?api_key=OTHER");
        assert!(a.starts_with("127.0.0.1_9090-"), "{a}");
        assert_eq!(a.len(), "127.0.0.1_9090-".len() + 16);
        assert_ne!(a, b);
        assert!(!a.contains("SECRET"));
        assert_eq!(
            legacy_queue_dir_name("http://127.0.0.1:9090/api/v1/write"),
            "http___127.0.0.1_9090_api_v1_write"
        );
        assert!(!legacy_queue_dir_name("https://a/../../etc").contains('/'));
    }
}
