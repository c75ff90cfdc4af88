//! What the receiver's `/metrics` page showed over the leader-failover
//! scenario, polled every [`EVERY`] from its namespace.
//!
//! What it owns: a [`Monitor`] thread and what it saw ([`Seen`]):
//! * regressions — a series of [`GROWING`] that moved back to a smaller
//!   value, a pod that came back after it had gone (the workload never
//!   re-creates a deleted pod), a pod the workload never deletes that
//!   vanished;
//! * when each page's value of HPA `ticker`'s replica count and each page's
//!   `kube_*` content changed (the gaps between changes are the time the
//!   receiver showed a stale cluster while it was changing);
//! * when each pod first appeared (the scenario's marker pods date the
//!   present state of a new leader).
//!
//! What it guarantees: only pages that parsed count; failed scrapes are
//! counted, never read as an empty page. The receiver shares a rendered
//! page for up to a second, so change times are exact to about a second.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use telemetry_test_support::prom::Exposition;

use crate::scrape::Scraper;

/// Poll interval.
pub(super) const EVERY: Duration = Duration::from_millis(100);

/// Series whose values only grow while the workload runs: `(name, label)`,
/// the series of that name with that label (or all of them).
/// HPA `web`'s replica counts go 2 → 3 → 2 by design; only `ticker`'s grow.
const GROWING: [(&str, Option<(&str, &str)>); 4] = [
    (
        "kube_horizontalpodautoscaler_status_current_replicas",
        Some(("horizontalpodautoscaler", "ticker")),
    ),
    (
        "kube_horizontalpodautoscaler_status_desired_replicas",
        Some(("horizontalpodautoscaler", "ticker")),
    ),
    ("kube_horizontalpodautoscaler_scale_events_total", None),
    ("kube_pod_container_cpu_usage_cores", None),
];

/// Whether the sample `name` with `labels` is one of [`GROWING`].
fn grows(name: &str, labels: &BTreeMap<String, String>) -> bool {
    GROWING.iter().any(|(n, label)| {
        *n == name && label.is_none_or(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    })
}

/// What the monitor saw.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Pages that parsed.
    pub(super) pages: u64,
    /// Scrapes that failed.
    pub(super) failed: u64,
    /// Regressions, described.
    pub(super) regressions: Vec<String>,
    /// When HPA `ticker`'s value changed.
    pub(super) ticker_changes: Vec<Instant>,
    /// When the page's `kube_*` content changed.
    pub(super) content_changes: Vec<Instant>,
    /// When each pod first appeared.
    pub(super) first_seen: BTreeMap<String, Instant>,
    last: BTreeMap<String, f64>,
    ticker: Option<f64>,
    fingerprint: Option<u64>,
    pods: BTreeSet<String>,
    gone: BTreeSet<String>,
}

impl Seen {
    fn take(&mut self, page: &Exposition, at: Instant, cluster: &str, kept: &[&str]) {
        self.pages += 1;
        let mut hasher = DefaultHasher::new();
        for s in page.samples.iter().filter(|s| s.name.starts_with("kube_")) {
            (&s.name, &s.labels, s.value.to_bits()).hash(&mut hasher);
            if !grows(&s.name, &s.labels) {
                continue;
            }
            let key = format!("{}{:?}", s.name, s.labels);
            if let Some(before) = self.last.insert(key.clone(), s.value) {
                if s.value < before {
                    self.regressions
                        .push(format!("{key}: {before} -> {}", s.value));
                }
            }
        }
        let fingerprint = hasher.finish();
        if self.fingerprint.replace(fingerprint) != Some(fingerprint) {
            self.content_changes.push(at);
        }
        let ticker = page.value(
            "kube_horizontalpodautoscaler_status_current_replicas",
            &[("cluster", cluster), ("horizontalpodautoscaler", "ticker")],
        );
        if ticker.is_some() && self.ticker.replace(ticker.unwrap_or_default()) != ticker {
            self.ticker_changes.push(at);
        }
        self.pods_on(page, at, cluster, kept);
    }

    fn pods_on(&mut self, page: &Exposition, at: Instant, cluster: &str, kept: &[&str]) {
        let now: BTreeSet<String> = page
            .find("kube_pod_info", &[("cluster", cluster)])
            .filter_map(|s| s.labels.get("pod").cloned())
            .collect();
        for p in now.difference(&self.pods) {
            if self.gone.contains(p) {
                self.regressions
                    .push(format!("pod {p} came back after it had gone"));
            }
            self.first_seen.entry(p.clone()).or_insert(at);
        }
        for p in self.pods.difference(&now) {
            if kept.iter().any(|k| p.starts_with(k)) {
                self.regressions
                    .push(format!("pod {p} vanished although it was never deleted"));
            }
            self.gone.insert(p.clone());
        }
        self.pods = now;
    }
}

