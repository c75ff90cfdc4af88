//! [`KubeSource`]: watches a cluster and ships [`ClusterRecord`]s into a sink.
//!
//! This module owns the source's event loop: one kube-runtime watcher per
//! watched resource (Pods, autoscaling/v2 HPAs, `SuccessfulRescale` Events)
//! and per namespace (or one cluster-wide), the metrics poller, snapshots,
//! readiness, batching and the handling of watch failures.
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
//! Failures: a 403 from any watch or list ends [`KubeSource::run`] with
//! [`KubeSourceError::Rbac`] naming the verb and resource; a 400 on a list
//! (a selector the server rejects) ends it with
//! [`KubeSourceError::Rejected`]. Everything else (API server down, watch
//! cut, resourceVersion expired) is retried with backoff, logged once per
//! outage; the kube watcher resumes from the last resourceVersion or relists.

use std::{
    collections::VecDeque,
    path::PathBuf,
    time::{Duration, Instant},
};

use futures_util::{stream::BoxStream, StreamExt};
use k8s_openapi::{
    api::{
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Event, Pod},
    },
    NamespaceResourceScope,
};
use kube::{
    api::Api,
    runtime::{
        utils::Backoff,
        watcher::{self, watcher},
        WatchStreamExt,
    },
    Resource,
};
use serde::de::DeserializeOwned;
use telemetry_schema::{ClusterRecord, HpaInfo, ObjectKind, ObjectRef, PodInfo};
use tokio::sync::{mpsc, watch};

use crate::sink::{RecordSink, SinkError};

use super::{
    convert::{hpa_info, hpa_ref, pod_info, pod_ref},
    events::{ScaleTracker, StateError},
    metrics::MetricsPoller,
    store::Store,
};

/// Rescale events held back until the HPAs are listed.
const MAX_PENDING_EVENTS: usize = 10_000;
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

/// The watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Pods,
    Hpas,
    Events,
}

impl Watched {
    fn plural(self) -> &'static str {
        match self {
            Watched::Pods => "pods",
            Watched::Hpas => "horizontalpodautoscalers",
            Watched::Events => "events",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Watched::Pods | Watched::Events => "",
            Watched::Hpas => "autoscaling",
        }
    }
}

/// One watcher's bookkeeping.
#[derive(Debug)]
struct Slot {
    what: Watched,
    scope: Option<String>,
    listed: bool,
    failing: bool,
    pods: Vec<PodInfo>,
    hpas: Vec<HpaInfo>,
}

impl Slot {
    fn namespace(&self) -> &str {
        self.scope.as_deref().unwrap_or("*")
    }
}

/// A watcher's output, tagged with its slot. Each is moved once from the
/// stream into its handler; boxing the large pod variant would only add an
/// allocation per watch event.
#[allow(clippy::large_enum_variant)]
enum Item {
    Pod(usize, Result<watcher::Event<Pod>, watcher::Error>),
    Hpa(
        usize,
        Result<watcher::Event<HorizontalPodAutoscaler>, watcher::Error>,
    ),
    Ev(usize, Result<watcher::Event<Event>, watcher::Error>),
}

/// Exponential backoff for failing watches: 500 ms doubling up to a maximum;
/// it starts over only after a quiet period (as client-go's reflector does),
/// since the watcher reports success (`Init`) before a relist can fail again.
#[derive(Debug)]
struct WatchBackoff {
    min: Duration,
    max: Duration,
    quiet: Duration,
    current: Option<Duration>,
    last: Option<Instant>,
}

impl WatchBackoff {
    fn new(max: Duration) -> Self {
        let min = Duration::from_millis(500).min(max);
        Self {
            min,
            max,
            quiet: max.saturating_mul(2).max(Duration::from_secs(2)),
            current: None,
            last: None,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = match self.current {
            None => self.min,
            Some(c) => c.saturating_mul(2).min(self.max),
        };
        self.current = Some(d);
        self.last = Some(Instant::now());
        Some(d)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        if self.last.is_none_or(|l| l.elapsed() >= self.quiet) {
            self.current = None;
        }
    }
}

fn forbidden_verb(err: &watcher::Error) -> Option<&'static str> {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.is_forbidden() => Some("list"),
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.is_forbidden() =>
        {
            Some("watch")
        }
        watcher::Error::WatchError(s) if s.is_forbidden() => Some("watch"),
        _ => None,
    }
}

