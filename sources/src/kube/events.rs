//! HPA `SuccessfulRescale` events → [`ScaleEvent`]s, each occurrence counted once.
//!
//! This module owns the recognition of rescale events, the derivation of the
//! replica count *before* a rescale, and the persisted set of occurrences
//! already reported (the state file `scale-events.json` in the source's state
//! directory).
//!
//! # Occurrences
//!
//! Kubernetes aggregates repeats of an identical event into one `Event`
//! object whose `count` increments (and `lastTimestamp` moves). Each count
//! value is one occurrence, keyed `uid/count`. A watch relist, a reconnect or
//! a restart of the sender shows the same objects again; an occurrence whose
//! key (or a higher count of the same uid) is in the seen set is never
//! reported again. If a count jumps by more than one between two sightings,
//! every missed count is reported (at most [`MAX_OCCURRENCES_PER_UPDATE`] per
//! sighting) with the event's latest timestamp.
//!
//! # What counts: the floor rule
//!
//! An occurrence is reported only if its time (`series.lastObservedTime`,
//! else `lastTimestamp`, else `eventTime`, else `firstTimestamp`) is at or
//! after the *floor*. The floor starts at the sender's **first** start
//! (truncated to whole seconds, as event times are), recorded in the state
//! file on the first run and kept across restarts; so events that happened
//! before the sender was first deployed are history, not news. The seen set
//! is bounded ([`DEFAULT_SEEN_CAPACITY`] keys, oldest evicted first); when a
//! key is evicted the floor rises to just after that occurrence's time, so
//! an evicted occurrence can never be counted again either. For an event object never
//! seen before whose `firstTimestamp` is below the floor, only its latest
//! occurrence can be known to be new, so only that one is reported.
//!
//! # Old size
//!
//! The event only says the new size. The old size is taken from a short
//! per-HPA timeline of replica counts built from the HPA watch (the
//! controller writes `currentReplicas` = old and `desiredReplicas` = new with
//! `lastScaleTime` in the same reconcile that emits the event) and from the
//! new sizes of earlier events: the latest count strictly before the event's
//! time that differs from the new size (a rescale always changes the size).
//! Timelines are persisted with the seen set so a restarted sender still
//! knows the size before a rescale it missed.
//!
//! The state file is written atomically (temporary file, fsync, rename). One
//! state directory belongs to one sender replica.
//!
//! # Several replicas
//!
//! With leader election each replica has its own state directory, and its
//! seen set holds the occurrences *this replica shipped*: a standby does
//! not hand events to its tracker at all (the source holds them), so on
//! taking over it ships every occurrence it knows and has not shipped
//! itself — those the old leader shipped too, and those it never could
//! (it was cut off from the API server, or died with them unspooled). The
//! receiver counts each key once whichever replica sent it. That is exact
//! as long as the receiver still remembers a key when its second sender's
//! copy arrives: a standby holds the Events the API server still has (one
//! event TTL, an hour by default), so the receiver's key memory must hold
//! the rescale occurrences of a cluster's event TTL plus the time an old
//! leader's backlog may take to arrive (the receiver keeps 4,096 keys per
//! cluster in memory; a receiver restart forgets them).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Event};
use serde::{Deserialize, Serialize};
use telemetry_schema::{ObjectRef, ScaleEvent};

/// How many occurrence keys the seen set keeps by default.
pub const DEFAULT_SEEN_CAPACITY: usize = 10_000;
/// At most this many occurrences are reported for one sighting of an event.
pub const MAX_OCCURRENCES_PER_UPDATE: i32 = 32;
/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "scale-events.json";
/// A state file larger than this is treated as corrupt.
const MAX_STATE_FILE_BYTES: u64 = 32 << 20;
/// Replica-count points kept per HPA.
const MAX_TIMELINE_POINTS: usize = 16;
/// HPAs whose timeline is tracked.
const MAX_TRACKED_HPAS: usize = 10_000;
/// Longest uid accepted (real ones are 36 characters).
const MAX_UID_LEN: usize = 128;
/// Longest reason text kept.
const MAX_REASON_LEN: usize = 1024;
const STATE_VERSION: u32 = 1;

