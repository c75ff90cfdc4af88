//! Hand-written text exposition: the Prometheus text format 0.0.4 and
//! OpenMetrics 1.0.0, written straight into a caller-owned `String`.
//!
//! What it owns: the byte-level spelling of a scrape — family headers
//! (`# HELP`, `# TYPE`), label escaping, number formatting, the OpenMetrics
//! differences, content negotiation — and the rendering of
//! [`prometheus::proto::MetricFamily`] values gathered from a
//! `prometheus::Registry` (the link library's own metrics).
//!
//! What it guarantees:
//! - Label values escape backslash, double quote and newline (`\\`, `\"`,
//!   `\n`) in both formats. HELP text escapes backslash and newline, and in
//!   OpenMetrics also the double quote.
//! - Numbers: `NaN`, `+Inf`, `-Inf`; integral values below 10^15 in plain
//!   integer digits (`1`, `-3`, `104857600`, never `1e8` or `1.0`); other
//!   values in the shortest spelling that reads back to the same `f64`, in
//!   exponent form only when very large or very small.
//! - OpenMetrics: a counter family's `# TYPE`/`# HELP` name has no `_total`
//!   suffix while its samples do; untyped families are `unknown`; timestamps
//!   are seconds; a page ends with `# EOF` ([`finish`]). In the Prometheus
//!   format counters keep their full name everywhere and timestamps are
//!   milliseconds.
//! - Histograms always end with an `le="+Inf"` bucket equal to the count,
//!   followed by `_sum` and `_count`; summaries write `quantile` samples, then
//!   `_sum` and `_count`.
//! - Nothing here allocates except by growing the output buffer (and number
//!   formatting of non-integral values, which uses `core::fmt` into it).
//!
//! Names (metric and label names) are written as given: callers pass valid
//! names; [`is_valid_metric_name`] and [`is_valid_label_name`] check them.
//!
//! The `prometheus` crate is used with `default-features = false`, where
//! `prometheus::proto` is its plain (protobuf-free) model; the accessors used
//! here are those of that model.

use std::fmt::Write as _;

use prometheus::proto::{MetricFamily, MetricType as ProtoMetricType};

/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics 1.0.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The two text formats a scrape can be answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` header value for a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Picks the response format from an `Accept` header: OpenMetrics when
/// `application/openmetrics-text` (version absent, 1.0.0 or 0.0.1) has the
/// highest quality among the ranges we can serve, the Prometheus text format
/// otherwise (also when the header is absent or names nothing we serve).
/// Between equal qualities the range listed first wins, as Prometheus lists
/// its preference first.
pub fn negotiate(accept_header: Option<&str>) -> Format {
    let Some(accept) = accept_header else {
        return Format::Prometheus;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let mut quality = 1.0f32;
        let mut version: Option<&str> = None;
        for parameter in parts {
            let Some((key, value)) = parameter.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            if key.eq_ignore_ascii_case("q") {
                quality = value
                    .parse::<f32>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0);
            } else if key.eq_ignore_ascii_case("version") {
                version = Some(value);
            }
        }
        let format = if media.eq_ignore_ascii_case("application/openmetrics-text") {
            match version {
                None | Some("1.0.0") | Some("0.0.1") => Format::OpenMetrics,
                Some(_) => continue,
            }
        } else if media.eq_ignore_ascii_case("text/plain")
            || media.eq_ignore_ascii_case("text/*")
            || media == "*/*"
        {
            Format::Prometheus
        } else {
            continue;
        };
        if quality <= 0.0 {
            continue;
        }
        if best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, format));
        }
    }
    best.map(|(_, f)| f).unwrap_or(Format::Prometheus)
}

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A monotonically increasing count (name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets, sum and count.
    Histogram,
    /// Quantiles, sum and count.
    Summary,
    /// No type information.
    Unknown,
}

impl MetricKind {
    fn type_word(self, format: Format) -> &'static str {
        match (self, format) {
            (MetricKind::Counter, _) => "counter",
            (MetricKind::Gauge, _) => "gauge",
            (MetricKind::Histogram, _) => "histogram",
            (MetricKind::Summary, _) => "summary",
            (MetricKind::Unknown, Format::Prometheus) => "untyped",
            (MetricKind::Unknown, Format::OpenMetrics) => "unknown",
        }
    }
}

/// A family whose name and help are known at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyDesc {
    /// The sample name as written in the Prometheus format (a counter's
    /// ends in `_total`).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Type.
    pub kind: MetricKind,
}

impl FamilyDesc {
    /// Writes this family's `# HELP` and `# TYPE` lines.
    pub fn write_header(&self, out: &mut String, format: Format) {
        write_family_header(out, format, self.name, self.help, self.kind);
    }
}

