//! Forwarding every applied sample, with its original timestamp, to
//! Prometheus remote-write endpoints (`--remote-write URL`, repeatable).
//!
//! Layers: [`convert`] turns the interpretation's timeline facts into
//! samples (no I/O), [`wire`] makes the protobuf + snappy body (no I/O),
//! [`queue`] is the durable queue of one endpoint, [`client`] does one
//! POST; this module wires them: the link handler calls
//! [`RemoteWrite::forward_converted`] with the samples the store's
//! interpretation produced before it lets the link acknowledge a batch,
//! and one task per endpoint drains its queue.
//!
//! # Why a persisted queue, and not "ack after the write"
//!
//! A batch is acknowledged to the sender once its samples are fsynced into
//! every endpoint's queue, not after the endpoints accepted them. Acking
//! after the write would tie the link to the slowest endpoint: a remote
//! store that is down for an hour would stall every sender and leave
//! `/metrics` an hour behind, and several endpoints would have to agree
//! before any ack. With the queue, a receiver crash loses nothing that was
//! acked (the queue is reopened and drained on restart), `/metrics` stays
//! current, and each endpoint drains at its own pace. The price is disk:
//! each queue is bounded (`--remote-write-queue-bytes`); when an endpoint
//! stays down long enough to fill it, its oldest samples are dropped and
//! counted (`telemetry_remote_write_samples_dropped_total`).
//!
//! # Delivery to an endpoint
//!
//! Requests go out in queue order, at most `max_samples_per_request`
//! samples each, every series' samples in timestamp order. 5xx, 429 and
//! transport errors are retried with exponential backoff and jitter
//! (honouring `Retry-After`), forever — the queue's cap is the bound; any
//! other 4xx is logged and counted as failed, and the request is not sent
//! again. A request whose answer was lost may be written twice; Prometheus
//! drops an identical (series, timestamp, value) sample silently.

pub mod client;
pub mod convert;
pub mod queue;
pub mod wire;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use telemetry_link::{session::Backoff, SpoolConfig};
use telemetry_schema::ClusterRecord;
use tokio::{sync::Notify, task::JoinHandle};

use self::{
    client::{ClientError, Outcome, RemoteWriteClient},
    convert::{Converted, SeriesTracker},
    queue::{EndpointQueue, QueueError},
};

/// Settings of the forwarder.
#[derive(Debug, Clone)]
pub struct RemoteWriteConfig {
    /// Endpoints (`http(s)://host:port/api/v1/write`).
    pub urls: Vec<String>,
    /// Extra headers on every request (`Name: value`), e.g. a tenant id or
    /// `Authorization`.
    pub headers: Vec<String>,
    /// Directory holding one queue per endpoint.
    pub queue_dir: PathBuf,
    /// Byte cap of each endpoint's queue.
    pub max_queue_bytes: u64,
    /// Samples per request.
    pub max_samples_per_request: usize,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl RemoteWriteConfig {
    /// Defaults for `urls`, queues under `queue_dir`.
    pub fn new(urls: Vec<String>, queue_dir: PathBuf) -> Self {
        Self {
            urls,
            headers: Vec::new(),
            queue_dir,
            max_queue_bytes: 1 << 30,
            max_samples_per_request: 2000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why the forwarder could not start or queue.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    /// A bad URL or TLS setup.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A queue failed.
    #[error("remote-write queue of {endpoint}: {source}")]
    Queue {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        source: QueueError,
    },
    /// Metric registration failed.
    #[error("registering remote-write metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The blocking queue task panicked.
    #[error("remote-write queue task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The forwarder's metrics, by endpoint.
#[derive(Clone)]
struct Metrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dropped: IntCounterVec,
    pending: IntGaugeVec,
    queue_bytes: IntGaugeVec,
}

impl Metrics {
    fn register(reg: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["endpoint"])?;
            reg.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["endpoint"])?;
            reg.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            sent: counter("telemetry_remote_write_samples_sent_total", "Samples the endpoint accepted (2xx).")?,
            failed: counter(
                "telemetry_remote_write_samples_failed_total",
                "Samples in requests the endpoint refused for good (4xx other than 429); not sent again.",
            )?,
            retried: counter(
                "telemetry_remote_write_samples_retried_total",
                "Samples in requests sent again after a 5xx, a 429 or a transport error.",
            )?,
            dropped: counter(
                "telemetry_remote_write_samples_dropped_total",
                "Samples dropped unsent because the endpoint's queue reached its byte cap.",
            )?,
            pending: gauge("telemetry_remote_write_samples_pending", "Samples queued for the endpoint and not yet accepted.")?,
            queue_bytes: gauge("telemetry_remote_write_queue_bytes", "Bytes the endpoint's queue occupies on disk.")?,
        })
    }
}

