//! The sender's settings: flags (each also `TELEMETRY_SENDER_<FLAG>`), an
//! optional TOML file (`--config`), defaults — merged in that order of
//! precedence into [`Settings`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use telemetry_link::{net::DEFAULT_LINGER, FsyncPolicy, TlsFiles};
use telemetry_runtime::{
    config::{ByteSize, HumanDuration},
    flags::{parse_layered, EndpointFlags, FlagsError, LayeredArgs, TlsFlags},
    http::EndpointSettings,
};
use telemetry_sources::kube::{leader, LeaderElectionConfig};

/// Prefix of the environment variables (`TELEMETRY_SENDER_<FLAG>`).
pub const ENV_PREFIX: &str = "TELEMETRY_SENDER";
/// Default address of the operations endpoint: loopback (Kubernetes
/// manifests set `0.0.0.0:9465` for probes and Prometheus).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9465);

/// Where records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
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

/// Command-line flags; the same names are the environment variables
/// (`TELEMETRY_SENDER_<FLAG>`) and the keys of the TOML file (`receiver`,
/// `namespace` for the repeatable ones).
#[derive(Debug, Parser, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
#[command(
    name = "telemetry-sender",
    version,
    about = "Watches a Kubernetes cluster (or a simulated/synthetic source) and ships it to telemetry receivers over QUIC with mutual TLS, through a durable local spool.",
    after_help = "Every flag can also be set with an environment variable TELEMETRY_SENDER_<FLAG> (repeatable flags comma-separated) or in the TOML file given with --config (same names, e.g. spool-dir = \"/var/lib/telemetry/spool\"). Flags win over the environment, which wins over the file."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Record source [default: kube].
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// Receiver address host:port (repeatable, in failover order).
    #[arg(long = "receiver", value_delimiter = ',')]
    #[serde(rename = "receiver")]
    pub receivers: Vec<String>,
    /// TLS server name the receiver's certificate must carry [default: the receiver's host].
    #[arg(long)]
    pub server_name: Option<String>,
    /// CA, certificate and key (PEM): the receiver's certificate must chain
    /// to the CA; this sender's certificate identity becomes the `cluster` label.
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsFlags,
    /// Spool directory [default: ./telemetry-sender-spool].
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Spool size cap, e.g. 512MiB [default: 1GiB]; the oldest records are dropped (and counted) beyond it.
    #[arg(long)]
    pub spool_max_bytes: Option<ByteSize>,
    /// When to fsync the spool: `batch` (before every append returns), an interval like `100ms`, or `never` [default: batch].
    #[arg(long)]
    pub fsync: Option<String>,
    /// How long a batch that is not full waits for more records after its first one before it is sent; `0s` sends every record at once [default: 1s].
    #[arg(long)]
    pub linger: Option<HumanDuration>,
    /// The operations endpoint [default: 127.0.0.1:9465].
    #[command(flatten)]
    #[serde(flatten)]
    pub endpoint: EndpointFlags,
    /// kubeconfig file (default: in-cluster configuration, or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace to watch (repeatable; default: all).
    #[arg(long = "namespace", value_delimiter = ',')]
    #[serde(rename = "namespace")]
    pub namespaces: Vec<String>,
    /// Label selector for pods, HPAs and pod metrics.
    #[arg(long)]
    pub label_selector: Option<String>,
    /// How often to poll metrics.k8s.io [default: 15s].
    #[arg(long)]
    pub metrics_interval: Option<HumanDuration>,
    /// Synthetic source: number of series [default: 100].
    #[arg(long)]
    pub synthetic_series: Option<u32>,
    /// Synthetic source: records per second, 0 = as fast as possible [default: 1000].
    #[arg(long)]
    pub synthetic_rate: Option<u64>,
    /// Synthetic source: stop once this many records exist in total (across restarts).
    #[arg(long)]
    pub synthetic_total: Option<u64>,
    /// Synthetic source: hand the link one batch per tick (1s: each second's records at once, as a scrape) [default: 100ms].
    #[arg(long)]
    pub synthetic_tick: Option<HumanDuration>,
    /// Simulated source: random seed [default: 1].
    #[arg(long)]
    pub simulated_seed: Option<u64>,
    /// Local UDP address of the link [default: [::]:0, or 0.0.0.0:0 without IPv6]. SIGUSR1 rebinds to it (a new socket; the session migrates).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// While connected to a later --receiver, how often to try the first one again [default: 30s].
    #[arg(long)]
    pub failback_after: Option<HumanDuration>,
    /// Time allowed to connect, handshake and say hello before trying the next receiver [default: 3s].
    #[arg(long)]
    pub connect_timeout: Option<HumanDuration>,
    /// How long a graceful stop may keep sending before leaving the rest in the spool [default: 10s].
    #[arg(long)]
    pub shutdown_timeout: Option<HumanDuration>,
    /// Do not send the present state ahead of the backlog after a reconnect
    /// (the receiver then shows the present only once the backlog drained).
    #[arg(long)]
    pub no_present: bool,
    /// Run as one of several replicas that elect a leader over a Lease;
    /// only the leader ships, the others stand by warm (`--source kube` only).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the Lease [default: telemetry-sender].
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Namespace of the Lease [default: the pod's namespace, else the kubeconfig context's, else `default`].
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// This replica's name, unique among the replicas: the Lease holder and the link replica (its own stream) [default: $POD_NAME, else the hostname].
    #[arg(long)]
    pub replica_id: Option<String>,
    /// How long the others wait after the leader's last renewal before taking over, whole seconds [default: 15s].
    #[arg(long)]
    pub lease_duration: Option<HumanDuration>,
    /// How long a leader keeps leading without a successful renewal; shorter than the lease duration [default: 10s].
    #[arg(long)]
    pub renew_deadline: Option<HumanDuration>,
    /// How often the Lease is read and renewed [default: 2s].
    #[arg(long)]
    pub retry_period: Option<HumanDuration>,
}

