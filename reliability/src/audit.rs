//! Verification of the receivers' audit logs: was every record applied
//! exactly once?
//!
//! What it owns: parsing `--audit-log` files (`<unix-ms> <sender> <first-seq>
//! <count> [<refused>]` per delivery handed to the handler: `count` records,
//! `refused` of them refused) and checking one sender's deliveries across
//! several files — one file per receiver process (incarnation), possibly of
//! several receivers — against the sender's last sequence, its count of
//! records dropped by the spool cap and its count of records refused.
//!
//! What it guarantees ([`verify`], [`AuditReport::problems`]):
//! * Every stream's records add up: sent (`last`) = `applied` + `refused` +
//!   `missing` (lost), with `refused` and `missing` equal to what the sender
//!   counted (refused by the receiver, dropped by its spool cap).
//! * `applied` counts distinct sequences handed and not refused,
//!   `refused` the records refused (once per sequence: a delivery handed
//!   again after a crash counts only the last time), `duplicates` every
//!   extra application of a sequence (across or within processes),
//!   `missing` every sequence in `1..=last` never handed; a sequence above
//!   `last` is an error.
//! * Duplicates are **classified, not hidden**: a duplicate lies in the
//!   documented crash window when every application but the last one in
//!   time came from a process that was SIGKILLed, and in that process the
//!   duplicated sequences form a suffix of what it applied (what it applied
//!   after its last durable position). Those are reported separately
//!   (`crash_window`, with the number of batches involved); any other
//!   duplicate is `unexplained` and fails the check.
//! * Within one process deliveries must move strictly forward.
//! * A torn last line is tolerated only in the file of a killed process.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use anyhow::{Context, Result};

/// One line of an audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Wall-clock time of the delivery (ms since the epoch).
    pub ms: u64,
    /// Sender identity.
    pub sender: String,
    /// First sequence.
    pub first: u64,
    /// Number of records handed (applied or refused).
    pub count: u64,
    /// How many of them were refused.
    pub refused: u64,
}

impl Delivery {
    /// Last sequence (inclusive).
    pub fn last(&self) -> u64 {
        self.first + self.count.saturating_sub(1)
    }
}

/// The audit log of one receiver process.
#[derive(Debug, Clone, Default)]
pub struct AuditFile {
    /// Human label, e.g. `rx#3`.
    pub label: String,
    /// Whether the process was ended with SIGKILL.
    pub killed: bool,
    /// Its deliveries in file order.
    pub deliveries: Vec<Delivery>,
    /// Lines that did not parse.
    pub bad_lines: usize,
    /// Whether the very last line was unparseable (torn by a crash).
    pub torn_tail: bool,
}

/// Parses audit-log text.
pub fn parse(text: &str) -> (Vec<Delivery>, usize, bool) {
    let mut out = Vec::new();
    let mut bad = 0;
    let mut torn_tail = false;
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let refused = match f.get(4) {
            None => Some(0),
            Some(n) => n.parse().ok(),
        };
        let parsed = (f.len() == 4 || f.len() == 5)
            .then(|| {
                Some((
                    f[0].parse().ok()?,
                    f[2].parse().ok()?,
                    f[3].parse().ok()?,
                    refused?,
                ))
            })
            .flatten();
        match parsed {
            Some((ms, first, count, refused)) if first > 0 && count > 0 && refused <= count => {
                out.push(Delivery {
                    ms,
                    sender: f[1].to_owned(),
                    first,
                    count,
                    refused,
                });
            }
            _ => {
                bad += 1;
                // The last line has no newline after it: a torn write.
                if i == lines.len() - 1 {
                    torn_tail = true;
                }
            }
        }
    }
    (out, bad, torn_tail)
}

impl AuditFile {
    /// Reads `path` (a missing file is an empty log: the process never got a delivery).
    pub fn load(path: &Path, label: &str, killed: bool) -> Result<Self> {
        let text = match std::fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (deliveries, bad_lines, torn_tail) = parse(&text);
        Ok(Self {
            label: label.to_owned(),
            killed,
            deliveries,
            bad_lines,
            torn_tail,
        })
    }
}

