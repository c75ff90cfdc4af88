//! The state of a running Kubernetes source: the local store, the watch
//! slots, the scale tracker, the batch, readiness and this replica's role,
//! and what each watch item, usage poll, reconnection and leadership
//! change does to them.
//!
//! Roles: a source without leader election ships everything (`Alone`).
//! With it, a replica starts as a `Standby`: it keeps its watches, store
//! and metrics poll running and ships nothing, holding the rescale events
//! it sees ([`HeldEvents`]). On `Leader { epoch }` it takes over: the sink
//! stamps `epoch` from then on, the full state becomes the present and a
//! snapshot, the held rescale events are counted, and all of it is handed
//! to the sink at once. On `Standby` it stops at once: object state still
//! waiting in the batch is dropped (the next leader ships its own
//! snapshot), measurements observed while leading are handed over.

use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{Event, Pod},
};
use kube::runtime::watcher;
use telemetry_schema::{ClusterRecord, ObjectKind, ObjectRef, PodUsage};
use tokio::sync::watch;

use super::{
    batch::Batcher,
    held::HeldEvents,
    now_ms,
    watches::{bad_request, forbidden_verb, is_gone, Item, Slot, Watched},
    Input, KubeSourceConfig, KubeSourceError,
};
use crate::{
    kube::{
        convert::{hpa_info, hpa_ref, pod_info, pod_ref},
        events::ScaleTracker,
        leader::Leadership,
        store::Store,
    },
    sink::{RecordSink, SinkError},
};

/// What this replica may ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// No leader election: everything, without an epoch.
    Alone,
    /// Leading the term `epoch`: everything, stamped with it.
    Leader { epoch: u64 },
    /// Another replica leads (or none): nothing.
    Standby,
}

impl Role {
    fn ships(self) -> bool {
        self != Role::Standby
    }
}

/// The state of a running source.
pub(super) struct Runner {
    pub(super) slots: Vec<Slot>,
    store: Store,
    pub(super) tracker: ScaleTracker,
    pub(super) batch: Batcher,
    pods_ready: bool,
    hpas_ready: bool,
    pub(super) ready: watch::Sender<bool>,
    next_snapshot_id: u64,
    held: HeldEvents,
    only_known_hpas: bool,
    pub(super) role: Role,
}

impl Runner {
    /// A runner for `scopes`; with `elected` it starts standing by.
    pub(super) fn new(
        config: &KubeSourceConfig,
        scopes: &[Option<String>],
        tracker: ScaleTracker,
        ready: watch::Sender<bool>,
        elected: bool,
    ) -> Self {
        Runner {
            slots: Slot::all(scopes),
            store: Store::default(),
            tracker,
            batch: Batcher::new(config.flush_interval, config.max_batch),
            pods_ready: false,
            hpas_ready: false,
            ready,
            // Distinct across restarts of the sender.
            next_snapshot_id: u64::try_from(now_ms())
                .unwrap_or_default()
                .saturating_mul(1000),
            held: HeldEvents::default(),
            only_known_hpas: config.label_selector.is_some(),
            role: if elected { Role::Standby } else { Role::Alone },
        }
    }

    /// Handles one input; `Ok(false)` when the source is to stop.
    pub(super) async fn on_input(
        &mut self,
        input: Input,
        sink: &impl RecordSink,
    ) -> Result<bool, KubeSourceError> {
        match input {
            Input::Stop => return Ok(false),
            Input::FlushDue => self.batch.flush(sink).await?,
            Input::Connected(n) => {
                // Everything the store reflects goes to the spool first, so
                // the present covers it.
                self.batch.flush(sink).await?;
                self.on_reconnect(n, sink)?;
            }
            Input::Usage(usage) => self.on_usage(usage),
            Input::Leadership(leadership) => self.on_leadership(leadership, sink).await?,
            Input::Watch(item) => self.on_item(item)?,
            Input::WatchesEnded => return Err(KubeSourceError::WatchesEnded),
        }
        if self.batch.full() {
            self.batch.flush(sink).await?;
        }
        Ok(true)
    }

