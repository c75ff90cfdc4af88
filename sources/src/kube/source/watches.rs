//! The source's watch streams: one kube-runtime watcher per watched
//! resource and scope, their bookkeeping slots, the backoff of failing
//! watches, and the classification of watch errors (RBAC, rejected
//! requests, expired resourceVersions).

use std::time::{Duration, Instant};

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
use telemetry_schema::{HpaInfo, PodInfo};

use super::{KubeSourceConfig, EVENTS_FIELD_SELECTOR};

/// Objects per list page when a watch (re)lists.
const LIST_PAGE_SIZE: u32 = 100;

/// The watched resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watched {
    Pods,
    Hpas,
    Events,
}

impl Watched {
    pub(super) fn plural(self) -> &'static str {
        match self {
            Watched::Pods => "pods",
            Watched::Hpas => "horizontalpodautoscalers",
            Watched::Events => "events",
        }
    }

    pub(super) fn group(self) -> &'static str {
        match self {
            Watched::Pods | Watched::Events => "",
            Watched::Hpas => "autoscaling",
        }
    }
}

/// One watcher's bookkeeping.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) what: Watched,
    pub(super) scope: Option<String>,
    pub(super) listed: bool,
    pub(super) failing: bool,
    pub(super) pods: Vec<PodInfo>,
    pub(super) hpas: Vec<HpaInfo>,
}

impl Slot {
    /// One slot per resource and scope, in a fixed order.
    pub(super) fn all(scopes: &[Option<String>]) -> Vec<Slot> {
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
        slots
    }

    pub(super) fn namespace(&self) -> &str {
        self.scope.as_deref().unwrap_or("*")
    }
}

/// A watcher's output, tagged with its slot. Each is moved once from the
/// stream into its handler; boxing the large pod variant would only add an
/// allocation per watch event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Item {
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
pub(super) struct WatchBackoff {
    min: Duration,
    max: Duration,
    quiet: Duration,
    current: Option<Duration>,
    pub(super) last: Option<Instant>,
}

impl WatchBackoff {
    pub(super) fn new(max: Duration) -> Self {
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

/// The verb a 403 refused, if `err` is one.
pub(super) fn forbidden_verb(err: &watcher::Error) -> Option<&'static str> {
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

/// The verb and message of a 400, if `err` is one.
pub(super) fn bad_request(err: &watcher::Error) -> Option<(&'static str, String)> {
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

/// Whether `err` is an expired resourceVersion (`410 Gone`).
pub(super) fn is_gone(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchError(s) if s.code == 410)
}

/// One stream per slot, tagged with the slot's index.
pub(super) fn streams(
    slots: &[Slot],
    client: &kube::Client,
    config: &KubeSourceConfig,
) -> Vec<BoxStream<'static, Item>> {
    let timeout = u32::try_from(config.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    // Small list pages bound the memory a (re)list needs at once: only
    // one page of full API objects is decoded at a time.
    let base = watcher::Config::default()
        .timeout(timeout)
        .page_size(LIST_PAGE_SIZE);
    let labelled = match &config.label_selector {
        Some(sel) => base.clone().labels(sel),
        None => base.clone(),
    };
    let backoff = config.max_backoff;
    slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let scope = slot.scope.as_deref();
            match slot.what {
                Watched::Pods => watch_stream::<Pod>(client, scope, labelled.clone(), backoff)
                    .map(move |r| Item::Pod(i, r))
                    .boxed(),
                Watched::Hpas => watch_stream::<HorizontalPodAutoscaler>(
                    client,
                    scope,
                    labelled.clone(),
                    backoff,
                )
                .map(move |r| Item::Hpa(i, r))
                .boxed(),
                Watched::Events => watch_stream::<Event>(
                    client,
                    scope,
                    base.clone().fields(EVENTS_FIELD_SELECTOR),
                    backoff,
                )
                .map(move |r| Item::Ev(i, r))
                .boxed(),
            }
        })
        .collect()
}

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
