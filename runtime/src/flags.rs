//! Settings from three layers — command-line flags, environment variables,
//! a TOML file — with one precedence rule for both binaries, and the flag
//! groups both binaries share (TLS files, the operations endpoint).
//!
//! What it owns:
//! - [`parse_layered`]: every flag `--some-flag` is also the environment
//!   variable `<PREFIX>_SOME_FLAG` and the key `some-flag` of the file given
//!   with `--config`. A flag wins over the environment, which wins over the
//!   file, which wins over the built-in default (applied by the caller when it
//!   resolves its settings). Unknown keys in the file are errors, so a typo is
//!   never silently ignored. Paths in the file are relative to the file's
//!   directory.
//! - [`TlsFlags`] (`--ca`, `--cert`, `--key`) and [`EndpointFlags`]
//!   (`--metrics-listen`, `--web-config-file`), flattened into each
//!   binary's flags.
//!
//! How the layers merge: the flags and environment are parsed by clap into
//! the binary's `Args`; the values actually given there are serialised and laid
//! over the file's table; the result is deserialised into `Args` again. So a
//! flag type only needs `Serialize`/`Deserialize` in the file's notation
//! (durations like `15s`, sizes like `512MiB`).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, FromArgMatches};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use telemetry_link::TlsFiles;
use thiserror::Error;

use crate::config::ConfigError;

/// A binary's flags, as [`parse_layered`] needs them.
pub trait LayeredArgs: CommandFactory + FromArgMatches + Serialize + DeserializeOwned {
    /// The configuration file given with `--config`, if any.
    fn config_file(&self) -> Option<&Path>;

    /// Keys whose values are paths (resolved relative to the file's
    /// directory when they come from the file).
    fn path_keys() -> &'static [&'static str];
}