/// Leader election among the sender's replicas (`--leader-elect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace; `None`: the pod's, else the kubeconfig
    /// context's, else `default` (resolved once the client exists).
    pub lease_namespace: Option<String>,
    /// This replica's name: Lease holder identity and link replica.
    pub replica_id: String,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Renew deadline.
    pub renew_deadline: Duration,
    /// Retry period.
    pub retry_period: Duration,
}

impl LeaderSettings {
    /// The elector's configuration for the Lease in `namespace`.
    pub fn election(&self, namespace: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            ..LeaderElectionConfig::new(&self.lease_name, namespace, &self.replica_id)
        }
    }
}

/// The default replica id: `pod_name` (`$POD_NAME`), else `hostname`.
pub fn default_replica_id(pod_name: Option<String>, hostname: Option<String>) -> Option<String> {
    let given = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    given(pod_name).or_else(|| given(hostname))
}

/// This machine's hostname, if it can be read.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
}

impl Args {
    /// The leader-election settings: `None` without `--leader-elect`.
    fn leader(&self, source: SourceKind) -> Result<Option<LeaderSettings>> {
        if !self.leader_elect {
            let lease_flags = [
                self.lease_name.is_some(),
                self.lease_namespace.is_some(),
                self.replica_id.is_some(),
                self.lease_duration.is_some(),
                self.renew_deadline.is_some(),
                self.retry_period.is_some(),
            ];
            if lease_flags.contains(&true) {
                bail!("--lease-name, --lease-namespace, --replica-id, --lease-duration, --renew-deadline and --retry-period only apply with --leader-elect");
            }
            return Ok(None);
        }
        if source != SourceKind::Kube {
            bail!("--leader-elect needs --source kube: replicas elect a leader over a Kubernetes Lease");
        }
        let replica_id = match &self.replica_id {
            Some(id) => id.clone(),
            None => {
                default_replica_id(std::env::var("POD_NAME").ok(), hostname()).ok_or_else(|| {
                    anyhow::anyhow!("--leader-elect: no replica id: set --replica-id (or POD_NAME)")
                })?
            }
        };
        if replica_id.is_empty() {
            bail!("--replica-id must not be empty");
        }
        telemetry_link::proto::replica::validate_replica(&replica_id)
            .map_err(|e| anyhow::anyhow!("--replica-id {replica_id:?}: {e}"))?;
        let duration = |d: Option<HumanDuration>, default| d.map_or(default, |d| d.0);
        let settings = LeaderSettings {
            lease_name: self
                .lease_name
                .clone()
                .unwrap_or_else(|| "telemetry-sender".to_owned()),
            lease_namespace: self.lease_namespace.clone(),
            replica_id,
            lease_duration: duration(self.lease_duration, leader::DEFAULT_LEASE_DURATION),
            renew_deadline: duration(self.renew_deadline, leader::DEFAULT_RENEW_DEADLINE),
            retry_period: duration(self.retry_period, leader::DEFAULT_RETRY_PERIOD),
        };
        let namespace = settings.lease_namespace.as_deref().unwrap_or("default");
        settings
            .election(namespace)
            .validate()
            .map_err(|e| anyhow::anyhow!("--leader-elect: {e}"))?;
        Ok(Some(settings))
    }
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
    /// How long a batch that is not full waits for more records.
    pub linger: Duration,
    /// The operations endpoint: address, web config.
    pub endpoint: EndpointSettings,
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
    /// Synthetic pacing tick.
    pub synthetic_tick: Duration,
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
    /// Leader election among replicas (`--leader-elect`); its replica id
    /// is also the link's replica name.
    pub leader: Option<LeaderSettings>,
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

impl LayeredArgs for Args {
    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn path_keys() -> &'static [&'static str] {
        &[
            "ca",
            "cert",
            "key",
            "spool-dir",
            "kubeconfig",
            EndpointFlags::PATH_KEYS[0],
        ]
    }
}

