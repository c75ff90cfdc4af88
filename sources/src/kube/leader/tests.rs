//! The election's decisions under a simulated clock, one replica at a time
//! and several against a simulated API server with resourceVersion-checked
//! writes, partitions and crashes.

use std::time::{Duration, Instant};

use super::{
    election::{Action, Election, LeaseView},
    LeaderConfigError, LeaderElectionConfig, Leadership,
};

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

fn config(identity: &str) -> LeaderElectionConfig {
    LeaderElectionConfig {
        lease_duration: LEASE,
        renew_deadline: RENEW,
        retry_period: RETRY,
        ..LeaderElectionConfig::new("sender", "telemetry", identity)
    }
}

fn view(rv: u64, holder: Option<&str>, transitions: u64) -> LeaseView {
    LeaseView {
        resource_version: rv.to_string(),
        holder: holder.map(str::to_owned),
        duration: Some(LEASE),
        transitions,
        renewed: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn defaults_are_client_gos_and_validation_follows_its_rules() {
    let c = LeaderElectionConfig::new("l", "ns", "a");
    assert_eq!(
        (c.lease_duration, c.renew_deadline, c.retry_period),
        (
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(2)
        )
    );
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(config("a").validate(), Ok(()));
    let with = |f: fn(&mut LeaderElectionConfig)| {
        let mut c = config("a");
        f(&mut c);
        c.validate()
    };
    assert_eq!(
        with(|c| c.identity.clear()),
        Err(LeaderConfigError::EmptyIdentity)
    );
    assert_eq!(
        with(|c| c.lease_name.clear()),
        Err(LeaderConfigError::EmptyLeaseName)
    );
    assert_eq!(
        with(|c| c.namespace.clear()),
        Err(LeaderConfigError::EmptyNamespace)
    );
    assert!(matches!(
        with(|c| c.lease_duration = ms(3500)),
        Err(LeaderConfigError::LeaseDuration(_))
    ));
    assert!(matches!(
        with(|c| c.renew_deadline = LEASE),
        Err(LeaderConfigError::RenewDeadline { .. })
    ));
    assert!(matches!(
        with(|c| c.retry_period = ms(1700)),
        Err(LeaderConfigError::RetryPeriod { .. })
    ));
    assert!(matches!(
        with(|c| c.retry_period = Duration::ZERO),
        Err(LeaderConfigError::RetryPeriod { .. })
    ));
}

#[test]
fn an_absent_lease_is_created_and_renewed() {
    let t0 = Instant::now();
    let mut e = Election::new(&config("a"));
    assert_eq!(e.leadership(), Leadership::Standby { holder: None });
    assert_eq!(e.observe(t0, None), Action::Create { epoch: 0 });
    assert_eq!(
        e.leadership(),
        Leadership::Standby { holder: None },
        "not before the write succeeds"
    );
    e.written(
        Action::Create { epoch: 0 },
        t0,
        t0 + ms(10),
        view(2, Some("a"), 0),
    );
    assert_eq!(
        e.leadership(),
        Leadership::Leader {
            epoch: 0,
            since: t0 + ms(10)
        }
    );
    assert_eq!(
        e.fence_deadline(),
        Some(t0 + RENEW),
        "counted from the request's start"
    );
    let t1 = t0 + RETRY;
    assert_eq!(e.observe(t1, Some(view(2, Some("a"), 0))), Action::Renew);
    e.written(Action::Renew, t1, t1 + ms(10), view(3, Some("a"), 0));
    assert_eq!(e.fence_deadline(), Some(t1 + RENEW));
    assert!(!e.tick(t1 + RENEW - ms(1)));
    assert_eq!(e.leadership().epoch(), Some(0), "a renewal keeps the epoch");
}

#[test]
fn a_standby_waits_a_full_lease_duration_of_its_own_observation() {
    let t0 = Instant::now();
    let mut b = Election::new(&config("b"));
    // The holder keeps renewing: however long that goes on, B waits.
    for i in 0..20 {
        let t = t0 + RETRY * i;
        assert_eq!(
            b.observe(t, Some(view(10 + u64::from(i), Some("a"), 4))),
            Action::Wait
        );
        assert_eq!(
            b.leadership(),
            Leadership::Standby {
                holder: Some("a".into())
            }
        );
    }
    // The holder stops; B counts from when it first saw the last version,
    // whatever renewTime says (it never sees renewTime).
    let last_seen = t0 + RETRY * 19;
    for step in 1..6 {
        assert_eq!(
            b.observe(last_seen + RETRY * step, Some(view(29, Some("a"), 4))),
            Action::Wait
        );
    }
    assert_eq!(
        b.observe(last_seen + LEASE, Some(view(29, Some("a"), 4))),
        Action::Acquire { epoch: 5 },
        "expired: taken with leaseTransitions + 1"
    );
}

#[test]
fn a_standby_knows_when_the_holders_lease_expires_by_its_own_clock() {
    let t0 = Instant::now();
    let mut b = Election::new(&config("b"));
    assert_eq!(b.expiry(), None, "nothing read yet");
    b.observe(t0, Some(view(10, Some("a"), 4)));
    assert_eq!(b.expiry(), Some(t0 + LEASE));
    // The same version seen again does not move it; a renewal does.
    b.observe(t0 + RETRY, Some(view(10, Some("a"), 4)));
    assert_eq!(b.expiry(), Some(t0 + LEASE));
    b.observe(t0 + RETRY * 2, Some(view(11, Some("a"), 4)));
    assert_eq!(b.expiry(), Some(t0 + RETRY * 2 + LEASE));
    // Read at that instant, the Lease is taken.
    assert_eq!(
        b.observe(t0 + RETRY * 2 + LEASE, Some(view(11, Some("a"), 4))),
        Action::Acquire { epoch: 5 }
    );
    // A free Lease has no holder to wait for.
    let mut c = Election::new(&config("c"));
    c.observe(t0, Some(view(12, None, 5)));
    assert_eq!(c.expiry(), None);
}

#[test]
fn a_fresh_replica_does_not_trust_an_old_looking_lease() {
    // A replica starting late sees a Lease whose holder may have died long
    // ago; with no trustworthy clock it still waits a whole duration.
    let t0 = Instant::now();
    let mut c = Election::new(&config("c"));
    assert_eq!(c.observe(t0, Some(view(7, Some("a"), 1))), Action::Wait);
    assert_eq!(
        c.observe(t0 + LEASE - ms(1), Some(view(7, Some("a"), 1))),
        Action::Wait
    );
    assert_eq!(
        c.observe(t0 + LEASE, Some(view(7, Some("a"), 1))),
        Action::Acquire { epoch: 2 }
    );
}

#[test]
fn any_change_of_the_record_restarts_the_wait() {
    // Without a resourceVersion (never from a real server), a renewal still
    // shows as a change of renewTime.
    let t0 = Instant::now();
    let mut b = Election::new(&config("b"));
    let renewed = |secs| {
        let mut v = view(0, Some("a"), 2);
        v.resource_version.clear();
        v.renewed = Some(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap());
        v
    };
    assert_eq!(b.observe(t0, Some(renewed(100))), Action::Wait);
    assert_eq!(b.observe(t0 + ms(2900), Some(renewed(103))), Action::Wait);
    assert_eq!(b.observe(t0 + ms(5800), Some(renewed(103))), Action::Wait);
    assert_eq!(
        b.observe(t0 + ms(5900), Some(renewed(103))),
        Action::Acquire { epoch: 3 }
    );
}

#[test]
fn the_holders_duration_counts() {
    let t0 = Instant::now();
    let mut b = Election::new(&config("b"));
    let mut long = view(7, Some("a"), 0);
    long.duration = Some(Duration::from_secs(30));
    assert_eq!(b.observe(t0, Some(long.clone())), Action::Wait);
    assert_eq!(b.observe(t0 + LEASE * 2, Some(long.clone())), Action::Wait);
    assert_eq!(
        b.observe(t0 + Duration::from_secs(30), Some(long)),
        Action::Acquire { epoch: 1 }
    );
    // Without one, ours.
    let mut none = view(9, Some("a"), 3);
    none.duration = None;
    let mut c = Election::new(&config("c"));
    assert_eq!(c.observe(t0, Some(none.clone())), Action::Wait);
    assert_eq!(
        c.observe(t0 + LEASE, Some(none)),
        Action::Acquire { epoch: 4 }
    );
}

#[test]
fn a_free_lease_or_one_naming_us_is_taken_at_once_as_a_new_term() {
    let t0 = Instant::now();
    let mut b = Election::new(&config("b"));
    assert_eq!(
        b.observe(t0, Some(view(5, None, 6))),
        Action::Acquire { epoch: 7 }
    );
    // After a restart, the Lease may still name this replica: a new term.
    let mut a = Election::new(&config("a"));
    assert_eq!(
        a.observe(t0, Some(view(5, Some("a"), 6))),
        Action::Acquire { epoch: 7 }
    );
    a.written(Action::Acquire { epoch: 7 }, t0, t0, view(6, Some("a"), 7));
    assert_eq!(a.leadership().epoch(), Some(7));
}

#[test]
fn a_leader_without_renewals_fences_itself_at_the_renew_deadline() {
    let t0 = Instant::now();
    let mut a = Election::new(&config("a"));
    a.observe(t0, None);
    a.written(
        Action::Create { epoch: 0 },
        t0,
        t0 + ms(300),
        view(2, Some("a"), 0),
    );
    // Renewals fail (nothing is written); the term lasts until t0 + RENEW.
    assert!(!a.tick(t0 + RENEW - ms(1)));
    assert!(a.leadership().is_leader());
    assert!(a.tick(t0 + RENEW));
    assert_eq!(
        a.leadership(),
        Leadership::Standby { holder: None },
        "fenced: not itself a holder"
    );
    assert_eq!(a.fence_deadline(), None);
    // The API comes back; nobody took the lease: a new term, a new epoch.
    let t1 = t0 + LEASE;
    assert_eq!(
        a.observe(t1, Some(view(2, Some("a"), 0))),
        Action::Acquire { epoch: 1 }
    );
}

#[test]
fn a_leader_that_sees_another_holder_steps_down_at_once() {
    let t0 = Instant::now();
    let mut a = Election::new(&config("a"));
    a.observe(t0, None);
    a.written(Action::Create { epoch: 0 }, t0, t0, view(2, Some("a"), 0));
    assert_eq!(
        a.observe(t0 + RETRY, Some(view(3, Some("b"), 1))),
        Action::Wait
    );
    assert_eq!(
        a.leadership(),
        Leadership::Standby {
            holder: Some("b".into())
        }
    );
}

#[test]
fn a_deleted_lease_is_recreated_after_the_highest_epoch_seen() {
    let t0 = Instant::now();
    let mut a = Election::new(&config("a"));
    assert_eq!(a.observe(t0, Some(view(9, Some("b"), 41))), Action::Wait);
    assert_eq!(a.observe(t0 + RETRY, None), Action::Create { epoch: 42 });
    // A leader whose Lease vanishes ends its term.
    a.written(
        Action::Create { epoch: 42 },
        t0,
        t0,
        view(11, Some("a"), 42),
    );
    assert!(a.leadership().is_leader());
    assert_eq!(
        a.observe(t0 + RETRY * 2, None),
        Action::Create { epoch: 43 }
    );
    assert!(!a.leadership().is_leader());
}

#[test]
fn release_applies_only_to_a_lease_naming_us() {
    let mut a = Election::new(&config("a"));
    assert!(a.holds(&view(1, Some("a"), 0)));
    assert!(!a.holds(&view(1, Some("b"), 0)));
    assert!(!a.holds(&view(1, None, 0)));
    a.stop();
    assert!(!a.leadership().is_leader());
}

/// A simulated API server: one Lease, resourceVersion-checked writes.
#[derive(Default)]
struct Api {
    lease: Option<LeaseView>,
    rv: u64,
}

impl Api {
    /// Applies `action` by `id` against the version `read` (as a replace or
    /// create would); the stored Lease if it succeeded.
    fn write(&mut self, id: &str, action: Action, read: Option<&LeaseView>) -> Option<LeaseView> {
        let fresh = match (&self.lease, read) {
            (None, None) => true,
            (Some(stored), Some(read)) => stored.resource_version == read.resource_version,
            _ => false,
        };
        if !fresh {
            return None;
        }
        let transitions = match action {
            Action::Create { epoch } | Action::Acquire { epoch } => epoch,
            Action::Renew => read.map_or(0, |r| r.transitions),
            Action::Wait => return None,
        };
        self.rv += 1;
        let stored = view(self.rv, Some(id), transitions);
        self.lease = Some(stored.clone());
        Some(stored)
    }
}

struct Replica {
    id: &'static str,
    election: Election,
    next: Instant,
    /// Cut off from the API (its requests fail).
    cut: bool,
    crashed: bool,
}

/// Runs replicas in 10 ms steps from `t0` until `end`, with `events(t,
/// replicas)` changing partitions; checks that at most one replica leads at
/// every step; returns per-step leader lists.
fn simulate(
    replicas: &mut [Replica],
    api: &mut Api,
    t0: Instant,
    end: Duration,
    mut events: impl FnMut(Duration, &mut [Replica]),
) -> Vec<(Duration, Vec<(&'static str, u64)>)> {
    let mut timeline = Vec::new();
    let mut offset = Duration::ZERO;
    while offset <= end {
        let now = t0 + offset;
        events(offset, replicas);
        for r in replicas.iter_mut().filter(|r| !r.crashed) {
            r.election.tick(now);
            if now < r.next {
                continue;
            }
            if !r.cut {
                let read = api.lease.clone();
                let action = r.election.observe(now, read.clone());
                if let Some(stored) = api.write(r.id, action, read.as_ref()) {
                    r.election.written(action, now, now, stored);
                }
            }
            r.election.tick(now);
            r.next = now + RETRY;
        }
        let leaders: Vec<_> = replicas
            .iter()
            .filter(|r| !r.crashed)
            .filter_map(|r| r.election.leadership().epoch().map(|e| (r.id, e)))
            .collect();
        assert!(leaders.len() <= 1, "two leaders at {offset:?}: {leaders:?}");
        timeline.push((offset, leaders));
        offset += ms(10);
    }
    timeline
}

fn replicas(t0: Instant, ids: &[&'static str]) -> Vec<Replica> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| Replica {
            id,
            election: Election::new(&config(id)),
            // Staggered starts, as real replicas have.
            next: t0 + ms(70) * u32::try_from(i).unwrap(),
            cut: false,
            crashed: false,
        })
        .collect()
}

fn first_leader_after(
    timeline: &[(Duration, Vec<(&'static str, u64)>)],
    after: Duration,
) -> Option<(Duration, &'static str, u64)> {
    timeline
        .iter()
        .filter(|(t, _)| *t > after)
        .find_map(|(t, l)| l.first().map(|(id, e)| (*t, *id, *e)))
}

#[test]
fn a_partitioned_leader_fences_before_another_takes_over() {
    let t0 = Instant::now();
    let mut rs = replicas(t0, &["a", "b", "c"]);
    let mut api = Api::default();
    let cut_at = Duration::from_secs(5);
    let mut fenced_at = None;
    let timeline = simulate(&mut rs, &mut api, t0, Duration::from_secs(20), |t, rs| {
        if t == cut_at {
            rs[0].cut = true;
        }
        if t > cut_at && fenced_at.is_none() && !rs[0].election.leadership().is_leader() {
            fenced_at = Some(t);
        }
        if t == Duration::from_secs(12) {
            rs[0].cut = false;
        }
    });
    let first = first_leader_after(&timeline, Duration::ZERO).unwrap();
    assert_eq!(
        (first.1, first.2),
        ("a", 0),
        "the first to start creates the Lease"
    );
    let fenced_at = fenced_at.expect("a fenced itself");
    assert!(
        fenced_at <= cut_at + RENEW,
        "fenced within the renew deadline: {fenced_at:?}"
    );
    let (taken_at, next, epoch) = timeline
        .iter()
        .filter(|(t, _)| *t > cut_at)
        .find_map(|(t, l)| {
            l.first()
                .filter(|(id, _)| *id != "a")
                .map(|(id, e)| (*t, *id, *e))
        })
        .expect("another replica took over");
    assert!(
        fenced_at < taken_at,
        "fenced at {fenced_at:?}, taken at {taken_at:?}"
    );
    assert!(
        taken_at >= cut_at - RETRY + LEASE,
        "not before the lease could expire"
    );
    assert!(taken_at <= cut_at + LEASE + RETRY * 2, "{taken_at:?}");
    assert_eq!(epoch, 1);
    // Restored, A is a standby that sees the new holder.
    assert_eq!(
        rs[0].election.leadership(),
        Leadership::Standby {
            holder: Some(next.into())
        }
    );
}

#[test]
fn a_crashed_leader_is_replaced_with_a_higher_epoch_and_terms_keep_increasing() {
    let t0 = Instant::now();
    let mut rs = replicas(t0, &["a", "b", "c"]);
    let mut api = Api::default();
    let crashes = [
        Duration::from_secs(4),
        Duration::from_secs(12),
        Duration::from_secs(20),
    ];
    let timeline = simulate(&mut rs, &mut api, t0, Duration::from_secs(28), |t, rs| {
        if crashes.contains(&t) {
            // Crash whoever leads; bring back the crashed ones as new
            // processes (fresh state, same identity).
            for r in rs.iter_mut() {
                if r.crashed {
                    r.crashed = false;
                    r.election = Election::new(&config(r.id));
                } else if r.election.leadership().is_leader() {
                    r.crashed = true;
                }
            }
        }
    });
    let mut epochs: Vec<u64> = timeline
        .iter()
        .filter_map(|(_, l)| l.first().map(|(_, e)| *e))
        .collect();
    epochs.dedup();
    assert_eq!(epochs, [0, 1, 2, 3], "one new epoch per term, increasing");
    for crash in crashes {
        let (at, _, _) = first_leader_after(&timeline, crash).unwrap();
        assert!(
            at - crash <= LEASE + RETRY * 2,
            "taken over {:?} after the crash",
            at - crash
        );
    }
}