/// The state directory or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating the state directory failed.
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the state file failed (other than it not existing).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the state file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Parses `New size: 5; reason: cpu resource utilization ... above target`
/// into the new size and the reason text.
pub fn parse_rescale_message(message: &str) -> Option<(i32, String)> {
    let rest = message.trim().strip_prefix("New size:")?.trim_start();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let size: i32 = rest[..digits_end].parse().ok()?;
    let rest = rest[digits_end..].trim_start();
    let reason = match rest.strip_prefix(';') {
        Some(r) => r.trim_start().strip_prefix("reason:").unwrap_or(r).trim(),
        None if rest.is_empty() => "",
        None => return None,
    };
    let mut reason = reason.to_owned();
    if reason.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Some((size, reason))
}

/// When the event's latest occurrence happened (ms since epoch).
pub(crate) fn occurrence_time_ms(ev: &Event) -> Option<i64> {
    ev.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0.as_millisecond())
        .or_else(|| ev.last_timestamp.as_ref().map(|t| t.0.as_millisecond()))
        .or_else(|| ev.event_time.as_ref().map(|t| t.0.as_millisecond()))
        .or_else(|| ev.first_timestamp.as_ref().map(|t| t.0.as_millisecond()))
}

/// When the event's first occurrence happened (ms since epoch).
fn first_time_ms(ev: &Event) -> Option<i64> {
    ev.first_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .or_else(|| ev.event_time.as_ref().map(|t| t.0.as_millisecond()))
        .or_else(|| {
            ev.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SeenOccurrence {
    uid: String,
    count: i32,
    /// Occurrence time, ms since epoch.
    t: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct UidSeen {
    max_count: i32,
    keys: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct HpaTimelineFile {
    namespace: String,
    name: String,
    points: Vec<(i64, i32)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    first_start_ms: i64,
    floor_ms: i64,
    seen: Vec<SeenOccurrence>,
    #[serde(default)]
    hpas: Vec<HpaTimelineFile>,
}

/// Turns rescale events into [`ScaleEvent`]s exactly once, across relists
/// and restarts. See the module documentation for the rules.
#[derive(Debug)]
pub struct ScaleTracker {
    path: PathBuf,
    capacity: usize,
    first_start_ms: i64,
    floor_ms: i64,
    seen: VecDeque<SeenOccurrence>,
    by_uid: HashMap<String, UidSeen>,
    timelines: HashMap<ObjectRef, BTreeMap<i64, i32>>,
    seen_dirty: bool,
    timelines_dirty: bool,
}

impl ScaleTracker {
    /// Opens (or creates) the state in `state_dir`; `now_ms` is recorded as
    /// the first start if there is no state yet.
    pub fn open(state_dir: &Path, now_ms: i64) -> Result<Self, StateError> {
        Self::open_with_capacity(state_dir, now_ms, DEFAULT_SEEN_CAPACITY)
    }

    /// Like [`ScaleTracker::open`] with a seen set of `capacity` keys.
    pub fn open_with_capacity(
        state_dir: &Path,
        now_ms: i64,
        capacity: usize,
    ) -> Result<Self, StateError> {
        fs::create_dir_all(state_dir).map_err(|source| StateError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let capacity = capacity.max(1);
        let mut tracker = ScaleTracker {
            path,
            capacity,
            first_start_ms: now_ms,
            floor_ms: now_ms.div_euclid(1000) * 1000,
            seen: VecDeque::new(),
            by_uid: HashMap::new(),
            timelines: HashMap::new(),
            seen_dirty: true,
            timelines_dirty: false,
        };
        match tracker.load()? {
            Some(state) => tracker.adopt(state),
            None => {
                tracing::info!(
                    path = %tracker.path.display(),
                    first_start_ms = now_ms,
                    "no scale-event state yet; rescale events before now are not counted"
                );
                tracker.persist()?;
            }
        }
        Ok(tracker)
    }

    fn load(&self) -> Result<Option<StateFile>, StateError> {
        let read_err = |source| StateError::Read {
            path: self.path.clone(),
            source,
        };
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let parsed = if len > MAX_STATE_FILE_BYTES {
            Err(format!(
                "{len} bytes is more than the {MAX_STATE_FILE_BYTES} accepted"
            ))
        } else {
            let bytes = fs::read(&self.path).map_err(read_err)?;
            serde_json::from_slice::<StateFile>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    if s.version == STATE_VERSION {
                        Ok(s)
                    } else {
                        Err(format!("unknown state version {}", s.version))
                    }
                })
        };
        match parsed {
            Ok(state) => Ok(Some(state)),
            Err(reason) => {
                // Starting afresh (floor = now) can lose rescales that happened
                // while the sender was down, but never counts one twice.
                let aside = self.path.with_extension("json.corrupt");
                tracing::warn!(
                    path = %self.path.display(),
                    moved_to = %aside.display(),
                    %reason,
                    "scale-event state unreadable; starting afresh from now"
                );
                fs::rename(&self.path, &aside).map_err(read_err)?;
                Ok(None)
            }
        }
    }

    fn adopt(&mut self, state: StateFile) {
        self.first_start_ms = state.first_start_ms;
        self.floor_ms = state.floor_ms;
        let skip = state.seen.len().saturating_sub(self.capacity);
        for occ in state.seen.into_iter().skip(skip) {
            if occ.uid.len() <= MAX_UID_LEN {
                self.remember(occ.uid, occ.count, occ.t);
            }
        }
        for h in state.hpas.into_iter().take(MAX_TRACKED_HPAS) {
            let skip = h.points.len().saturating_sub(MAX_TIMELINE_POINTS);
            let points: BTreeMap<i64, i32> = h.points.into_iter().skip(skip).collect();
            self.timelines.insert(
                ObjectRef {
                    namespace: h.namespace,
                    name: h.name,
                },
                points,
            );
        }
        self.seen_dirty = false;
        self.timelines_dirty = false;
        tracing::info!(
            path = %self.path.display(),
            first_start_ms = self.first_start_ms,
            floor_ms = self.floor_ms,
            seen = self.seen.len(),
            "loaded scale-event state"
        );
    }

    /// The sender's first start (ms since epoch), as recorded in the state.
    pub fn first_start_ms(&self) -> i64 {
        self.first_start_ms
    }

    /// Occurrences before this time (ms since epoch) are never reported.
    pub fn floor_ms(&self) -> i64 {
        self.floor_ms
    }

    /// How many occurrence keys are remembered.
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    fn remember(&mut self, uid: String, count: i32, t: i64) {
        let entry = self.by_uid.entry(uid.clone()).or_default();
        entry.max_count = entry.max_count.max(count);
        entry.keys += 1;
        self.seen.push_back(SeenOccurrence { uid, count, t });
        self.seen_dirty = true;
        while self.seen.len() > self.capacity {
            let Some(old) = self.seen.pop_front() else {
                break;
            };
            // Everything up to and including the evicted occurrence's time
            // is history from now on.
            self.floor_ms = self.floor_ms.max(old.t.saturating_add(1));
            if let Some(e) = self.by_uid.get_mut(&old.uid) {
                e.keys = e.keys.saturating_sub(1);
                if e.keys == 0 {
                    self.by_uid.remove(&old.uid);
                }
            }
        }
    }

    fn timeline_mut(&mut self, hpa: &ObjectRef) -> Option<&mut BTreeMap<i64, i32>> {
        if !self.timelines.contains_key(hpa) && self.timelines.len() >= MAX_TRACKED_HPAS {
            tracing::debug!(namespace = %hpa.namespace, name = %hpa.name, "too many HPAs; replica history not kept");
            return None;
        }
        self.timelines_dirty = true;
        Some(self.timelines.entry(hpa.clone()).or_default())
    }

    fn record_point(&mut self, hpa: &ObjectRef, t: i64, size: i32, overwrite: bool) {
        if let Some(tl) = self.timeline_mut(hpa) {
            if overwrite {
                tl.insert(t, size);
            } else {
                tl.entry(t).or_insert(size);
            }
            while tl.len() > MAX_TIMELINE_POINTS {
                tl.pop_first();
            }
        }
    }

    /// Learns replica counts from an HPA's status (call on every HPA seen).
    pub fn observe_hpa(&mut self, hpa: &HorizontalPodAutoscaler) {
        let Some(status) = &hpa.status else { return };
        let Some(current) = status.current_replicas else {
            return;
        };
        let object = super::convert::hpa_ref(hpa);
        let desired = status.desired_replicas;
        match status
            .last_scale_time
            .as_ref()
            .map(|t| t.0.as_millisecond())
        {
            // Never scaled: the current size holds since forever.
            None => self.record_point(&object, i64::MIN, current, true),
            // The reconcile that rescaled: `current` before, `desired` from then on.
            Some(l) if current != desired => {
                self.record_point(&object, l.saturating_sub(1), current, true);
                self.record_point(&object, l, desired, true);
            }
            // Settled since the last rescale.
            Some(l) => self.record_point(&object, l, current, false),
        }
    }

    /// Drops the replica history of a deleted HPA.
    pub fn forget_hpa(&mut self, hpa: &ObjectRef) {
        if self.timelines.remove(hpa).is_some() {
            self.timelines_dirty = true;
        }
    }

    /// The size before a rescale to `new_size` at `t`, if known.
    fn old_size(&self, hpa: &ObjectRef, new_size: i32, t: i64) -> Option<i32> {
        let tl = self.timelines.get(hpa)?;
        tl.range(..t)
            .rev()
            .map(|(_, s)| *s)
            .find(|s| *s != new_size)
            // Clock oddities: fall back to the latest differing count at all.
            .or_else(|| tl.values().rev().copied().find(|s| *s != new_size))
    }

    /// The new occurrences an event object stands for (none if it is not an
    /// HPA rescale, or every occurrence was seen or predates the floor).
    pub fn on_event(&mut self, ev: &Event) -> Vec<ScaleEvent> {
        let Some(rescale) = Rescale::read(ev) else {
            return Vec::new();
        };
        let prev = self.by_uid.get(rescale.uid).map_or(0, |s| s.max_count);
        if rescale.count <= prev {
            return Vec::new();
        }
        if rescale.t < self.floor_ms {
            // Before the sender's first start (or evicted history). For a
            // known uid, remember the count so a later repeat knows which
            // counts are new; an unknown uid needs no key (a later repeat
            // reports only its latest occurrence, see `first_new`).
            if prev > 0 {
                self.remember(rescale.uid.to_owned(), rescale.count, rescale.t);
            }
            return Vec::new();
        }
        let first_new = self.first_new_occurrence(&rescale, prev);
        (first_new..=rescale.count)
            .map(|c| self.occurrence(&rescale, c))
            .collect()
    }

    /// The first occurrence number of `rescale` not reported yet, given the
    /// highest one seen (`prev`), capped to the latest
    /// [`MAX_OCCURRENCES_PER_UPDATE`].
    fn first_new_occurrence(&self, rescale: &Rescale<'_>, prev: i32) -> i32 {
        let first_new = if prev > 0 {
            prev + 1
        } else if rescale.first_t.unwrap_or(rescale.t) >= self.floor_ms {
            1
        } else {
            rescale.count
        };
        let cap_from = rescale.count.saturating_sub(MAX_OCCURRENCES_PER_UPDATE - 1);
        if first_new < cap_from {
            tracing::warn!(
                uid = rescale.uid,
                skipped = cap_from - first_new,
                "rescale event count jumped; reporting only the latest {MAX_OCCURRENCES_PER_UPDATE} occurrences"
            );
            return cap_from;
        }
        first_new
    }

    /// Occurrence `c` of `rescale` as a scale event, remembered as seen.
    fn occurrence(&mut self, rescale: &Rescale<'_>, c: i32) -> ScaleEvent {
        let (hpa, new_size, t) = (&rescale.hpa, rescale.new_size, rescale.t);
        let old = self.old_size(hpa, new_size, t).unwrap_or_else(|| {
            tracing::warn!(
                namespace = %hpa.namespace,
                hpa = %hpa.name,
                new_size,
                "replica count before rescale unknown; reporting it unchanged"
            );
            new_size
        });
        self.record_point(hpa, t, new_size, true);
        self.remember(rescale.uid.to_owned(), c, t);
        ScaleEvent {
            namespace: hpa.namespace.clone(),
            hpa: hpa.name.clone(),
            old_replicas: old,
            new_replicas: new_size,
            reason: rescale.reason.clone(),
            timestamp_ms: t,
            key: format!("{}/{c}", rescale.uid),
        }
    }

    /// Writes the state if the seen set changed since the last write.
    pub fn persist(&mut self) -> Result<(), StateError> {
        if self.seen_dirty {
            self.write()?;
        }
        Ok(())
    }

    /// Writes the state if anything (seen set or replica history) changed.
    pub fn flush(&mut self) -> Result<(), StateError> {
        if self.seen_dirty || self.timelines_dirty {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), StateError> {
        let state = StateFile {
            version: STATE_VERSION,
            first_start_ms: self.first_start_ms,
            floor_ms: self.floor_ms,
            seen: self.seen.iter().cloned().collect(),
            hpas: self
                .timelines
                .iter()
                .map(|(r, tl)| HpaTimelineFile {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    points: tl.iter().map(|(t, s)| (*t, *s)).collect(),
                })
                .collect(),
        };
        let write_err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| write_err(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(write_err)?;
            f.write_all(&bytes).map_err(write_err)?;
            f.sync_all().map_err(write_err)?;
        }
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable; not every filesystem allows it.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.seen_dirty = false;
        self.timelines_dirty = false;
        Ok(())
    }
}

/// What an HPA `SuccessfulRescale` event says, read once.
struct Rescale<'a> {
    uid: &'a str,
    /// How many times the event occurred (`count`, or the series' count).
    count: i32,
    /// When it last occurred (ms).
    t: i64,
    /// When it first occurred (ms), if known.
    first_t: Option<i64>,
    hpa: ObjectRef,
    new_size: i32,
    reason: String,
}

impl<'a> Rescale<'a> {
    /// `None` (logged at debug) for events that are not HPA rescales or
    /// lack what counting them needs.
    fn read(ev: &'a Event) -> Option<Self> {
        if ev.reason.as_deref() != Some("SuccessfulRescale")
            || ev.involved_object.kind.as_deref() != Some("HorizontalPodAutoscaler")
        {
            return None;
        }
        let Some(uid) = ev
            .metadata
            .uid
            .as_deref()
            .filter(|u| !u.is_empty() && u.len() <= MAX_UID_LEN)
        else {
            tracing::debug!(name = ?ev.metadata.name, "rescale event without a usable uid; skipped");
            return None;
        };
        let count = ev
            .count
            .or_else(|| ev.series.as_ref().and_then(|s| s.count))
            .unwrap_or(1)
            .max(1);
        let Some(t) = occurrence_time_ms(ev) else {
            tracing::debug!(uid, "rescale event without a timestamp; skipped");
            return None;
        };
        let Some((new_size, reason)) =
            parse_rescale_message(ev.message.as_deref().unwrap_or_default())
        else {
            tracing::debug!(uid, message = ?ev.message, "rescale event message not understood; skipped");
            return None;
        };
        let hpa = ObjectRef {
            namespace: ev
                .involved_object
                .namespace
                .clone()
                .or_else(|| ev.metadata.namespace.clone())
                .unwrap_or_default(),
            name: ev.involved_object.name.clone().unwrap_or_default(),
        };
        Some(Self {
            uid,
            count,
            t,
            first_t: first_time_ms(ev),
            hpa,
            new_size,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::{autoscaling::v2::HorizontalPodAutoscalerStatus, core::v1::ObjectReference},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };

    const START: i64 = 1_700_000_000_000;

    fn ts(ms: i64) -> Time {
        Time(Timestamp::from_millisecond(ms).unwrap())
    }

    fn rescale(uid: &str, count: i32, new_size: i32, first: i64, last: i64) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!("web.{uid}")),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("HorizontalPodAutoscaler".into()),
                namespace: Some("shop".into()),
                name: Some("web".into()),
                ..Default::default()
            },
            reason: Some("SuccessfulRescale".into()),
            message: Some(format!(
                "New size: {new_size}; reason: cpu resource utilization (percentage of request) above target"
            )),
            count: Some(count),
            first_timestamp: Some(ts(first)),
            last_timestamp: Some(ts(last)),
            ..Default::default()
        }
    }

    fn hpa(current: i32, desired: i32, last_scale: Option<i64>) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            status: Some(HorizontalPodAutoscalerStatus {
                current_replicas: Some(current),
                desired_replicas: desired,
                last_scale_time: last_scale.map(ts),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sizes(evs: &[ScaleEvent]) -> Vec<(i32, i32, &str)> {
        evs.iter()
            .map(|e| (e.old_replicas, e.new_replicas, e.key.as_str()))
            .collect()
    }

    #[test]
    fn parses_controller_messages() {
        assert_eq!(
            parse_rescale_message("New size: 5; reason: cpu resource utilization (percentage of request) above target"),
            Some((
                5,
                "cpu resource utilization (percentage of request) above target".into()
            ))
        );
        assert_eq!(
            parse_rescale_message("New size: 2; reason: All metrics below target"),
            Some((2, "All metrics below target".into()))
        );
        assert_eq!(
            parse_rescale_message("New size: 0"),
            Some((0, String::new()))
        );
        assert_eq!(
            parse_rescale_message("  New size:3;reason:x "),
            Some((3, "x".into()))
        );
        assert_eq!(parse_rescale_message("New size: -1; reason: x"), None);
        assert_eq!(
            parse_rescale_message("New size: 99999999999; reason: x"),
            None
        );
        assert_eq!(
            parse_rescale_message("Scaled up replica set web to 3"),
            None
        );
        assert_eq!(parse_rescale_message("New size: 4 pods"), None);
        let long = format!("New size: 1; reason: {}", "é".repeat(2000));
        assert!(parse_rescale_message(&long).unwrap().1.len() <= MAX_REASON_LEN);
    }

    #[test]
    fn scale_up_then_down_in_controller_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        tr.observe_hpa(&hpa(1, 1, None));
        let t1 = START + 10_000;
        let up = tr.on_event(&rescale("a", 1, 5, t1, t1));
        assert_eq!(sizes(&up), vec![(1, 5, "a/1")]);
        assert_eq!(up[0].direction(), "up");
        assert_eq!(
            up[0].reason,
            "cpu resource utilization (percentage of request) above target"
        );
        assert_eq!(up[0].timestamp_ms, t1);
        // Status of the rescaling reconcile, then the settled one.
        tr.observe_hpa(&hpa(1, 5, Some(t1)));
        tr.observe_hpa(&hpa(5, 5, Some(t1)));
        let t2 = t1 + 60_000;
        let down = tr.on_event(&rescale("b", 1, 2, t2, t2));
        assert_eq!(sizes(&down), vec![(5, 2, "b/1")]);
        assert_eq!(down[0].direction(), "down");
    }

    #[test]
    fn status_may_arrive_before_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        tr.observe_hpa(&hpa(1, 1, None));
        let t1 = START + 10_000;
        tr.observe_hpa(&hpa(1, 5, Some(t1)));
        tr.observe_hpa(&hpa(5, 5, Some(t1)));
        // Event recorded a second after lastScaleTime.
        assert_eq!(
            sizes(&tr.on_event(&rescale("a", 1, 5, t1 + 1000, t1 + 1000))),
            vec![(1, 5, "a/1")]
        );
        let t2 = t1 + 30_000;
        tr.observe_hpa(&hpa(5, 2, Some(t2)));
        assert_eq!(
            sizes(&tr.on_event(&rescale("b", 1, 2, t2, t2))),
            vec![(5, 2, "b/1")]
        );
    }

    #[test]
    fn repeats_and_count_increments() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        tr.observe_hpa(&hpa(2, 2, None));
        let t1 = START + 1_000;
        assert_eq!(tr.on_event(&rescale("a", 1, 5, t1, t1)).len(), 1);
        // Relist shows the same object again.
        assert!(tr.on_event(&rescale("a", 1, 5, t1, t1)).is_empty());
        // Scale down in between, then the same "New size: 5" again: count 2.
        let t2 = t1 + 60_000;
        assert_eq!(
            sizes(&tr.on_event(&rescale("b", 1, 2, t2, t2))),
            vec![(5, 2, "b/1")]
        );
        let t3 = t2 + 60_000;
        assert_eq!(
            sizes(&tr.on_event(&rescale("a", 2, 5, t1, t3))),
            vec![(2, 5, "a/2")]
        );
        assert!(tr.on_event(&rescale("a", 2, 5, t1, t3)).is_empty());
        // A jump by two reports both missed counts.
        let t4 = t3 + 60_000;
        let evs = tr.on_event(&rescale("a", 4, 5, t1, t4));
        assert_eq!(
            evs.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            vec!["a/3", "a/4"]
        );
        assert!(evs.iter().all(|e| e.timestamp_ms == t4));
    }

    #[test]
    fn huge_count_jump_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        let t = START + 1000;
        let evs = tr.on_event(&rescale("a", i32::MAX, 5, t, t));
        assert_eq!(evs.len(), MAX_OCCURRENCES_PER_UPDATE as usize);
        assert_eq!(evs.last().unwrap().key, format!("a/{}", i32::MAX));
        assert!(tr.on_event(&rescale("a", i32::MAX, 5, t, t)).is_empty());
    }

    #[test]
    fn other_events_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        let t = START + 1000;
        let mut e = rescale("a", 1, 5, t, t);
        e.involved_object.kind = Some("Deployment".into());
        assert!(tr.on_event(&e).is_empty());
        let mut e = rescale("a", 1, 5, t, t);
        e.reason = Some("FailedGetResourceMetric".into());
        assert!(tr.on_event(&e).is_empty());
        let mut e = rescale("a", 1, 5, t, t);
        e.message = Some("garbage".into());
        assert!(tr.on_event(&e).is_empty());
        let mut e = rescale("a", 1, 5, t, t);
        e.metadata.uid = None;
        assert!(tr.on_event(&e).is_empty());
        assert_eq!(tr.seen_len(), 0);
    }

    #[test]
    fn events_before_the_first_start_are_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START + 500).unwrap();
        assert_eq!(
            tr.floor_ms(),
            START,
            "floor is the first start in whole seconds"
        );
        // Old event.
        assert!(tr
            .on_event(&rescale("old", 3, 5, START - 600_000, START - 60_000))
            .is_empty());
        // Same second as the start: counted.
        assert_eq!(tr.on_event(&rescale("now", 1, 5, START, START)).len(), 1);
        // The old one recurs after the start: only the new occurrence.
        let t = START + 60_000;
        assert_eq!(
            tr.on_event(&rescale("old", 4, 5, START - 600_000, t))
                .iter()
                .map(|e| e.key.clone())
                .collect::<Vec<_>>(),
            vec!["old/4"]
        );
        // Never seen before, first occurrence before the start, two counts
        // since: only the latest is known to be new.
        let evs = tr.on_event(&rescale("older", 7, 5, START - 900_000, t));
        assert_eq!(
            evs.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            vec!["older/7"]
        );
    }

    #[test]
    fn restart_remembers_seen_occurrences_and_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = START + 1000;
        {
            let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
            tr.observe_hpa(&hpa(1, 1, None));
            assert_eq!(tr.on_event(&rescale("a", 1, 5, t1, t1)).len(), 1);
            tr.observe_hpa(&hpa(5, 5, Some(t1)));
            tr.persist().unwrap();
            tr.flush().unwrap();
        }
        assert!(!dir.path().join("scale-events.json.tmp").exists());
        let later = START + 3_600_000;
        let mut tr = ScaleTracker::open(dir.path(), later).unwrap();
        assert_eq!(tr.first_start_ms(), START);
        assert!(tr.on_event(&rescale("a", 1, 5, t1, t1)).is_empty());
        // A rescale that happened while the sender was down, with the HPA
        // already settled: the persisted history knows the size before.
        let t2 = START + 120_000;
        tr.observe_hpa(&hpa(2, 2, Some(t2)));
        assert_eq!(
            sizes(&tr.on_event(&rescale("b", 1, 2, t2, t2))),
            vec![(5, 2, "b/1")]
        );
    }

    #[test]
    fn eviction_raises_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open_with_capacity(dir.path(), START, 2).unwrap();
        for (i, uid) in ["a", "b", "c"].iter().enumerate() {
            let t = START + 1000 * (i as i64 + 1);
            assert_eq!(tr.on_event(&rescale(uid, 1, 5, t, t)).len(), 1);
        }
        assert_eq!(tr.seen_len(), 2);
        assert_eq!(tr.floor_ms(), START + 1001);
        // "a" was evicted but is below the floor now.
        assert!(tr
            .on_event(&rescale("a", 1, 5, START + 1000, START + 1000))
            .is_empty());
        tr.persist().unwrap();
        let mut tr = ScaleTracker::open_with_capacity(dir.path(), START + 99_000, 2).unwrap();
        assert_eq!(tr.floor_ms(), START + 1001);
        assert!(tr
            .on_event(&rescale("c", 1, 5, START + 3000, START + 3000))
            .is_empty());
    }

    #[test]
    fn corrupt_state_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let tr = ScaleTracker::open(dir.path(), START + 5000).unwrap();
        assert_eq!(tr.first_start_ms(), START + 5000);
        assert!(dir.path().join("scale-events.json.corrupt").exists());
        let again = ScaleTracker::open(dir.path(), START + 9000).unwrap();
        assert_eq!(
            again.first_start_ms(),
            START + 5000,
            "the fresh state was written at once"
        );
    }

    #[test]
    fn unknown_old_size_reports_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = ScaleTracker::open(dir.path(), START).unwrap();
        let t = START + 1000;
        let evs = tr.on_event(&rescale("a", 1, 5, t, t));
        assert_eq!(sizes(&evs), vec![(5, 5, "a/1")]);
        tr.forget_hpa(&ObjectRef {
            namespace: "shop".into(),
            name: "web".into(),
        });
        tr.observe_hpa(&hpa(5, 5, Some(t)));
        assert_eq!(
            sizes(&tr.on_event(&rescale("b", 1, 3, t + 9000, t + 9000))),
            vec![(5, 3, "b/1")]
        );
    }
}
