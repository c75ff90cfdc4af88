//! One HPA's series: its state from an [`HpaInfo`] (replica bounds and
//! counts, metric targets) and its scale-event counters.
//!
//! What it owns: the series an HPA has and their labels, as raw values (for
//! remote write) and as label fragments escaped once per upsert (for
//! `/metrics`).
//!
//! What it guarantees: duplicate targets inside one record collapse to one
//! series, the last value winning; [`HpaState::stale_changes`] names
//! exactly the series an older state had that a newer one no longer has.

use telemetry_schema::HpaInfo;

use super::{
    facts::{Facts, Out},
    families::{
        HPA_GAUGES, HPA_LABELS, HPA_SCALE_EVENTS, HPA_SPEC_TARGET_METRIC, HPA_TARGET_LABELS,
        SCALE_LABELS,
    },
    pod::push_labels,
};

/// One metric target.
#[derive(Debug, Clone)]
pub(crate) struct TargetSeries {
    /// `,metric_name="…",metric_target_type="…"`.
    pub(crate) fragment: String,
    /// Index of the target in the HPA's list.
    target: usize,
    /// The target value.
    pub(crate) value: f64,
}

/// An HPA's state as its last upsert described it.
#[derive(Debug)]
pub(crate) struct HpaState {
    info: HpaInfo,
    /// `,namespace="…",horizontalpodautoscaler="…"`.
    ns_hpa: String,
    targets: Vec<TargetSeries>,
}

impl HpaState {
    /// The state `info` describes.
    pub(crate) fn new(info: HpaInfo) -> Self {
        let mut ns_hpa = String::with_capacity(info.namespace.len() + info.name.len() + 40);
        push_labels(&mut ns_hpa, &HPA_LABELS, &[&info.namespace, &info.name]);
        let mut targets: Vec<TargetSeries> = Vec::with_capacity(info.targets.len());
        for (index, target) in info.targets.iter().enumerate() {
            let mut fragment = String::with_capacity(64);
            push_labels(
                &mut fragment,
                &HPA_TARGET_LABELS,
                &[&target.metric_name, &target.target_type],
            );
            match targets.iter_mut().find(|t| t.fragment == fragment) {
                Some(existing) => existing.value = target.value,
                None => targets.push(TargetSeries {
                    fragment,
                    target: index,
                    value: target.value,
                }),
            }
        }
        Self {
            info,
            ns_hpa,
            targets,
        }
    }

    /// The HPA's namespace.
    pub(crate) fn namespace(&self) -> &str {
        &self.info.namespace
    }

    /// The HPA's name.
    pub(crate) fn name(&self) -> &str {
        &self.info.name
    }

    /// `,namespace="…",horizontalpodautoscaler="…"`.
    pub(crate) fn ns_hpa(&self) -> &str {
        &self.ns_hpa
    }

    /// The values of [`HPA_GAUGES`], in that order.
    pub(crate) fn gauges(&self) -> [f64; 4] {
        let i = &self.info;
        [
            f64::from(i.min_replicas),
            f64::from(i.max_replicas),
            f64::from(i.current_replicas),
            f64::from(i.desired_replicas),
        ]
    }

    /// Metric targets its record listed (its budget units beside the HPA).
    pub(crate) fn target_count(&self) -> usize {
        self.info.targets.len()
    }

    /// Metric targets.
    pub(crate) fn targets(&self) -> &[TargetSeries] {
        &self.targets
    }

    fn labels(&self) -> [(&'static str, &str); 2] {
        [
            (HPA_LABELS[0], &self.info.namespace),
            (HPA_LABELS[1], &self.info.name),
        ]
    }

    fn target_labels(&self, t: &TargetSeries) -> [(&'static str, &str); 4] {
        let (name, kind) = self.info.targets.get(t.target).map_or(("", ""), |t| {
            (t.metric_name.as_str(), t.target_type.as_str())
        });
        [
            (HPA_LABELS[0], &self.info.namespace),
            (HPA_LABELS[1], &self.info.name),
            (HPA_TARGET_LABELS[0], name),
            (HPA_TARGET_LABELS[1], kind),
        ]
    }

    /// Writes every series of the state (not the counters) at `at_ms`.
    pub(crate) fn emit<F: Facts>(&self, out: &mut Out<'_, F>, at_ms: i64) {
        let labels = self.labels();
        for (family, value) in HPA_GAUGES.iter().zip(self.gauges()) {
            out.value(family.name, &labels, at_ms, value);
        }
        for t in &self.targets {
            out.value(
                HPA_SPEC_TARGET_METRIC.name,
                &self.target_labels(t),
                at_ms,
                t.value,
            );
        }
    }

    /// Marks stale, at `at_ms`, the series of this (older) state that
    /// `newer` no longer has (all of them, counters aside, without a newer
    /// state).
    pub(crate) fn stale_changes<F: Facts>(
        &self,
        newer: Option<&HpaState>,
        out: &mut Out<'_, F>,
        at_ms: i64,
    ) {
        if newer.is_none() {
            let labels = self.labels();
            for family in &HPA_GAUGES {
                out.stale(family.name, &labels, at_ms);
            }
        }
        for t in &self.targets {
            if newer.is_none_or(|n| n.targets.iter().all(|x| x.fragment != t.fragment)) {
                out.stale(HPA_SPEC_TARGET_METRIC.name, &self.target_labels(t), at_ms);
            }
        }
    }
}

/// The scale events counted for one HPA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScaleCounts {
    /// Scale-ups.
    pub(crate) up: u64,
    /// Scale-downs.
    pub(crate) down: u64,
}

/// A counted direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// More replicas.
    Up,
    /// Fewer replicas.
    Down,
}

impl Direction {
    /// The `direction` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl ScaleCounts {
    /// Counts one event; returns the direction's new count.
    pub(crate) fn count(&mut self, direction: Direction) -> u64 {
        let count = match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        };
        *count += 1;
        *count
    }

    /// `(direction, count)` for both directions, up first.
    pub(crate) fn by_direction(&self) -> [(Direction, u64); 2] {
        [(Direction::Up, self.up), (Direction::Down, self.down)]
    }
}

/// `kube_horizontalpodautoscaler_scale_events_total` of `namespace/hpa`.
pub(crate) fn write_count<F: Facts>(
    out: &mut Out<'_, F>,
    (namespace, hpa): (&str, &str),
    direction: Direction,
    at_ms: i64,
    value: Option<u64>,
) {
    let labels = [
        (HPA_LABELS[0], namespace),
        (HPA_LABELS[1], hpa),
        (SCALE_LABELS[0], direction.as_str()),
    ];
    match value {
        Some(count) => out.value(HPA_SCALE_EVENTS.name, &labels, at_ms, count as f64),
        None => out.stale(HPA_SCALE_EVENTS.name, &labels, at_ms),
    }
}
