//! The receiver's settings: flags (each also `TELEMETRY_RECEIVER_<FLAG>`),
//! an optional TOML file (`--config`), defaults — merged in that order of
//! precedence into [`Settings`].

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    interpret::Limits,
    remote_write::{client::parse_header, redact::redact},
};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use telemetry_link::{net::ReceiverLimits, TlsFiles};
use telemetry_runtime::{
    config::{ByteSize, HumanDuration},
    flags::{parse_layered, EndpointFlags, FlagsError, LayeredArgs, TlsFlags},
    http::EndpointSettings,
};

/// Prefix of the environment variables (`TELEMETRY_RECEIVER_<FLAG>`).
pub const ENV_PREFIX: &str = "TELEMETRY_RECEIVER";
/// Default QUIC address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4433);
/// Default QUIC address of `--demo`: loopback.
pub const DEMO_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);
/// Default address of the operations endpoint: loopback, so that a fresh
/// install never shows cluster data to other machines (serve them with
/// `--metrics-listen 0.0.0.0:9464` and `--web-config-file`).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// Default sender TTL.
pub const DEFAULT_SENDER_TTL: Duration = Duration::from_secs(300);

/// Command-line flags; the same names are the environment variables
/// (`TELEMETRY_RECEIVER_<FLAG>`) and the keys of the TOML file.
#[derive(Debug, Parser, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
#[command(
    name = "telemetry-receiver",
    version,
    about = "Accepts telemetry senders over QUIC with mutual TLS and exposes their clusters on a Prometheus /metrics endpoint.",
    after_help = "Every flag can also be set with an environment variable TELEMETRY_RECEIVER_<FLAG> (repeatable flags comma-separated) or in the TOML file given with --config (same names, e.g. metrics-listen = \"127.0.0.1:9464\"). Flags win over the environment, which wins over the file."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP address for the QUIC listener [default: 0.0.0.0:4433; 127.0.0.1:4433 with --demo].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// CA, certificate and key (PEM): sender certificates must chain to the CA.
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsFlags,
    /// Certificate revocation list (PEM, `crl.pem` from `telemetry-certs`,
    /// one per CA): senders whose certificate it lists are refused. Reloaded
    /// with the certificates.
    #[arg(long)]
    pub crl: Option<PathBuf>,
    /// The operations endpoint [default: 127.0.0.1:9464].
    #[command(flatten)]
    #[serde(flatten)]
    pub endpoint: EndpointFlags,
    /// Directory for per-sender delivery state [default: ./telemetry-receiver-state].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Sender identity allowed to connect (repeatable; comma-separated in the
    /// environment). Default: any certificate the CA signed.
    #[arg(long = "allow-sender", value_delimiter = ',')]
    pub allow_sender: Vec<String>,
    /// Remove a sender's series after it stayed disconnected this long [default: 5m].
    #[arg(long)]
    pub sender_ttl: Option<HumanDuration>,
    /// Append every delivery (`<unix-ms> <sender> <first-seq> <count>`) to this
    /// file: an audit trail to verify delivery across restarts.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Forward every applied sample, with its original timestamp, to this
    /// Prometheus remote-write URL (repeatable; comma-separated in the
    /// environment), e.g. http://127.0.0.1:9090/api/v1/write.
    #[arg(long = "remote-write", value_delimiter = ',')]
    pub remote_write: Vec<String>,
    /// Extra HTTP header on every remote-write request, "Name: value"
    /// (repeatable; one header in the environment variable), e.g.
    /// "X-Scope-OrgID: tenant-1" for Mimir or "Authorization: Bearer TOKEN".
    #[arg(long = "remote-write-header")]
    pub remote_write_header: Vec<String>,
    /// Byte cap of each remote-write endpoint's on-disk queue (under the
    /// state directory); when full, its oldest samples are dropped [default: 1GiB].
    #[arg(long)]
    pub remote_write_queue_bytes: Option<ByteSize>,
    /// Budgets per sender and limits per connection.
    #[command(flatten)]
    #[serde(flatten)]
    pub budgets: BudgetFlags,
    /// Run the demo: this receiver plus an in-process sender on a simulated
    /// cluster, over real QUIC and mutual TLS with certificates made at start.
    #[arg(long)]
    pub demo: bool,
}

