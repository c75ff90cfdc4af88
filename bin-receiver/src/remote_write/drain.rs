//! Draining one endpoint's queue: requests in queue order, retries with
//! backoff, and what a refused request costs.
//!
//! A request holds the samples of whole queue entries, which may come from
//! several senders (clusters). When the endpoint refuses it for good (a
//! 4xx other than 429 — typically one bad sample: out of order, too old, a
//! limit), one sender's data must not cost the others theirs: a refused
//! request with samples of more than one sender is split by sender (the
//! `cluster` label), and each sender's samples are sent alone; only the
//! parts refused again are dropped, counted in
//! `telemetry_remote_write_samples_failed_total{reason="refused"}` and
//! logged with their sender.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use telemetry_link::session::Backoff;
use tokio::sync::{watch, Notify};

use super::{
    client::{Outcome, RemoteWriteClient},
    convert::RwSample,
    queue::{self, EndpointQueue},
    wire,
};

/// Why samples were not accepted, the `reason` label of
/// `telemetry_remote_write_samples_failed_total`.
const FAILED_REASONS: [&str; 2] = ["refused", "encoding"];

/// The forwarder's metrics, by endpoint.
#[derive(Clone)]
pub(super) struct Metrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dropped: IntCounterVec,
    pending: IntGaugeVec,
    queue_bytes: IntGaugeVec,
}

impl Metrics {
    pub(super) fn register(reg: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            reg.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter = |name: &str, help: &str| vec(name, help, &["endpoint"]);
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["endpoint"])?;
            reg.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            sent: counter("telemetry_remote_write_samples_sent_total", "Samples the endpoint accepted (2xx).")?,
            failed: vec(
                "telemetry_remote_write_samples_failed_total",
                "Samples not accepted and not sent again, by reason: refused (a 4xx other than 429 for the samples of one sender, sent alone), encoding (the request could not be built).",
                &["endpoint", "reason"],
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

    /// Exports the endpoint's counters at 0.
    fn init(&self, endpoint: &str) {
        for c in [&self.sent, &self.retried, &self.dropped] {
            c.with_label_values(&[endpoint]);
        }
        for reason in FAILED_REASONS {
            self.failed.with_label_values(&[endpoint, reason]);
        }
    }
}

/// One endpoint: its client, queue and metrics, under its `endpoint` label.
pub(super) struct Endpoint {
    /// The `endpoint` label (the URL redacted).
    pub(super) name: String,
    client: RemoteWriteClient,
    queue: Mutex<EndpointQueue>,
    pub(super) wake: Notify,
    metrics: Metrics,
    /// The last refusal or failure, for the status page.
    pub(super) last_error: Mutex<Option<LastError>>,
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
    pub(super) fn new(
        name: String,
        client: RemoteWriteClient,
        queue: EndpointQueue,
        metrics: Metrics,
    ) -> Self {
        metrics.init(&name);
        let endpoint = Self {
            name,
            client,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            metrics,
            last_error: Mutex::new(None),
        };
        endpoint.refresh(&endpoint.queue());
        endpoint
    }

    pub(super) fn queue(&self) -> MutexGuard<'_, EndpointQueue> {
        // Every queue operation completes its file work before returning.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn refresh(&self, queue: &EndpointQueue) {
        let m = &self.metrics;
        m.pending
            .with_label_values(&[&self.name])
            .set(queue.pending_samples() as i64);
        m.queue_bytes
            .with_label_values(&[&self.name])
            .set(queue.bytes() as i64);
    }

    pub(super) fn count_dropped(&self, dropped: u64) {
        if dropped > 0 {
            self.metrics
                .dropped
                .with_label_values(&[&self.name])
                .inc_by(dropped);
            tracing::warn!(endpoint = %self.name, dropped, "remote-write queue full: dropped its oldest samples");
        }
    }

    /// Remembers a refusal or failure for the status page.
    fn failed(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastError {
            unix_ms: telemetry_link::unix_ms(),
            message,
        });
    }

    fn count_failed(&self, reason: &str, n: u64) {
        self.metrics
            .failed
            .with_label_values(&[&self.name, reason])
            .inc_by(n);
    }

    fn count_sent(&self, n: u64) {
        self.metrics.sent.with_label_values(&[&self.name]).inc_by(n);
    }
}

/// How one request ended.
enum Sent {
    Accepted,
    Refused(String),
    Unencodable(String),
    Stopped,
}