fn bad_request(err: &watcher::Error) -> Option<(&'static str, String)> {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 400 => {
            Some(("list", s.message.clone()))
        }
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 400 => {
            Some(("watch", s.message.clone()))
        }
        _ => None,
    }
}

fn is_gone(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchError(s) if s.code == 410)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records waiting for the sink.
#[derive(Debug)]
struct Batcher {
    buf: Vec<ClusterRecord>,
    since: Option<Instant>,
    interval: Duration,
    max: usize,
}

impl Batcher {
    fn push(&mut self, r: ClusterRecord) {
        if self.buf.is_empty() {
            self.since = Some(Instant::now());
        }
        self.buf.push(r);
    }

    fn extend(&mut self, rs: Vec<ClusterRecord>) {
        for r in rs {
            self.push(r);
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since
            .map(|s| tokio::time::Instant::from_std(s + self.interval))
    }

    fn full(&self) -> bool {
        self.buf.len() >= self.max
    }

    async fn flush(&mut self, sink: &impl RecordSink) -> Result<(), SinkError> {
        self.since = None;
        while !self.buf.is_empty() {
            let rest = self.buf.split_off(self.max.min(self.buf.len()));
            let head = std::mem::replace(&mut self.buf, rest);
            sink.send_batch(head).await?;
        }
        Ok(())
    }
}

/// Watches a cluster and ships records; see the module documentation.
#[derive(Debug)]
pub struct KubeSource {
    config: KubeSourceConfig,
    ready: watch::Sender<bool>,
}

impl KubeSource {
    /// A source with `config`; nothing happens until [`KubeSource::run`].
    pub fn new(config: KubeSourceConfig) -> Self {
        Self {
            config,
            ready: watch::channel(false).0,
        }
    }