/// The result of checking one sender across audit files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Deliveries of this sender.
    pub deliveries: usize,
    /// Distinct sequences handed to the handler and applied (not refused).
    pub applied: u64,
    /// Records refused by the receiver (each sequence counted once).
    pub refused: u64,
    /// Extra applications (sum over sequences of applications − 1).
    pub duplicates: u64,
    /// Duplicates inside the documented crash window.
    pub crash_window: u64,
    /// Deliveries of killed processes that were handed out again.
    pub crash_window_batches: usize,
    /// Duplicates nothing explains.
    pub unexplained: u64,
    /// Sequences in `1..=last` never handed to the handler.
    pub missing: u64,
    /// Up to 8 missing ranges, for the report.
    pub missing_ranges: Vec<(u64, u64)>,
    /// Applied sequences above `last`.
    pub beyond_last: u64,
    /// Deliveries that did not move forward within one process.
    pub backwards: usize,
    /// Unparseable lines that are not a killed process's torn tail.
    pub bad_lines: usize,
    /// The sender's last sequence (records sent).
    pub last: u64,
}

impl AuditReport {
    /// What is wrong, given how many records the sender dropped by policy
    /// and how many it was told were refused.
    pub fn problems(&self, expected_missing: u64, expected_refused: u64) -> Vec<String> {
        let mut p = Vec::new();
        if self.applied + self.refused + self.missing != self.last {
            p.push(format!(
                "sent {} != applied {} + refused {} + lost {}",
                self.last, self.applied, self.refused, self.missing
            ));
        }
        if self.refused != expected_refused {
            p.push(format!(
                "{} records refused by the receiver, the sender was told {expected_refused}",
                self.refused
            ));
        }
        if self.missing != expected_missing {
            p.push(format!(
                "{} records never applied (expected {expected_missing}): {:?}",
                self.missing, self.missing_ranges
            ));
        }
        if self.unexplained > 0 {
            p.push(format!(
                "{} records applied twice outside the crash window",
                self.unexplained
            ));
        }
        if self.beyond_last > 0 {
            p.push(format!(
                "{} records applied beyond the sender's last sequence",
                self.beyond_last
            ));
        }
        if self.backwards > 0 {
            p.push(format!(
                "{} deliveries went backwards within one receiver process",
                self.backwards
            ));
        }
        if self.bad_lines > 0 {
            p.push(format!("{} unparseable audit lines", self.bad_lines));
        }
        p
    }

    /// The duplicates column: `0`, or `N (crash window, k batches)`, or `N (M unexplained)`.
    pub fn duplicates_cell(&self) -> String {
        match (self.duplicates, self.unexplained) {
            (0, _) => "0".into(),
            (d, 0) => format!(
                "{d} (crash window, {} batch{})",
                self.crash_window_batches,
                if self.crash_window_batches == 1 {
                    ""
                } else {
                    "es"
                }
            ),
            (d, u) => format!("{d} ({u} unexplained)"),
        }
    }
}

