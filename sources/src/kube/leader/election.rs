//! The election's decisions, without IO: given what a read of the Lease
//! showed and the local monotonic time, what to write, and whether this
//! replica leads.
//!
//! This module owns [`Election`]. It never reads a clock (the caller passes
//! `now`) and never compares wall-clock timestamps with anything: expiry is
//! judged only from when *this* replica saw the Lease change (any change of
//! resourceVersion, holder, duration, transitions or `renewTime`, as
//! client-go compares whole records), so it is deterministic under a
//! simulated clock and immune to clock skew between replicas. Its
//! guarantees, given that the caller writes with a resourceVersion-checked
//! replace of the Lease it just read:
//!
//! - A term begins only by a successful write naming this replica
//!   ([`Action::Create`] or [`Action::Acquire`]) and ends when another holder
//!   is observed, when the Lease disappears, on [`Election::stop`], or when no
//!   renewal *started* within the renew deadline succeeded
//!   ([`Election::tick`]: fencing). Since others wait a whole lease duration
//!   from their observation of the last renewal, which came after its start,
//!   a fenced leader has stopped before anyone else can take the Lease.
//! - Every term gets a fresh epoch: one more than the highest
//!   `leaseTransitions` this replica has seen, written into the Lease, so
//!   epochs increase across terms and holders as long as the Lease object
//!   lives (a re-created Lease starts after the highest epoch this process
//!   saw).

use std::time::{Duration, Instant};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};

use super::{LeaderElectionConfig, Leadership};

/// What one read of the Lease showed (the parts the election uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseView {
    /// `metadata.resourceVersion`: any write changes it.
    pub(crate) resource_version: String,
    /// `spec.holderIdentity`; empty counts as none.
    pub(crate) holder: Option<String>,
    /// `spec.leaseDurationSeconds`, if positive.
    pub(crate) duration: Option<Duration>,
    /// `spec.leaseTransitions`; absent or negative counts as 0.
    pub(crate) transitions: u64,
    /// `spec.renewTime`, compared for equality only (a change marker).
    pub(crate) renewed: Option<Timestamp>,
}

impl LeaseView {
    pub(crate) fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        LeaseView {
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            duration: spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|d| u64::try_from(d).ok())
                .filter(|d| *d > 0)
                .map(Duration::from_secs),
            transitions: spec
                .and_then(|s| s.lease_transitions)
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
            renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        }
    }
}

/// What to do after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// The Lease does not exist: create it, held by us, with
    /// `leaseTransitions = epoch`.
    Create {
        /// The epoch of the term this starts.
        epoch: u64,
    },
    /// Take the Lease just read (free, expired, or naming us without a
    /// running term): replace it, held by us, `acquireTime` now,
    /// `leaseTransitions = epoch`.
    Acquire {
        /// The epoch of the term this starts.
        epoch: u64,
    },
    /// Renew our running term: replace the Lease just read with a new
    /// `renewTime`.
    Renew,
    /// Another replica holds a live lease: write nothing.
    Wait,
}

#[derive(Debug, Clone)]
struct Observed {
    view: LeaseView,
    /// When this replica first saw `view` as it is.
    changed_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Term {
    epoch: u64,
    since: Instant,
    /// Start of the latest request that renewed (or began) the term.
    renewed_at: Instant,
}

/// The state of one replica's election.
#[derive(Debug)]
pub(crate) struct Election {
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    observed: Option<Observed>,
    term: Option<Term>,
    highest_epoch: Option<u64>,
}

impl Election {
    pub(crate) fn new(config: &LeaderElectionConfig) -> Self {
        Election {
            identity: config.identity.clone(),
            lease_duration: config.lease_duration,
            renew_deadline: config.renew_deadline,
            observed: None,
            term: None,
            highest_epoch: None,
        }
    }