    /// Becomes `true` once the first complete lists of pods and of HPAs
    /// (all watched namespaces) have been shipped as snapshots.
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
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), KubeSourceError> {
        let tracker = ScaleTracker::open(&self.config.state_dir, now_ms())?;
        let scopes = self.config.scopes();
        let mut runner = Runner::new(&self.config, &scopes, tracker, self.ready);
        let mut watches = futures_util::stream::select_all(runner.streams(&client, &self.config));

        let (usage_tx, mut usage_rx) = mpsc::channel(1);
        let poller = MetricsPoller {
            client: client.clone(),
            scopes: scopes.clone(),
            label_selector: self.config.label_selector.clone(),
            interval: self.config.metrics_interval,
            retry_interval: self.config.metrics_retry_interval,
        };
        let poller = AbortOnDrop(tokio::spawn(poller.run(runner.ready.subscribe(), usage_tx)));

        let mut conns = sink.connections();
        conns.borrow_and_update();
        let mut conns_open = true;
        let mut usage_open = true;
        let shutdown_signal = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(shutdown_signal);
        tracing::info!(
            namespaces = ?self.config.namespaces,
            label_selector = ?self.config.label_selector,
            state_dir = %self.config.state_dir.display(),
            "Kubernetes source starting"
        );

        let result = loop {
            let deadline = runner.batch.deadline();
            let step: Result<(), KubeSourceError> = tokio::select! {
                biased;
                _ = &mut shutdown_signal => break Ok(()),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    runner.batch.flush(sink).await.map_err(KubeSourceError::from)
                }
                changed = conns.changed(), if conns_open => {
                    match changed {
                        Ok(()) => {
                            let n = *conns.borrow_and_update();
                            // Everything the store reflects goes to the spool
                            // first, so the present covers it.
                            match runner.batch.flush(sink).await {
                                Ok(()) => runner.on_reconnect(n, sink).map_err(KubeSourceError::from),
                                Err(e) => Err(e.into()),
                            }
                        }
                        Err(_) => {
                            conns_open = false;
                            Ok(())
                        }
                    }
                }
                usage = usage_rx.recv(), if usage_open => {
                    match usage {
                        Some(usage) => runner.on_usage(usage),
                        None => usage_open = false,
                    }
                    Ok(())
                }
                item = watches.next() => match item {
                    Some(item) => runner.on_item(item),
                    None => Err(KubeSourceError::WatchesEnded),
                },
            };
            if let Err(e) = step {
                break Err(e);
            }
            if runner.batch.full() {
                if let Err(e) = runner.batch.flush(sink).await {
                    break Err(e.into());
                }
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

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The state of a running source.
struct Runner {
    slots: Vec<Slot>,
    store: Store,
    tracker: ScaleTracker,
    batch: Batcher,
    pods_ready: bool,
    hpas_ready: bool,
    ready: watch::Sender<bool>,
    next_snapshot_id: u64,
    pending_events: VecDeque<Event>,
    warned_pending_overflow: bool,
    only_known_hpas: bool,
    label_selector: Option<String>,
}

impl Runner {
    fn new(
        config: &KubeSourceConfig,
        scopes: &[Option<String>],
        tracker: ScaleTracker,
        ready: watch::Sender<bool>,
    ) -> Self {
        let mut slots = Vec::new();
        for what in [Watched::Pods, Watched::Hpas, Watched::Events] {
            for scope in scopes {
                slots.push(Slot {
                    what,
                    scope: scope.clone(),
                    listed: false,
                    failing: false,
                    pods: Vec::new(),
                    hpas: Vec::new(),
                });
            }
        }
        Runner {
            slots,
            store: Store::default(),
            tracker,
            batch: Batcher {
                buf: Vec::new(),
                since: None,
                interval: config.flush_interval,
                max: config.max_batch.max(1),
            },
            pods_ready: false,
            hpas_ready: false,
            ready,
            // Distinct across restarts of the sender.
            next_snapshot_id: u64::try_from(now_ms())
                .unwrap_or_default()
                .saturating_mul(1000),
            pending_events: VecDeque::new(),
            warned_pending_overflow: false,
            only_known_hpas: config.label_selector.is_some(),
            label_selector: config.label_selector.clone(),
        }
    }

    fn streams(
        &self,
        client: &kube::Client,
        config: &KubeSourceConfig,
    ) -> Vec<BoxStream<'static, Item>> {
        let timeout = u32::try_from(config.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
        // Small list pages bound the memory a (re)list needs at once: only
        // one page of full API objects is decoded at a time.
        let base = watcher::Config::default()
            .timeout(timeout)
            .page_size(LIST_PAGE_SIZE);
        let labelled = match &self.label_selector {
            Some(sel) => base.clone().labels(sel),
            None => base.clone(),
        };
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let scope = slot.scope.as_deref();
                match slot.what {
                    Watched::Pods => {
                        watch_stream::<Pod>(client, scope, labelled.clone(), config.max_backoff)
                            .map(move |r| Item::Pod(i, r))
                            .boxed()
                    }
                    Watched::Hpas => watch_stream::<HorizontalPodAutoscaler>(
                        client,
                        scope,
                        labelled.clone(),
                        config.max_backoff,
                    )
                    .map(move |r| Item::Hpa(i, r))
                    .boxed(),
                    Watched::Events => watch_stream::<Event>(
                        client,
                        scope,
                        base.clone().fields(EVENTS_FIELD_SELECTOR),
                        config.max_backoff,
                    )
                    .map(move |r| Item::Ev(i, r))
                    .boxed(),
                }
            })
            .collect()
    }

    fn snapshot_id(&mut self) -> u64 {
        self.next_snapshot_id = self.next_snapshot_id.wrapping_add(1);
        self.next_snapshot_id
    }

    fn update_ready(&self) {
        if self.pods_ready && self.hpas_ready && !*self.ready.borrow() {
            let (pods, hpas) = self.store.len();
            tracing::info!(pods, hpas, "Kubernetes source ready: pods and HPAs listed");
            self.ready.send_replace(true);
        }
    }

    fn on_item(&mut self, item: Item) -> Result<(), KubeSourceError> {
        // `Init` only announces a list attempt; anything after it proves the
        // watch works again.
        match &item {
            Item::Pod(i, Ok(ev)) if !matches!(ev, watcher::Event::Init) => self.watch_ok(*i),
            Item::Hpa(i, Ok(ev)) if !matches!(ev, watcher::Event::Init) => self.watch_ok(*i),
            Item::Ev(i, Ok(ev)) if !matches!(ev, watcher::Event::Init) => self.watch_ok(*i),
            _ => {}
        }
        match item {
            Item::Pod(i, Ok(ev)) => {
                let listed = matches!(ev, watcher::Event::InitDone);
                self.on_pod(i, ev);
                if listed {
                    crate::memory::release_free_memory();
                }
            }
            Item::Hpa(i, Ok(ev)) => self.on_hpa(i, ev),
            Item::Ev(i, Ok(ev)) => match ev {
                watcher::Event::InitApply(e) | watcher::Event::Apply(e) => self.on_k8s_event(e),
                watcher::Event::InitDone => {
                    tracing::debug!(namespace = self.slots[i].namespace(), "events listed");
                    self.slots[i].listed = true;
                }
                watcher::Event::Init | watcher::Event::Delete(_) => {}
            },
            Item::Pod(i, Err(e)) | Item::Hpa(i, Err(e)) | Item::Ev(i, Err(e)) => {
                self.watch_error(i, &e)?
            }
        }
        Ok(())
    }

    fn watch_ok(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.failing {
            slot.failing = false;
            tracing::info!(
                resource = slot.what.plural(),
                namespace = slot.namespace(),
                "watch recovered"
            );
        }
    }

    fn watch_error(&mut self, i: usize, err: &watcher::Error) -> Result<(), KubeSourceError> {
        let slot = &mut self.slots[i];
        if let Some(verb) = forbidden_verb(err) {
            return Err(KubeSourceError::Rbac {
                verb,
                resource: slot.what.plural(),
                group: slot.what.group(),
                namespace: slot.scope.clone(),
            });
        }
        if let Some((verb, message)) = bad_request(err) {
            return Err(KubeSourceError::Rejected {
                verb,
                resource: slot.what.plural(),
                message,
            });
        }
        if is_gone(err) {
            tracing::info!(
                resource = slot.what.plural(),
                namespace = slot.namespace(),
                "resourceVersion expired (410 Gone); relisting"
            );
        } else if slot.failing {
            tracing::debug!(resource = slot.what.plural(), namespace = slot.namespace(), error = %err, "watch still failing");
        } else {
            slot.failing = true;
            tracing::warn!(
                resource = slot.what.plural(),
                namespace = slot.namespace(),
                error = %err,
                "watch failed; retrying with backoff"
            );
        }
        Ok(())
    }

    fn all_listed(&self, what: Watched) -> bool {
        self.slots
            .iter()
            .filter(|s| s.what == what)
            .all(|s| s.listed)
    }

    fn on_pod(&mut self, i: usize, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.slots[i].pods.clear(),
            watcher::Event::InitApply(p) => self.slots[i].pods.push(pod_info(&p)),
            watcher::Event::InitDone => {
                let slot = &mut self.slots[i];
                let items = std::mem::take(&mut slot.pods);
                let relist = slot.listed;
                slot.listed = true;
                let scope = slot.scope.clone();
                tracing::info!(
                    namespace = slot.namespace(),
                    pods = items.len(),
                    relist,
                    "pods listed"
                );
                self.store.replace_pods(scope.as_deref(), items);
                if self.all_listed(Watched::Pods) {
                    self.pods_ready = true;
                    let id = self.snapshot_id();
                    self.batch
                        .extend(self.store.snapshot(id, &[ObjectKind::Pod], false));
                    self.update_ready();
                }
            }
            watcher::Event::Apply(p) => {
                let info = pod_info(&p);
                if self.store.upsert_pod(info.clone()) && self.pods_ready {
                    self.batch.push(ClusterRecord::PodUpsert(info));
                }
            }
            watcher::Event::Delete(p) => {
                let r = pod_ref(&p);
                if self.store.delete_pod(&r) && self.pods_ready {
                    self.batch.push(ClusterRecord::PodDelete(r));
                }
            }
        }
    }