/// Why the layered settings could not be read.
#[derive(Debug, Error)]
pub enum FlagsError {
    /// The command line or an environment variable is invalid (also `--help`
    /// and `--version`, which clap reports as errors).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// The file has a key that is no flag.
    #[error("configuration file {path}: unknown key `{key}` (the keys are the flags' names, e.g. `metrics-listen`)")]
    UnknownKey {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
    /// The merged settings do not fit the flags' types.
    #[error("configuration file {path}: {message}")]
    Merge {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Parses `args` (the process's command line, `std::env::args_os()`), the
/// environment (`<prefix>_<FLAG>`) and the `--config` file into `A`.
pub fn parse_layered<A, I, T>(prefix: &str, args: I) -> Result<A, FlagsError>
where
    A: LayeredArgs,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = with_env_prefix(A::command(), prefix);
    let keys = file_keys(&command);
    let matches = command.try_get_matches_from(args)?;
    let given = A::from_arg_matches(&matches)?;
    let Some(path) = given.config_file().map(Path::to_path_buf) else {
        return Ok(given);
    };
    let shown = path.display().to_string();
    let mut table: toml::Table = crate::config::load_toml(&path)?;
    if let Some(key) = table.keys().find(|k| !keys.contains(k.as_str())) {
        return Err(FlagsError::UnknownKey {
            path: shown,
            key: key.clone(),
        });
    }
    if let Some(dir) = path.parent() {
        resolve_paths(&mut table, A::path_keys(), dir);
    }
    let merge_err = |message: String| FlagsError::Merge {
        path: shown.clone(),
        message,
    };
    let from_flags = toml::Table::try_from(&given).map_err(|e| merge_err(e.to_string()))?;
    for (key, value) in from_flags {
        if is_given(&value) {
            table.insert(key, value);
        }
    }
    // `config` itself is `#[serde(skip)]`: the merged value no longer names
    // the file, which has been read.
    table
        .try_into()
        .map_err(|e: toml::de::Error| merge_err(e.to_string()))
}

/// Sets `<prefix>_<FLAG>` as the environment variable of every long flag.
fn with_env_prefix(command: clap::Command, prefix: &str) -> clap::Command {
    let prefix = prefix.to_owned();
    command.mut_args(move |arg| match arg.get_long() {
        Some(long) if !matches!(long, "help" | "version") => {
            let var = format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase());
            arg.env(var)
        }
        _ => arg,
    })
}

/// The keys a file may hold: every long flag but `--config`, `--help`, `--version`.
fn file_keys(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|l| !matches!(*l, "config" | "help" | "version"))
        .map(str::to_owned)
        .collect()
}

fn resolve_paths(table: &mut toml::Table, keys: &[&str], dir: &Path) {
    for key in keys {
        if let Some(toml::Value::String(s)) = table.get_mut(*key) {
            let p = Path::new(s.as_str());
            if p.is_relative() {
                *s = dir.join(p).to_string_lossy().into_owned();
            }
        }
    }
}

/// A value from the command line that should override the file: absent
/// options are not serialised at all; empty lists and `false` switches mean
/// "not given".
fn is_given(value: &toml::Value) -> bool {
    match value {
        toml::Value::Array(a) => !a.is_empty(),
        toml::Value::Boolean(b) => *b,
        _ => true,
    }
}

/// `--ca`, `--cert`, `--key`: the PEM files of a link end.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TlsFlags {
    /// CA certificate the peer's certificate must chain to (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// This end's certificate (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// This end's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Some of `--ca`, `--cert`, `--key` are missing.
#[derive(Debug, Error)]
#[error("missing {missing} ({hint})")]
pub struct MissingTlsFlags {
    /// The missing flags, comma-separated.
    pub missing: String,
    /// What to do about it.
    pub hint: &'static str,
}

impl TlsFlags {
    /// The path keys of this group, for [`LayeredArgs::path_keys`].
    pub const PATH_KEYS: [&'static str; 3] = ["ca", "cert", "key"];

    /// True when none of the three is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// All three files, or which are missing (with `hint` in the message).
    pub fn require(self, hint: &'static str) -> Result<TlsFiles, MissingTlsFlags> {
        match (self.ca, self.cert, self.key) {
            (Some(ca), Some(cert), Some(key)) => Ok(TlsFiles::new(ca, cert, key)),
            (ca, cert, key) => Err(MissingTlsFlags {
                missing: crate::config::missing_flags(&[
                    ("--ca", ca.is_none()),
                    ("--cert", cert.is_none()),
                    ("--key", key.is_none()),
                ]),
                hint,
            }),
        }
    }
}

/// `--metrics-listen` and `--web-config-file`: the operations endpoint
/// (`/`, `/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct EndpointFlags {
    /// TCP address for the status page, /metrics, /healthz and /readyz.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Protect the endpoint with TLS and/or basic auth: a YAML file in the
    /// format of Prometheus' --web.config.file (tls_server_config,
    /// basic_auth_users, http_server_config.headers). Re-read when it changes.
    #[arg(long)]
    pub web_config_file: Option<PathBuf>,
}

impl EndpointFlags {
    /// The path keys of this group, for [`LayeredArgs::path_keys`].
    pub const PATH_KEYS: [&'static str; 1] = ["web-config-file"];

    /// The address to listen on, `default` when not given.
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.metrics_listen.unwrap_or(default)
    }

