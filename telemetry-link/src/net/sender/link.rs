//! The link task: connects, runs sessions one after another, and between
//! them waits as the [`Reconnect`] policy says (backoff, failover, failback)
//! until the sender stops. Keeps the link's status, connection counter and
//! connection metrics, and reloads the TLS files now and then.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    connect::{connect, ConnectError, Established},
    drive::{drive, SessionEnd},
    present::start_pusher,
    reload_tls, Inner, LinkStatus, SenderConfig, TARGET,
};
use crate::{
    net::close_code,
    proto::message::ErrorCode,
    session::{reconnect::Reconnect, sender::drained_or_due},
};

/// How long a repeated connection error is logged at debug level only.
const REPEAT_QUIET: Duration = Duration::from_secs(30);

/// Logs repeated connection errors once per [`REPEAT_QUIET`].
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<(String, Instant)>,
}

impl ErrorLog {
    /// Whether `err` is worth a warning at `now` (not a repeat of the last
    /// one within the quiet period); remembers it if so.
    fn is_news(&mut self, err: &str, now: Instant) -> bool {
        let repeat = self
            .last
            .as_ref()
            .is_some_and(|(m, t)| m == err && now.duration_since(*t) < REPEAT_QUIET);
        if !repeat {
            self.last = Some((err.to_owned(), now));
        }
        !repeat
    }

    /// Logs a failed attempt; `spooled` is how many records wait in the
    /// spool (they are kept there and sent once a session is established).
    fn log(&mut self, address: &str, failure: &ConnectError, spooled: u64) {
        let err = failure.to_string();
        if self.is_news(&err, Instant::now()) {
            warn!(
                target: TARGET,
                receiver = address,
                error = err.as_str(),
                spooled,
                "{}; records are kept in the spool until it answers; retrying with backoff",
                failure_summary(failure.label()),
            );
        } else {
            debug!(target: TARGET, receiver = address, error = err.as_str(), spooled, "connection attempt failed");
        }
    }
}

/// What a failed connection attempt means to an operator, by the `reason`
/// label of `telemetry_sender_connect_failures_total`: an unreachable
/// receiver is told apart from one that answered and refused this sender.
fn failure_summary(label: &str) -> &'static str {
    match label {
        "tls_refused" => {
            "the receiver refused this sender's certificate (not signed by the CA it trusts, \
             revoked, expired, or not a client certificate)"
        }
        "tls" => "TLS with the receiver failed (its certificate is not trusted here, or its name does not match)",
        "refused" => "the receiver refused this sender",
        "protocol" => "the receiver answered with something this sender does not understand",
        "resolve" => "cannot resolve the receiver's address",
        _ => "cannot reach the receiver",
    }
}

/// Waits until everything spooled when the session started is
/// acknowledged, then says how much backlog the session delivered.
async fn report_backlog(inner: &Inner, address: &str) {
    let started = Instant::now();
    let (acked, last) = {
        let spool = inner.spool();
        (*inner.acked.borrow(), spool.last_seq())
    };
    if last <= acked {
        return;
    }
    info!(
        target: TARGET,
        receiver = address,
        records = last - acked,
        "sending the backlog kept in the spool"
    );
    let mut acks = inner.acked.subscribe();
    if acks.wait_for(|&a| a >= last).await.is_ok() {
        info!(
            target: TARGET,
            receiver = address,
            records = last - acked,
            seconds = started.elapsed().as_secs_f64(),
            "backlog delivered"
        );
    }
}

/// Sleeps until `until`, or until a stop request (or its deadline).
async fn sleep_or_stop(until: Instant, stopping: &mut watch::Receiver<Option<Instant>>) {
    let deadline = *stopping.borrow();
    let until = deadline.map_or(until, |d| d.min(until));
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
        _ = stopping.changed() => {}
    }
}

