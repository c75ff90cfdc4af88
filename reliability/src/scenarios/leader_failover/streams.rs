//! Exactly-once over the streams of several replicas that share one sender
//! identity, from the receiver's audit log.
//!
//! What it owns: [`verify_streams`]. The audit log names the sender
//! identity, not the replica, and every replica numbers its own stream from
//! 1; so with replicas whose last sequences are `lasts`, sequence `s` must
//! have been handed to the receiver's handler (applied, or refused as
//! `fenced`: both are a delivery) exactly as many times as there are
//! replicas with a last sequence of at least `s`. Fewer is a lost record,
//! more a record applied twice. Together with each replica's applied
//! position at the receiver (which is per stream) this pins both down.
//!
//! What it guarantees: memory proportional to the largest last sequence
//! the replicas report, whatever the audit lines claim (a delivery beyond
//! it is counted, not stored).

use crate::audit::Delivery;

/// The outcome of [`verify_streams`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct StreamsReport {
    /// Records the replicas numbered (sum of their last sequences).
    pub(super) expected: u64,
    /// Of those, how many were delivered (once or more).
    pub(super) delivered: u64,
    /// Never delivered.
    pub(super) missing: u64,
    /// Delivered more often than the replicas numbered them.
    pub(super) duplicates: u64,
    /// Delivered with a sequence above every replica's last.
    pub(super) beyond: u64,
}

impl StreamsReport {
    /// What is wrong (empty: exactly once).
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.missing > 0 {
            p.push(format!(
                "{} of {} records never delivered",
                self.missing, self.expected
            ));
        }
        if self.duplicates > 0 {
            p.push(format!("{} records delivered twice", self.duplicates));
        }
        if self.beyond > 0 {
            p.push(format!(
                "{} records delivered beyond every replica's last sequence",
                self.beyond
            ));
        }
        p
    }
}

/// Checks `sender`'s `deliveries` against replicas whose last sequences
/// are `lasts` (see the module documentation).
pub(super) fn verify_streams(
    deliveries: &[Delivery],
    sender: &str,
    lasts: &[u64],
) -> StreamsReport {
    let top = lasts.iter().copied().max().unwrap_or(0);
    let mut r = StreamsReport {
        expected: lasts.iter().sum(),
        ..StreamsReport::default()
    };
    let mut counts = vec![0u32; usize::try_from(top).unwrap_or(0) + 1];
    for d in deliveries.iter().filter(|d| d.sender == sender) {
        let last = d.last();
        if last > top {
            r.beyond += last - d.first.max(top + 1) + 1;
        }
        for s in d.first..=last.min(top) {
            counts[s as usize] = counts[s as usize].saturating_add(1);
        }
    }
    let mut want = lasts.len() as u64;
    let mut sorted = lasts.to_vec();
    sorted.sort_unstable();
    let mut below = sorted.iter().peekable();
    for (s, &got) in counts.iter().enumerate().skip(1) {
        // Replicas whose stream ends before `s` expect nothing more.
        while below.next_if(|&&l| l < s as u64).is_some() {
            want -= 1;
        }
        let got = u64::from(got);
        r.delivered += got.min(want);
        r.missing += want.saturating_sub(got);
        r.duplicates += got.saturating_sub(want);
    }
    r
}

/// Self-check copies of `deliveries`: one without its middle delivery of
/// `sender`, one with that delivery replayed.
pub(super) fn tampered(deliveries: &[Delivery], sender: &str) -> (Vec<Delivery>, Vec<Delivery>) {
    let ours: Vec<usize> = deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| d.sender == sender)
        .map(|(i, _)| i)
        .collect();
    let mut removed = deliveries.to_vec();
    let mut replayed = deliveries.to_vec();
    if let Some(&mid) = ours.get(ours.len() / 2) {
        removed.remove(mid);
        replayed.push(deliveries[mid].clone());
    }
    (removed, replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(first: u64, count: u64) -> Delivery {
        Delivery {
            ms: 0,
            sender: "s".into(),
            first,
            count,
            refused: 0,
        }
    }

    #[test]
    fn two_streams_each_once() {
        // Replica a sent 1..=5, replica b 1..=3, interleaved.
        let log = [d(1, 2), d(1, 3), d(3, 3)];
        let r = verify_streams(&log, "s", &[5, 3]);
        assert_eq!(
            r,
            StreamsReport {
                expected: 8,
                delivered: 8,
                ..StreamsReport::default()
            }
        );
        assert!(r.problems().is_empty());
        // Another sender's lines do not count.
        let mut other = d(1, 9);
        other.sender = "t".into();
        assert_eq!(
            verify_streams(&[log.as_slice(), &[other]].concat(), "s", &[5, 3]),
            r
        );
    }

    #[test]
    fn lost_duplicated_and_beyond_are_counted() {
        let r = verify_streams(&[d(1, 2), d(1, 3), d(3, 2)], "s", &[5, 3]);
        assert_eq!((r.missing, r.duplicates), (1, 0), "5 of a missing");
        assert_eq!(r.delivered, 7);
        let r = verify_streams(&[d(1, 5), d(1, 3), d(2, 1)], "s", &[5, 3]);
        assert_eq!((r.missing, r.duplicates), (0, 1));
        // 4 delivered twice while only a numbered it: a duplicate.
        let r = verify_streams(&[d(1, 5), d(1, 3), d(4, 1)], "s", &[5, 3]);
        assert_eq!((r.missing, r.duplicates), (0, 1));
        let r = verify_streams(&[d(1, 5), d(1, 3), d(4, 1_000_000)], "s", &[5, 3]);
        assert_eq!((r.duplicates, r.beyond), (2, 999_998));
        assert_eq!(r.problems().len(), 2);
        assert_eq!(verify_streams(&[], "s", &[]).expected, 0);
    }

    #[test]
    fn tampering_is_noticed() {
        let log = [d(1, 2), d(1, 3), d(3, 3)];
        let (removed, replayed) = tampered(&log, "s");
        assert!(verify_streams(&removed, "s", &[5, 3]).missing > 0);
        assert!(verify_streams(&replayed, "s", &[5, 3]).duplicates > 0);
    }
}