    fn on_hpa(&mut self, i: usize, ev: watcher::Event<HorizontalPodAutoscaler>) {
        match ev {
            watcher::Event::Init => self.slots[i].hpas.clear(),
            watcher::Event::InitApply(h) => {
                self.tracker.observe_hpa(&h);
                self.slots[i].hpas.push(hpa_info(&h));
            }
            watcher::Event::InitDone => {
                let slot = &mut self.slots[i];
                let items = std::mem::take(&mut slot.hpas);
                let relist = slot.listed;
                slot.listed = true;
                let scope = slot.scope.clone();
                tracing::info!(
                    namespace = slot.namespace(),
                    hpas = items.len(),
                    relist,
                    "HPAs listed"
                );
                self.store.replace_hpas(scope.as_deref(), items);
                if self.all_listed(Watched::Hpas) {
                    let first = !self.hpas_ready;
                    self.hpas_ready = true;
                    let id = self.snapshot_id();
                    self.batch
                        .extend(self.store.snapshot(id, &[ObjectKind::Hpa], false));
                    self.update_ready();
                    if first {
                        while let Some(e) = self.pending_events.pop_front() {
                            self.process_event(&e);
                        }
                    }
                }
            }
            watcher::Event::Apply(h) => {
                self.tracker.observe_hpa(&h);
                let info = hpa_info(&h);
                if self.store.upsert_hpa(info.clone()) && self.hpas_ready {
                    self.batch.push(ClusterRecord::HpaUpsert(info));
                }
            }
            watcher::Event::Delete(h) => {
                let r = hpa_ref(&h);
                self.tracker.forget_hpa(&r);
                if self.store.delete_hpa(&r) && self.hpas_ready {
                    self.batch.push(ClusterRecord::HpaDelete(r));
                }
            }
        }
    }