    fn snapshot_id(&mut self) -> u64 {
        self.next_snapshot_id = self.next_snapshot_id.wrapping_add(1);
        self.next_snapshot_id
    }

    /// Ready once pods and HPAs are listed (and, when this replica ships,
    /// shipped): a warm standby is ready to take over.
    fn update_ready(&self) {
        if self.pods_ready && self.hpas_ready && !*self.ready.borrow() {
            let (pods, hpas) = self.store.len();
            tracing::info!(pods, hpas, role = ?self.role, "Kubernetes source ready: pods and HPAs listed");
            self.ready.send_replace(true);
        }
    }

    /// Queues `record` for the sink if this replica ships.
    fn ship(&mut self, record: ClusterRecord) {
        if self.role.ships() {
            self.batch.push(record);
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
                watcher::Event::Delete(e) => self.held.forget(&e),
                watcher::Event::InitDone => {
                    tracing::debug!(namespace = self.slots[i].namespace(), "events listed");
                    self.slots[i].listed = true;
                }
                watcher::Event::Init => {}
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

    /// Marks slot `i` listed with `items` objects; returns its scope.
    fn listed(&mut self, i: usize, items: usize) -> Option<String> {
        let slot = &mut self.slots[i];
        let relist = slot.listed;
        slot.listed = true;
        let namespace = slot.namespace();
        if slot.what == Watched::Pods {
            tracing::info!(namespace, pods = items, relist, "pods listed");
        } else {
            tracing::info!(namespace, hpas = items, relist, "HPAs listed");
        }
        slot.scope.clone()
    }

    fn on_pod(&mut self, i: usize, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => self.slots[i].pods.clear(),
            watcher::Event::InitApply(p) => self.slots[i].pods.push(pod_info(&p)),
            watcher::Event::InitDone => {
                let items = std::mem::take(&mut self.slots[i].pods);
                let scope = self.listed(i, items.len());
                self.store.replace_pods(scope.as_deref(), items);
                if self.all_listed(Watched::Pods) {
                    self.pods_ready = true;
                    if self.role.ships() {
                        let id = self.snapshot_id();
                        let snapshot = self.store.snapshot(id, &[ObjectKind::Pod], false);
                        self.batch.extend(snapshot);
                    }
                    self.update_ready();
                }
            }
            watcher::Event::Apply(p) => {
                let info = pod_info(&p);
                if self.store.upsert_pod(info.clone()) && self.pods_ready {
                    self.ship(ClusterRecord::PodUpsert(info));
                }
            }
            watcher::Event::Delete(p) => {
                let r = pod_ref(&p);
                if self.store.delete_pod(&r) && self.pods_ready {
                    self.ship(ClusterRecord::PodDelete(r));
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
                let items = std::mem::take(&mut self.slots[i].hpas);
                let scope = self.listed(i, items.len());
                self.store.replace_hpas(scope.as_deref(), items);
                if self.all_listed(Watched::Hpas) {
                    self.hpas_ready = true;
                    if self.role.ships() {
                        let id = self.snapshot_id();
                        let snapshot = self.store.snapshot(id, &[ObjectKind::Hpa], false);
                        self.batch.extend(snapshot);
                    }
                    self.update_ready();
                    self.process_held();
                }
            }
            watcher::Event::Apply(h) => {
                self.tracker.observe_hpa(&h);
                let info = hpa_info(&h);
                if self.store.upsert_hpa(info.clone()) && self.hpas_ready {
                    self.ship(ClusterRecord::HpaUpsert(info));
                }
            }
            watcher::Event::Delete(h) => {
                let r = hpa_ref(&h);
                self.tracker.forget_hpa(&r);
                if self.store.delete_hpa(&r) && self.hpas_ready {
                    self.ship(ClusterRecord::HpaDelete(r));
                }
            }
        }
    }

    /// A rescale event: counted now if this replica ships and knows the
    /// HPAs, else held.
    fn on_k8s_event(&mut self, e: Event) {
        if self.hpas_ready && self.role.ships() {
            self.process_event(&e);
        } else {
            self.held.hold(e);
        }
    }

    /// Counts the held rescale events, if this replica ships and knows the
    /// HPAs.
    fn process_held(&mut self) {
        if !(self.hpas_ready && self.role.ships()) {
            return;
        }
        for e in self.held.drain() {
            self.process_event(&e);
        }
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

    fn on_usage(&mut self, usage: Vec<PodUsage>) {
        if !self.pods_ready {
            return;
        }
        for u in usage {
            if self.store.set_usage(&u) {
                self.ship(ClusterRecord::PodUsage(u));
            }
        }
    }

    /// After a (re)connection of a replica that ships: the full state
    /// becomes the sink's present (it reaches the receiver ahead of any
    /// backlog) and is queued as a snapshot behind the backlog.
    fn on_reconnect(&mut self, connection: u64, sink: &impl RecordSink) -> Result<(), SinkError> {
        if !self.role.ships() {
            tracing::debug!(
                connection,
                "link reconnected while standing by; it delivers the backlog only"
            );
            return Ok(());
        }
        self.ship_full_state("link reconnected", sink)
    }

    /// The full state as the sink's present and as a snapshot in the batch
    /// (nothing before the first lists).
    fn ship_full_state(&mut self, why: &str, sink: &impl RecordSink) -> Result<(), SinkError> {
        let mut kinds = Vec::new();
        if self.pods_ready {
            kinds.push(ObjectKind::Pod);
        }
        if self.hpas_ready {
            kinds.push(ObjectKind::Hpa);
        }
        if kinds.is_empty() {
            tracing::debug!(why, "before the first lists; the initial snapshots follow");
            return Ok(());
        }
        tracing::info!(why, ?kinds, "sending the present state and a full snapshot");
        let id = self.snapshot_id();
        let snapshot = self.store.snapshot(id, &kinds, true);
        sink.set_present(&snapshot)?;
        self.batch.extend(snapshot);
        Ok(())
    }

    /// Follows this replica's leadership (see the module documentation).
    async fn on_leadership(
        &mut self,
        leadership: Leadership,
        sink: &impl RecordSink,
    ) -> Result<(), SinkError> {
        match (self.role, leadership) {
            (Role::Leader { epoch: now }, Leadership::Leader { epoch, .. }) if now == epoch => {
                Ok(())
            }
            (_, Leadership::Leader { epoch, .. }) => self.take_over(epoch, sink).await,
            (Role::Leader { epoch }, Leadership::Standby { holder }) => {
                let dropped = self.batch.drop_object_state();
                self.batch.flush(sink).await?;
                self.role = Role::Standby;
                let holder = holder.as_deref().unwrap_or("none");
                tracing::info!(epoch, holder, dropped, "standing by: shipping no state");
                Ok(())
            }
            (Role::Standby | Role::Alone, Leadership::Standby { .. }) => Ok(()),
        }
    }

    /// Starts leading term `epoch`: records of an earlier term go out with
    /// its epoch, then the present, a snapshot and the held rescale events
    /// with the new one, at once.
    async fn take_over(&mut self, epoch: u64, sink: &impl RecordSink) -> Result<(), SinkError> {
        self.batch.flush(sink).await?;
        sink.set_leader_epoch(Some(epoch));
        self.role = Role::Leader { epoch };
        tracing::info!(
            epoch,
            held_rescale_events = self.held.len(),
            "leading: shipping the present state, a snapshot and the rescales not shipped yet"
        );
        self.ship_full_state("took over the lease", sink)?;
        self.process_held();
        self.batch.flush(sink).await
    }
}
