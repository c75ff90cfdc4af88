//! [`KubeSource`]: watches a cluster and ships
//! [`ClusterRecord`](telemetry_schema::ClusterRecord)s into a sink.
//!
//! This module owns the source's event loop: one kube-runtime watcher per
//! watched resource (Pods, autoscaling/v2 HPAs, `SuccessfulRescale` Events)
//! and per namespace (or one cluster-wide; `watches`), the metrics poller,
//! snapshots, readiness, batching (`batch`), the handling of watch failures
//! and, for replicas that elect a leader, what each role ships (`runner`).
//!
//! Record rules:
//! - A watcher's initial list (and every relist, e.g. after `410 Gone`) is
//!   buffered until its `InitDone`, then the local store is updated and a
//!   snapshot of that kind (`SnapshotBegin{kinds:[Pod]}`, every pod,
//!   `SnapshotEnd`) is shipped, so the receiver forgets what disappeared
//!   while the watch was broken. With several namespaces, the first snapshot
//!   of a kind waits for all of them.
//! - Afterwards an applied object is shipped as an upsert if its converted
//!   form changed; a deleted one as a delete.
//! - When the sink's connection counter changes (the link reconnected), a
//!   snapshot of both kinds is re-sent from the store, followed by the last
//!   usage of every pod.
//! - Pod usage is only shipped for pods in the store.
//! - Scale events go through [`ScaleTracker`] (counted once, persisted in the
//!   state directory) and are handled only after the HPAs are listed, so the
//!   replica count before a rescale is known. With a label selector, only
//!   rescales of HPAs matching it are shipped. The label selector applies to
//!   pods, HPAs and pod metrics.
//! - Records are batched: a batch goes to the sink after `flush_interval` or
//!   at `max_batch` records.
//!
//! Leader election ([`KubeSource::with_leadership`]): only the leader ships.
//! A standby keeps its watches, store and metrics poll running (the poll
//! at a quarter of the leader's rate, and at once on a takeover; it is
//! ready once pods and HPAs are listed) and ships nothing — no state, no
//! usage, no scale events, no present — while its link stays connected to
//! deliver any backlog of an earlier term. The rescale events it sees are
//! held, not marked shipped. On becoming leader it sets the present state
//! and queues a full snapshot at once, stamped with the term's epoch
//! ([`RecordSink::set_leader_epoch`]), then ships every held rescale
//! occurrence it has not shipped itself (its tracker's seen set holds only
//! what this replica shipped; the receiver counts each key once, whichever
//! replica sent it). On losing the lease, or being fenced, it stops at
//! once.
//!
//! Failures: a 403 from any watch or list ends [`KubeSource::run`] with
//! [`KubeSourceError::Rbac`] naming the verb and resource; a 400 on a list
//! (a selector the server rejects) ends it with
//! [`KubeSourceError::Rejected`]. Everything else (API server down, watch
//! cut, resourceVersion expired) is retried with backoff, logged once per
//! outage; the kube watcher resumes from the last resourceVersion or relists.

mod batch;
mod held;
mod runner;
#[cfg(test)]
mod tests;
mod watches;

use std::{path::PathBuf, time::Duration};

use futures_util::{stream::SelectAll, Stream, StreamExt};
use telemetry_schema::PodUsage;
use tokio::sync::{mpsc, watch};

use crate::sink::{RecordSink, SinkError};

use self::{runner::Runner, watches::Item};
use super::{
    events::{ScaleTracker, StateError},
    leader::Leadership,
    metrics::MetricsPoller,
};

/// The field selector of the Events watch.
pub const EVENTS_FIELD_SELECTOR: &str = "reason=SuccessfulRescale";

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct KubeSourceConfig {
    /// Namespaces to watch; empty watches all namespaces with one watch per
    /// resource.
    pub namespaces: Vec<String>,
    /// Label selector for pods, HPAs and pod metrics (e.g. `app=web`).
    pub label_selector: Option<String>,
    /// How often pod metrics are listed (default 15 s).
    pub metrics_interval: Duration,
    /// How often an absent or forbidden metrics API is retried (default 60 s).
    pub metrics_retry_interval: Duration,
    /// Where the scale-event state is kept (created if missing).
    pub state_dir: PathBuf,
    /// Longest a record waits before it is handed to the sink (default 100 ms).
    pub flush_interval: Duration,
    /// Records per sink batch (default 500).
    pub max_batch: usize,
    /// Server-side timeout of each watch request (default 290 s); the
    /// watcher reconnects from the last resourceVersion when it ends.
    pub watch_timeout: Duration,
    /// Longest pause between retries of a failing watch (default 30 s).
    pub max_backoff: Duration,
}