    fn on_k8s_event(&mut self, e: Event) {
        if self.hpas_ready {
            self.process_event(&e);
            return;
        }
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            self.pending_events.pop_front();
            if !self.warned_pending_overflow {
                self.warned_pending_overflow = true;
                tracing::warn!(
                    max = MAX_PENDING_EVENTS,
                    "too many rescale events before the HPAs were listed; dropping the oldest"
                );
            }
        }
        self.pending_events.push_back(e);
    }

    fn process_event(&mut self, e: &Event) {
        let scale_events = self.tracker.on_event(e);
        if scale_events.is_empty() {
            return;
        }
        // Remember before shipping: a crash in between loses an occurrence
        // rather than counting it twice.
        if let Err(error) = self.tracker.persist() {
            tracing::error!(%error, "could not persist the scale-event state; a restart may count these rescales again");
        }
        for se in scale_events {
            let hpa = ObjectRef {
                namespace: se.namespace.clone(),
                name: se.hpa.clone(),
            };
            if self.only_known_hpas && !self.store.has_hpa(&hpa) {
                tracing::debug!(namespace = %se.namespace, hpa = %se.hpa, "rescale of an HPA outside the label selector");
                continue;
            }
            tracing::info!(
                namespace = %se.namespace,
                hpa = %se.hpa,
                old = se.old_replicas,
                new = se.new_replicas,
                key = %se.key,
                "HPA rescale"
            );
            self.batch.push(ClusterRecord::ScaleEvent(se));
        }
    }

    fn on_usage(&mut self, usage: Vec<telemetry_schema::PodUsage>) {
        if !self.pods_ready {
            return;
        }
        for u in usage {
            if self.store.set_usage(&u) {
                self.batch.push(ClusterRecord::PodUsage(u));
            }
        }
    }

    /// After a (re)connection: the full state becomes the sink's present
    /// (it reaches the receiver ahead of any backlog) and is queued as a
    /// snapshot behind the backlog.
    fn on_reconnect(&mut self, connection: u64, sink: &impl RecordSink) -> Result<(), SinkError> {
        let mut kinds = Vec::new();
        if self.pods_ready {
            kinds.push(ObjectKind::Pod);
        }
        if self.hpas_ready {
            kinds.push(ObjectKind::Hpa);
        }
        if kinds.is_empty() {
            tracing::debug!(
                connection,
                "link reconnected before the first lists; the initial snapshots follow"
            );
            return Ok(());
        }
        tracing::info!(
            connection,
            ?kinds,
            "link reconnected; re-sending a full snapshot"
        );
        let id = self.snapshot_id();
        let snapshot = self.store.snapshot(id, &kinds, true);
        sink.set_present(&snapshot)?;
        self.batch.extend(snapshot);
        Ok(())
    }
}

/// Objects per list page when a watch (re)lists.
const LIST_PAGE_SIZE: u32 = 100;

