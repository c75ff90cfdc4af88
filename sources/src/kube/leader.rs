//! Leader election among sender replicas over a `coordination.k8s.io/v1`
//! Lease, with fencing and a leadership epoch.
//!
//! This module owns [`LeaderElector`]: replicas of one cluster's sender
//! compete for one Lease; the holder leads (ships state), the others stand
//! by. Its output is a `watch` of [`Leadership`]: `Leader { epoch, since }`
//! or `Standby { holder }`. A consumer ships state only while it reads
//! `Leader`, stamped with that epoch, and treats a closed channel as
//! `Standby` (the elector also publishes `Standby` when it is dropped).
//!
//! # Rules
//!
//! client-go's, with its defaults (lease duration 15 s, renew deadline 10 s,
//! retry period 2 s): every retry period (standbys add up to 20 % jitter,
//! and read again at the moment the holder's Lease would expire by their
//! own clock) a replica reads the Lease and
//! - creates it if absent;
//! - takes it if it has no holder, names this replica, or has expired:
//!   its resourceVersion has not changed for `leaseDurationSeconds` *as
//!   measured by this replica's monotonic clock since it saw the change*;
//!   `renewTime` is written for people and other tools, never compared
//!   with the local clock, so skewed clocks cannot steal a live lease;
//! - renews it (new `renewTime`) while leading;
//! - otherwise waits.
//!
//! Every write is a replace carrying the resourceVersion just read, so of two
//! replicas racing from the same read exactly one succeeds (the other gets
//! `409 Conflict` and re-reads at once); a create racing a create gets
//! `409 AlreadyExists`.
//!
//! **Fencing.** A leader whose renewals have not succeeded for the renew
//! deadline (counted from the *start* of the last successful request)
//! publishes `Standby` on its own, even while its requests still hang; the
//! renew deadline is validated to be shorter than the lease duration, so
//! this happens before any other replica can see the lease expire.
//!
//! **Epoch.** Each term gets a fresh epoch, written as `leaseTransitions`:
//! one more than the highest value this replica has seen, so epochs
//! increase across terms (a re-acquisition after fencing or a restart is a
//! new term too). Deleting the Lease resets the count for replicas that
//! never saw the old one: do not delete it while senders run.
//!
//! **Graceful stop.** The leader first publishes `Standby`, then clears the
//! holder (resourceVersion-checked, `leaseDurationSeconds` 1) so a standby
//! takes over at its next retry instead of after the lease duration.
//!
//! # Clocks and API errors
//!
//! Only the local monotonic clock decides anything; a wall clock that jumps
//! changes nothing but the timestamps written. Any failed or slow read or
//! write (unreachable API server, timeout, 5xx, conflict) is a failed
//! attempt: a standby stays standby and retries next period; a leader keeps
//! leading until its fence deadline and retries meanwhile. Each attempt is
//! bounded by the renew deadline and, for a leader, by its fence deadline
//! (the kube client has no read timeout of its own). Failures are logged
//! once per outage (conflicts, normal contention, only at debug). A `403`
//! ends [`LeaderElector::run`] with [`LeaderElectionError::Rbac`], as it
//! does the Kubernetes source: without permission to the Lease no replica
//! could ever lead.
//!
//! # Why not kube-lease-manager
//!
//! `kube-lease-manager` 0.13 (kube 5) takes the lease with server-side
//! apply under a per-identity field manager and renews with strategic
//! merge patches. Its safety then rests on the API server's apply
//! conflict rules, which the test API server would have to reproduce
//! faithfully (managed fields, ownership, per-manager conflicts) to test
//! anything; a resourceVersion-checked replace needs only the optimistic
//! lock every Kubernetes object has. It also documents tolerating clock skew
//! between nodes by a configurable allowance, i.e. it judges expiry from
//! the Lease's timestamps, where client-go's rule (local observation) needs
//! no allowance. And the parts this crate needs most, fencing on the renew
//! deadline and an epoch from `leaseTransitions`, would be ours to build on
//! top either way. So the election is written here on `Api<Lease>`; the
//! decisions live in `election` (no IO, unit-tested with a simulated
//! clock) and this module only reads, writes, sleeps and logs.

mod election;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use self::election::{Action, Election, LeaseView};