/// The longest of the gaps between consecutive `changes` and from the last
/// one to `end`, with when it began.
pub(super) fn longest_gap(changes: &[Instant], end: Instant) -> Option<(Instant, Duration)> {
    changes
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .chain(
            changes
                .last()
                .map(|&l| (l, end.saturating_duration_since(l))),
        )
        .max_by_key(|(_, d)| *d)
}

/// The longest gap between consecutive `changes` that overlaps the span
/// `from..=to` (a takeover: from the kill until the new leader's present
/// was seen).
pub(super) fn gap_within(changes: &[Instant], from: Instant, to: Instant) -> Option<Duration> {
    changes
        .windows(2)
        .filter(|w| w[1] > from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
}

/// Polls the receiver's page until stopped.
#[derive(Debug)]
pub(super) struct Monitor {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Monitor {
    /// Starts polling through `scraper`, reading the series of `cluster`;
    /// pods whose names start with one of `kept` are never deleted.
    pub(super) fn start(scraper: Scraper, cluster: &str, kept: &[&'static str]) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag, cluster, kept) = (
            seen.clone(),
            stop.clone(),
            cluster.to_owned(),
            kept.to_vec(),
        );
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                match scraper.scrape() {
                    Ok(page) => lock(&s).take(&page, Instant::now(), &cluster, &kept),
                    Err(_) => lock(&s).failed += 1,
                }
                std::thread::sleep(EVERY.saturating_sub(started.elapsed()));
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// When `pod` first appeared, if it has.
    pub(super) fn first_seen(&self, pod: &str) -> Option<Instant> {
        lock(&self.seen).first_seen.get(pod).copied()
    }

    /// Stops polling; returns what it saw.
    pub(super) fn stop(mut self) -> Seen {
        self.halt();
        std::mem::take(&mut *lock(&self.seen))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> Exposition {
        Exposition::parse(text).unwrap()
    }

    #[test]
    fn regressions_and_changes_are_seen() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let p1 = page(
            "kube_horizontalpodautoscaler_status_current_replicas{cluster=\"c\",horizontalpodautoscaler=\"ticker\"} 5\n\
             kube_horizontalpodautoscaler_status_current_replicas{cluster=\"c\",horizontalpodautoscaler=\"web\"} 3\n\
             kube_pod_info{cluster=\"c\",pod=\"web-1\"} 1\nkube_pod_info{cluster=\"c\",pod=\"churn-1\"} 1\n",
        );
        seen.take(&p1, at(0), "c", &["web-"]);
        seen.take(&p1, at(100), "c", &["web-"]);
        let p2 = page(
            "kube_horizontalpodautoscaler_status_current_replicas{cluster=\"c\",horizontalpodautoscaler=\"ticker\"} 4\n\
             kube_horizontalpodautoscaler_status_current_replicas{cluster=\"c\",horizontalpodautoscaler=\"web\"} 2\n\
             kube_pod_info{cluster=\"c\",pod=\"web-1\"} 1\n",
        );
        seen.take(&p2, at(200), "c", &["web-"]);
        assert_eq!(
            seen.regressions.len(),
            1,
            "ticker moved back, web's rescale 3 -> 2 is no regression: {:?}",
            seen.regressions
        );
        assert!(seen.regressions[0].contains("5 -> 4"));
        // churn-1 went (deleted: fine); it must not come back, and web-1 must not go.
        seen.take(&p1, at(300), "c", &["web-"]);
        let p3 = page("kube_pod_info{cluster=\"c\",pod=\"other\"} 1\n");
        seen.take(&p3, at(400), "c", &["web-"]);
        assert!(seen
            .regressions
            .iter()
            .any(|r| r.contains("churn-1 came back")));
        assert!(seen
            .regressions
            .iter()
            .any(|r| r.contains("web-1 vanished")));
        assert_eq!(seen.ticker_changes, vec![at(0), at(200), at(300)]);
        assert_eq!(seen.content_changes.len(), 4, "p1, p2, p1, p3");
        assert_eq!(seen.first_seen["other"], at(400));
        assert_eq!(seen.pages, 5);
    }

    #[test]
    fn gaps_between_changes() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let changes = [at(0), at(1000), at(9000), at(9500)];
        assert_eq!(
            longest_gap(&changes, at(10_000)),
            Some((at(1000), Duration::from_secs(8)))
        );
        assert_eq!(
            longest_gap(&changes, at(30_000)),
            Some((at(9500), Duration::from_millis(20_500)))
        );
        assert_eq!(longest_gap(&[], at(1)), None);
        assert_eq!(
            gap_within(&changes, at(5000), at(5100)),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            gap_within(&changes, at(900), at(9200)),
            Some(Duration::from_secs(8)),
            "a change just after the start does not hide the gap after it"
        );
        assert_eq!(gap_within(&changes, at(9700), at(9800)), None);
        assert_eq!(
            gap_within(&changes, at(0), at(0)),
            Some(Duration::from_secs(1))
        );
    }
}