/// Writes `# HELP` and `# TYPE` for a family. `name` is the sample name as in
/// the Prometheus format; for an OpenMetrics counter the `_total` suffix is
/// left out of the header.
pub fn write_family_header(
    out: &mut String,
    format: Format,
    name: &str,
    help: &str,
    kind: MetricKind,
) {
    let header_name = match (format, kind) {
        (Format::OpenMetrics, MetricKind::Counter) => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    out.push_str("# HELP ");
    out.push_str(header_name);
    out.push(' ');
    push_escaped_help(out, help, format);
    out.push_str("\n# TYPE ");
    out.push_str(header_name);
    out.push(' ');
    out.push_str(kind.type_word(format));
    out.push('\n');
}

/// Ends a page: `# EOF` in OpenMetrics, nothing in the Prometheus format.
pub fn finish(out: &mut String, format: Format) {
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

/// Appends a label value with `\`, `"` and newline escaped.
pub fn push_escaped_label_value(out: &mut String, value: &str) {
    push_escaped(out, value, true);
}

/// Appends `name="value"` with the value escaped.
pub fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    push_escaped_label_value(out, value);
    out.push('"');
}

/// Appends HELP text escaped for `format`.
pub fn push_escaped_help(out: &mut String, help: &str, format: Format) {
    push_escaped(out, help, format == Format::OpenMetrics);
}

fn push_escaped(out: &mut String, text: &str, escape_quote: bool) {
    let needs = |b: u8| b == b'\\' || b == b'\n' || (escape_quote && b == b'"');
    if !text.bytes().any(needs) {
        out.push_str(text);
        return;
    }
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if needs(b) {
            out.push_str(&text[start..i]);
            out.push_str(match b {
                b'\\' => "\\\\",
                b'\n' => "\\n",
                _ => "\\\"",
            });
            start = i + 1;
        }
    }
    out.push_str(&text[start..]);
}

/// Largest magnitude written as plain integer digits.
const PLAIN_INTEGER_LIMIT: f64 = 1e15;

/// Appends a sample value (see the module documentation for the spelling).
pub fn push_f64(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.fract() == 0.0 && value.abs() < PLAIN_INTEGER_LIMIT {
        push_i64(out, value as i64);
    } else if value.abs() >= PLAIN_INTEGER_LIMIT || value.abs() < 1e-4 {
        let _ = write!(out, "{value:e}");
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Appends an integer in decimal.
pub fn push_i64(out: &mut String, value: i64) {
    let mut digits = [0u8; 20];
    let mut magnitude = value.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        out.push('-');
    }
    for &d in &digits[at..] {
        out.push(d as char);
    }
}

/// Appends `} <value>\n`: closes a label set and writes the value.
#[inline]
pub fn push_value_line_end(out: &mut String, value: f64) {
    out.push_str("} ");
    push_f64(out, value);
    out.push('\n');
}

/// True for names matching `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// True for label names matching `[a-zA-Z_][a-zA-Z0-9_]*` that do not start
/// with the reserved `__`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

/// The parts shared by every sample line of one gathered metric.
struct GatheredMetric<'a> {
    format: Format,
    name: &'a str,
    labels: &'a [prometheus::proto::LabelPair],
    timestamp_ms: i64,
}