    fn note_epoch(&mut self, transitions: u64) {
        self.highest_epoch = Some(
            self.highest_epoch
                .map_or(transitions, |h| h.max(transitions)),
        );
    }

    fn next_epoch(&self) -> u64 {
        self.highest_epoch.map_or(0, |h| h.saturating_add(1))
    }

    /// Takes in a read of the Lease made at `now` (`None`: it does not
    /// exist) and says what to write. Ends the term if the Lease names
    /// someone else or is gone.
    pub(crate) fn observe(&mut self, now: Instant, lease: Option<LeaseView>) -> Action {
        let Some(view) = lease else {
            self.observed = None;
            self.term = None;
            return Action::Create {
                epoch: self.next_epoch(),
            };
        };
        let changed_at = match &self.observed {
            Some(seen) if seen.view == view => seen.changed_at,
            _ => now,
        };
        self.note_epoch(view.transitions);
        let ours = view.holder.as_deref() == Some(self.identity.as_str());
        let free = view.holder.is_none();
        // The holder's own duration counts, as it is the promise it made.
        let expired = now >= changed_at + view.duration.unwrap_or(self.lease_duration);
        self.observed = Some(Observed { view, changed_at });
        if !ours {
            self.term = None;
        }
        match (ours, self.term.is_some()) {
            (true, true) => Action::Renew,
            _ if ours || free || expired => Action::Acquire {
                epoch: self.next_epoch(),
            },
            _ => Action::Wait,
        }
    }

    /// Takes in the Lease a write of `action` returned; the request started
    /// at `started` and ended at `now`. The caller then calls
    /// [`Election::tick`].
    pub(crate) fn written(
        &mut self,
        action: Action,
        started: Instant,
        now: Instant,
        lease: LeaseView,
    ) {
        self.note_epoch(lease.transitions);
        self.observed = Some(Observed {
            view: lease,
            changed_at: now,
        });
        match action {
            Action::Create { epoch } | Action::Acquire { epoch } => {
                self.term = Some(Term {
                    epoch,
                    since: now,
                    renewed_at: started,
                });
            }
            Action::Renew => {
                if let Some(term) = &mut self.term {
                    term.renewed_at = started;
                }
            }
            Action::Wait => {}
        }
    }

    /// When the running term must end without a successful renewal.
    pub(crate) fn fence_deadline(&self) -> Option<Instant> {
        self.term.map(|t| t.renewed_at + self.renew_deadline)
    }

    /// Ends the term if its fence deadline has passed; true if it did.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        match self.fence_deadline() {
            Some(deadline) if now >= deadline => {
                self.term = None;
                true
            }
            _ => false,
        }
    }

    /// When the Lease another replica holds expires, by this replica's own
    /// observation (the last change it saw plus the holder's duration): a
    /// standby reads the Lease again then rather than up to a retry period
    /// later. `None` while leading, or when no other holder is known.
    pub(crate) fn expiry(&self) -> Option<Instant> {
        if self.term.is_some() {
            return None;
        }
        let seen = self.observed.as_ref()?;
        let holder = seen.view.holder.as_deref()?;
        (holder != self.identity)
            .then(|| seen.changed_at + seen.view.duration.unwrap_or(self.lease_duration))
    }

    /// Ends the term (graceful stop).
    pub(crate) fn stop(&mut self) {
        self.term = None;
    }

    /// Whether `lease` names this replica as holder.
    pub(crate) fn holds(&self, lease: &LeaseView) -> bool {
        lease.holder.as_deref() == Some(self.identity.as_str())
    }

    /// What this replica may do now.
    pub(crate) fn leadership(&self) -> Leadership {
        match self.term {
            Some(t) => Leadership::Leader {
                epoch: t.epoch,
                since: t.since,
            },
            None => Leadership::Standby {
                holder: self
                    .observed
                    .as_ref()
                    .and_then(|o| o.view.holder.clone())
                    .filter(|h| *h != self.identity),
            },
        }
    }
}