struct Endpoint {
    name: String,
    client: RemoteWriteClient,
    queue: Mutex<EndpointQueue>,
    wake: Notify,
    metrics: Metrics,
    /// The last refusal or failure, for the status page.
    last_error: Mutex<Option<LastError>>,
}

/// The last time an endpoint refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When (Unix milliseconds).
    pub unix_ms: i64,
    /// What happened.
    pub message: String,
}

impl Endpoint {
    fn queue(&self) -> MutexGuard<'_, EndpointQueue> {
        // Every queue operation completes its file work before returning.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh(&self, queue: &EndpointQueue) {
        let m = &self.metrics;
        m.pending
            .with_label_values(&[&self.name])
            .set(queue.pending_samples() as i64);
        m.queue_bytes
            .with_label_values(&[&self.name])
            .set(queue.bytes() as i64);
    }

    fn failed(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastError {
            unix_ms: telemetry_link::unix_ms(),
            message,
        });
    }

    fn count_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.metrics
                .dropped
                .with_label_values(&[&self.name])
                .inc_by(dropped);
            tracing::warn!(endpoint = %self.name, dropped, "remote-write queue full: dropped its oldest samples");
        }
    }
}

/// The running forwarder.
pub struct RemoteWrite {
    tracker: Mutex<SeriesTracker>,
    endpoints: Vec<Arc<Endpoint>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    max_samples: usize,
    /// Tests: this many queue pushes fail as if the disk had failed.
    #[cfg(test)]
    pub(crate) failing_pushes: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for RemoteWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("RemoteWrite")
            .field("endpoints", &names)
            .finish_non_exhaustive()
    }
}

impl RemoteWrite {
    /// Opens every endpoint's queue and starts draining them.
    pub fn start(
        cfg: RemoteWriteConfig,
        registry: &Registry,
    ) -> Result<Arc<Self>, RemoteWriteError> {
        let metrics = Metrics::register(registry)?;
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut endpoints = Vec::new();
        for url in &cfg.urls {
            let client = RemoteWriteClient::new(url, &cfg.headers, cfg.timeout)?;
            let name = client.endpoint();
            let dir = cfg.queue_dir.join(dir_name(&name));
            let spool = SpoolConfig {
                max_bytes: cfg.max_queue_bytes,
                max_record_bytes: 16 << 20,
                ..SpoolConfig::default()
            };
            let queue =
                EndpointQueue::open(&dir, spool).map_err(|source| RemoteWriteError::Queue {
                    endpoint: name.clone(),
                    source,
                })?;
            tracing::info!(endpoint = %name, queue = %dir.display(), pending = queue.pending_samples(), "remote write");
            // Every counter of the endpoint exists from the start, at 0.
            for counter in [
                &metrics.sent,
                &metrics.failed,
                &metrics.retried,
                &metrics.dropped,
            ] {
                counter.with_label_values(&[&name]);
            }
            let endpoint = Arc::new(Endpoint {
                name,
                client,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                metrics: metrics.clone(),
                last_error: Mutex::new(None),
            });
            endpoint.refresh(&endpoint.queue());
            endpoints.push(endpoint);
        }
        let rw = Arc::new(Self {
            tracker: Mutex::new(SeriesTracker::new()),
            endpoints,
            tasks: Mutex::new(Vec::new()),
            stop: Arc::new(stop),
            max_samples: cfg.max_samples_per_request.max(1),
            #[cfg(test)]
            failing_pushes: std::sync::atomic::AtomicU32::new(0),
        });
        let tasks = rw
            .endpoints
            .iter()
            .map(|e| tokio::spawn(drain(e.clone(), rw.stop.subscribe(), rw.max_samples)))
            .collect();
        *rw.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(rw)
    }

