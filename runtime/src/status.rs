//! What both status pages read and how they spell it: values out of
//! gathered metric families, certificate expiry, and human-readable times,
//! ages and sizes.
//!
//! What it guarantees: lookups never panic on missing families, labels or
//! odd types (a missing value is `None`); formatting is deterministic and
//! in UTC; a certificate file is read whole only up to a size cap.

use std::{collections::BTreeMap, io::Read, path::Path, time::Duration};

use prometheus::proto::{MetricFamily, MetricType};

use crate::html::{Cell, Tone};

/// Gathered metric families, looked up by name and labels.
#[derive(Debug, Clone, Copy)]
pub struct Families<'a>(pub &'a [MetricFamily]);

impl<'a> Families<'a> {
    fn family(&self, name: &str) -> Option<&'a MetricFamily> {
        self.0.iter().find(|f| f.name() == name)
    }

    /// The value of the first series of `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.family(name)?;
        family
            .get_metric()
            .iter()
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|p| p.name() == *k && p.value() == *v)
                })
            })
            .map(|m| metric_value(family.get_field_type(), m))
    }

    /// The sum of every series of `name` whose labels include `labels`
    /// (`None` when the family does not exist).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.family(name)?;
        Some(
            family
                .get_metric()
                .iter()
                .filter(|m| {
                    labels.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|p| p.name() == *k && p.value() == *v)
                    })
                })
                .map(|m| metric_value(family.get_field_type(), m))
                .sum(),
        )
    }

    /// The values of the series of `name` whose labels include `matching`,
    /// summed by the value of their label `label` (series without it are
    /// left out).
    pub fn by_label(
        &self,
        name: &str,
        label: &str,
        matching: &[(&str, &str)],
    ) -> BTreeMap<String, f64> {
        let Some(family) = self.family(name) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for m in family.get_metric() {
            let matches = matching.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|p| p.name() == *k && p.value() == *v)
            });
            if !matches {
                continue;
            }
            if let Some(p) = m.get_label().iter().find(|p| p.name() == label) {
                *out.entry(p.value().to_owned()).or_insert(0.0) +=
                    metric_value(family.get_field_type(), m);
            }
        }
        out
    }

    /// The values of `label` that `name` has series for.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.by_label(name, label, &[]).into_keys().collect()
    }
}

fn metric_value(kind: MetricType, m: &prometheus::proto::Metric) -> f64 {
    match kind {
        MetricType::COUNTER => m.get_counter().get_value(),
        MetricType::GAUGE => m.get_gauge().get_value(),
        #[allow(deprecated)]
        MetricType::UNTYPED => m.get_untyped().get_value(),
        MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
        MetricType::SUMMARY => m.get_summary().sample_count() as f64,
    }
}

/// Largest certificate file read.
const MAX_CERT_FILE: u64 = 1 << 20;

/// Why a certificate's expiry is unknown.
#[derive(Debug, thiserror::Error)]
pub enum CertExpiryError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No parseable certificate in the file.
    #[error("{0}: no parseable certificate")]
    Parse(String),
}