/// Checks `sender`'s deliveries in `files` against `1..=last`.
pub fn verify(files: &[AuditFile], sender: &str, last: u64) -> AuditReport {
    let mut r = AuditReport {
        last,
        ..AuditReport::default()
    };
    // Per-file ranges of this sender.
    let per_file: Vec<Vec<&Delivery>> = files
        .iter()
        .map(|f| f.deliveries.iter().filter(|d| d.sender == sender).collect())
        .collect();
    let top = per_file
        .iter()
        .flatten()
        .map(|d| d.last())
        .max()
        .unwrap_or(0)
        .max(last);
    let mut counts = vec![0u8; top as usize + 1];
    for (fi, ds) in per_file.iter().enumerate() {
        r.deliveries += ds.len();
        let mut prev_last = 0;
        for d in ds {
            if d.first <= prev_last {
                r.backwards += 1;
            }
            prev_last = prev_last.max(d.last());
            for s in d.first..=d.last() {
                counts[s as usize] = counts[s as usize].saturating_add(1);
            }
        }
        let f = &files[fi];
        if f.bad_lines > usize::from(f.killed && f.torn_tail) {
            r.bad_lines += f.bad_lines - usize::from(f.killed && f.torn_tail);
        }
    }
    // Coverage.
    let mut run: Option<(u64, u64)> = None;
    for s in 1..=top {
        let c = u64::from(counts[s as usize]);
        if c > 0 {
            r.applied += 1;
            r.duplicates += c - 1;
            if s > last {
                r.beyond_last += 1;
            }
        } else if s <= last {
            r.missing += 1;
            run = match run {
                Some((a, b)) if b + 1 == s => Some((a, s)),
                Some(done) => {
                    if r.missing_ranges.len() < 8 {
                        r.missing_ranges.push(done);
                    }
                    Some((s, s))
                }
                None => Some((s, s)),
            };
        }
    }
    if let Some(done) = run {
        if r.missing_ranges.len() < 8 {
            r.missing_ranges.push(done);
        }
    }
    if r.duplicates == 0 {
        r.refused = refused_once(&per_file, &HashMap::new());
        r.applied -= r.refused.min(r.applied);
        return r;
    }
    // Classify duplicates. Applications of each duplicated sequence: (ms, file).
    let mut apps: BTreeMap<u64, Vec<(u64, usize, usize)>> = BTreeMap::new();
    for (fi, ds) in per_file.iter().enumerate() {
        for (di, d) in ds.iter().enumerate() {
            for s in d.first..=d.last() {
                if counts[s as usize] >= 2 {
                    apps.entry(s).or_default().push((d.ms, fi, di));
                }
            }
        }
    }
    // A killed file's duplicated sequences must be a suffix of what it applied.
    let mut suffix_ok = vec![false; files.len()];
    for (fi, ds) in per_file.iter().enumerate() {
        if !files[fi].killed {
            continue;
        }
        let dup_min = ds
            .iter()
            .flat_map(|d| d.first..=d.last())
            .filter(|s| counts[*s as usize] >= 2)
            .min();
        suffix_ok[fi] = match dup_min {
            None => true,
            Some(m) => ds
                .iter()
                .flat_map(|d| d.first..=d.last())
                .filter(|s| *s >= m)
                .all(|s| counts[s as usize] >= 2),
        };
    }
    let mut batches: HashMap<(usize, usize), ()> = HashMap::new();
    for (_, mut a) in apps {
        a.sort_unstable();
        let extra = a.len() as u64 - 1;
        let distinct_files = {
            let mut f: Vec<usize> = a.iter().map(|x| x.1).collect();
            f.sort_unstable();
            f.dedup();
            f.len() == a.len()
        };
        let earlier = &a[..a.len() - 1];
        if distinct_files
            && earlier
                .iter()
                .all(|&(_, fi, _)| files[fi].killed && suffix_ok[fi])
        {
            r.crash_window += extra;
            for &(_, fi, di) in earlier {
                batches.insert((fi, di), ());
            }
        } else {
            r.unexplained += extra;
        }
    }
    r.crash_window_batches = batches.len();
    r.refused = refused_once(&per_file, &batches);
    r.applied -= r.refused.min(r.applied);
    r
}

/// Records refused in `per_file`'s deliveries, but for those in `again`
/// (file, delivery): handed again after a crash, they count the last time
/// only.
fn refused_once(per_file: &[Vec<&Delivery>], again: &HashMap<(usize, usize), ()>) -> u64 {
    per_file
        .iter()
        .enumerate()
        .flat_map(|(fi, ds)| ds.iter().enumerate().map(move |(di, d)| (fi, di, d)))
        .filter(|(fi, di, _)| !again.contains_key(&(*fi, *di)))
        .map(|(_, _, d)| d.refused)
        .sum()
}