/// Posts `samples` until the endpoint answers for good, retrying 5xx, 429
/// and transport errors with backoff (honouring `Retry-After`).
async fn send(
    endpoint: &Endpoint,
    samples: &[RwSample],
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) -> Sent {
    let n = samples.len() as u64;
    let body = match wire::encode(&wire::write_request(samples)) {
        Ok(body) => body,
        Err(e) => return Sent::Unencodable(e.to_string()),
    };
    loop {
        match endpoint.client.post(body.clone()).await {
            Outcome::Sent => {
                backoff.reset();
                return Sent::Accepted;
            }
            Outcome::Refused { reason } => return Sent::Refused(reason),
            Outcome::Retry {
                reason,
                retry_after,
            } => {
                endpoint
                    .metrics
                    .retried
                    .with_label_values(&[&endpoint.name])
                    .inc_by(n);
                endpoint.failed(format!("retrying: {reason}"));
                let delay = backoff.next_delay(&mut rand::rng());
                let delay =
                    retry_after.map_or(delay, |s| Duration::from_secs(s.min(300)).max(delay));
                tracing::warn!(endpoint = %endpoint.name, samples = n, %reason, retry_in = ?delay, "remote write failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return Sent::Stopped,
                }
            }
        }
    }
}

/// The samples of each sender (the `cluster` label), in first-seen order,
/// each keeping its order.
pub(super) fn by_sender(samples: &[RwSample]) -> Vec<(String, Vec<RwSample>)> {
    let mut parts: Vec<(String, Vec<RwSample>)> = Vec::new();
    for s in samples {
        let cluster = s
            .labels
            .iter()
            .find(|(name, _)| name == "cluster")
            .map_or("", |(_, v)| v.as_str());
        match parts.iter_mut().find(|(c, _)| c == cluster) {
            Some((_, part)) => part.push(s.clone()),
            None => parts.push((cluster.to_owned(), vec![s.clone()])),
        }
    }
    parts
}

/// What happened to a batch.
enum Settled {
    /// Accepted or refused for good: done.
    Done,
    /// Stopped before the endpoint answered: send it again next time.
    Stopped,
}

/// Sends one batch; a refused batch of several senders is split by sender.
async fn settle(
    endpoint: &Endpoint,
    samples: &[RwSample],
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) -> Settled {
    let name = &endpoint.name;
    let n = samples.len() as u64;
    let reason = match send(endpoint, samples, backoff, stop).await {
        Sent::Accepted => {
            endpoint.count_sent(n);
            return Settled::Done;
        }
        Sent::Stopped => return Settled::Stopped,
        Sent::Unencodable(e) => {
            tracing::error!(endpoint = %name, samples = n, error = %e, "building a remote-write request; dropping it");
            endpoint.count_failed("encoding", n);
            return Settled::Done;
        }
        Sent::Refused(reason) => reason,
    };
    endpoint.failed(format!("refused: {reason}"));
    let parts = by_sender(samples);
    if parts.len() < 2 {
        let sender = parts.first().map_or("", |(c, _)| c.as_str());
        tracing::warn!(endpoint = %name, %sender, samples = n, %reason, "remote write refused; not retrying");
        endpoint.count_failed("refused", n);
        return Settled::Done;
    }
    tracing::info!(endpoint = %name, senders = parts.len(), %reason, "remote write refused a request of several senders; sending each sender's samples alone");
    for (sender, part) in &parts {
        let n = part.len() as u64;
        match send(endpoint, part, backoff, stop).await {
            Sent::Accepted => endpoint.count_sent(n),
            Sent::Refused(reason) => {
                endpoint.failed(format!("refused ({sender}): {reason}"));
                tracing::warn!(endpoint = %name, %sender, samples = n, %reason, "remote write refused the samples of one sender; not retrying");
                endpoint.count_failed("refused", n);
            }
            Sent::Unencodable(e) => {
                tracing::error!(endpoint = %name, %sender, samples = n, error = %e, "building a remote-write request; dropping it");
                endpoint.count_failed("encoding", n);
            }
            Sent::Stopped => return Settled::Stopped,
        }
    }
    Settled::Done
}

/// Drains one endpoint's queue until told to stop.
pub(super) async fn drain(
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
    max_samples: usize,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        if *stop.borrow() {
            return;
        }
        let next = endpoint.queue().next_batch(max_samples);
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
                tracing::error!(endpoint = %endpoint.name, error = %e, "reading the remote-write queue");
                endpoint.queue().rewind();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        match settle(&endpoint, &batch.samples, &mut backoff, &mut stop).await {
            Settled::Done => finish(&endpoint, &batch),
            Settled::Stopped => {
                endpoint.queue().rewind();
                return;
            }
        }
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

    fn sample(cluster: &str, i: i64) -> RwSample {
        RwSample {
            labels: vec![
                ("__name__".into(), "m".into()),
                ("cluster".into(), cluster.into()),
            ],
            timestamp_ms: i,
            value: i as f64,
        }
    }

    #[test]
    fn samples_are_split_by_sender_keeping_their_order() {
        let all = vec![
            sample("a", 1),
            sample("b", 2),
            sample("a", 3),
            sample("c", 4),
            sample("b", 5),
        ];
        let parts = by_sender(&all);
        let summary: Vec<(&str, Vec<i64>)> = parts
            .iter()
            .map(|(c, p)| (c.as_str(), p.iter().map(|s| s.timestamp_ms).collect()))
            .collect();
        assert_eq!(
            summary,
            vec![("a", vec![1, 3]), ("b", vec![2, 5]), ("c", vec![4])]
        );
    }
}
