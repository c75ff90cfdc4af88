//! A bounded set of inclusive sequence ranges: which sequences the spool
//! dropped without any receiver acknowledging them.
//!
//! When the sender later tells a receiver to skip over missing sequences,
//! this set says how many of them were really lost (as opposed to delivered
//! to another receiver before being deleted). At most [`MAX_RANGES`] ranges
//! are kept; beyond that the oldest are forgotten, which can only make a
//! receiver that was away for very long under-count losses, never
//! over-count.

use serde::{Deserialize, Serialize};

/// Most ranges remembered.
pub const MAX_RANGES: usize = 4096;

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from untrusted stored ranges, normalising them.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut s = Self::new();
        for (a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Adds `from..=to` (ignored if `to < from`).
    pub fn insert(&mut self, from: u64, to: u64) {
        if to < from {
            return;
        }
        let (mut a, mut b) = (from, to);
        // Ranges overlapping or adjacent to [a, b] merge into it.
        let start = self
            .ranges
            .partition_point(|&(_, e)| e.saturating_add(1) < a);
        let mut end = start;
        while end < self.ranges.len() && self.ranges[end].0 <= b.saturating_add(1) {
            a = a.min(self.ranges[end].0);
            b = b.max(self.ranges[end].1);
            end += 1;
        }
        self.ranges.splice(start..end, [(a, b)]);
        if self.ranges.len() > MAX_RANGES {
            let excess = self.ranges.len() - MAX_RANGES;
            self.ranges.drain(..excess);
        }
    }

    /// Removes `from..=to` from the set (splitting ranges as needed).
    pub fn remove(&mut self, from: u64, to: u64) {
        if to < from {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < from || a > to {
                out.push((a, b));
                continue;
            }
            if a < from {
                out.push((a, from - 1));
            }
            if b > to {
                out.push((to + 1, b));
            }
        }
        self.ranges = out;
    }

    /// The parts of the set inside `from..=to`.
    pub fn intersect(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        if to < from {
            return Vec::new();
        }
        let start = self.ranges.partition_point(|&(_, e)| e < from);
        self.ranges[start..]
            .iter()
            .take_while(|&&(a, _)| a <= to)
            .map(|&(a, b)| (a.max(from), b.min(to)))
            .collect()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many sequences of `from..=to` are in the set.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        if to < from {
            return 0;
        }
        let start = self.ranges.partition_point(|&(_, e)| e < from);
        self.ranges[start..]
            .iter()
            .take_while(|&&(a, _)| a <= to)
            .map(|&(a, b)| b.min(to) - a.max(from) + 1)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_and_counts() {
        let mut s = RangeSet::new();
        s.insert(10, 20);
        s.insert(21, 25);
        s.insert(30, 30);
        s.insert(5, 9);
        assert_eq!(s.ranges(), &[(5, 25), (30, 30)]);
        assert_eq!(s.count_in(1, 100), 22);
        assert_eq!(s.count_in(20, 30), 7);
        assert_eq!(s.count_in(26, 29), 0);
        s.insert(1, 100);
        assert_eq!(s.ranges(), &[(1, 100)]);
    }

    #[test]
    fn bounded() {
        let mut s = RangeSet::new();
        for i in 0..(MAX_RANGES as u64 + 10) {
            s.insert(i * 10, i * 10);
        }
        assert_eq!(s.ranges().len(), MAX_RANGES);
        assert_eq!(s.ranges()[0], (100, 100));
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec((0u64..200, 0u64..20), 0..40), q in (0u64..250, 0u64..250)) {
            let mut s = RangeSet::new();
            let mut model = std::collections::BTreeSet::new();
            for (a, len) in ops {
                s.insert(a, a + len);
                model.extend(a..=a + len);
            }
            prop_assert!(s.ranges().windows(2).all(|w| w[0].1 + 1 < w[1].0));
            let (from, to) = (q.0.min(q.1), q.0.max(q.1));
            prop_assert_eq!(s.count_in(from, to), model.range(from..=to).count() as u64);
            let inside: u64 = s.intersect(from, to).iter().map(|(a, b)| b - a + 1).sum();
            prop_assert_eq!(inside, s.count_in(from, to));
            s.remove(from, to);
            for x in from..=to {
                model.remove(&x);
            }
            prop_assert_eq!(s.count_in(0, 300), model.len() as u64);
            prop_assert!(s.ranges().windows(2).all(|w| w[0].1 < w[1].0));
        }
    }
}
