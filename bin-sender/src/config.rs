//! The sender's settings: flags (each also `TELEMETRY_SENDER_<FLAG>`), an
//! optional TOML file (`--config`), defaults — merged in that order of
//! precedence into [`Settings`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use telemetry_link::{FsyncPolicy, TlsFiles};
use telemetry_runtime::config::{load_toml, missing_flags, ByteSize, HumanDuration};

/// Default metrics address.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9465";

/// Where records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A real cluster through the Kubernetes API.
    #[default]
    Kube,
    /// A simulated cluster (a Deployment under an HPA riding a load wave).
    Simulated,
    /// Synthetic samples at a fixed rate, for testing a link's capacity.
    Synthetic,
}

/// Command-line flags; the same fields, kebab-cased, are the keys of the
/// TOML file (`receiver`, `namespace` for the repeatable ones).
#[derive(Debug, Parser, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    name = "telemetry-sender",
    version,
    about = "Watches a Kubernetes cluster (or a simulated/synthetic source) and ships it to telemetry receivers over QUIC with mutual TLS, through a durable local spool.",
    after_help = "Every flag can also be set with an environment variable TELEMETRY_SENDER_<FLAG> (repeatable flags comma-separated) or in the TOML file given with --config (same names, e.g. spool-dir = \"/var/lib/telemetry/spool\"). Flags win over the environment, which wins over the file."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "TELEMETRY_SENDER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Record source [default: kube].
    #[arg(long, value_enum, env = "TELEMETRY_SENDER_SOURCE")]
    pub source: Option<SourceKind>,
    /// Receiver address host:port (repeatable, in failover order).
    #[arg(
        long = "receiver",
        env = "TELEMETRY_SENDER_RECEIVER",
        value_delimiter = ','
    )]
    #[serde(rename = "receiver")]
    pub receivers: Vec<String>,
    /// TLS server name the receiver's certificate must carry [default: the receiver's host].
    #[arg(long, env = "TELEMETRY_SENDER_SERVER_NAME")]
    pub server_name: Option<String>,
    /// CA certificate that the receiver's certificate must chain to.
    #[arg(long, env = "TELEMETRY_SENDER_CA")]
    pub ca: Option<PathBuf>,
    /// This sender's client certificate (its identity becomes the `cluster` label).
    #[arg(long, env = "TELEMETRY_SENDER_CERT")]
    pub cert: Option<PathBuf>,
    /// This sender's private key.
    #[arg(long, env = "TELEMETRY_SENDER_KEY")]
    pub key: Option<PathBuf>,
    /// Spool directory [default: ./telemetry-sender-spool].
    #[arg(long, env = "TELEMETRY_SENDER_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size cap, e.g. 512MiB [default: 1GiB]; the oldest records are dropped (and counted) beyond it.
    #[arg(long, env = "TELEMETRY_SENDER_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<ByteSize>,
    /// When to fsync the spool: `batch` (before every append returns), an interval like `100ms`, or `never` [default: batch].
    #[arg(long, env = "TELEMETRY_SENDER_FSYNC")]
    pub fsync: Option<String>,
    /// TCP address for /metrics, /healthz and /readyz [default: 0.0.0.0:9465].
    #[arg(long, env = "TELEMETRY_SENDER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// kubeconfig file (default: in-cluster configuration, or ~/.kube/config).
    #[arg(long, env = "TELEMETRY_SENDER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context.
    #[arg(long, env = "TELEMETRY_SENDER_CONTEXT")]
    pub context: Option<String>,
    /// Namespace to watch (repeatable; default: all).
    #[arg(
        long = "namespace",
        env = "TELEMETRY_SENDER_NAMESPACE",
        value_delimiter = ','
    )]
    #[serde(rename = "namespace")]
    pub namespaces: Vec<String>,
    /// Label selector for pods, HPAs and pod metrics.
    #[arg(long, env = "TELEMETRY_SENDER_LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// How often to poll metrics.k8s.io [default: 15s].
    #[arg(long, env = "TELEMETRY_SENDER_METRICS_INTERVAL")]
    pub metrics_interval: Option<HumanDuration>,
    /// Synthetic source: number of series [default: 100].
    #[arg(long, env = "TELEMETRY_SENDER_SYNTHETIC_SERIES")]
    pub synthetic_series: Option<u32>,
    /// Synthetic source: records per second, 0 = as fast as possible [default: 1000].
    #[arg(long, env = "TELEMETRY_SENDER_SYNTHETIC_RATE")]
    pub synthetic_rate: Option<u64>,
    /// Synthetic source: stop once this many records exist in total (across restarts).
    #[arg(long, env = "TELEMETRY_SENDER_SYNTHETIC_TOTAL")]
    pub synthetic_total: Option<u64>,
    /// Simulated source: random seed [default: 1].
    #[arg(long, env = "TELEMETRY_SENDER_SIMULATED_SEED")]
    pub simulated_seed: Option<u64>,
    /// Local UDP address of the link [default: [::]:0, or 0.0.0.0:0 without IPv6]. SIGUSR1 rebinds to it (a new socket; the session migrates).
    #[arg(long, env = "TELEMETRY_SENDER_BIND")]
    pub bind: Option<SocketAddr>,
    /// While connected to a later --receiver, how often to try the first one again [default: 30s].
    #[arg(long, env = "TELEMETRY_SENDER_FAILBACK_AFTER")]
    pub failback_after: Option<HumanDuration>,
    /// Time allowed to connect, handshake and say hello before trying the next receiver [default: 3s].
    #[arg(long, env = "TELEMETRY_SENDER_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<HumanDuration>,
    /// How long a graceful stop may keep sending before leaving the rest in the spool [default: 10s].
    #[arg(long, env = "TELEMETRY_SENDER_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<HumanDuration>,
    /// Do not send the present state ahead of the backlog after a reconnect
    /// (the receiver then shows the present only once the backlog drained).
    #[arg(long, env = "TELEMETRY_SENDER_NO_PRESENT")]
    pub no_present: bool,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The source.
    pub source: SourceKind,
    /// Receivers in failover order.
    pub receivers: Vec<String>,
    /// Expected server name.
    pub server_name: Option<String>,
    /// TLS files.
    pub tls: TlsFiles,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool cap.
    pub spool_max_bytes: u64,
    /// Spool fsync policy.
    pub fsync: FsyncPolicy,
    /// Metrics address.
    pub metrics_listen: SocketAddr,
    /// kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// Context.
    pub context: Option<String>,
    /// Namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Label selector.
    pub label_selector: Option<String>,
    /// metrics.k8s.io poll interval.
    pub metrics_interval: Duration,
    /// Synthetic series.
    pub synthetic_series: u32,
    /// Synthetic rate.
    pub synthetic_rate: u64,
    /// Synthetic total.
    pub synthetic_total: Option<u64>,
    /// Simulated seed.
    pub simulated_seed: u64,
    /// Local UDP address.
    pub bind: Option<SocketAddr>,
    /// Failback probe interval.
    pub failback_after: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Graceful stop deadline.
    pub shutdown_timeout: Duration,
    /// Send the present state ahead of the backlog after a reconnect.
    pub present: bool,
}

