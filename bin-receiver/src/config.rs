//! The receiver's settings: flags (each also `TELEMETRY_RECEIVER_<FLAG>`),
//! an optional TOML file (`--config`), defaults — merged in that order of
//! precedence into [`Settings`].

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use telemetry_link::TlsFiles;
use telemetry_runtime::config::{load_toml, missing_flags, ByteSize, HumanDuration};

/// Default QUIC address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4433";
/// Default metrics address.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9464";
/// Default sender TTL.
pub const DEFAULT_SENDER_TTL: Duration = Duration::from_secs(300);

/// Command-line flags; the same fields, kebab-cased, are the keys of the
/// TOML file.
#[derive(Debug, Parser, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "telemetry-receiver",
    version,
    about = "Accepts telemetry senders over QUIC with mutual TLS and exposes their clusters on a Prometheus /metrics endpoint.",
    after_help = "Every flag can also be set with an environment variable TELEMETRY_RECEIVER_<FLAG> or in the TOML file given with --config (same names, e.g. metrics-listen = \"0.0.0.0:9464\"). Flags win over the environment, which wins over the file."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "TELEMETRY_RECEIVER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP address for the QUIC listener [default: 0.0.0.0:4433].
    #[arg(long, env = "TELEMETRY_RECEIVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TCP address for /metrics, /healthz and /readyz [default: 0.0.0.0:9464].
    #[arg(long, env = "TELEMETRY_RECEIVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// CA certificate that sender certificates must chain to.
    #[arg(long, env = "TELEMETRY_RECEIVER_CA")]
    pub ca: Option<PathBuf>,
    /// The receiver's certificate (PEM).
    #[arg(long, env = "TELEMETRY_RECEIVER_CERT")]
    pub cert: Option<PathBuf>,
    /// The receiver's private key (PEM).
    #[arg(long, env = "TELEMETRY_RECEIVER_KEY")]
    pub key: Option<PathBuf>,
    /// Directory for per-sender delivery state [default: ./telemetry-receiver-state].
    #[arg(long, env = "TELEMETRY_RECEIVER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Sender identity allowed to connect (repeatable; comma-separated in the
    /// environment). Default: any certificate the CA signed.
    #[arg(
        long = "allow-sender",
        env = "TELEMETRY_RECEIVER_ALLOW_SENDER",
        value_delimiter = ','
    )]
    pub allow_sender: Vec<String>,
    /// Remove a sender's series after it stayed disconnected this long [default: 5m].
    #[arg(long, env = "TELEMETRY_RECEIVER_SENDER_TTL")]
    pub sender_ttl: Option<HumanDuration>,
    /// Append every delivery (`<unix-ms> <sender> <first-seq> <count>`) to this
    /// file: an audit trail to verify delivery across restarts.
    #[arg(long, env = "TELEMETRY_RECEIVER_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Forward every applied sample, with its original timestamp, to this
    /// Prometheus remote-write URL (repeatable; comma-separated in the
    /// environment), e.g. http://127.0.0.1:9090/api/v1/write.
    #[arg(
        long = "remote-write",
        env = "TELEMETRY_RECEIVER_REMOTE_WRITE",
        value_delimiter = ','
    )]
    pub remote_write: Vec<String>,
    /// Extra HTTP header on every remote-write request, "Name: value"
    /// (repeatable; one header in the environment variable), e.g.
    /// "X-Scope-OrgID: tenant-1" for Mimir or "Authorization: Bearer TOKEN".
    #[arg(
        long = "remote-write-header",
        env = "TELEMETRY_RECEIVER_REMOTE_WRITE_HEADER"
    )]
    pub remote_write_header: Vec<String>,
    /// Byte cap of each remote-write endpoint's on-disk queue (under the
    /// state directory); when full, its oldest samples are dropped [default: 1GiB].
    #[arg(long, env = "TELEMETRY_RECEIVER_REMOTE_WRITE_QUEUE_BYTES")]
    pub remote_write_queue_bytes: Option<ByteSize>,
    /// Run the demo: this receiver plus an in-process sender on a simulated
    /// cluster, over real QUIC and mutual TLS with certificates made at start.
    #[arg(long, env = "TELEMETRY_RECEIVER_DEMO")]
    pub demo: bool,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// QUIC address.
    pub listen: SocketAddr,
    /// Metrics address.
    pub metrics_listen: SocketAddr,
    /// TLS files (`None` in demo mode: made at start).
    pub tls: Option<TlsFiles>,
    /// State directory (`None` in demo mode without an explicit one: a temp dir).
    pub state_dir: Option<PathBuf>,
    /// Allowed identities (`None`: any).
    pub allow_senders: Option<BTreeSet<String>>,
    /// Sender TTL.
    pub sender_ttl: Duration,
    /// Delivery audit log.
    pub audit_log: Option<PathBuf>,
    /// Remote-write endpoints.
    pub remote_write: Vec<String>,
    /// Extra remote-write headers.
    pub remote_write_headers: Vec<String>,
    /// Byte cap of each remote-write queue.
    pub remote_write_queue_bytes: u64,
    /// Demo mode.
    pub demo: bool,
}

