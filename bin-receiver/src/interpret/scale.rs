//! Scale events counted once: the bounded memory of event keys of one
//! cluster.
//!
//! What it owns: the last `capacity` keys seen ([`ScaleEvent::key`] names
//! one occurrence of a rescale), oldest forgotten first.
//!
//! What it guarantees: an event whose key is among the remembered ones is
//! not counted again; an event that does not change the size is never
//! counted, and its key is not remembered — a sender replica that did not
//! know the size before a rescale reports it unchanged, and another
//! replica's copy of the same occurrence, with the size it knew, still
//! counts (once); memory stays bounded by `capacity` keys whatever the
//! number of HPAs.

use std::collections::{HashSet, VecDeque};

use telemetry_schema::ScaleEvent;

use super::hpa::Direction;

/// The remembered keys of one cluster.
#[derive(Debug, Default)]
pub(crate) struct ScaleKeys {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl ScaleKeys {
    /// The direction to count `event` in, or `None` when it is a repeat of
    /// a remembered key or does not change the size. Remembers the key of
    /// an event it counts, forgetting the oldest beyond `capacity`.
    pub(crate) fn first_sighting(
        &mut self,
        event: &ScaleEvent,
        capacity: usize,
    ) -> Option<Direction> {
        if self.seen.contains(&event.key) {
            return None;
        }
        let direction = match event.new_replicas.cmp(&event.old_replicas) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => return None,
        };
        if capacity > 0 {
            while self.order.len() >= capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.seen.remove(&oldest);
                }
            }
            self.order.push_back(event.key.clone());
            self.seen.insert(event.key.clone());
        }
        Some(direction)
    }

    /// Whether `event`'s key is remembered (a repeat, counted already).
    pub(crate) fn is_known(&self, event: &ScaleEvent) -> bool {
        self.seen.contains(&event.key)
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, old: i32, new: i32) -> ScaleEvent {
        ScaleEvent {
            namespace: "ns".into(),
            hpa: "h".into(),
            old_replicas: old,
            new_replicas: new,
            reason: String::new(),
            timestamp_ms: 0,
            key: key.into(),
        }
    }

    #[test]
    fn a_key_counts_once_within_the_window_and_memory_is_bounded() {
        let mut keys = ScaleKeys::default();
        assert_eq!(
            keys.first_sighting(&event("a", 1, 4), 2),
            Some(Direction::Up)
        );
        assert_eq!(keys.first_sighting(&event("a", 1, 4), 2), None);
        assert_eq!(
            keys.first_sighting(&event("b", 4, 2), 2),
            Some(Direction::Down)
        );
        assert_eq!(keys.first_sighting(&event("same", 2, 2), 2), None);
        assert_eq!(keys.len(), 2, "the same-size key is not remembered");
        assert_eq!(
            keys.first_sighting(&event("same", 1, 2), 2),
            Some(Direction::Up),
            "another replica's copy that knows the size counts"
        );
        assert_eq!(keys.first_sighting(&event("same", 1, 2), 2), None);
        assert_eq!(keys.first_sighting(&event("b", 4, 2), 2), None);
        assert_eq!(
            keys.first_sighting(&event("a", 1, 4), 2),
            Some(Direction::Up)
        );
        assert_eq!(keys.len(), 2);
    }
}