/// What each sender may keep (its certificate identity: every replica of
/// it shares one budget) and what each connection may cost. Records
/// beyond a budget are refused (reason `budget`), counted on both ends and
/// never retried; see docs/shared-service.md for what each costs.
#[derive(Debug, clap::Args, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BudgetFlags {
    /// Generic sample series a sender may keep; samples of new series
    /// beyond it are refused [default: 50000].
    #[arg(long)]
    pub budget_series: Option<usize>,
    /// Bytes of names and labels a sender's sample series may take; samples
    /// of new series beyond it are refused [default: 16MiB].
    #[arg(long)]
    pub budget_series_bytes: Option<ByteSize>,
    /// Object units a sender may keep: pods, their containers, HPAs, their
    /// metric targets; new or growing objects beyond it are refused
    /// [default: 10000].
    #[arg(long)]
    pub budget_objects: Option<usize>,
    /// Series definitions one connection may intern (told to the sender,
    /// which sends further series inline) [default: 65536].
    #[arg(long)]
    pub max_series_per_connection: Option<u32>,
    /// Bytes of series definitions one connection may intern; samples of
    /// series beyond it are refused (series_limit) [default: 8MiB].
    #[arg(long)]
    pub max_definition_bytes: Option<ByteSize>,
    /// Labels one series may have, at most 64; samples of series with more
    /// are refused (label_limit) [default: 64].
    #[arg(long)]
    pub max_labels_per_series: Option<usize>,
    /// Bytes of label names and values one series may have; samples of
    /// series with more are refused (label_limit) [default: 16KiB].
    #[arg(long)]
    pub max_label_bytes: Option<ByteSize>,
    /// Largest present state (a sender's current view, sent ahead of its
    /// backlog) accepted; a larger one is refused whole [default: 8MiB].
    #[arg(long)]
    pub max_present_bytes: Option<ByteSize>,
}

impl BudgetFlags {
    /// The store's budgets and the link's limits, defaults filled in.
    fn resolve(&self) -> Result<(Limits, ReceiverLimits)> {
        let mut link = ReceiverLimits::default();
        let mut store = Limits::default();
        let bytes = |b: Option<ByteSize>, default: usize, flag: &str| -> Result<usize> {
            match b {
                None => Ok(default),
                Some(ByteSize(n)) => {
                    usize::try_from(n).with_context(|| format!("--{flag} {n} is too large"))
                }
            }
        };
        store.max_sample_series = self.budget_series.unwrap_or(store.max_sample_series);
        store.max_sample_bytes = bytes(
            self.budget_series_bytes,
            store.max_sample_bytes,
            "budget-series-bytes",
        )?;
        store.max_objects = self.budget_objects.unwrap_or(store.max_objects);
        link.max_series = self.max_series_per_connection.unwrap_or(link.max_series);
        link.max_definition_bytes = bytes(
            self.max_definition_bytes,
            link.max_definition_bytes,
            "max-definition-bytes",
        )?;
        link.max_labels_per_series = self
            .max_labels_per_series
            .unwrap_or(link.max_labels_per_series);
        if link.max_labels_per_series > telemetry_link::sample::MAX_LABELS {
            bail!(
                "--max-labels-per-series {} is above the link's maximum, {}",
                link.max_labels_per_series,
                telemetry_link::sample::MAX_LABELS
            );
        }
        link.max_label_bytes = bytes(
            self.max_label_bytes,
            link.max_label_bytes,
            "max-label-bytes",
        )?;
        link.max_present_bytes = bytes(
            self.max_present_bytes,
            link.max_present_bytes,
            "max-present-bytes",
        )?;
        store.max_labels_per_series = link.max_labels_per_series;
        store.max_label_bytes = link.max_label_bytes;
        Ok((store, link))
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
            "crl",
            "state-dir",
            "audit-log",
            EndpointFlags::PATH_KEYS[0],
        ]
    }
}