/// Sabotage for self-checks: the same files with one delivery of `sender`
/// (the middle one of the largest file) removed.
pub fn without_a_delivery(files: &[AuditFile], sender: &str) -> Vec<AuditFile> {
    let mut out = files.to_vec();
    if let Some(f) = out
        .iter_mut()
        .max_by_key(|f| f.deliveries.iter().filter(|d| d.sender == sender).count())
    {
        let idx: Vec<usize> = f
            .deliveries
            .iter()
            .enumerate()
            .filter(|(_, d)| d.sender == sender)
            .map(|(i, _)| i)
            .collect();
        if let Some(&i) = idx.get(idx.len() / 2) {
            f.deliveries.remove(i);
        }
    }
    out
}

/// Sabotage for self-checks: one delivery of `sender` applied once more by
/// the last (not killed) process.
pub fn with_a_replay(files: &[AuditFile], sender: &str) -> Vec<AuditFile> {
    let mut out = files.to_vec();
    let mine: Vec<&Delivery> = out
        .iter()
        .flat_map(|f| f.deliveries.iter())
        .filter(|d| d.sender == sender)
        .collect();
    let d = mine.get(1).or(mine.first()).map(|d| (*d).clone());
    if let (Some(mut d), Some(last)) = (d, out.last_mut()) {
        d.ms = u64::MAX;
        last.killed = false;
        last.deliveries.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(label: &str, killed: bool, text: &str) -> AuditFile {
        let (deliveries, bad_lines, torn_tail) = parse(text);
        AuditFile {
            label: label.into(),
            killed,
            deliveries,
            bad_lines,
            torn_tail,
        }
    }

    #[test]
    fn parses_lines_and_torn_tails() {
        let (d, bad, torn) = parse("1 s1 1 10\n2 s1 11 5\n3 s1 1");
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[1],
            Delivery {
                ms: 2,
                sender: "s1".into(),
                first: 11,
                count: 5,
                refused: 0,
            }
        );
        assert_eq!((bad, torn), (1, true));
        let (_, bad, torn) = parse("x y z w\n1 s1 1 1\n");
        assert_eq!((bad, torn), (1, false));
    }

    #[test]
    fn exactly_once_across_incarnations() {
        let files = vec![
            file("rx#1", true, "1 s 1 10\n2 s 11 10\n"),
            file("rx#2", false, "3 s 21 30\n4 other 1 5\n"),
        ];
        let r = verify(&files, "s", 50);
        assert_eq!(
            (r.applied, r.duplicates, r.missing, r.deliveries),
            (50, 0, 0, 3)
        );
        assert!(r.problems(0, 0).is_empty());
        assert_eq!(r.duplicates_cell(), "0");
    }

    #[test]
    fn the_crash_window_is_reported_not_hidden() {
        // rx#1 applied 11..=20 and died before persisting; rx#2 gets it again.
        let files = vec![
            file("rx#1", true, "1 s 1 10\n2 s 11 10\n"),
            file("rx#2", false, "3 s 11 40\n"),
        ];
        let r = verify(&files, "s", 50);
        assert_eq!(
            (
                r.applied,
                r.duplicates,
                r.crash_window,
                r.unexplained,
                r.crash_window_batches
            ),
            (50, 10, 10, 0, 1)
        );
        assert!(r.problems(0, 0).is_empty());
        assert_eq!(r.duplicates_cell(), "10 (crash window, 1 batch)");
    }

    #[test]
    fn other_duplicates_fail() {
        // The process that applied first was not killed.
        let files = vec![
            file("rx#1", false, "1 s 1 10\n"),
            file("rx#2", false, "3 s 5 46\n"),
        ];
        let r = verify(&files, "s", 50);
        assert_eq!((r.duplicates, r.unexplained), (6, 6));
        assert!(!r.problems(0, 0).is_empty());
        // Killed, but the duplicates are not a suffix of what it applied.
        let files = vec![
            file("rx#1", true, "1 s 1 10\n2 s 11 10\n"),
            file("rx#2", false, "3 s 1 5\n4 s 21 30\n"),
        ];
        let r = verify(&files, "s", 50);
        assert_eq!(r.unexplained, 5);
        // Within one process.
        let files = vec![file("rx#1", false, "1 s 1 10\n2 s 5 46\n")];
        let r = verify(&files, "s", 50);
        assert_eq!((r.backwards, r.unexplained), (1, 6));
    }

    #[test]
    fn missing_and_extra_records_fail_unless_dropped_by_policy() {
        let files = vec![file("rx#1", false, "1 s 1 10\n2 s 31 20\n")];
        let r = verify(&files, "s", 50);
        assert_eq!((r.missing, r.missing_ranges.clone()), (20, vec![(11, 30)]));
        assert!(!r.problems(0, 0).is_empty());
        assert!(
            r.problems(20, 0).is_empty(),
            "20 dropped by the spool cap and announced"
        );
        let r = verify(&files, "s", 45);
        assert_eq!(r.beyond_last, 5);
        assert!(!r.problems(20, 0).is_empty());
    }

    #[test]
    fn refused_records_add_up_with_what_the_sender_was_told() {
        let (d, bad, _) = parse("1 s 1 10 4\n2 s 11 5\n3 s 16 2 3\n4 s 16 2 x\n");
        assert_eq!(
            (d.len(), bad),
            (2, 2),
            "refused above count, or not a number"
        );
        assert_eq!((d[0].refused, d[1].refused), (4, 0));
        let files = vec![file("rx#1", false, "1 s 1 10 4\n2 s 11 20\n3 s 31 10 1\n")];
        let r = verify(&files, "s", 50);
        assert_eq!((r.applied, r.refused, r.missing), (35, 5, 10));
        assert!(r.problems(10, 5).is_empty(), "{:?}", r.problems(10, 5));
        // The receiver refused what the sender does not know of, or the
        // other way round.
        assert!(!r.problems(10, 4).is_empty());
        assert!(!r.problems(10, 6).is_empty());
        // Handed again after a crash: its refusals count once.
        let files = vec![
            file("rx#1", true, "1 s 1 10 2\n2 s 11 10 3\n"),
            file("rx#2", false, "3 s 11 40 3\n"),
        ];
        let r = verify(&files, "s", 50);
        assert_eq!((r.applied, r.refused, r.crash_window), (45, 5, 10));
        assert!(r.problems(0, 5).is_empty(), "{:?}", r.problems(0, 5));
    }

    #[test]
    fn torn_lines_only_in_killed_processes() {
        let f = vec![
            file("rx#1", true, "1 s 1 10\n2 s 1"),
            file("rx#2", false, "3 s 11 40\n"),
        ];
        assert!(verify(&f, "s", 50).problems(0, 0).is_empty());
        let f = vec![
            file("rx#1", false, "1 s 1 10\n2 s 1"),
            file("rx#2", false, "3 s 11 40\n"),
        ];
        assert!(!verify(&f, "s", 50).problems(0, 0).is_empty());
    }

    #[test]
    fn sabotage_is_caught() {
        let files = vec![file(
            "rx#1",
            false,
            "1 s 1 10\n2 s 11 10\n3 s 21 10\n4 s 31 20\n",
        )];
        assert!(verify(&files, "s", 50).problems(0, 0).is_empty());
        assert!(!verify(&without_a_delivery(&files, "s"), "s", 50)
            .problems(0, 0)
            .is_empty());
        assert!(!verify(&with_a_replay(&files, "s"), "s", 50)
            .problems(0, 0)
            .is_empty());
        let one = vec![file("rx#1", false, "1 s 1 3\n")];
        assert!(!verify(&with_a_replay(&one, "s"), "s", 3)
            .problems(0, 0)
            .is_empty());
        assert!(!verify(&without_a_delivery(&one, "s"), "s", 3)
            .problems(0, 0)
            .is_empty());
    }
}