fn relative_to(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}

impl Settings {
    /// Merges flags, environment and file.
    pub fn resolve(args: Args) -> Result<Settings> {
        let file: Args = match &args.config {
            Some(p) => load_toml(p)?,
            None => Args::default(),
        };
        // Paths in the file are relative to the file's directory.
        let base = args.config.as_deref().and_then(Path::parent);
        let file_path = |p: Option<PathBuf>| p.map(|p| relative_to(base, p));
        let demo = args.demo || file.demo;
        let listen = match args.listen.or(file.listen) {
            Some(a) => a,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
            Some(a) => a,
            None => DEFAULT_METRICS_LISTEN
                .parse()
                .context("default metrics address")?,
        };
        let ca = args.ca.or(file_path(file.ca));
        let cert = args.cert.or(file_path(file.cert));
        let key = args.key.or(file_path(file.key));
        let tls = match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
            (None, None, None) if demo => None,
            _ if demo => bail!(
                "in demo mode the certificates are made at start: leave out --ca, --cert and --key"
            ),
            (ca, cert, key) => {
                let missing = missing_flags(&[
                    ("--ca", ca.is_none()),
                    ("--cert", cert.is_none()),
                    ("--key", key.is_none()),
                ]);
                bail!(
                    "missing {} (make certificates with `telemetry-certs init`, or try --demo)",
                    missing
                );
            }
        };
        let state_dir = args.state_dir.or(file_path(file.state_dir));
        let state_dir = match (state_dir, demo) {
            (Some(d), _) => Some(d),
            (None, true) => None,
            (None, false) => Some(PathBuf::from("telemetry-receiver-state")),
        };
        let allow: Vec<String> = if args.allow_sender.is_empty() {
            file.allow_sender
        } else {
            args.allow_sender
        };
        let allow_senders = if allow.is_empty() {
            None
        } else {
            for id in &allow {
                telemetry_link::tls::validate_identity(id)
                    .with_context(|| format!("--allow-sender {id:?}"))?;
            }
            Some(allow.into_iter().collect())
        };
        Ok(Settings {
            listen,
            metrics_listen,
            tls,
            state_dir,
            allow_senders,
            sender_ttl: args
                .sender_ttl
                .or(file.sender_ttl)
                .map_or(DEFAULT_SENDER_TTL, |d| d.0),
            audit_log: args.audit_log.or(file_path(file.audit_log)),
            remote_write: if args.remote_write.is_empty() {
                file.remote_write
            } else {
                args.remote_write
            },
            remote_write_headers: if args.remote_write_header.is_empty() {
                file.remote_write_header
            } else {
                args.remote_write_header
            },
            remote_write_queue_bytes: args
                .remote_write_queue_bytes
                .or(file.remote_write_queue_bytes)
                .map_or(1 << 30, |b| b.0),
            demo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings> {
        let mut full = vec!["telemetry-receiver"];
        full.extend_from_slice(args);
        Settings::resolve(Args::try_parse_from(full)?)
    }

    #[test]
    fn defaults_and_required_files() {
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("--ca, --cert, --key"), "{err}");
        let s = parse(&["--ca", "a", "--cert", "b", "--key", "c"]).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(s.sender_ttl, DEFAULT_SENDER_TTL);
        assert!(s.allow_senders.is_none());
        let demo = parse(&["--demo"]).unwrap();
        assert!(demo.demo && demo.tls.is_none() && demo.state_dir.is_none());
        assert!(parse(&["--demo", "--ca", "x"]).is_err());
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("receiver.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:5000\"\nca = \"ca.pem\"\ncert = \"/abs/r.pem\"\nkey = \"r.key\"\nallow-sender = [\"a\", \"b\"]\nsender-ttl = \"90s\"\n",
        )
        .unwrap();
        let s = parse(&[
            "--config",
            f.to_str().unwrap(),
            "--listen",
            "127.0.0.1:6000",
        ])
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:6000");
        let tls = s.tls.unwrap();
        assert_eq!(tls.ca, d.path().join("ca.pem"), "relative to the file");
        assert_eq!(tls.cert, PathBuf::from("/abs/r.pem"));
        assert_eq!(s.sender_ttl, Duration::from_secs(90));
        assert_eq!(s.allow_senders.unwrap().len(), 2);
        std::fs::write(&f, "listn = \"x\"\n").unwrap();
        assert!(parse(&["--config", f.to_str().unwrap()])
            .unwrap_err()
            .to_string()
            .contains("listn"));
        assert!(parse(&[
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "--allow-sender",
            "bad/id"
        ])
        .is_err());
    }
}