/// Resolved settings. Their `Debug` form shows remote-write URLs redacted
/// and headers by name only.
#[derive(Clone)]
pub struct Settings {
    /// QUIC address.
    pub listen: SocketAddr,
    /// The operations endpoint: address, web config.
    pub endpoint: EndpointSettings,
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
    /// Budgets per sender (the store's limits).
    pub budgets: Limits,
    /// Limits of the link (per connection; the defaults for the rest).
    pub link_limits: ReceiverLimits,
    /// Demo mode.
    pub demo: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.remote_write.iter().map(|u| redact(u)).collect();
        let headers: Vec<&str> = self
            .remote_write_headers
            .iter()
            .map(|h| h.split_once(':').map_or("?", |(name, _)| name.trim()))
            .collect();
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("state_dir", &self.state_dir)
            .field("allow_senders", &self.allow_senders)
            .field("sender_ttl", &self.sender_ttl)
            .field("audit_log", &self.audit_log)
            .field("remote_write", &urls)
            .field("remote_write_headers", &headers)
            .field("remote_write_queue_bytes", &self.remote_write_queue_bytes)
            .field("budgets", &self.budgets)
            .field("link_limits", &self.link_limits)
            .field("demo", &self.demo)
            .finish()
    }
}

impl Settings {
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
        let demo = args.demo;
        let tls = if demo {
            if !args.tls.is_empty() || args.crl.is_some() {
                bail!("in demo mode the certificates are made at start: leave out --ca, --cert, --key and --crl");
            }
            None
        } else {
            let mut files = args
                .tls
                .require("make certificates with `telemetry-certs init`, or try --demo")?;
            files.crl = args.crl;
            Some(files)
        };
        let state_dir = match (args.state_dir, demo) {
            (Some(d), _) => Some(d),
            (None, true) => None,
            (None, false) => Some(PathBuf::from("telemetry-receiver-state")),
        };
        let allow_senders = if args.allow_sender.is_empty() {
            None
        } else {
            for id in &args.allow_sender {
                telemetry_link::tls::validate_identity(id)
                    .with_context(|| format!("--allow-sender {id:?}"))?;
            }
            Some(args.allow_sender.into_iter().collect())
        };
        // Bad headers are reported by position and name, never by value.
        for (i, header) in args.remote_write_header.iter().enumerate() {
            parse_header(i + 1, header)?;
        }
        let (budgets, link_limits) = args.budgets.resolve()?;
        Ok(Settings {
            listen: args
                .listen
                .unwrap_or(if demo { DEMO_LISTEN } else { DEFAULT_LISTEN }),
            endpoint: args.endpoint.settings_or(DEFAULT_METRICS_LISTEN),
            tls,
            state_dir,
            allow_senders,
            sender_ttl: args.sender_ttl.map_or(DEFAULT_SENDER_TTL, |d| d.0),
            audit_log: args.audit_log,
            remote_write: args.remote_write,
            remote_write_headers: args.remote_write_header,
            remote_write_queue_bytes: args.remote_write_queue_bytes.map_or(1 << 30, |b| b.0),
            budgets,
            link_limits,
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
        Settings::resolve(parse_layered(ENV_PREFIX, full)?)
    }

    #[test]
    fn defaults_and_required_files() {
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("--ca, --cert, --key"), "{err}");
        let s = parse(&["--ca", "a", "--cert", "b", "--key", "c"]).unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.endpoint.listen, DEFAULT_METRICS_LISTEN);
        assert!(s.endpoint.listen.ip().is_loopback());
        assert_eq!(s.endpoint.web_config_file, None);
        assert_eq!(s.sender_ttl, DEFAULT_SENDER_TTL);
        assert!(s.allow_senders.is_none());
        let demo = parse(&["--demo"]).unwrap();
        assert!(demo.demo && demo.tls.is_none() && demo.state_dir.is_none());
        assert!(demo.listen.ip().is_loopback() && demo.endpoint.listen.ip().is_loopback());
        assert!(parse(&["--demo", "--ca", "x"]).is_err());
        assert!(parse(&["--demo", "--crl", "x"]).is_err());
        assert_eq!(s.tls.unwrap().crl, None);
        let s = parse(&["--ca", "a", "--cert", "b", "--key", "c", "--crl", "crl.pem"]).unwrap();
        assert_eq!(s.tls.unwrap().crl, Some(PathBuf::from("crl.pem")));
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("receiver.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:5000\"\nca = \"ca.pem\"\ncrl = \"crl.pem\"\ncert = \"/abs/r.pem\"\nkey = \"r.key\"\nallow-sender = [\"a\", \"b\"]\nsender-ttl = \"90s\"\nweb-config-file = \"web.yml\"\n",
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
        assert_eq!(
            tls.crl,
            Some(d.path().join("crl.pem")),
            "relative to the file"
        );
        assert_eq!(s.sender_ttl, Duration::from_secs(90));
        assert_eq!(s.allow_senders.unwrap().len(), 2);
        assert_eq!(
            s.endpoint.web_config_file,
            Some(d.path().join("web.yml")),
            "relative to the file"
        );
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

    #[test]
    fn budgets_and_link_limits_come_from_flags_or_the_file() {
        let s = parse(&["--ca", "a", "--cert", "b", "--key", "c"]).unwrap();
        assert_eq!(s.budgets, Limits::default());
        assert_eq!(s.link_limits.max_series, 1 << 16);
        assert_eq!(s.link_limits.max_definition_bytes, 8 << 20);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("receiver.toml");
        std::fs::write(
            &f,
            "budget-series = 10\nbudget-objects = 20\nmax-label-bytes = \"1KiB\"\n",
        )
        .unwrap();
        let s = parse(&[
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "--config",
            f.to_str().unwrap(),
            "--budget-objects",
            "30",
            "--budget-series-bytes",
            "1MiB",
            "--max-series-per-connection",
            "100",
            "--max-definition-bytes",
            "64KiB",
            "--max-labels-per-series",
            "8",
            "--max-present-bytes",
            "2MiB",
        ])
        .unwrap();
        let (b, l) = (s.budgets, s.link_limits);
        assert_eq!((b.max_sample_series, b.max_objects), (10, 30));
        assert_eq!(b.max_sample_bytes, 1 << 20);
        assert_eq!((l.max_series, l.max_definition_bytes), (100, 64 << 10));
        assert_eq!((l.max_labels_per_series, l.max_label_bytes), (8, 1024));
        assert_eq!((b.max_labels_per_series, b.max_label_bytes), (8, 1024));
        assert_eq!(l.max_present_bytes, 2 << 20);
        let err = parse(&[
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "--max-labels-per-series",
            "65",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("65"), "{err}");
    }

    #[test]
    fn remote_write_secrets_stay_out_of_errors_and_debug_output() {
        let tls = ["--ca", "a", "--cert", "b", "--key", "c"];
        let with = |extra: &[&str]| {
            let mut args = tls.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let e = with(&["--remote-write-header", "Authorization Bearer SECRET"]).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("remote-write header #1") && !e.contains("SECRET"),
            "{e}"
        );
        let s = with(&[
            "--remote-write",
            "http://u:p@127.0.0.1:1/api/v1/write?api_key=SECRET",
            "--remote-write-header",
            "Authorization: Bearer SECRET2",
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("u:p@"),
            "{shown}"
        );
        assert!(
            shown.contains("http://127.0.0.1:1/api/v1/write") && shown.contains("Authorization")
        );
    }
}
