//! The results table.
//!
//! What it owns: one [`Row`] per scenario and its rendering as a Markdown
//! table (readable as plain text too: columns are padded) with the columns
//! scenario | sent | applied | lost | duplicates | recovery | peak RSS
//! sender/receiver | verdict.
//!
//! What it guarantees: every row renders the same number of cells; missing
//! values show as `—`; a failed scenario's verdict is `FAIL`, so a reader
//! cannot miss it.

use std::{fmt::Write, time::Duration};

/// Outcome of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// Every check held; duplicates occurred only in the documented crash window.
    PassDocumented,
    /// A check failed (or the scenario could not run).
    Fail,
    /// Not run.
    Skipped,
}

impl Verdict {
    /// Short text.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::PassDocumented => "PASS (documented limit)",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        }
    }

    /// Whether the suite may exit 0 with it.
    pub fn ok(self) -> bool {
        !matches!(self, Verdict::Fail)
    }
}

/// One scenario's line.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Records the sender produced (its last sequence).
    pub sent: Option<u64>,
    /// Distinct records applied by receivers.
    pub applied: Option<u64>,
    /// Records lost (dropped by the spool cap and reported as lost).
    pub lost: Option<u64>,
    /// Duplicates cell (see [`crate::audit::AuditReport::duplicates_cell`]).
    pub duplicates: String,
    /// Time to recover.
    pub recovery: Option<Duration>,
    /// Peak RSS of the sender (KiB).
    pub rss_sender_kb: Option<u64>,
    /// Peak RSS of the receiver (KiB).
    pub rss_receiver_kb: Option<u64>,
    /// Verdict.
    pub verdict: Verdict,
}

impl Row {
    /// An empty row for `scenario`.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            sent: None,
            applied: None,
            lost: None,
            duplicates: "—".into(),
            recovery: None,
            rss_sender_kb: None,
            rss_receiver_kb: None,
            verdict: Verdict::Fail,
        }
    }
}

const HEADERS: [&str; 8] = [
    "scenario",
    "sent",
    "applied",
    "lost",
    "duplicates",
    "recovery",
    "peak RSS sender / receiver",
    "verdict",
];

fn num(v: Option<u64>) -> String {
    v.map_or("—".into(), |v| v.to_string())
}

/// `12.3 s`, `850 ms`, or `—`.
pub fn duration(d: Option<Duration>) -> String {
    match d {
        None => "—".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
    }
}

/// `23.4 MiB`, or `—`.
pub fn mib(kb: Option<u64>) -> String {
    kb.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn cells(r: &Row) -> [String; 8] {
    [
        r.scenario.clone(),
        num(r.sent),
        num(r.applied),
        num(r.lost),
        r.duplicates.clone(),
        duration(r.recovery),
        format!("{} / {}", mib(r.rss_sender_kb), mib(r.rss_receiver_kb)),
        r.verdict.as_str().to_owned(),
    ]
}

/// Renders the rows as a padded Markdown table.
pub fn render(rows: &[Row]) -> String {
    let body: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric = [false, true, true, true, false, true, false, false];
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if numeric[i] {
                let _ = write!(out, " {}{} |", " ".repeat(pad), c);
            } else {
                let _ = write!(out, " {}{} |", c, " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(String::from));
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if numeric[i] {
            let _ = write!(out, "{}:|", "-".repeat(w + 1));
        } else {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
    }
    out.push('\n');
    for r in &body {
        line(&mut out, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut a = Row::new("1 loss+delay");
        a.sent = Some(120_000);
        a.applied = Some(120_000);
        a.lost = Some(0);
        a.duplicates = "0".into();
        a.recovery = Some(Duration::from_millis(1500));
        a.rss_sender_kb = Some(20480);
        a.rss_receiver_kb = Some(10240);
        a.verdict = Verdict::Pass;
        let b = Row::new("3 receiver kill");
        let t = render(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{t}");
        assert!(lines.iter().all(|l| l.matches('|').count() == 9), "{t}");
        assert!(lines[1].contains("---:|"));
        assert!(
            lines[2].contains("| 1 loss+delay ")
                && lines[2].contains("1.5 s")
                && lines[2].contains("20.0 MiB / 10.0 MiB")
        );
        assert!(lines[2].ends_with("| PASS                    |") || lines[2].contains("| PASS "));
        assert!(lines[3].contains("— / —") && lines[3].contains("FAIL"));
    }

    #[test]
    fn formats_units() {
        assert_eq!(duration(Some(Duration::from_millis(850))), "850 ms");
        assert_eq!(duration(Some(Duration::from_secs(75))), "75.0 s");
        assert_eq!(duration(None), "—");
        assert_eq!(mib(Some(1536)), "1.5 MiB");
        assert!(Verdict::PassDocumented.ok() && !Verdict::Fail.ok() && Verdict::Skipped.ok());
    }
}