/// client-go's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Standbys wait up to this fraction of a retry period longer (client-go's
/// jitter factor), so replicas started together spread their reads.
const JITTER: f64 = 0.2;

/// What to compete for and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's `holderIdentity`; unique per replica (the caller
    /// defaults it to the pod name or hostname).
    pub identity: String,
    /// How long others wait after the last renewal they saw before taking
    /// the lease (whole seconds: `leaseDurationSeconds` is an integer).
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal;
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the Lease is read (and renewed); 1.2 times it must be
    /// shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// A configuration with client-go's default timings.
    pub fn new(
        lease_name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaderElectionConfig {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the names and client-go's timing rules.
    pub fn validate(&self) -> Result<(), LeaderConfigError> {
        if self.lease_name.is_empty() {
            return Err(LeaderConfigError::EmptyLeaseName);
        }
        if self.namespace.is_empty() {
            return Err(LeaderConfigError::EmptyNamespace);
        }
        if self.identity.is_empty() {
            return Err(LeaderConfigError::EmptyIdentity);
        }
        let seconds = self.lease_duration.as_secs();
        if self.lease_duration.subsec_nanos() != 0
            || seconds == 0
            || i32::try_from(seconds).is_err()
        {
            return Err(LeaderConfigError::LeaseDuration(self.lease_duration));
        }
        if self.renew_deadline.is_zero() || self.renew_deadline >= self.lease_duration {
            return Err(LeaderConfigError::RenewDeadline {
                renew_deadline: self.renew_deadline,
                lease_duration: self.lease_duration,
            });
        }
        if self.retry_period.is_zero()
            || self.retry_period.mul_f64(1.0 + JITTER) >= self.renew_deadline
        {
            return Err(LeaderConfigError::RetryPeriod {
                retry_period: self.retry_period,
                renew_deadline: self.renew_deadline,
            });
        }
        Ok(())
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// A [`LeaderElectionConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderConfigError {
    /// No Lease name.
    #[error("the lease name is empty")]
    EmptyLeaseName,
    /// No namespace.
    #[error("the lease namespace is empty")]
    EmptyNamespace,
    /// No replica identity.
    #[error("the replica identity is empty")]
    EmptyIdentity,
    /// The lease duration is not a whole number of seconds in 1..=i32::MAX.
    #[error("lease duration {0:?} must be a positive whole number of seconds")]
    LeaseDuration(Duration),
    /// The renew deadline is zero or not shorter than the lease duration.
    #[error("renew deadline {renew_deadline:?} must be positive and shorter than the lease duration {lease_duration:?}")]
    RenewDeadline {
        /// The renew deadline given.
        renew_deadline: Duration,
        /// The lease duration given.
        lease_duration: Duration,
    },
    /// The retry period is zero or, with jitter, not shorter than the renew
    /// deadline.
    #[error("retry period {retry_period:?} must be positive and, times 1.2, shorter than the renew deadline {renew_deadline:?}")]
    RetryPeriod {
        /// The retry period given.
        retry_period: Duration,
        /// The renew deadline given.
        renew_deadline: Duration,
    },
}

/// Why [`LeaderElector::run`] ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum LeaderElectionError {
    /// The API server refused a verb on the Lease (RBAC).
    #[error("forbidden to {verb} leases in namespace {namespace:?}: {message}")]
    Rbac {
        /// `get`, `create` or `update`.
        verb: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
}

/// What this replica may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds the Lease: it may ship state, stamped with `epoch`.
    Leader {
        /// The term's epoch (`leaseTransitions`); higher in every later term.
        epoch: u64,
        /// When the term began (local monotonic clock).
        since: Instant,
    },
    /// Another replica leads, or none: ship no state.
    Standby {
        /// The other replica the Lease names, as last read; `None` if it
        /// names none, or this replica without a running term (fenced, not
        /// yet confirmed), or nothing has been read yet.
        holder: Option<String>,
    },
}

impl Leadership {
    /// Whether this is [`Leadership::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }

    /// The epoch while leading.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Leadership::Leader { epoch, .. } => Some(*epoch),
            Leadership::Standby { .. } => None,
        }
    }
}

/// Why an attempt failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{verb} of the Lease failed: {source}")]
    Api {
        verb: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("no answer from the Kubernetes API within {0:?}")]
    Timeout(Duration),
    #[error("epoch {0} does not fit leaseTransitions (int32)")]
    EpochOverflow(u64),
}

