//! One cluster's generic samples ([`telemetry_schema::ClusterRecord::Sample`]):
//! which series are accepted, and the latest value of each.
//!
//! What it owns: the series a sender defines itself (the synthetic source,
//! embedders' own metrics), keyed by the series' canonical encoding and
//! grouped by metric name so that a page can write each family once.
//!
//! What it guarantees:
//! - The last value received wins (arrival order, which the link keeps),
//!   except that a `history` sample (older than the sender's present) never
//!   replaces a value with a newer timestamp.
//! - A series is labelled with `cluster` first, then its own labels in name
//!   order; a `cluster` label sent by the sender is dropped (the receiver's
//!   identity of the sender overrides it).
//! - Series whose metric or label names are not valid Prometheus names, and
//!   names that belong to the receiver
//!   ([`super::families::is_reserved`]), are refused (`invalid`), so a page
//!   always parses and never holds one family twice; series beyond the
//!   label limits are refused (`label_limit`).
//! - The cluster's budget ([`super::budget`]): at most `max_sample_series`
//!   series and `max_sample_bytes` of their names and labels; samples of
//!   new series beyond either are refused (`budget`), existing series keep
//!   updating. A refused series is neither shown nor forwarded; every
//!   refused sample is counted by the caller (the link logs refusals at a
//!   bounded rate), and the first refusal of each metric name is logged
//!   here at debug level.

use std::collections::{BTreeMap, HashSet};

use telemetry_link::{RefusedReason, Sample, SeriesKey};
use telemetry_runtime::exposition::{is_valid_label_name, is_valid_metric_name, push_label};

use super::{
    budget::{sample_cost, Limits, MAX_NAME_BYTES},
    families::is_reserved,
};

/// Names refused (and logged) remembered per cluster, to log each once
/// (names longer than [`MAX_NAME_BYTES`] are not remembered or logged).
const REMEMBERED_REFUSALS: usize = 1024;

/// One series' rendered labels and latest value.
#[derive(Debug, Clone)]
pub(crate) struct SampleSeries {
    /// `,name="value"…` (without `cluster`).
    pub(crate) labels: String,
    /// Latest value.
    pub(crate) value: f64,
    /// Its timestamp (ms since the epoch, as the sender stamped it).
    pub(crate) timestamp_ms: i64,
}

/// Why a sample's series is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SampleRefusal {
    /// The metric name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name")]
    InvalidMetricName,
    /// A label name is not `[a-zA-Z_][a-zA-Z0-9_]*` or starts with `__`.
    #[error("invalid label name {0:?}")]
    InvalidLabelName(String),
    /// The name belongs to one of the receiver's own families.
    #[error("metric name reserved by the receiver")]
    Reserved,
    /// More labels or label bytes than the limits allow.
    #[error("too many labels or label bytes")]
    LabelLimit,
    /// The cluster already has the maximum number of sample series.
    #[error("too many sample series for this cluster (limit {0})")]
    TooManySeries(usize),
    /// The cluster's sample series already take the maximum bytes.
    #[error("sample series bytes over this cluster's budget (limit {0})")]
    TooManyBytes(usize),
}

impl SampleRefusal {
    /// The reason a refused sample is counted under.
    pub(crate) fn reason(&self) -> RefusedReason {
        match self {
            SampleRefusal::InvalidMetricName
            | SampleRefusal::InvalidLabelName(_)
            | SampleRefusal::Reserved => RefusedReason::Invalid,
            SampleRefusal::LabelLimit => RefusedReason::LabelLimit,
            SampleRefusal::TooManySeries(_) | SampleRefusal::TooManyBytes(_) => {
                RefusedReason::Budget
            }
        }
    }
}

/// The generic samples of one cluster.
#[derive(Debug, Default)]
pub(crate) struct SampleTable {
    /// Metric name → canonical series encoding → series.
    families: BTreeMap<String, BTreeMap<Box<[u8]>, SampleSeries>>,
    series: usize,
    /// What the held series are charged ([`sample_cost`]).
    bytes: usize,
    refused_names: HashSet<String>,
}

impl SampleTable {
    /// Forgets every series (the cluster expired).
    pub(crate) fn clear(&mut self) {
        self.families.clear();
        self.series = 0;
        self.bytes = 0;
    }

    /// Number of series held.
    pub(crate) fn len(&self) -> usize {
        self.series
    }

    /// Metric name → series, in name and encoding order.
    pub(crate) fn families(&self) -> &BTreeMap<String, BTreeMap<Box<[u8]>, SampleSeries>> {
        &self.families
    }

    /// The series of metric `name`, in encoding order.
    pub(crate) fn family(&self, name: &str) -> Option<&BTreeMap<Box<[u8]>, SampleSeries>> {
        self.families.get(name)
    }

    /// Bytes charged to the held series.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records `sample`; a `history` sample only replaces an older one.
    /// `Err`: its series is refused (see the module docs).
    pub(crate) fn apply(
        &mut self,
        cluster: &str,
        sample: &Sample,
        history: bool,
        limits: &Limits,
    ) -> Result<(), SampleRefusal> {
        let key = &sample.series;
        if let Some(series) = self
            .families
            .get_mut(key.name())
            .and_then(|family| family.get_mut(key.encoded()))
        {
            if !history || sample.timestamp_ms > series.timestamp_ms {
                series.value = sample.value;
                series.timestamp_ms = sample.timestamp_ms;
            }
            return Ok(());
        }
        let checked = self.admit(key, limits);
        match checked {
            Ok(labels) => {
                self.series += 1;
                self.bytes += sample_cost(key, labels.len());
                self.families
                    .entry(key.name().to_owned())
                    .or_default()
                    .insert(
                        key.encoded().into(),
                        SampleSeries {
                            labels,
                            value: sample.value,
                            timestamp_ms: sample.timestamp_ms,
                        },
                    );
                Ok(())
            }
            Err(refusal) => {
                if self.refused_names.len() < REMEMBERED_REFUSALS
                    && key.name().len() <= MAX_NAME_BYTES
                    && self.refused_names.insert(key.name().to_owned())
                {
                    tracing::debug!(cluster, metric = key.name(), %refusal, "sample series refused");
                }
                Err(refusal)
            }
        }
    }

    /// Checks a new series against the names, the label limits and the
    /// budget; its rendered labels when it is admitted.
    fn admit(&self, key: &SeriesKey, limits: &Limits) -> Result<String, SampleRefusal> {
        if !limits.labels_fit(key) {
            return Err(SampleRefusal::LabelLimit);
        }
        let labels = check(key)?;
        if self.series >= limits.max_sample_series {
            return Err(SampleRefusal::TooManySeries(limits.max_sample_series));
        }
        if self.bytes + sample_cost(key, labels.len()) > limits.max_sample_bytes {
            return Err(SampleRefusal::TooManyBytes(limits.max_sample_bytes));
        }
        Ok(labels)
    }
}

/// Validates a series and renders its labels.
fn check(key: &SeriesKey) -> Result<String, SampleRefusal> {
    if !is_valid_metric_name(key.name()) {
        return Err(SampleRefusal::InvalidMetricName);
    }
    if is_reserved(key.name()) {
        return Err(SampleRefusal::Reserved);
    }
    let mut labels = String::new();
    for (name, value) in key.labels() {
        if name == "cluster" {
            continue;
        }
        if !is_valid_label_name(name) {
            return Err(SampleRefusal::InvalidLabelName(name.clone()));
        }
        labels.push(',');
        push_label(&mut labels, name, value);
    }
    Ok(labels)
}
