//! Series-level facts: what a record changed on the timeline, one series at
//! a time, for a consumer that keeps history (remote write).
//!
//! What it owns: the [`Facts`] trait the interpretation reports into and
//! the [`Series`] it names a series with (family name, cluster, labels in
//! the order of [`super::families`]).
//!
//! What it guarantees: a series gets [`Facts::value`] when it is written
//! (an object's state at its observation time, a measurement at its own
//! time) and [`Facts::stale`] once when it disappears (a changed label
//! set, a delete, a snapshot that no longer lists its object, a namespace
//! without known pods). Facts come in record order, announced by
//! [`Facts::record`]; the running-pod counts of the namespaces a run of
//! records touched come last.

use telemetry_link::SeriesKey;

/// A series' labels besides `cluster`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Labels<'a> {
    /// `(name, value)` pairs in the family's `/metrics` order.
    Fixed(&'a [(&'static str, &'a str)]),
    /// A generic sample's labels (sorted by name; a `cluster` label among
    /// them is not the sender's and must be dropped).
    Sample(&'a SeriesKey),
}

/// One series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series<'a> {
    /// The metric name.
    pub(crate) name: &'a str,
    /// The sender's identity (the `cluster` label).
    pub(crate) cluster: &'a str,
    /// The other labels.
    pub(crate) labels: Labels<'a>,
}

/// Receives the facts of the timeline.
pub(crate) trait Facts {
    /// False for a consumer that wants none: the interpretation then skips
    /// building them (its state still advances).
    const WANTED: bool = true;

    /// The facts that follow belong to record `index` of the run.
    fn record(&mut self, index: usize);

    /// `series` has `value` at `timestamp_ms`.
    fn value(&mut self, series: Series<'_>, timestamp_ms: i64, value: f64);

    /// `series` ended at `timestamp_ms`.
    fn stale(&mut self, series: Series<'_>, timestamp_ms: i64);
}

/// Wants no facts.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoFacts;

impl Facts for NoFacts {
    const WANTED: bool = false;

    fn record(&mut self, _index: usize) {}

    fn value(&mut self, _series: Series<'_>, _timestamp_ms: i64, _value: f64) {}

    fn stale(&mut self, _series: Series<'_>, _timestamp_ms: i64) {}
}

/// A [`Facts`] consumer bound to one cluster, as the object views use it.
#[derive(Debug)]
pub(crate) struct Out<'a, F> {
    /// The sender's identity.
    pub(crate) cluster: &'a str,
    /// Where the facts go.
    pub(crate) facts: &'a mut F,
}

impl<F: Facts> Out<'_, F> {
    /// `name{cluster, labels…}` = `value` at `timestamp_ms`.
    pub(crate) fn value(
        &mut self,
        name: &str,
        labels: &[(&'static str, &str)],
        timestamp_ms: i64,
        value: f64,
    ) {
        let series = Series {
            name,
            cluster: self.cluster,
            labels: Labels::Fixed(labels),
        };
        self.facts.value(series, timestamp_ms, value);
    }

    /// `name{cluster, labels…}` ended at `timestamp_ms`.
    pub(crate) fn stale(&mut self, name: &str, labels: &[(&'static str, &str)], timestamp_ms: i64) {
        let series = Series {
            name,
            cluster: self.cluster,
            labels: Labels::Fixed(labels),
        };
        self.facts.stale(series, timestamp_ms);
    }
}