fn watch_stream<K>(
    client: &kube::Client,
    scope: Option<&str>,
    config: watcher::Config,
    max_backoff: Duration,
) -> impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, config).backoff(WatchBackoff::new(max_backoff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("nope", reason).with_code(code).boxed())
    }

    #[test]
    fn rbac_error_names_verb_resource_and_group() {
        let e = KubeSourceError::Rbac {
            verb: "watch",
            resource: "horizontalpodautoscalers",
            group: "autoscaling",
            namespace: None,
        };
        assert_eq!(
            e.to_string(),
            "RBAC: the service account may not \"watch\" \"horizontalpodautoscalers\" (group \"autoscaling\") — check the ClusterRole in k8s/sender/"
        );
        let e = KubeSourceError::Rbac {
            verb: "list",
            resource: "pods",
            group: "",
            namespace: Some("shop".into()),
        };
        assert!(
            e.to_string()
                .contains("\"list\" \"pods\" (group \"\") in namespace \"shop\""),
            "{e}"
        );
    }

    #[test]
    fn watcher_errors_are_classified() {
        assert_eq!(
            forbidden_verb(&watcher::Error::InitialListFailed(api(403, "Forbidden"))),
            Some("list")
        );
        assert_eq!(
            forbidden_verb(&watcher::Error::WatchStartFailed(api(403, "Forbidden"))),
            Some("watch")
        );
        assert_eq!(
            forbidden_verb(&watcher::Error::WatchError(
                Status::failure("x", "Forbidden").with_code(403).boxed()
            )),
            Some("watch")
        );
        assert_eq!(
            forbidden_verb(&watcher::Error::InitialListFailed(api(
                500,
                "InternalError"
            ))),
            None
        );
        let gone = watcher::Error::WatchError(
            Status::failure("too old", "Expired").with_code(410).boxed(),
        );
        assert!(is_gone(&gone));
        assert_eq!(forbidden_verb(&gone), None);
        assert_eq!(
            bad_request(&watcher::Error::InitialListFailed(api(400, "BadRequest"))),
            Some(("list", "nope".to_string()))
        );
    }

    #[test]
    fn backoff_grows_caps_and_resets_after_quiet() {
        let mut b = WatchBackoff::new(Duration::from_secs(2));
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
        assert_eq!(b.next(), Some(Duration::from_secs(1)));
        b.reset(); // too soon: keeps growing
        assert_eq!(b.next(), Some(Duration::from_secs(2)));
        assert_eq!(b.next(), Some(Duration::from_secs(2)));
        b.last = Some(Instant::now() - Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn scopes_dedupe_and_default_to_all() {
        let mut c = KubeSourceConfig::new("/tmp/x");
        assert_eq!(c.scopes(), vec![None]);
        c.namespaces = vec!["a".into(), "b".into(), "a".into()];
        assert_eq!(
            c.scopes(),
            vec![Some("a".to_string()), Some("b".to_string())]
        );
    }

    /// Records the size of every batch.
    #[derive(Default)]
    struct SizesSink {
        sizes: std::sync::Mutex<Vec<usize>>,
        inner: crate::sink::VecSink,
    }

    impl RecordSink for SizesSink {
        async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
            self.sizes.lock().unwrap().push(records.len());
            self.inner.send_batch(records).await
        }

        fn connections(&self) -> watch::Receiver<u64> {
            self.inner.connections()
        }
    }

    #[tokio::test]
    async fn batcher_splits_into_max_sized_batches() {
        let sink = SizesSink::default();
        let mut b = Batcher {
            buf: Vec::new(),
            since: None,
            interval: Duration::from_millis(100),
            max: 2,
        };
        assert!(b.deadline().is_none());
        for id in 0..5 {
            b.push(ClusterRecord::SnapshotEnd { id });
        }
        assert!(b.full());
        assert!(b.deadline().is_some());
        b.flush(&sink).await.unwrap();
        assert!(b.deadline().is_none());
        assert_eq!(*sink.sizes.lock().unwrap(), vec![2, 2, 1]);
        let got: Vec<u64> = sink
            .inner
            .records()
            .into_iter()
            .map(|r| match r {
                ClusterRecord::SnapshotEnd { id } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
