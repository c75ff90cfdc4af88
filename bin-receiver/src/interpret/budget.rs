//! What one cluster may keep, and what a record costs against it.
//!
//! What it owns: the interpretation's [`Limits`] — the budgets of a cluster
//! (its sender identity: every replica of the sender shares them) and the
//! bounds of its bookkeeping —, the cost of an object in budget units, and
//! the checks that refuse a record as invalid before it costs anything.
//!
//! What it guarantees:
//! - **Objects.** Each view of a cluster holds at most `max_objects` units.
//!   A unit is a pod, an HPA, a container of a pod (the longer of its
//!   spec's and its usage's container lists) or a metric target of an HPA;
//!   a pod known only through its usage, or an HPA only through scale
//!   events, costs as much. A record that would create an object beyond
//!   the budget, or grow one beyond it, is refused (`budget`) and changes
//!   nothing; updates that do not grow an object always apply (an object
//!   admitted keeps updating), and deletes and snapshot ends free room.
//! - **Bounded units.** Every string an object keeps is at most as long
//!   as Kubernetes allows it: [`MAX_LABEL_BYTES`] for namespaces,
//!   container names and kinds (DNS labels), [`MAX_ID_BYTES`] for uids and
//!   addresses, [`MAX_NAME_BYTES`] for the rest (DNS subdomains); a record
//!   with a longer one is refused as `invalid`, so a unit's memory is
//!   bounded whatever the sender sends.
//! - **Samples.** At most `max_sample_series` generic series and
//!   `max_sample_bytes` of their names and labels (each series charged
//!   [`sample_cost`]); a sample of a new series beyond either is refused
//!   (`budget`), samples of held series always apply. A series with more
//!   than `max_labels_per_series` labels or `max_label_bytes` of label
//!   names and values is refused (`label_limit`, the link's rule, which
//!   presents do not pass through); a bad or reserved name is `invalid`.

use telemetry_link::SeriesKey;
use telemetry_schema::{HpaInfo, PodInfo, PodUsage, ScaleEvent};

/// The longest object name, node, owner name, metric name or scale-event
/// key kept: Kubernetes' longest name (a DNS subdomain, 253 bytes).
pub const MAX_NAME_BYTES: usize = 253;
/// The longest namespace, container name, owner kind or target type
/// kept: a DNS label (63 bytes).
pub const MAX_LABEL_BYTES: usize = 63;
/// The longest uid or pod address kept (a uid is 36 bytes, an IPv6
/// address at most 45).
pub const MAX_ID_BYTES: usize = 64;

/// Default [`Limits::max_objects`].
pub const DEFAULT_MAX_OBJECTS: usize = 10_000;
/// Default [`Limits::max_sample_series`].
pub const DEFAULT_MAX_SAMPLE_SERIES: usize = 50_000;
/// Default [`Limits::max_sample_bytes`].
pub const DEFAULT_MAX_SAMPLE_BYTES: usize = 16 << 20;
/// Default [`Limits::max_labels_per_series`] (the link's default).
pub const DEFAULT_MAX_LABELS_PER_SERIES: usize = telemetry_link::sample::MAX_LABELS;
/// Default [`Limits::max_label_bytes`] (the link's default).
pub const DEFAULT_MAX_LABEL_BYTES: usize = telemetry_link::proto::batch::DEFAULT_MAX_LABEL_BYTES;

/// The limits of the interpretation, per cluster: one set for `/metrics`
/// and remote write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Snapshots that may be open at once; beyond it the oldest is
    /// forgotten (its end is then ignored, so objects it would have
    /// removed stay until the next snapshot). Default 16: a sender keeps
    /// one relist per kind open (pods, HPAs) plus one in its present, and
    /// an open snapshot costs a few bytes; 16 leaves room for relists that
    /// overlap after watch restarts.
    pub max_open_snapshots: usize,
    /// Scale-event keys remembered to count each event once. Default 4,096
    /// per cluster: a sender replica reports each occurrence once (its
    /// seen set survives restarts); the receiver has to recognise a batch
    /// the link hands over again after a receiver crash, a relist by a
    /// sender that lost its state, and, with leader-elected replicas, an
    /// occurrence both the old and the new leader shipped. A new leader
    /// ships what it saw standing by, which is at most the Events the API
    /// server keeps (one event TTL, an hour by default), so counting is
    /// exact while a cluster has fewer rescales than this per event TTL
    /// (plus the time an old leader's backlog takes to arrive). 4,096 keys
    /// (≈ 0.5 MB) cover hours of rescales of a busy cluster, and the bound
    /// holds however many HPAs there are. The keys live in memory: a
    /// receiver restart forgets them.
    pub scale_event_keys: usize,
    /// Generic sample series kept; samples of new series beyond it are
    /// refused (`budget`: not shown, not forwarded). Default 50,000.
    pub max_sample_series: usize,
    /// Bytes of the generic series' names and labels kept (each charged
    /// [`sample_cost`]); samples of new series beyond it are refused
    /// (`budget`). Default 16 MiB: ~250 k synthetic series or ~27 k series
    /// with a dozen labels, so with normal series the count binds first.
    pub max_sample_bytes: usize,
    /// Object units kept per view (see the module docs); records that
    /// would go beyond are refused (`budget`). Default 10,000: e.g. 2,000
    /// pods of three containers and 1,000 HPAs with one target each — a
    /// `/metrics` page of about 10 MB for the sender.
    pub max_objects: usize,
    /// Labels a generic series may have (the link's `max_labels_per_series`).
    pub max_labels_per_series: usize,
    /// Bytes of label names and values a generic series may have (the
    /// link's `max_label_bytes`).
    pub max_label_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_open_snapshots: 16,
            scale_event_keys: 4096,
            max_sample_series: DEFAULT_MAX_SAMPLE_SERIES,
            max_sample_bytes: DEFAULT_MAX_SAMPLE_BYTES,
            max_objects: DEFAULT_MAX_OBJECTS,
            max_labels_per_series: DEFAULT_MAX_LABELS_PER_SERIES,
            max_label_bytes: DEFAULT_MAX_LABEL_BYTES,
        }
    }
}