impl KubeSourceConfig {
    /// Defaults with the given state directory: all namespaces, no selector.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            namespaces: Vec::new(),
            label_selector: None,
            metrics_interval: Duration::from_secs(15),
            metrics_retry_interval: Duration::from_secs(60),
            state_dir: state_dir.into(),
            flush_interval: Duration::from_millis(100),
            max_batch: 500,
            watch_timeout: Duration::from_secs(290),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Watch scopes: `None` for all namespaces, else each namespace once.
    fn scopes(&self) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = Vec::new();
        for ns in &self.namespaces {
            if !out.iter().any(|s| s.as_deref() == Some(ns.as_str())) {
                out.push(Some(ns.clone()));
            }
        }
        if out.is_empty() {
            out.push(None);
        }
        out
    }
}

/// Why [`KubeSource::run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The service account lacks a permission.
    #[error("{}", rbac_message(verb, resource, group, namespace.as_deref()))]
    Rbac {
        /// `list` or `watch`.
        verb: &'static str,
        /// Plural resource name, e.g. `horizontalpodautoscalers`.
        resource: &'static str,
        /// API group (`""` for the core group).
        group: &'static str,
        /// The namespace, for a namespaced watch.
        namespace: Option<String>,
    },
    /// The API server rejected a request as malformed (400).
    #[error(
        "the API server rejected the {verb} of {resource}: {message} (check the label selector)"
    )]
    Rejected {
        /// `list` or `watch`.
        verb: &'static str,
        /// Plural resource name.
        resource: &'static str,
        /// The server's message.
        message: String,
    },
    /// The scale-event state directory is unusable.
    #[error("scale-event state: {0}")]
    State(#[from] StateError),
    /// The sink refused records.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Every watch stream ended (cannot happen with kube's watcher).
    #[error("all watch streams ended")]
    WatchesEnded,
}