/// Runs the link until the sender stops.
pub(super) async fn run_link(inner: Arc<Inner>, cfg: SenderConfig) {
    let mut reconnect = Reconnect::new(
        cfg.receivers.len(),
        cfg.backoff_initial,
        cfg.backoff_cap,
        StdRng::from_rng(&mut rand::rng()),
    );
    let mut stopping = inner.stopping.subscribe();
    let mut errors = ErrorLog::default();
    let mut next: Option<Established> = None;
    let mut last_reload = Instant::now();
    // Senders started together do not all connect at the same instant.
    let first = reconnect.first_attempt(Instant::now());
    sleep_or_stop(first, &mut stopping).await;
    loop {
        if let Some(deadline) = *stopping.borrow() {
            let unacked = inner.spool().stats().records;
            if drained_or_due(Instant::now(), deadline, unacked, true) {
                break;
            }
        }
        if let Some(every) = cfg.tls_reload_interval {
            if last_reload.elapsed() >= every {
                last_reload = Instant::now();
                let _ = reload_tls(&inner, false);
            }
        }
        let address = &cfg.receivers[reconnect.target()];
        let established = match next.take() {
            Some(e) => Ok(e),
            None => connect(&inner, &cfg, address).await,
        };
        let session = match established {
            Ok(session) => session,
            Err(e) => {
                inner
                    .metrics
                    .connect_failures
                    .with_label_values(&[e.label()])
                    .inc();
                let spooled = inner.spool().stats().records;
                errors.log(address, &e, spooled);
                set_disconnected(&inner, e.to_string());
                let at = reconnect.on_connect_failed(Instant::now());
                sleep_or_stop(at, &mut stopping).await;
                continue;
            }
        };
        if reconnect.on_connected() {
            inner.metrics.reconnects.inc();
        }
        match run_session(&inner, &cfg, session, reconnect.is_failed_over()).await {
            SessionEnd::Stopped => {
                inner.status.send_modify(|s| s.connected = false);
                break;
            }
            SessionEnd::Lost(reason) => {
                info!(
                    target: TARGET,
                    error = %reason,
                    spooled = inner.spool().stats().records,
                    "link session lost; records are kept in the spool; reconnecting"
                );
                set_disconnected(&inner, reason.to_string());
                let at = reconnect.on_session_lost(Instant::now());
                sleep_or_stop(at, &mut stopping).await;
            }
            SessionEnd::FailBack(e) => {
                reconnect.on_failed_back();
                next = Some(*e);
            }
        }
    }
    inner
        .endpoint
        .close(close_code(ErrorCode::NoError), b"sender stopped");
    let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
}

/// Runs one established session with its present pusher; keeps the status,
/// the connection counter and the `connected` gauge.
async fn run_session(
    inner: &Arc<Inner>,
    cfg: &SenderConfig,
    session: Established,
    failed_over: bool,
) -> SessionEnd {
    inner.metrics.connected.set(1);
    inner.status.send_replace(LinkStatus {
        connected: true,
        receiver: Some(session.address.clone()),
        last_error: None,
    });
    // Presents set from now on (sources react to the connection counter)
    // go to this session, on their own stream.
    let pusher = start_pusher(inner, &session.conn, &session.welcome, cfg.max_frame);
    inner.connections.send_modify(|c| *c += 1);
    info!(target: TARGET, receiver = %session.address, applied = session.welcome.applied_seq, "link session established");
    let address = session.address.clone();
    let drive = drive(inner, cfg, session, failed_over);
    tokio::pin!(drive);
    let report = report_backlog(inner, &address);
    tokio::pin!(report);
    let mut reported = false;
    let end = loop {
        tokio::select! {
            end = &mut drive => break end,
            () = &mut report, if !reported => reported = true,
        }
    };
    drop(pusher);
    inner.metrics.connected.set(0);
    end
}

fn set_disconnected(inner: &Inner, error: String) {
    inner.status.send_replace(LinkStatus {
        connected: false,
        receiver: None,
        last_error: Some(error),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_news_again_only_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut log = ErrorLog::default();
        assert!(log.is_news("refused", t0));
        assert!(!log.is_news("refused", t0 + Duration::from_secs(29)));
        assert!(log.is_news("timed out", t0 + Duration::from_secs(29)));
        assert!(log.is_news("refused", t0 + Duration::from_secs(30)));
        assert!(!log.is_news("refused", t0 + Duration::from_secs(59)));
        assert!(log.is_news("refused", t0 + Duration::from_secs(60)));
    }
}
