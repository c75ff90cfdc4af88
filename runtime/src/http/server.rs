//! Connections of the operations endpoint: accepting within a cap, TLS,
//! HTTP/1.1 with timeouts, and a graceful stop.
//!
//! What it guarantees:
//! - At most `max_connections` connections are open. At the cap, a new
//!   connection takes the place of the oldest one that has not yet sent
//!   a complete request head (closed and counted as `header_timeout`), so
//!   half-open connections cannot keep a scraper out; when every open
//!   connection has sent a request, the new one is closed as soon as it is
//!   accepted and counted (`telemetry_endpoint_connections_refused_total`).
//!   The cap is lowered to a quarter of the process's open-file limit, so
//!   HTTP clients can never take the file descriptors the QUIC side and
//!   the spool need.
//! - A connection that has not completed its TLS handshake and request
//!   head within `header_read_timeout` is closed (slowloris); the same
//!   timer runs while a kept-alive connection waits for its next request,
//!   so it is also the idle keep-alive timeout. A connection whose client
//!   stops reading a response is closed after `write_timeout`
//!   ([`super::io`]).
//! - Request heads are limited to [`MAX_HEAD_BYTES`].
//! - Accept errors (e.g. the file-descriptor limit) pause accepting for
//!   100 ms instead of spinning.
//! - On stop, accepting ends, open connections finish their current
//!   response within [`DRAIN_TIME`] and are then dropped.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tracing::{debug, warn};

use super::{
    active::WebConfigState,
    io::{Stream, TimedWrites},
    metrics::{CloseReason, EndpointMetrics},
    snapshot::Snapshots,
    Exporter, Limits,
};

/// Largest request head (request line and headers) read.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long open connections get to finish on stop.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(2);

/// What every connection of one endpoint shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) exporter: Arc<dyn Exporter>,
    pub(crate) web: WebConfigState,
    pub(crate) snapshots: Snapshots,
    pub(crate) metrics: EndpointMetrics,
    pub(crate) limits: Limits,
    pub(crate) max_connections: usize,
}

/// `configured`, lowered to a quarter of the soft open-file limit.
pub(crate) fn connection_cap(configured: usize) -> usize {
    match open_file_limit() {
        Some(limit) => configured.min((limit / 4).max(1)),
        None => configured,
    }
    .max(1)
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How long a new connection waits for the place of a connection it
/// closed.
const MAKE_ROOM_WAIT: Duration = Duration::from_millis(100);

/// A connection that may be closed to make room until it sends a
/// complete request head.
#[derive(Debug, Default)]
struct Evictable {
    requested: AtomicBool,
    evict: Notify,
}

/// Open connections that had not sent a request when they were accepted,
/// oldest first.
#[derive(Debug, Default)]
struct Waiting(Mutex<VecDeque<Weak<Evictable>>>);

impl Waiting {
    fn push(&self, c: &Arc<Evictable>) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|w| {
            w.upgrade()
                .is_some_and(|c| !c.requested.load(Ordering::Relaxed))
        });
        q.push_back(Arc::downgrade(c));
    }

    /// Closes the oldest connection that has not sent a request yet and
    /// waits for its permit.
    async fn make_room(&self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let victim = {
            let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| q.pop_front())
                .filter_map(|w| w.upgrade())
                .find(|c| !c.requested.load(Ordering::Relaxed))
        }?;
        victim.evict.notify_one();
        tokio::time::timeout(MAKE_ROOM_WAIT, permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// Accepts and serves until `stop` turns true.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.max_connections));
    let waiting = Waiting::default();
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                warn!(error = %e, "the operations endpoint cannot accept a connection; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => waiting.make_room(&permits).await,
        };
        let Some(permit) = permit else {
            shared.metrics.refused();
            debug!(
                cap = shared.max_connections,
                "connection cap reached; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let evictable = Arc::new(Evictable::default());
        waiting.push(&evictable);
        let serve = connection(
            stream,
            shared.clone(),
            permit,
            stop.clone(),
            evictable.clone(),
        );
        let metrics = shared.metrics.clone();
        connections.spawn(async move {
            tokio::select! {
                () = serve => {}
                () = evictable.evict.notified() => metrics.closed(CloseReason::HeaderTimeout),
            }
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIME, drained).await.is_err() {
        connections.abort_all();
    }
}

/// Counts an open connection for as long as it lives.
struct Open(EndpointMetrics);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.finished();
    }
}

async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    evictable: Arc<Evictable>,
) {
    shared.metrics.opened();
    let _open = Open(shared.metrics.clone());
    let _ = stream.set_nodelay(true);
    let limits = shared.limits;
    let tls = shared.web.current().tls.clone();
    let io: Box<dyn Stream> = match tls {
        None => Box::new(stream),
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    shared.metrics.closed(CloseReason::TlsHandshake);
                    debug!(error = %e, "TLS handshake on the operations endpoint failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.closed(CloseReason::HeaderTimeout);
                    return;
                }
            }
        }
    };
    let io = TimedWrites::new(io, limits.write_timeout, shared.metrics.clone());
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            evictable.requested.store(true, Ordering::Relaxed);
            super::routes::handle(request, shared.clone())
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        // Queue the shared page's slices instead of copying them into a
        // per-connection buffer.
        .writev(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let finished = tokio::select! {
        result = conn.as_mut() => Some(result),
        _ = stop.wait_for(|s| *s) => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            shared.metrics.closed(CloseReason::HeaderTimeout);
        }
        debug!(error = %e, "operations endpoint connection ended");
    }
}
