//! Configuration files (TOML) and human-readable durations.
//!
//! Both binaries take settings from, in decreasing precedence: command-line
//! flags, `TELEMETRY_<BINARY>_<FLAG>` environment variables, a TOML file
//! given with `--config`, built-in defaults. The file uses the flags' names
//! (`metrics-listen = "0.0.0.0:9464"`) and refuses unknown keys, so a typo is
//! an error rather than a silently ignored setting.

use std::{fmt, path::Path, str::FromStr, time::Duration};

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A configuration file problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What toml said (with line and column).
        message: String,
    },
}

/// Loads a TOML file into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The names of the flags that are missing (`(name, is_missing)` pairs),
/// comma-separated, for a startup error.
pub fn missing_flags(flags: &[(&'static str, bool)]) -> String {
    flags
        .iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration written like `15s`, `5m`, `1h30m`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like 15s, 5m or 1h: {e}"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size written like `512MiB`, `1GiB`, `64k`, `1000000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size like 512MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "ki" | "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mi" | "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gi" | "gib" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Demo {
        sender_ttl: Option<HumanDuration>,
        spool_max: Option<ByteSize>,
    }

    #[test]
    fn missing_flags_are_listed() {
        assert_eq!(
            missing_flags(&[("--ca", true), ("--cert", false), ("--key", true)]),
            "--ca, --key"
        );
        assert_eq!(missing_flags(&[("--ca", false)]), "");
    }

    #[test]
    fn durations_sizes_and_unknown_keys() {
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("64k".parse::<ByteSize>().unwrap().0, 64_000);
        assert!("12XB".parse::<ByteSize>().is_err());
        let d: Demo = toml::from_str("sender-ttl = \"90s\"\nspool-max = 1024").unwrap();
        assert_eq!(d.sender_ttl.unwrap().0, Duration::from_secs(90));
        assert_eq!(d.spool_max.unwrap().0, 1024);
        let dir = std::env::temp_dir().join(format!("ops-config-test-{}", std::process::id()));
        std::fs::write(&dir, "sender-tll = \"1m\"\n").unwrap();
        let err = load_toml::<Demo>(&dir).unwrap_err().to_string();
        std::fs::remove_file(&dir).ok();
        assert!(
            err.contains("sender-tll") && err.contains("unknown field"),
            "{err}"
        );
    }
}