impl Settings {
    /// The link's replica name: the replica id with leader election (each
    /// replica its own stream), else the default replica (empty).
    pub fn link_replica(&self) -> &str {
        self.leader.as_ref().map_or("", |l| l.replica_id.as_str())
    }

    /// Reads flags, environment and the `--config` file of this process.
    pub fn from_process() -> Result<Settings> {
        Self::parse_from(std::env::args_os())
    }

    /// [`Settings::from_process`] for an explicit command line.
    pub fn parse_from<I, T>(args: I) -> Result<Settings>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match parse_layered::<Args, _, _>(ENV_PREFIX, args) {
            Ok(args) => Self::resolve(args),
            Err(FlagsError::Clap(e)) => e.exit(),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies defaults and checks the merged flags.
    pub fn resolve(args: Args) -> Result<Settings> {
        let source = args.source.unwrap_or_default();
        let leader = args.leader(source)?;
        if args.receivers.is_empty() {
            bail!("at least one --receiver host:port is required");
        }
        let tls = args
            .tls
            .require("make certificates with `telemetry-certs init`")?;
        let fsync = match &args.fsync {
            Some(s) => parse_fsync(s)?,
            None => FsyncPolicy::EveryBatch,
        };
        let spool_max_bytes = args.spool_max_bytes.map_or(1 << 30, |b| b.0);
        if spool_max_bytes < 64 * 1024 {
            bail!("--spool-max-bytes must be at least 64KiB");
        }
        let secs = |d: Option<HumanDuration>, default: u64| {
            d.map_or(Duration::from_secs(default), |d| d.0)
        };
        Ok(Settings {
            source,
            receivers: args.receivers,
            server_name: args.server_name,
            tls,
            spool_dir: args
                .spool_dir
                .unwrap_or_else(|| PathBuf::from("telemetry-sender-spool")),
            spool_max_bytes,
            fsync,
            linger: args.linger.map_or(DEFAULT_LINGER, |d| d.0),
            endpoint: args.endpoint.settings_or(DEFAULT_METRICS_LISTEN),
            kubeconfig: args.kubeconfig,
            context: args.context,
            namespaces: args.namespaces,
            label_selector: args.label_selector,
            metrics_interval: secs(args.metrics_interval, 15),
            synthetic_series: args.synthetic_series.unwrap_or(100).max(1),
            synthetic_rate: args.synthetic_rate.unwrap_or(1000),
            synthetic_total: args.synthetic_total,
            synthetic_tick: args
                .synthetic_tick
                .map_or(telemetry_sources::synthetic::TICK, |d| d.0),
            simulated_seed: args.simulated_seed.unwrap_or(1),
            bind: args.bind,
            failback_after: secs(args.failback_after, 30),
            connect_timeout: secs(args.connect_timeout, 3),
            shutdown_timeout: secs(args.shutdown_timeout, 10),
            present: !args.no_present,
            leader,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings> {
        let mut full = vec!["telemetry-sender"];
        full.extend_from_slice(args);
        Settings::resolve(parse_layered(ENV_PREFIX, full)?)
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
        assert_eq!(s.endpoint.listen, DEFAULT_METRICS_LISTEN);
        assert!(s.endpoint.listen.ip().is_loopback());
        assert_eq!(s.metrics_interval, Duration::from_secs(15));
        assert_eq!(s.spool_max_bytes, 1 << 30);
        assert_eq!(s.linger, Duration::from_secs(1));
        for (flag, linger) in [
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
        ] {
            let mut with = a.clone();
            with.extend_from_slice(&["--linger", flag]);
            assert_eq!(parse(&with).unwrap().linger, linger);
        }
    }

    #[test]
    fn flags_file_and_fsync_forms() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sender.toml");
        std::fs::write(
            &f,
            "source = \"synthetic\"\nreceiver = [\"a:1\", \"b:2\"]\nca = \"ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\nfsync = \"100ms\"\nlinger = \"2s\"\nspool-max-bytes = \"64MiB\"\nsynthetic-rate = 0\n",
        )
        .unwrap();
        let s = parse(&["--config", f.to_str().unwrap(), "--synthetic-series", "7"]).unwrap();
        assert_eq!(s.source, SourceKind::Synthetic);
        assert_eq!(s.receivers, vec!["a:1", "b:2"]);
        assert_eq!(s.tls.ca, d.path().join("ca.pem"));
        assert_eq!(s.fsync, FsyncPolicy::Interval(Duration::from_millis(100)));
        assert_eq!(s.linger, Duration::from_secs(2), "file key");
        assert_eq!(s.spool_max_bytes, 64 << 20);
        assert_eq!((s.synthetic_series, s.synthetic_rate), (7, 0));
        assert!(parse_fsync("sometimes").is_err());
        assert_eq!(parse_fsync("never").unwrap(), FsyncPolicy::Never);
    }

    #[test]
    fn leader_election_flags() {
        let mut a = vec!["--receiver", "r:4433"];
        a.extend_from_slice(&TLS);
        assert_eq!(parse(&a).unwrap().leader, None);
        let with = |more: &[&'static str]| {
            let mut v = a.clone();
            v.extend_from_slice(more);
            parse(&v)
        };
        let l = with(&["--leader-elect", "--replica-id", "sender-0"])
            .unwrap()
            .leader
            .unwrap();
        assert_eq!(l.lease_name, "telemetry-sender");
        assert_eq!(l.lease_namespace, None);
        assert_eq!(l.replica_id, "sender-0");
        assert_eq!(
            (l.lease_duration, l.renew_deadline, l.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let l = with(&[
            "--leader-elect",
            "--replica-id=b",
            "--lease-name=l",
            "--lease-namespace=ns",
            "--lease-duration=3s",
            "--renew-deadline=2s",
            "--retry-period=500ms",
        ])
        .unwrap()
        .leader
        .unwrap();
        assert_eq!(l.election("ns").lease_name, "l");
        assert_eq!(l.retry_period, Duration::from_millis(500));
        let err = |more: &[&'static str]| with(more).unwrap_err().to_string();
        assert!(
            err(&["--leader-elect", "--replica-id=a", "--source=synthetic"])
                .contains("--leader-elect needs --source kube")
        );
        assert!(err(&["--leader-elect", "--replica-id=a b"]).contains("--replica-id"));
        assert!(
            err(&["--leader-elect", "--replica-id=a", "--renew-deadline=20s"])
                .contains("renew deadline")
        );
        assert!(err(&[
            "--leader-elect",
            "--replica-id=a",
            "--lease-duration=1500ms"
        ])
        .contains("lease duration"));
        assert!(err(&["--replica-id=a"]).contains("only apply with --leader-elect"));
    }

    #[test]
    fn the_replica_id_defaults_to_the_pod_then_the_hostname() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(default_replica_id(s("sender-1"), s("node")), s("sender-1"));
        assert_eq!(default_replica_id(s(" "), s("node\n")), s("node"));
        assert_eq!(default_replica_id(None, None), None);
    }
}
