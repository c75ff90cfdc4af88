//! A parser for the Prometheus text exposition format, enough to assert on
//! what a `/metrics` endpoint serves.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// All samples in order.
    pub samples: Vec<PromSample>,
}

impl Exposition {
    /// Parses text format 0.0.4 (comments ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).with_context(|| format!("line {}: {line}", n + 1))?);
        }
        Ok(Self { samples })
    }

    /// Samples named `name` whose labels include every pair in `matching`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        matching: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a PromSample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The single value of `name` with `matching` labels, if exactly one.
    pub fn value(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        let mut it = self.find(name, matching);
        let first = it.next()?;
        it.next().is_none().then_some(first.value)
    }

    /// Sum over every matching sample (0 if none).
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.find(name, matching).map(|s| s.value).sum()
    }

    /// Number of matching samples.
    pub fn count(&self, name: &str, matching: &[(&str, &str)]) -> usize {
        self.find(name, matching).count()
    }
}

fn parse_line(line: &str) -> Result<PromSample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => bail!("no value"),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut end = None;
        loop {
            // label name
            let start = match chars.peek() {
                Some(&(i, '}')) => {
                    end = Some(i);
                    break;
                }
                Some(&(i, _)) => i,
                None => break,
            };
            let eq = r[start..].find('=').context("label without =")? + start;
            let key = r[start..eq].trim_start_matches(',').trim().to_owned();
            while let Some(&(i, _)) = chars.peek() {
                if i > eq {
                    break;
                }
                chars.next();
            }
            if chars.next().map(|c| c.1) != Some('"') {
                bail!("label value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("dangling escape"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(key, value);
            if let Some(&(_, ',')) = chars.peek() {
                chars.next();
            }
        }
        let end = end.context("unterminated label set")?;
        &r[end + 1..]
    } else {
        rest
    };
    let mut parts = rest.split_whitespace();
    let value = parts.next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value {v}"))?,
    };
    Ok(PromSample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `promtool check metrics` on `text`: `Some(Ok(()))` when clean,
/// `Some(Err(report))` with its output otherwise, `None` when promtool is not
/// installed (prints a notice; CI installs it).
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("promtool not installed: skipping the promtool check (CI installs it)");
            return None;
        }
        Err(e) => return Some(Err(format!("cannot run promtool: {e}"))),
    };
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()));
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return Some(Err(format!("promtool did not finish: {e}"))),
    };
    if let Some(Err(e)) = written {
        return Some(Err(format!("cannot feed promtool: {e}")));
    }
    if output.status.success() {
        Some(Ok(()))
    } else {
        Some(Err(format!(
            "promtool exit {:?}\nstdout: {}\nstderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Structural check of an OpenMetrics page used by the tests (no OpenMetrics
/// validator ships with promtool): ends with exactly one `# EOF`, every
/// sample belongs to the family declared just before it (a counter's samples
/// end in `_total`, a histogram's in `_bucket`/`_sum`/`_count`), and no family
/// is declared twice.
pub fn check_openmetrics_structure(text: &str) -> Result<(), String> {
    use std::collections::HashSet;
    let body = text.strip_suffix("# EOF\n").ok_or("missing final # EOF")?;
    if body.contains("# EOF") {
        return Err("# EOF before the end".into());
    }
    let mut declared = HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or(format!("bad TYPE line {line:?}"))?;
            if !declared.insert(name.to_string()) {
                return Err(format!("family {name} declared twice"));
            }
            if kind == "untyped" {
                return Err(format!("{name}: OpenMetrics has no untyped"));
            }
            current = Some((name.to_string(), kind.to_string()));
        } else if line.starts_with("# HELP ") {
            continue;
        } else if line.starts_with('#') {
            return Err(format!("unexpected comment {line:?}"));
        } else {
            let (family, kind) = current
                .as_ref()
                .ok_or(format!("sample before any TYPE: {line:?}"))?;
            let sample_name = line.split(['{', ' ']).next().unwrap_or("");
            let allowed: Vec<String> = match kind.as_str() {
                "counter" => vec![format!("{family}_total"), format!("{family}_created")],
                "histogram" => ["_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .map(|s| format!("{family}{s}"))
                    .collect(),
                "summary" => ["", "_sum", "_count", "_created"]
                    .iter()
                    .map(|s| format!("{family}{s}"))
                    .collect(),
                _ => vec![family.clone()],
            };
            if !allowed.iter().any(|a| a == sample_name) {
                return Err(format!(
                    "sample {sample_name} does not belong to {kind} family {family}"
                ));
            }
        }
    }
    Ok(())
}

/// `GET /metrics` from `addr`, parsed; an error unless it answers 200.
pub fn scrape(addr: std::net::SocketAddr) -> Result<Exposition> {
    let r = crate::http::get(addr, "/metrics", &[])?;
    anyhow::ensure!(r.status == 200, "/metrics answered {}", r.status);
    Exposition::parse(&r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_specials() {
        let e = Exposition::parse(
            "# HELP x y\n# TYPE x gauge\nx 1\ny{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5\nz{} +Inf 1700000000000\n",
        )
        .unwrap();
        assert_eq!(e.samples.len(), 3);
        assert_eq!(e.value("x", &[]), Some(1.0));
        assert_eq!(e.value("y", &[("a", "1")]), Some(2.5));
        assert_eq!(e.find("y", &[]).next().unwrap().labels["b"], "q\"uo\\te\n");
        assert_eq!(e.value("z", &[]), Some(f64::INFINITY));
        assert_eq!(e.count("y", &[("a", "2")]), 0);
        assert!(Exposition::parse("bad{a=1} 2").is_err());
    }
}