impl Limits {
    /// Whether an object of `before` units (0: new) may become `after`
    /// units in a view holding `used`: it does not grow, or it fits.
    pub(crate) fn admits(&self, used: usize, before: usize, after: usize) -> bool {
        after <= before || used - before.min(used) + after <= self.max_objects
    }

    /// Whether `key` is within the label limits.
    pub(crate) fn labels_fit(&self, key: &SeriesKey) -> bool {
        let bytes: usize = key.labels().iter().map(|(k, v)| k.len() + v.len()).sum();
        key.labels().len() <= self.max_labels_per_series && bytes <= self.max_label_bytes
    }
}

/// Units of a pod slot with `containers` spec containers and `usage`
/// usage containers.
pub(crate) fn pod_units(containers: usize, usage: usize) -> usize {
    1 + containers.max(usage)
}

/// Units of an HPA slot with `targets` metric targets.
pub(crate) fn hpa_units(targets: usize) -> usize {
    1 + targets
}

/// What a held generic series is charged against
/// [`Limits::max_sample_bytes`]: its canonical bytes (the key it is held
/// under) and its rendered labels (`labels_len`), which together are most
/// of what it keeps.
pub(crate) fn sample_cost(key: &SeriesKey, labels_len: usize) -> usize {
    key.encoded().len() + labels_len
}

fn within(max: usize, values: &[&str]) -> bool {
    values.iter().all(|v| v.len() <= max)
}

/// Whether every string the pod's state keeps is short enough.
pub(crate) fn pod_valid(pod: &PodInfo) -> bool {
    within(MAX_LABEL_BYTES, &[&pod.namespace, &pod.created_by_kind])
        && within(MAX_ID_BYTES, &[&pod.uid, &pod.pod_ip])
        && within(
            MAX_NAME_BYTES,
            &[&pod.name, &pod.node, &pod.created_by_name],
        )
        && pod
            .containers
            .iter()
            .all(|c| c.name.len() <= MAX_LABEL_BYTES)
}

/// Whether every string a usage keeps is short enough.
pub(crate) fn usage_valid(usage: &PodUsage) -> bool {
    usage.namespace.len() <= MAX_LABEL_BYTES
        && usage.pod.len() <= MAX_NAME_BYTES
        && usage
            .containers
            .iter()
            .all(|c| c.name.len() <= MAX_LABEL_BYTES)
}

/// Whether every string the HPA's state keeps is short enough.
pub(crate) fn hpa_valid(hpa: &HpaInfo) -> bool {
    hpa.namespace.len() <= MAX_LABEL_BYTES
        && hpa.name.len() <= MAX_NAME_BYTES
        && hpa.targets.iter().all(|t| {
            t.metric_name.len() <= MAX_NAME_BYTES && t.target_type.len() <= MAX_LABEL_BYTES
        })
}

/// Whether every string a scale event leaves behind is short enough.
pub(crate) fn scale_valid(event: &ScaleEvent) -> bool {
    event.namespace.len() <= MAX_LABEL_BYTES && within(MAX_NAME_BYTES, &[&event.hpa, &event.key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_that_do_not_grow_always_fit() {
        let limits = Limits {
            max_objects: 10,
            ..Limits::default()
        };
        assert!(limits.admits(6, 0, 4));
        assert!(!limits.admits(7, 0, 4));
        assert!(limits.admits(10, 3, 3), "an update of the same size");
        assert!(limits.admits(12, 5, 2), "shrinking, even over the budget");
        assert!(limits.admits(9, 2, 3));
        assert!(!limits.admits(10, 2, 3));
        assert_eq!(pod_units(3, 0), 4);
        assert_eq!(pod_units(2, 5), 6);
        assert_eq!(hpa_units(0), 1);
    }

    #[test]
    fn long_strings_are_invalid() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let event = |key: &str| ScaleEvent {
            namespace: "ns".into(),
            hpa: "h".into(),
            old_replicas: 1,
            new_replicas: 2,
            reason: long.clone(),
            timestamp_ms: 0,
            key: key.into(),
        };
        assert!(scale_valid(&event("uid/1")), "the reason is not kept");
        assert!(!scale_valid(&event(&long)));
    }
}