/// End of validity (Unix seconds) of the first certificate in a PEM file.
pub fn certificate_not_after(path: &Path) -> Result<i64, CertExpiryError> {
    let shown = path.display().to_string();
    let read_err = |source| CertExpiryError::Read {
        path: shown.clone(),
        source,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_CERT_FILE)
        .read_to_end(&mut pem)
        .map_err(read_err)?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|_| CertExpiryError::Parse(shown.clone()))?;
    let cert = parsed
        .parse_x509()
        .map_err(|_| CertExpiryError::Parse(shown.clone()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// A certificate expiry as a cell: the date and how far away it is; red
/// when past, amber within 14 days.
pub fn expiry_cell(not_after_unix: i64, now_unix: i64) -> Cell<'static> {
    let left = not_after_unix - now_unix;
    let date = utc_date(not_after_unix);
    let (text, tone) = if left < 0 {
        (
            format!(
                "expired {} ago ({date})",
                human_duration(Duration::from_secs(left.unsigned_abs()))
            ),
            Tone::Bad,
        )
    } else {
        let tone = if left < 14 * 86_400 {
            Tone::Warn
        } else {
            Tone::Good
        };
        let within = if left >= 86_400 {
            format!("{}d", left / 86_400)
        } else {
            human_duration(Duration::from_secs(left.unsigned_abs()))
        };
        (format!("{date} (in {within})"), tone)
    };
    Cell::text(text)
        .tone(tone)
        .hint(utc_timestamp(not_after_unix))
}

/// A duration in its two largest units: `3d 4h`, `5m 2s`, `12s`, `0s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `2026-12-01 02:39:19 UTC`.
pub fn utc_timestamp(unix_seconds: i64) -> String {
    let (y, m, d) = civil_from_days(unix_seconds.div_euclid(86_400));
    let s = unix_seconds.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `2026-12-01`.
pub fn utc_date(unix_seconds: i64) -> String {
    let (y, m, d) = civil_from_days(unix_seconds.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    telemetry_link::unix_ms().div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

    #[test]
    fn values_are_found_by_name_and_labels() {
        let registry = Registry::new();
        let received =
            IntCounterVec::new(Opts::new("received_total", "r"), &["sender", "reason"]).unwrap();
        received.with_label_values(&["a", "x"]).inc_by(3);
        received.with_label_values(&["a", "y"]).inc_by(4);
        received.with_label_values(&["b", "x"]).inc_by(5);
        registry.register(Box::new(received)).unwrap();
        let gauge = IntGauge::new("connected", "c").unwrap();
        gauge.set(1);
        registry.register(Box::new(gauge)).unwrap();
        let gathered = registry.gather();
        let f = Families(&gathered);
        assert_eq!(f.value("connected", &[]), Some(1.0));
        assert_eq!(f.value("received_total", &[("sender", "b")]), Some(5.0));
        assert_eq!(f.sum("received_total", &[("sender", "a")]), Some(7.0));
        assert_eq!(f.sum("received_total", &[("sender", "c")]), Some(0.0));
        assert_eq!(f.sum("missing", &[]), None);
        assert_eq!(f.value("received_total", &[("sender", "c")]), None);
        assert_eq!(
            f.by_label("received_total", "reason", &[]),
            BTreeMap::from([("x".to_owned(), 8.0), ("y".to_owned(), 4.0)])
        );
        assert_eq!(
            f.by_label("received_total", "reason", &[("sender", "a")]),
            BTreeMap::from([("x".to_owned(), 3.0), ("y".to_owned(), 4.0)])
        );
        assert_eq!(f.label_values("received_total", "sender"), vec!["a", "b"]);
    }

    #[test]
    fn times_sizes_and_ages_read_well() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_796_092_759), "2026-12-01 02:39:19 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_timestamp(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(human_duration(Duration::from_secs(0)), "0s");
        assert_eq!(human_duration(Duration::from_secs(62)), "1m 2s");
        assert_eq!(human_duration(Duration::from_secs(7322)), "2h 2m");
        assert_eq!(human_duration(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        let now = 1_796_092_759;
        let soon = expiry_cell(now + 3 * 86_400, now);
        assert_eq!(
            soon,
            Cell::text("2026-12-04 (in 3d)")
                .tone(Tone::Warn)
                .hint("2026-12-04 02:39:19 UTC")
        );
        assert_eq!(
            expiry_cell(now - 60, now),
            Cell::text("expired 1m 0s ago (2026-12-01)")
                .tone(Tone::Bad)
                .hint("2026-12-01 02:38:19 UTC")
        );
    }

    #[test]
    fn certificate_expiry_is_read_from_the_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join("c.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        let not_after = certificate_not_after(&path).unwrap();
        assert_eq!(utc_date(not_after), "2031-05-17");
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            certificate_not_after(&path),
            Err(CertExpiryError::Parse(_))
        ));
    }
}
