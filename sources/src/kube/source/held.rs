//! Rescale events this replica has not turned into scale events yet:
//! those seen before the HPAs were listed (the replica count before a
//! rescale is not known yet) and those seen while standing by (another
//! replica leads and ships them).
//!
//! This module owns [`HeldEvents`]: the latest version of each held Event
//! object, by uid, at most [`MAX_HELD_EVENTS`] (the oldest occurrence is
//! dropped beyond it, with one warning). An Event the API server deletes
//! (its TTL, one hour by default, ran out) is dropped too, so a standby
//! holds at most the rescales of one event TTL. When the replica leads
//! with the HPAs listed, the held events are handed to the scale tracker
//! in order of their occurrence time; the tracker ships the occurrences
//! this replica has not shipped itself. The latest version of an Event
//! object stands for all its counts (the tracker reports every count
//! above the highest it shipped).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Event;

use crate::kube::events::occurrence_time_ms;

/// Held rescale events at most.
pub(super) const MAX_HELD_EVENTS: usize = 10_000;

/// Held Event objects by uid.
#[derive(Debug, Default)]
pub(super) struct HeldEvents {
    by_uid: HashMap<String, Event>,
    warned_overflow: bool,
}

fn uid(e: &Event) -> Option<&str> {
    e.metadata.uid.as_deref().filter(|u| !u.is_empty())
}

impl HeldEvents {
    /// Holds `e` (replacing an older version of the same object); events
    /// without a uid cannot be counted and are not held.
    pub(super) fn hold(&mut self, e: Event) {
        let Some(key) = uid(&e).map(str::to_owned) else {
            return;
        };
        if !self.by_uid.contains_key(&key) && self.by_uid.len() >= MAX_HELD_EVENTS {
            self.drop_oldest();
        }
        self.by_uid.insert(key, e);
    }

    fn drop_oldest(&mut self) {
        let oldest = self
            .by_uid
            .iter()
            .min_by_key(|(uid, e)| (occurrence_time_ms(e), *uid))
            .map(|(uid, _)| uid.clone());
        if let Some(oldest) = oldest {
            self.by_uid.remove(&oldest);
        }
        if !self.warned_overflow {
            self.warned_overflow = true;
            tracing::warn!(
                max = MAX_HELD_EVENTS,
                "too many rescale events held; dropping the oldest"
            );
        }
    }

    /// Forgets an Event the API server deleted.
    pub(super) fn forget(&mut self, e: &Event) {
        if let Some(uid) = uid(e) {
            self.by_uid.remove(uid);
        }
    }

    /// How many are held.
    pub(super) fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Takes every held event, oldest occurrence first.
    pub(super) fn drain(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> = self.by_uid.drain().map(|(_, e)| e).collect();
        events
            .sort_by(|a, b| (occurrence_time_ms(a), uid(a)).cmp(&(occurrence_time_ms(b), uid(b))));
        events
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };

    use super::*;

    fn event(uid: &str, count: i32, at_s: i64) -> Event {
        Event {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                ..Default::default()
            },
            count: Some(count),
            last_timestamp: Some(Time(Timestamp::from_second(at_s).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_version_is_held_and_drained_in_time_order() {
        let mut held = HeldEvents::default();
        held.hold(event("b", 1, 20));
        held.hold(event("a", 1, 10));
        held.hold(event("a", 2, 30));
        held.hold(Event::default());
        assert_eq!(held.len(), 2, "one per uid; none without a uid");
        let drained = held.drain();
        let got: Vec<_> = drained
            .iter()
            .map(|e| (e.metadata.uid.clone().unwrap(), e.count.unwrap()))
            .collect();
        assert_eq!(got, vec![("b".to_owned(), 1), ("a".to_owned(), 2)]);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn deleted_events_are_forgotten_and_the_bound_drops_the_oldest() {
        let mut held = HeldEvents::default();
        held.hold(event("gone", 1, 5));
        held.forget(&event("gone", 1, 5));
        assert_eq!(held.len(), 0);
        for i in 0..MAX_HELD_EVENTS {
            held.hold(event(&format!("e{i}"), 1, 100 + i as i64));
        }
        held.hold(event("newest", 1, 1_000_000));
        assert_eq!(held.len(), MAX_HELD_EVENTS);
        let drained = held.drain();
        assert_eq!(drained[0].metadata.uid.as_deref(), Some("e1"), "e0 dropped");
        assert_eq!(
            drained.last().unwrap().metadata.uid.as_deref(),
            Some("newest")
        );
    }
}