    /// Converts a delivery (records `first_seq..` of `sender`'s stream
    /// `stream_id`) with the forwarder's own interpretation (a
    /// [`SeriesTracker`], for callers without a [`crate::store::ClusterStore`])
    /// and queues its samples like [`RemoteWrite::forward_converted`].
    pub async fn forward(
        &self,
        sender: &str,
        stream_id: u128,
        first_seq: u64,
        records: &[ClusterRecord],
        now_ms: i64,
    ) -> Result<(), RemoteWriteError> {
        if records.is_empty() {
            return Ok(());
        }
        let converted = self
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .convert_records(sender, records, now_ms);
        self.forward_converted(
            sender,
            stream_id,
            first_seq,
            records.len() as u64,
            Arc::new(converted),
        )
        .await
    }

    /// Queues the samples of a delivery (`records_len` records from
    /// `first_seq` of `sender`'s stream `stream_id`, already converted)
    /// durably in every endpoint's queue. Returns once they are fsynced;
    /// only then may the batch be acked.
    pub async fn forward_converted(
        &self,
        sender: &str,
        stream_id: u128,
        first_seq: u64,
        records_len: u64,
        converted: Arc<Converted>,
    ) -> Result<(), RemoteWriteError> {
        if records_len == 0 {
            return Ok(());
        }
        let last_seq = first_seq + records_len - 1;
        for endpoint in &self.endpoints {
            #[cfg(test)]
            self.injected_failure(&endpoint.name)?;
            let (endpoint, converted, sender) =
                (endpoint.clone(), converted.clone(), sender.to_owned());
            tokio::task::spawn_blocking(move || -> Result<(), RemoteWriteError> {
                let mut queue = endpoint.queue();
                let skip = queue.already_queued(&sender, stream_id, first_seq);
                if skip >= records_len {
                    tracing::info!(endpoint = %endpoint.name, %sender, first_seq, "delivery already queued (redelivered after a restart)");
                    return Ok(());
                }
                // `skip < records_len`, so it fits a usize.
                let samples = converted.from_record(skip as usize);
                let dropped = queue
                    .push(&sender, stream_id, last_seq, samples)
                    .map_err(|source| RemoteWriteError::Queue { endpoint: endpoint.name.clone(), source })?;
                endpoint.count_dropped(dropped);
                endpoint.refresh(&queue);
                drop(queue);
                endpoint.wake.notify_one();
                Ok(())
            })
            .await??;
        }
        Ok(())
    }

    /// Tests: fails if a push failure was asked for.
    #[cfg(test)]
    fn injected_failure(&self, endpoint: &str) -> Result<(), RemoteWriteError> {
        use std::sync::atomic::Ordering;
        let take = |n: u32| n.checked_sub(1);
        if self
            .failing_pushes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
            .is_ok()
        {
            let source = telemetry_link::queue::QueueError::Marks {
                path: "injected".into(),
                source: std::io::Error::other("injected disk failure"),
            };
            return Err(RemoteWriteError::Queue {
                endpoint: endpoint.to_owned(),
                source: QueueError::Queue(source),
            });
        }
        Ok(())
    }

    /// Each endpoint (as its metrics label it) and its last refusal or
    /// failure, in configuration order.
    pub fn last_errors(&self) -> Vec<(String, Option<LastError>)> {
        self.endpoints
            .iter()
            .map(|e| {
                let last = e
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                (e.name.clone(), last)
            })
            .collect()
    }

    /// Samples pending over all endpoints.
    pub fn pending_samples(&self) -> u64 {
        self.endpoints
            .iter()
            .map(|e| e.queue().pending_samples())
            .sum()
    }