/// Parses `batch`, `never` or a duration.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy> {
    match s {
        "batch" | "every-batch" => Ok(FsyncPolicy::EveryBatch),
        "never" => Ok(FsyncPolicy::Never),
        other => {
            let d: HumanDuration = other.parse().map_err(|e: String| {
                anyhow::anyhow!("--fsync: expected batch, never or an interval: {e}")
            })?;
            Ok(FsyncPolicy::Interval(d.0))
        }
    }
}

impl Settings {
    /// Merges flags, environment and file.
    pub fn resolve(args: Args) -> Result<Settings> {
        let file: Args = match &args.config {
            Some(p) => load_toml(p)?,
            None => Args::default(),
        };
        let base = args.config.as_deref().and_then(Path::parent);
        let rel = |p: Option<PathBuf>| {
            p.map(|p| match base {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            })
        };
        let receivers = if args.receivers.is_empty() {
            file.receivers
        } else {
            args.receivers
        };
        if receivers.is_empty() {
            bail!("at least one --receiver host:port is required");
        }
        let (ca, cert, key) = (
            args.ca.or(rel(file.ca)),
            args.cert.or(rel(file.cert)),
            args.key.or(rel(file.key)),
        );
        let tls = match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => TlsFiles { ca, cert, key },
            (ca, cert, key) => {
                let missing = missing_flags(&[
                    ("--ca", ca.is_none()),
                    ("--cert", cert.is_none()),
                    ("--key", key.is_none()),
                ]);
                bail!(
                    "missing {} (make certificates with `telemetry-certs init`)",
                    missing
                );
            }
        };
        let fsync = match args.fsync.or(file.fsync) {
            Some(s) => parse_fsync(&s)?,
            None => FsyncPolicy::EveryBatch,
        };
        let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
            Some(a) => a,
            None => DEFAULT_METRICS_LISTEN
                .parse()
                .context("default metrics address")?,
        };
        let namespaces = if args.namespaces.is_empty() {
            file.namespaces
        } else {
            args.namespaces
        };
        let spool_max_bytes = args
            .spool_max_bytes
            .or(file.spool_max_bytes)
            .map_or(1 << 30, |b| b.0);
        if spool_max_bytes < 64 * 1024 {
            bail!("--spool-max-bytes must be at least 64KiB");
        }
        Ok(Settings {
            source: args.source.or(file.source).unwrap_or_default(),
            receivers,
            server_name: args.server_name.or(file.server_name),
            tls,
            spool_dir: args
                .spool_dir
                .or(rel(file.spool_dir))
                .unwrap_or_else(|| PathBuf::from("telemetry-sender-spool")),
            spool_max_bytes,
            fsync,
            metrics_listen,
            kubeconfig: args.kubeconfig.or(rel(file.kubeconfig)),
            context: args.context.or(file.context),
            namespaces,
            label_selector: args.label_selector.or(file.label_selector),
            metrics_interval: args
                .metrics_interval
                .or(file.metrics_interval)
                .map_or(Duration::from_secs(15), |d| d.0),
            synthetic_series: args
                .synthetic_series
                .or(file.synthetic_series)
                .unwrap_or(100)
                .max(1),
            synthetic_rate: args.synthetic_rate.or(file.synthetic_rate).unwrap_or(1000),
            synthetic_total: args.synthetic_total.or(file.synthetic_total),
            simulated_seed: args.simulated_seed.or(file.simulated_seed).unwrap_or(1),
            bind: args.bind.or(file.bind),
            failback_after: args
                .failback_after
                .or(file.failback_after)
                .map_or(Duration::from_secs(30), |d| d.0),
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .map_or(Duration::from_secs(3), |d| d.0),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .map_or(Duration::from_secs(10), |d| d.0),
            present: !(args.no_present || file.no_present),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings> {
        let mut full = vec!["telemetry-sender"];
        full.extend_from_slice(args);
        Settings::resolve(Args::try_parse_from(full)?)
    }

    const TLS: [&str; 6] = ["--ca", "c", "--cert", "s", "--key", "k"];

    #[test]
    fn required_and_defaults() {
        assert!(parse(&TLS).unwrap_err().to_string().contains("--receiver"));
        let mut a = vec!["--receiver", "r:4433"];
        assert!(parse(&a)
            .unwrap_err()
            .to_string()
            .contains("--ca, --cert, --key"));
        a.extend_from_slice(&TLS);
        let s = parse(&a).unwrap();
        assert_eq!(s.source, SourceKind::Kube);
        assert_eq!(s.fsync, FsyncPolicy::EveryBatch);
        assert_eq!(s.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert_eq!(s.metrics_interval, Duration::from_secs(15));
        assert_eq!(s.spool_max_bytes, 1 << 30);
    }

    #[test]
    fn flags_file_and_fsync_forms() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sender.toml");
        std::fs::write(
            &f,
            "source = \"synthetic\"\nreceiver = [\"a:1\", \"b:2\"]\nca = \"ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\nfsync = \"100ms\"\nspool-max-bytes = \"64MiB\"\nsynthetic-rate = 0\n",
        )
        .unwrap();
        let s = parse(&["--config", f.to_str().unwrap(), "--synthetic-series", "7"]).unwrap();
        assert_eq!(s.source, SourceKind::Synthetic);
        assert_eq!(s.receivers, vec!["a:1", "b:2"]);
        assert_eq!(s.tls.ca, d.path().join("ca.pem"));
        assert_eq!(s.fsync, FsyncPolicy::Interval(Duration::from_millis(100)));
        assert_eq!(s.spool_max_bytes, 64 << 20);
        assert_eq!((s.synthetic_series, s.synthetic_rate), (7, 0));
        assert!(parse_fsync("sometimes").is_err());
        assert_eq!(parse_fsync("never").unwrap(), FsyncPolicy::Never);
    }
}
