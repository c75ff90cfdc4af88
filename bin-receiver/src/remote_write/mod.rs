//! Forwarding every applied sample, with its original timestamp, to
//! Prometheus remote-write endpoints (`--remote-write URL`, repeatable).
//!
//! Layers: [`convert`] turns the interpretation's timeline facts into
//! samples (no I/O), [`wire`] makes the protobuf + snappy body (no I/O),
//! [`queue`] is the durable queue of one endpoint, [`client`] does one
//! POST, `drain` sends a queue's samples (and splits a refused request by
//! sender), [`redact`] decides what a URL may show of itself; this module
//! wires them: the link handler calls
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
//! other 4xx is not retried: a request of several senders is split and each
//! sender's samples are sent alone, and only what is refused again is
//! logged and counted as failed, so one sender's bad sample never costs
//! another sender its samples. A request whose answer was lost may be
//! written twice; Prometheus drops an identical (series, timestamp, value)
//! sample silently.
//!
//! # Secrets
//!
//! A URL may carry credentials and an API key in its query; headers may
//! carry tokens. Logs, errors and the `endpoint` label show URLs redacted
//! (`scheme://host:port/path`), queue directories are named by host and a
//! hash of the whole URL (a queue under the name earlier releases used,
//! the whole URL sanitised, is moved there on start), header values are
//! never shown.

pub mod client;
pub mod convert;
mod drain;
pub use drain::LastError;
pub mod queue;
pub mod redact;
pub mod wire;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::Registry;
use telemetry_link::SpoolConfig;
use telemetry_schema::ClusterRecord;
use tokio::task::JoinHandle;

use self::{
    client::{ClientError, RemoteWriteClient},
    convert::{Converted, SeriesTracker},
    drain::{drain, Endpoint, Metrics},
    queue::{EndpointQueue, QueueError},
};

/// Settings of the forwarder.
#[derive(Clone)]
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

impl std::fmt::Debug for RemoteWriteConfig {
    /// URLs redacted, headers by name only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact::redact(u)).collect();
        let headers: Vec<&str> = self
            .headers
            .iter()
            .map(|h| h.split_once(':').map_or("?", |(name, _)| name.trim()))
            .collect();
        f.debug_struct("RemoteWriteConfig")
            .field("urls", &urls)
            .field("headers", &headers)
            .field("queue_dir", &self.queue_dir)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("max_samples_per_request", &self.max_samples_per_request)
            .field("timeout", &self.timeout)
            .finish()
    }
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
        /// The endpoint (its `endpoint` label: the URL redacted).
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
        for (url, name) in cfg.urls.iter().zip(redact::labels(&cfg.urls)) {
            let client = RemoteWriteClient::new(url, &cfg.headers, cfg.timeout)?;
            let queue_err = |source| RemoteWriteError::Queue {
                endpoint: name.clone(),
                source,
            };
            let dir = queue_dir(&cfg.queue_dir, url, &client).map_err(queue_err)?;
            let spool = SpoolConfig {
                max_bytes: cfg.max_queue_bytes,
                max_record_bytes: 16 << 20,
                ..SpoolConfig::default()
            };
            let queue = EndpointQueue::open(&dir, spool).map_err(queue_err)?;
            tracing::info!(endpoint = %name, queue = %dir.display(), pending = queue.pending_samples(), "remote write");
            endpoints.push(Arc::new(Endpoint::new(
                name,
                client,
                queue,
                metrics.clone(),
            )));
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

/// The queue directory of `url` under `queue_dir`, named by host and a
/// hash of the whole URL; a queue in the directory earlier releases named
/// after the whole URL is moved there first.
fn queue_dir(
    queue_dir: &Path,
    url: &str,
    client: &RemoteWriteClient,
) -> Result<PathBuf, QueueError> {
    let dir = queue_dir.join(redact::queue_dir_name(&client.host_port(), url));
    let Ok(printed) = url.parse::<hyper::Uri>() else {
        return Ok(dir);
    };
    let legacy = queue_dir.join(redact::legacy_queue_dir_name(&printed.to_string()));
    if legacy != dir && legacy.is_dir() {
        if dir.exists() {
            // Its name may hold a secret: not shown.
            tracing::warn!(queue = %dir.display(), "an older queue directory of this endpoint is left in place beside its queue");
        } else {
            std::fs::rename(&legacy, &dir).map_err(|source| QueueError::Move {
                to: dir.clone(),
                source,
            })?;
            tracing::info!(queue = %dir.display(), "remote-write queue moved to its directory named by host and hash");
        }
    }
    Ok(dir)
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
            assert!(
                !values.is_empty() && values.iter().all(|v| *v == 0.0),
                "{name}: {values:?}"
            );
        }
        assert_eq!(rw.last_errors().len(), 1);
        assert_eq!(rw.last_errors()[0].1, None);
        rw.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_queue_under_the_old_directory_name_is_moved_to_the_new_one() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let d = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:9/api/v1/write?api_key=SECRET";
        let old = d
            .path()
            .join("http___127.0.0.1_9_api_v1_write_api_key_SECRET");
        std::fs::create_dir_all(old.join("queue")).unwrap();
        std::fs::write(old.join("queue").join("marker"), b"x").unwrap();
        let client = RemoteWriteClient::new(url, &[], Duration::from_secs(1)).unwrap();
        let dir = queue_dir(d.path(), url, &client).unwrap();
        assert!(dir.join("queue").join("marker").exists());
        assert!(!old.exists());
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("SECRET")), "{names:?}");
        assert_eq!(queue_dir(d.path(), url, &client).unwrap(), dir, "stable");
    }
}