impl AttemptError {
    fn api(verb: &'static str) -> impl FnOnce(kube::Error) -> AttemptError {
        move |source| AttemptError::Api { verb, source }
    }

    /// The API status code, if the server answered with one.
    fn code(&self) -> Option<u16> {
        match self {
            AttemptError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Publishes [`Leadership`] changes (logging each), and `Standby` when
/// dropped, so a consumer never keeps reading `Leader` from a dead elector.
#[derive(Debug)]
struct Publisher {
    tx: watch::Sender<Leadership>,
    lease: String,
    identity: String,
}

impl Publisher {
    fn publish(&self, next: Leadership) {
        self.tx.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            let (lease, identity) = (&self.lease, &self.identity);
            match (&*current, &next) {
                (_, Leadership::Leader { epoch, .. }) => {
                    tracing::info!(lease, holder = identity, epoch, "this replica leads");
                }
                (Leadership::Leader { epoch, .. }, Leadership::Standby { holder }) => {
                    let holder = holder.as_deref().unwrap_or("none");
                    tracing::warn!(
                        lease,
                        identity,
                        epoch,
                        holder,
                        "this replica stopped leading"
                    );
                }
                (Leadership::Standby { .. }, Leadership::Standby { holder }) => {
                    let holder = holder.as_deref().unwrap_or("none");
                    tracing::info!(lease, identity, holder, "lease holder changed; standing by");
                }
            }
            *current = next;
            true
        });
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.publish(Leadership::Standby { holder: None });
    }
}

/// One replica's participant in the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    publisher: Publisher,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl LeaderElector {
    /// An elector for `config` (validated) talking through `client`.
    pub fn new(
        client: kube::Client,
        config: LeaderElectionConfig,
    ) -> Result<Self, LeaderConfigError> {
        config.validate()?;
        let publisher = Publisher {
            tx: watch::channel(Leadership::Standby { holder: None }).0,
            lease: format!("{}/{}", config.namespace, config.lease_name),
            identity: config.identity.clone(),
        };
        Ok(LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            publisher,
        })
    }

    /// This replica's leadership, starting as `Standby { holder: None }`.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.publisher.tx.subscribe()
    }

    /// Competes until `stop` turns true (or its sender is dropped), then
    /// steps down and releases the Lease if it holds it. Returns an error
    /// only for a `403` (after stepping down).
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), LeaderElectionError> {
        let mut election = Election::new(&self.config);
        let mut next_attempt = now();
        let mut retried_at_once = false;
        let mut failing = false;
        let result = loop {
            // Sleep until the next attempt, waking at the fence deadline.
            let wake = election
                .fence_deadline()
                .map_or(next_attempt, |fence| fence.min(next_attempt));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.wait_for(|stop| *stop) => break Ok(()),
            }
            self.fence_if_due(&mut election);
            if now() < next_attempt {
                continue;
            }
            let started = now();
            let limit = election
                .fence_deadline()
                .map_or(started + self.config.renew_deadline, |fence| {
                    fence.min(started + self.config.renew_deadline)
                });
            let outcome = tokio::select! {
                r = tokio::time::timeout_at(limit.into(), self.attempt(&mut election, started)) => {
                    r.unwrap_or_else(|_| Err(AttemptError::Timeout(limit - started)))
                }
                _ = stop.wait_for(|stop| *stop) => break Ok(()),
            };
            self.publisher.publish(election.leadership());
            self.fence_if_due(&mut election);
            let conflict = outcome.as_ref().err().and_then(AttemptError::code) == Some(409);
            match outcome {
                Ok(()) if failing => {
                    tracing::info!(
                        lease = self.publisher.lease,
                        "Lease reads and writes succeed again"
                    );
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if e.code() == Some(403) => break Err(self.rbac(e)),
                Err(error) if conflict => tracing::debug!(%error, "lost a Lease write race"),
                Err(error) if failing => tracing::debug!(%error, "Lease attempt failed again"),
                Err(error) => {
                    tracing::warn!(lease = self.publisher.lease, %error, "Lease attempt failed; retrying every retry period");
                    failing = true;
                }
            }
            // A lost race re-reads at once (once), to learn the winner.
            next_attempt = if conflict && !retried_at_once {
                retried_at_once = true;
                now()
            } else {
                retried_at_once = false;
                let periodic = (started + self.period(&election)).max(now());
                // A standby reads again the moment the holder's Lease
                // expires, if that comes before its next periodic read.
                election
                    .expiry()
                    .filter(|&expiry| expiry > now())
                    .map_or(periodic, |expiry| periodic.min(expiry))
            };
        };
        self.step_down_and_release(&mut election).await;
        result
    }

    fn period(&self, election: &Election) -> Duration {
        if election.leadership().is_leader() {
            self.config.retry_period
        } else {
            self.config
                .retry_period
                .mul_f64(1.0 + JITTER * rand::random::<f64>())
        }
    }

    fn fence_if_due(&self, election: &mut Election) {
        if election.tick(now()) {
            tracing::warn!(
                lease = self.publisher.lease,
                identity = self.config.identity,
                renew_deadline = ?self.config.renew_deadline,
                "no successful renewal within the renew deadline: stepping down (fenced)"
            );
            self.publisher.publish(election.leadership());
        }
    }

    fn rbac(&self, error: AttemptError) -> LeaderElectionError {
        let (verb, message) = match error {
            AttemptError::Api {
                verb,
                source: kube::Error::Api(status),
            } => (verb, status.message),
            other => ("access", other.to_string()),
        };
        LeaderElectionError::Rbac {
            verb,
            namespace: self.config.namespace.clone(),
            message,
        }
    }

    /// One read and, if the election says so, one write.
    async fn attempt(&self, election: &mut Election, started: Instant) -> Result<(), AttemptError> {
        let name = &self.config.lease_name;
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(AttemptError::api("get"))?;
        let action = election.observe(now(), current.as_ref().map(LeaseView::of));
        let written = match (action, current) {
            (Action::Wait, _) => return Ok(()),
            (Action::Create { .. }, _) => {
                let mut lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                };
                self.stamp(&mut lease, action)?;
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map_err(AttemptError::api("create"))?
            }
            (Action::Acquire { .. } | Action::Renew, Some(mut lease)) => {
                self.stamp(&mut lease, action)?;
                self.api
                    .replace(name, &PostParams::default(), &lease)
                    .await
                    .map_err(AttemptError::api("update"))?
            }
            (Action::Acquire { .. } | Action::Renew, None) => return Ok(()),
        };
        election.written(action, started, now(), LeaseView::of(&written));
        Ok(())
    }

    /// Writes this replica's claim into `lease` (keeping its resourceVersion,
    /// so the replace is checked against the version just read).
    fn stamp(&self, lease: &mut Lease, action: Action) -> Result<(), AttemptError> {
        let time = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
        spec.renew_time = Some(time.clone());
        if let Action::Create { epoch } | Action::Acquire { epoch } = action {
            spec.acquire_time = Some(time);
            spec.lease_transitions =
                Some(i32::try_from(epoch).map_err(|_| AttemptError::EpochOverflow(epoch))?);
        }
        Ok(())
    }

    /// Publishes `Standby`, then clears the holder if the Lease still names
    /// this replica, within the renew deadline.
    async fn step_down_and_release(&self, election: &mut Election) {
        election.stop();
        self.publisher.publish(Leadership::Standby { holder: None });
        let name = &self.config.lease_name;
        let release = async {
            let Some(mut lease) = self.api.get_opt(name).await? else {
                return Ok(false);
            };
            if !election.holds(&LeaseView::of(&lease)) {
                return Ok(false);
            }
            let time = MicroTime(Timestamp::now());
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(time.clone());
            spec.acquire_time = Some(time);
            self.api
                .replace(name, &PostParams::default(), &lease)
                .await?;
            Ok::<_, kube::Error>(true)
        };
        let lease = &self.publisher.lease;
        match tokio::time::timeout(self.config.renew_deadline, release).await {
            Ok(Ok(true)) => tracing::info!(lease, "released the Lease"),
            Ok(Ok(false)) => {
                tracing::debug!(lease, "the Lease names another holder; nothing to release")
            }
            Ok(Err(error)) => {
                tracing::warn!(lease, %error, "could not release the Lease; others take it once it expires");
            }
            Err(_) => tracing::warn!(
                lease,
                "releasing the Lease timed out; others take it once it expires"
            ),
        }
    }
}