    /// Stops the drain tasks: requests in flight get until `deadline` to
    /// finish; whatever is unsent stays queued for the next start.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                "remote write: requests still in flight at the shutdown deadline; they stay queued"
            );
        }
    }
}

/// A directory name for an endpoint's queue: its URL with everything but
/// `[A-Za-z0-9.-]` replaced.
fn dir_name(endpoint: &str) -> String {
    let s: String = endpoint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    s.trim_matches('_').to_owned()
}

/// Drains one endpoint's queue until told to stop.
async fn drain(
    endpoint: Arc<Endpoint>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    max_samples: usize,
) {
    let name = endpoint.name.clone();
    let m = endpoint.metrics.clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        if *stop.borrow() {
            return;
        }
        let next = {
            let mut queue = endpoint.queue();
            queue.next_batch(max_samples)
        };
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                tokio::select! {
                    _ = endpoint.wake.notified() => {}
                    _ = stop.changed() => return,
                    // A push notifies (the permit is kept if nobody
                    // waits); the poll is only a safety net.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "reading the remote-write queue");
                endpoint.queue().rewind();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        let n = batch.samples.len() as u64;
        let body = match wire::encode(&wire::write_request(&batch.samples)) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "compressing a remote-write request; dropping it");
                m.failed.with_label_values(&[&name]).inc_by(n);
                finish(&endpoint, &batch);
                continue;
            }
        };
        loop {
            match endpoint.client.post(body.clone()).await {
                Outcome::Sent => {
                    m.sent.with_label_values(&[&name]).inc_by(n);
                    backoff.reset();
                    break;
                }
                Outcome::Refused { reason } => {
                    tracing::warn!(endpoint = %name, samples = n, %reason, "remote write refused; not retrying");
                    endpoint.failed(format!("refused: {reason}"));
                    m.failed.with_label_values(&[&name]).inc_by(n);
                    break;
                }
                Outcome::Retry {
                    reason,
                    retry_after,
                } => {
                    m.retried.with_label_values(&[&name]).inc_by(n);
                    let delay = backoff.next_delay(&mut rand::rng());
                    let delay =
                        retry_after.map_or(delay, |s| Duration::from_secs(s.min(300)).max(delay));
                    tracing::warn!(endpoint = %name, samples = n, %reason, retry_in = ?delay, "remote write failed; retrying");
                    endpoint.failed(format!("retrying: {reason}"));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {
                            endpoint.queue().rewind();
                            return;
                        }
                    }
                }
            }
        }
        finish(&endpoint, &batch);
    }
}

fn finish(endpoint: &Endpoint, batch: &queue::Batch) {
    let mut queue = endpoint.queue();
    if let Err(e) = queue.done(batch) {
        // The batch stays queued and is sent again after a restart.
        tracing::error!(endpoint = %endpoint.name, error = %e, "recording a sent remote-write batch");
    }
    endpoint.refresh(&queue);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_counter_of_an_endpoint_is_exported_at_zero_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let cfg = RemoteWriteConfig::new(
            vec!["http://127.0.0.1:9/api/v1/write".into()],
            dir.path().join("queues"),
        );
        let rw = RemoteWrite::start(cfg, &registry).unwrap();
        let families = registry.gather();
        for name in [
            "telemetry_remote_write_samples_sent_total",
            "telemetry_remote_write_samples_failed_total",
            "telemetry_remote_write_samples_retried_total",
            "telemetry_remote_write_samples_dropped_total",
        ] {
            let family = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} is not exported"));
            let values: Vec<f64> = family
                .get_metric()
                .iter()
                .map(|m| m.get_counter().get_value())
                .collect();
            assert_eq!(values, [0.0], "{name}");
        }
        assert_eq!(rw.last_errors().len(), 1);
        assert_eq!(rw.last_errors()[0].1, None);
        rw.shutdown(Duration::from_secs(1)).await;
    }

    #[test]
    fn queue_directory_names_are_plain() {
        assert_eq!(
            dir_name("http://127.0.0.1:9090/api/v1/write"),
            "http___127.0.0.1_9090_api_v1_write"
        );
        assert!(!dir_name("https://a/../../etc").contains('/'));
    }
}