impl GatheredMetric<'_> {
    /// Writes `name<suffix>{labels[,extra]} value[ timestamp]`.
    fn write(&self, out: &mut String, suffix: &str, extra: Option<(&str, f64)>, value: f64) {
        out.push_str(self.name);
        out.push_str(suffix);
        if !self.labels.is_empty() || extra.is_some() {
            out.push('{');
            let mut first = true;
            for pair in self.labels {
                if !first {
                    out.push(',');
                }
                first = false;
                push_label(out, pair.name(), pair.value());
            }
            if let Some((label, bound)) = extra {
                if !first {
                    out.push(',');
                }
                out.push_str(label);
                out.push_str("=\"");
                push_f64(out, bound);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        push_f64(out, value);
        if self.timestamp_ms != 0 {
            out.push(' ');
            match self.format {
                Format::Prometheus => push_i64(out, self.timestamp_ms),
                Format::OpenMetrics => push_f64(out, self.timestamp_ms as f64 / 1000.0),
            }
        }
        out.push('\n');
    }
}

/// Renders families gathered from a `prometheus::Registry` (gauges,
/// counters, histograms, summaries, untyped). Families without metrics are
/// skipped. Does not write `# EOF`.
pub fn render_metric_families(out: &mut String, format: Format, families: &[MetricFamily]) {
    for family in families {
        let metrics = family.get_metric();
        if metrics.is_empty() {
            continue;
        }
        let kind = match family.get_field_type() {
            ProtoMetricType::COUNTER => MetricKind::Counter,
            ProtoMetricType::GAUGE => MetricKind::Gauge,
            ProtoMetricType::HISTOGRAM => MetricKind::Histogram,
            ProtoMetricType::SUMMARY => MetricKind::Summary,
            ProtoMetricType::UNTYPED => MetricKind::Unknown,
        };
        let name = family.name();
        write_family_header(out, format, name, family.help(), kind);
        for metric in metrics {
            let sample = GatheredMetric {
                format,
                name,
                labels: metric.get_label(),
                timestamp_ms: metric.timestamp_ms(),
            };
            match kind {
                MetricKind::Counter => {
                    // An OpenMetrics counter's samples must end in `_total`.
                    let suffix = if format == Format::OpenMetrics && !name.ends_with("_total") {
                        "_total"
                    } else {
                        ""
                    };
                    sample.write(out, suffix, None, metric.get_counter().get_value());
                }
                MetricKind::Gauge => sample.write(out, "", None, metric.get_gauge().get_value()),
                MetricKind::Unknown => {
                    #[allow(deprecated)]
                    let value = metric.get_untyped().get_value();
                    sample.write(out, "", None, value);
                }
                MetricKind::Histogram => {
                    let histogram = metric.get_histogram();
                    let count = histogram.get_sample_count() as f64;
                    let mut saw_infinity = false;
                    for bucket in histogram.get_bucket() {
                        let bound = bucket.upper_bound();
                        saw_infinity |= bound == f64::INFINITY;
                        sample.write(
                            out,
                            "_bucket",
                            Some(("le", bound)),
                            bucket.cumulative_count() as f64,
                        );
                    }
                    if !saw_infinity {
                        sample.write(out, "_bucket", Some(("le", f64::INFINITY)), count);
                    }
                    sample.write(out, "_sum", None, histogram.get_sample_sum());
                    sample.write(out, "_count", None, count);
                }
                MetricKind::Summary => {
                    let summary = metric.get_summary();
                    for quantile in summary.get_quantile() {
                        sample.write(
                            out,
                            "",
                            Some(("quantile", quantile.quantile())),
                            quantile.value(),
                        );
                    }
                    sample.write(out, "_sum", None, summary.sample_sum());
                    sample.write(out, "_count", None, summary.sample_count() as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{
        Counter, CounterVec, Gauge, Histogram, HistogramOpts, IntGauge, Opts, Registry,
    };
    use telemetry_test_support::prom::{check_openmetrics_structure, promtool_check};

    #[test]
    fn negotiation_follows_accept_qualities() {
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("")), Format::Prometheus);
        assert_eq!(negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        // What Prometheus 2.x sends.
        let prometheus_server = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus_server)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some(
                "text/plain;q=0.9, application/openmetrics-text; version=1.0.0; q=0.5"
            )),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some("Application/OpenMetrics-Text; version=\"1.0.0\"")),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Prometheus
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=9.9.9")),
            Format::Prometheus
        );
        assert_eq!(negotiate(Some("application/json")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=bogus,text/plain")),
            Format::Prometheus
        );
        assert_eq!(Format::OpenMetrics.content_type(), OPENMETRICS_CONTENT_TYPE);
        assert_eq!(Format::Prometheus.content_type(), PROMETHEUS_CONTENT_TYPE);
    }

    #[test]
    fn label_values_and_help_are_escaped_per_format() {
        let mut out = String::new();
        push_label(&mut out, "path", "C:\\dir \"x\"\nnext");
        assert_eq!(out, r#"path="C:\\dir \"x\"\nnext""#);
        out.clear();
        push_escaped_help(&mut out, "a \\ b \"q\"\nc", Format::Prometheus);
        assert_eq!(out, "a \\\\ b \"q\"\\nc");
        out.clear();
        push_escaped_help(&mut out, "a \\ b \"q\"\nc", Format::OpenMetrics);
        assert_eq!(out, "a \\\\ b \\\"q\\\"\\nc");
        out.clear();
        push_escaped_label_value(&mut out, "plain ünïcode");
        assert_eq!(out, "plain ünïcode");
    }

    #[test]
    fn numbers_are_spelled_without_noise() {
        let spell = |v: f64| {
            let mut s = String::new();
            push_f64(&mut s, v);
            s
        };
        assert_eq!(spell(1.0), "1");
        assert_eq!(spell(0.0), "0");
        assert_eq!(spell(-0.0), "0");
        assert_eq!(spell(-3.0), "-3");
        assert_eq!(spell(104_857_600.0), "104857600");
        assert_eq!(spell(0.2), "0.2");
        assert_eq!(spell(-0.125), "-0.125");
        assert_eq!(spell(1234.5678), "1234.5678");
        assert_eq!(spell(f64::NAN), "NaN");
        assert_eq!(spell(f64::INFINITY), "+Inf");
        assert_eq!(spell(f64::NEG_INFINITY), "-Inf");
        assert_eq!(spell(1e21), "1e21");
        assert_eq!(spell(1.5e-7), "1.5e-7");
        assert_eq!(spell(i64::MIN as f64), "-9.223372036854776e18");
        for v in [
            0.1,
            1.0 / 3.0,
            123456.789,
            1e-300,
            6.02e23,
            999_999_999_999_999.0,
        ] {
            assert_eq!(spell(v).parse::<f64>().unwrap(), v, "round trip of {v}");
        }
        let mut s = String::new();
        push_i64(&mut s, i64::MIN);
        assert_eq!(s, i64::MIN.to_string());
    }

    #[test]
    fn names_are_validated() {
        assert!(is_valid_metric_name("telemetry_synthetic_value"));
        assert!(is_valid_metric_name("job:rate5m"));
        assert!(!is_valid_metric_name("1abc"));
        assert!(!is_valid_metric_name("a-b"));
        assert!(!is_valid_metric_name(""));
        assert!(is_valid_label_name("series"));
        assert!(!is_valid_label_name("__name__"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name(""));
    }

    #[test]
    fn counter_headers_drop_total_only_in_openmetrics() {
        let desc = FamilyDesc {
            name: "x_events_total",
            help: "Events.",
            kind: MetricKind::Counter,
        };
        let mut prom = String::new();
        desc.write_header(&mut prom, Format::Prometheus);
        assert_eq!(
            prom,
            "# HELP x_events_total Events.\n# TYPE x_events_total counter\n"
        );
        let mut om = String::new();
        desc.write_header(&mut om, Format::OpenMetrics);
        finish(&mut om, Format::OpenMetrics);
        assert_eq!(
            om,
            "# HELP x_events Events.\n# TYPE x_events counter\n# EOF\n"
        );
        let mut nothing = String::new();
        finish(&mut nothing, Format::Prometheus);
        assert!(nothing.is_empty());
    }

    /// A registry with one family of each kind the link library uses.
    fn sample_registry() -> Registry {
        let registry = Registry::new();
        let frames = CounterVec::new(
            Opts::new(
                "telemetry_link_frames_total",
                "Frames sent, by \"kind\".\nSecond line \\ end.",
            ),
            &["kind"],
        )
        .unwrap();
        frames.with_label_values(&["batch"]).inc_by(3.0);
        frames.with_label_values(&["ack \"quoted\""]).inc();
        registry.register(Box::new(frames)).unwrap();
        let plain_counter =
            Counter::new("telemetry_link_reconnects", "Counter without _total.").unwrap();
        plain_counter.inc_by(2.0);
        registry.register(Box::new(plain_counter)).unwrap();
        let gauge = Gauge::new("telemetry_link_window_bytes", "Bytes in flight.").unwrap();
        gauge.set(0.5);
        registry.register(Box::new(gauge)).unwrap();
        let int_gauge = IntGauge::new("telemetry_link_connected", "1 when connected.").unwrap();
        int_gauge.set(1);
        registry.register(Box::new(int_gauge)).unwrap();
        let histogram = Histogram::with_opts(
            HistogramOpts::new("telemetry_link_batch_seconds", "Batch latency.")
                .buckets(vec![0.001, 0.01, 0.1, 1.0]),
        )
        .unwrap();
        for v in [0.0005, 0.005, 0.05, 0.5, 5.0] {
            histogram.observe(v);
        }
        registry.register(Box::new(histogram)).unwrap();
        registry
    }

    #[test]
    fn gathered_families_render_in_the_prometheus_format() {
        let families = sample_registry().gather();
        let mut out = String::new();
        render_metric_families(&mut out, Format::Prometheus, &families);
        assert!(out.contains("# HELP telemetry_link_frames_total Frames sent, by \"kind\".\\nSecond line \\\\ end.\n"));
        assert!(out.contains("# TYPE telemetry_link_frames_total counter\n"));
        assert!(out.contains("telemetry_link_frames_total{kind=\"batch\"} 3\n"));
        assert!(out.contains("telemetry_link_frames_total{kind=\"ack \\\"quoted\\\"\"} 1\n"));
        assert!(out.contains("telemetry_link_reconnects 2\n"));
        assert!(out.contains("telemetry_link_window_bytes 0.5\n"));
        assert!(out.contains("telemetry_link_connected 1\n"));
        assert!(out.contains("# TYPE telemetry_link_batch_seconds histogram\n"));
        assert!(out.contains("telemetry_link_batch_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("telemetry_link_batch_seconds_bucket{le=\"1\"} 4\n"));
        assert!(out.contains("telemetry_link_batch_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(out.contains("telemetry_link_batch_seconds_sum 5.5555\n"));
        assert!(out.contains("telemetry_link_batch_seconds_count 5\n"));
        assert!(!out.contains("# EOF"));
        // promtool's linter rightly flags the deliberately suffix-less counter.
        let linted_subset: Vec<_> = families
            .iter()
            .filter(|f| f.name() != "telemetry_link_reconnects")
            .cloned()
            .collect();
        let mut clean = String::new();
        render_metric_families(&mut clean, Format::Prometheus, &linted_subset);
        if let Some(result) = promtool_check(&clean) {
            result.unwrap_or_else(|report| panic!("{report}\n--- page ---\n{clean}"));
        }
    }

    #[test]
    fn gathered_families_render_in_openmetrics() {
        let families = sample_registry().gather();
        let mut out = String::new();
        render_metric_families(&mut out, Format::OpenMetrics, &families);
        finish(&mut out, Format::OpenMetrics);
        assert!(out.contains(
            "# HELP telemetry_link_frames Frames sent, by \\\"kind\\\".\\nSecond line \\\\ end.\n"
        ));
        assert!(out.contains("# TYPE telemetry_link_frames counter\n"));
        assert!(out.contains("telemetry_link_frames_total{kind=\"batch\"} 3\n"));
        assert!(out.contains("# TYPE telemetry_link_reconnects counter\n"));
        assert!(out.contains("telemetry_link_reconnects_total 2\n"));
        assert!(out.contains("# TYPE telemetry_link_batch_seconds histogram\n"));
        assert!(out.contains("telemetry_link_batch_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(out.ends_with("telemetry_link_window_bytes 0.5\n# EOF\n"));
        check_openmetrics_structure(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    }

    #[test]
    fn labelled_histograms_and_summaries_render_in_both_formats() {
        let registry = Registry::new();
        let latency = prometheus::HistogramVec::new(
            HistogramOpts::new("telemetry_link_ack_seconds", "Ack latency.")
                .buckets(vec![0.5, 1.0]),
            &["peer"],
        )
        .unwrap();
        latency.with_label_values(&["a"]).observe(0.7);
        registry.register(Box::new(latency)).unwrap();
        let mut families = registry.gather();

        let mut summary_family = MetricFamily::default();
        summary_family.set_name("rpc_duration_seconds".into());
        summary_family.set_help("RPC latency.".into());
        summary_family.set_field_type(ProtoMetricType::SUMMARY);
        let mut quantile = prometheus::proto::Quantile::default();
        quantile.set_quantile(0.99);
        quantile.set_value(0.25);
        let mut summary = prometheus::proto::Summary::default();
        summary.set_quantile(vec![quantile]);
        summary.set_sample_count(4);
        summary.set_sample_sum(0.5);
        let mut metric = prometheus::proto::Metric::default();
        metric.set_summary(summary);
        summary_family.set_metric(vec![metric]);
        families.push(summary_family);

        let mut prom = String::new();
        render_metric_families(&mut prom, Format::Prometheus, &families);
        assert!(
            prom.contains("telemetry_link_ack_seconds_bucket{peer=\"a\",le=\"0.5\"} 0\n"),
            "{prom}"
        );
        assert!(prom.contains("telemetry_link_ack_seconds_bucket{peer=\"a\",le=\"1\"} 1\n"));
        assert!(prom.contains("telemetry_link_ack_seconds_bucket{peer=\"a\",le=\"+Inf\"} 1\n"));
        assert!(prom.contains("telemetry_link_ack_seconds_sum{peer=\"a\"} 0.7\n"));
        assert!(prom.contains("telemetry_link_ack_seconds_count{peer=\"a\"} 1\n"));
        assert!(prom.contains("# TYPE rpc_duration_seconds summary\nrpc_duration_seconds{quantile=\"0.99\"} 0.25\nrpc_duration_seconds_sum 0.5\nrpc_duration_seconds_count 4\n"));
        if let Some(result) = promtool_check(&prom) {
            result.unwrap_or_else(|report| panic!("{report}\n--- page ---\n{prom}"));
        }
        let mut om = String::new();
        render_metric_families(&mut om, Format::OpenMetrics, &families);
        finish(&mut om, Format::OpenMetrics);
        check_openmetrics_structure(&om).unwrap_or_else(|e| panic!("{e}\n{om}"));
    }

    #[test]
    fn timestamps_are_milliseconds_or_seconds() {
        let mut family = MetricFamily::default();
        family.set_name("x_seconds".into());
        family.set_help("h".into());
        family.set_field_type(ProtoMetricType::GAUGE);
        let mut gauge = prometheus::proto::Gauge::default();
        gauge.set_value(2.0);
        let mut metric = prometheus::proto::Metric::from_gauge(gauge);
        metric.set_timestamp_ms(1_700_000_000_123);
        family.set_metric(vec![metric]);
        let mut prom = String::new();
        render_metric_families(&mut prom, Format::Prometheus, std::slice::from_ref(&family));
        assert!(prom.ends_with("x_seconds 2 1700000000123\n"), "{prom}");
        let mut om = String::new();
        render_metric_families(&mut om, Format::OpenMetrics, &[family]);
        assert!(om.ends_with("x_seconds 2 1700000000.123\n"), "{om}");
    }

    #[test]
    fn empty_families_are_skipped() {
        let registry = Registry::new();
        let unused =
            CounterVec::new(Opts::new("unused_total", "never incremented"), &["l"]).unwrap();
        registry.register(Box::new(unused)).unwrap();
        let mut out = String::new();
        render_metric_families(&mut out, Format::Prometheus, &registry.gather());
        assert!(out.is_empty(), "{out}");
    }

    #[test]
    fn the_openmetrics_structure_check_rejects_bad_pages() {
        assert!(
            check_openmetrics_structure("# TYPE a gauge\na 1\n").is_err(),
            "no EOF"
        );
        assert!(
            check_openmetrics_structure("# TYPE a counter\na 1\n# EOF\n").is_err(),
            "no _total"
        );
        assert!(check_openmetrics_structure("# TYPE a gauge\n# TYPE a gauge\n# EOF\n").is_err());
        assert!(check_openmetrics_structure("# TYPE a counter\na_total 1\n# EOF\n").is_ok());
    }
}