    /// The endpoint's settings, listening on `default` unless told otherwise.
    pub fn settings_or(&self, default: SocketAddr) -> crate::http::EndpointSettings {
        crate::http::EndpointSettings {
            web_config_file: self.web_config_file.clone(),
            ..crate::http::EndpointSettings::new(self.listen_or(default))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use clap::Parser;

    #[derive(Debug, Default, Parser, Serialize, Deserialize)]
    #[serde(default, rename_all = "kebab-case")]
    struct Demo {
        #[arg(long)]
        #[serde(skip)]
        config: Option<PathBuf>,
        #[command(flatten)]
        #[serde(flatten)]
        tls: TlsFlags,
        #[command(flatten)]
        #[serde(flatten)]
        endpoint: EndpointFlags,
        #[arg(long)]
        ttl: Option<HumanDuration>,
        #[arg(long = "peer", value_delimiter = ',')]
        #[serde(rename = "peer")]
        peers: Vec<String>,
        #[arg(long)]
        quiet: bool,
    }

    impl LayeredArgs for Demo {
        fn config_file(&self) -> Option<&Path> {
            self.config.as_deref()
        }
        fn path_keys() -> &'static [&'static str] {
            &["ca", "cert", "key", "web-config-file"]
        }
    }

    fn parse(prefix: &str, args: &[&str]) -> Result<Demo, FlagsError> {
        let mut full = vec!["demo"];
        full.extend_from_slice(args);
        parse_layered(prefix, full)
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("demo.toml");
        std::fs::write(
            &file,
            "ca = \"ca.pem\"\ncert = \"/abs/c.pem\"\nttl = \"90s\"\npeer = [\"a\", \"b\"]\nmetrics-listen = \"127.0.0.1:1\"\nweb-config-file = \"web.yml\"\nquiet = true\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        // Unique prefix per test: the environment is process-wide.
        let prefix = "FLAGS_TEST_PRECEDENCE";
        let d = parse(prefix, &["--config", f]).unwrap();
        assert_eq!(
            d.tls.ca,
            Some(dir.path().join("ca.pem")),
            "relative to the file"
        );
        assert_eq!(d.tls.cert, Some(PathBuf::from("/abs/c.pem")));
        assert_eq!(d.ttl.map(|t| t.0.as_secs()), Some(90));
        assert_eq!(d.peers, vec!["a", "b"]);
        assert!(d.quiet);
        assert_eq!(d.endpoint.metrics_listen.unwrap().port(), 1);
        assert_eq!(
            d.endpoint.web_config_file,
            Some(dir.path().join("web.yml")),
            "relative to the file"
        );

        std::env::set_var(format!("{prefix}_TTL"), "30s");
        std::env::set_var(format!("{prefix}_PEER"), "x,y,z");
        let d = parse(prefix, &["--config", f, "--metrics-listen", "127.0.0.1:2"]).unwrap();
        assert_eq!(
            d.ttl.map(|t| t.0.as_secs()),
            Some(30),
            "environment over file"
        );
        assert_eq!(d.peers, vec!["x", "y", "z"]);
        assert_eq!(
            d.endpoint.metrics_listen.unwrap().port(),
            2,
            "flag over file"
        );
        let d = parse(prefix, &["--config", f, "--ttl", "5s", "--peer", "q"]).unwrap();
        assert_eq!(
            d.ttl.map(|t| t.0.as_secs()),
            Some(5),
            "flag over environment"
        );
        assert_eq!(d.peers, vec!["q"]);
        std::env::remove_var(format!("{prefix}_TTL"));
        std::env::remove_var(format!("{prefix}_PEER"));

        let d = parse("FLAGS_TEST_DEFAULTS", &[]).unwrap();
        assert!(d.tls.is_empty() && d.ttl.is_none() && d.peers.is_empty() && !d.quiet);
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("demo.toml");
        std::fs::write(&file, "tll = \"1m\"\n").unwrap();
        let err = parse("FLAGS_TEST_UNKNOWN", &["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("unknown key `tll`"), "{err}");
        std::fs::write(&file, "config = \"other.toml\"\n").unwrap();
        assert!(parse("FLAGS_TEST_UNKNOWN", &["--config", file.to_str().unwrap()]).is_err());
        std::fs::write(&file, "ttl = \"soon\"\n").unwrap();
        let err = parse("FLAGS_TEST_UNKNOWN", &["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn missing_tls_flags_are_named() {
        let err = TlsFlags {
            ca: Some("ca.pem".into()),
            ..TlsFlags::default()
        }
        .require("make them with `telemetry-certs init`")
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing --cert, --key (make them with `telemetry-certs init`)"
        );
    }
}