fn rbac_message(verb: &str, resource: &str, group: &str, namespace: Option<&str>) -> String {
    let scope = namespace.map_or_else(String::new, |ns| format!(" in namespace \"{ns}\""));
    format!(
        "RBAC: the service account may not \"{verb}\" \"{resource}\" (group \"{group}\"){scope} — check the ClusterRole in k8s/sender/"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Watches a cluster and ships records; see the module documentation.
#[derive(Debug)]
pub struct KubeSource {
    config: KubeSourceConfig,
    ready: watch::Sender<bool>,
    leadership: Option<watch::Receiver<Leadership>>,
}

impl KubeSource {
    /// A source with `config`; nothing happens until [`KubeSource::run`].
    pub fn new(config: KubeSourceConfig) -> Self {
        Self {
            config,
            ready: watch::channel(false).0,
            leadership: None,
        }
    }

    /// Ships only while `leadership` reads [`Leadership::Leader`], stamped
    /// with its epoch (see the module documentation); a closed channel
    /// counts as standing by.
    pub fn with_leadership(mut self, leadership: watch::Receiver<Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Becomes `true` once the first complete lists of pods and of HPAs
    /// (all watched namespaces) are in: shipped as snapshots, or, by a
    /// standby, held ready for a takeover.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs until `shutdown` becomes `true` (or its sender is dropped), or a
    /// fatal error (RBAC, rejected selector, unusable state directory, sink
    /// failure). Pending records are flushed and the scale-event state is
    /// written on the way out. The error is returned, not logged.
    pub async fn run<S: RecordSink>(
        self,
        client: kube::Client,
        sink: &S,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), KubeSourceError> {
        let tracker = ScaleTracker::open(&self.config.state_dir, now_ms())?;
        let scopes = self.config.scopes();
        let elected = self.leadership.is_some();
        let mut runner = Runner::new(&self.config, &scopes, tracker, self.ready, elected);
        let mut watches = futures_util::stream::select_all(watches::streams(
            &runner.slots,
            &client,
            &self.config,
        ));
        let (usage_tx, usage_rx) = mpsc::channel(1);
        let poller = MetricsPoller {
            client: client.clone(),
            scopes,
            label_selector: self.config.label_selector.clone(),
            interval: self.config.metrics_interval,
            retry_interval: self.config.metrics_retry_interval,
            leadership: self.leadership.clone(),
        };
        let poller = AbortOnDrop(tokio::spawn(poller.run(runner.ready.subscribe(), usage_tx)));
        let mut inputs = Inputs::new(sink.connections(), usage_rx, self.leadership, shutdown);
        tracing::info!(
            namespaces = ?self.config.namespaces,
            label_selector = ?self.config.label_selector,
            state_dir = %self.config.state_dir.display(),
            leader_elected = elected,
            "Kubernetes source starting"
        );
        let result = loop {
            let input = inputs.next(&mut watches, runner.batch.deadline()).await;
            match runner.on_input(input, sink).await {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(poller);
        let flushed = runner.batch.flush(sink).await;
        if let Err(error) = runner.tracker.flush() {
            tracing::error!(%error, "could not write the scale-event state on shutdown");
        }
        tracing::info!(ok = result.is_ok(), "Kubernetes source stopped");
        result?;
        flushed?;
        Ok(())
    }
}

/// One thing for the source to handle. Each is moved once into its
/// handler (a watch item as it came from the stream; see `Item`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Input {
    /// Shutdown requested.
    Stop,
    /// The batch's flush interval passed.
    FlushDue,
    /// The link (re)connected: the sink's connection counter.
    Connected(u64),
    /// A metrics poll.
    Usage(Vec<PodUsage>),
    /// This replica's leadership changed.
    Leadership(Leadership),
    /// A watch produced something.
    Watch(Item),
    /// Every watch stream ended.
    WatchesEnded,
}

/// Where inputs come from, apart from the watches.
struct Inputs {
    conns: Option<watch::Receiver<u64>>,
    usage: Option<mpsc::Receiver<Vec<PodUsage>>>,
    leadership: Option<watch::Receiver<Leadership>>,
    shutdown: watch::Receiver<bool>,
}

impl Inputs {
    fn new(
        mut conns: watch::Receiver<u64>,
        usage: mpsc::Receiver<Vec<PodUsage>>,
        mut leadership: Option<watch::Receiver<Leadership>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        conns.borrow_and_update();
        // The leadership at the start is news too.
        if let Some(l) = &mut leadership {
            l.mark_changed();
        }
        Self {
            conns: Some(conns),
            usage: Some(usage),
            leadership,
            shutdown,
        }
    }

    /// The next input, in priority order: stop, a due flush, leadership,
    /// reconnections, usage, watches.
    async fn next(
        &mut self,
        watches: &mut SelectAll<impl Stream<Item = Item> + Unpin>,
        deadline: Option<tokio::time::Instant>,
    ) -> Input {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => return Input::Stop,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    return Input::FlushDue;
                }
                changed = changed(&mut self.leadership), if self.leadership.is_some() => match changed {
                    Some(l) => return Input::Leadership(l),
                    None => {
                        self.leadership = None;
                        return Input::Leadership(Leadership::Standby { holder: None });
                    }
                },
                changed = changed(&mut self.conns), if self.conns.is_some() => match changed {
                    Some(n) => return Input::Connected(n),
                    None => self.conns = None,
                },
                usage = recv(&mut self.usage), if self.usage.is_some() => match usage {
                    Some(usage) => return Input::Usage(usage),
                    None => self.usage = None,
                },
                item = watches.next() => {
                    return item.map_or(Input::WatchesEnded, Input::Watch);
                }
            }
        }
    }
}

/// The next value of `rx`; `None` once its sender is gone (or without one).
async fn changed<T: Clone>(rx: &mut Option<watch::Receiver<T>>) -> Option<T> {
    let rx = rx.as_mut()?;
    rx.changed().await.ok()?;
    Some(rx.borrow_and_update().clone())
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    rx.as_mut()?.recv().await
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
