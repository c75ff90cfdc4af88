//! The session loop: feeds the receiver's frames, stop and flush requests,
//! probe outcomes and the clock into the [`SenderSession`] machine, writes
//! the frames it produces, wakes on the spool appends the machine asks for,
//! and closes the connection the way the session ended. Every decision is
//! the machine's.
//!
//! An idle session costs nothing here: the loop sleeps until a frame, an
//! append it waits for, a request or the machine's own deadline (a
//! lingering batch, a failback probe, a stop) — none of them periodic.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    connect::{connect, ConnectError, Established},
    Inner, SenderConfig, TARGET,
};
use crate::{
    metrics::TrackedConnection,
    net::{
        close_code,
        stream::{write_message, FrameReader, ReadError},
    },
    proto::{
        message::{ErrorCode, Message, Skip},
        refused::RefusedCounts,
    },
    session::{
        handshake::PeerCode,
        refusals::{describe, LogLine},
        sender::{Carries, End, Event, Input, SenderSession, SessionConfig, SessionError, Step},
    },
    spool::Spool,
};

/// How a session ended.
pub(super) enum SessionEnd {
    /// Everything acknowledged during shutdown, or the deadline passed.
    Stopped,
    /// The session cannot go on; the link reconnects.
    Lost(LostReason),
    /// Switch to this session with the preferred receiver.
    FailBack(Box<Established>),
}

/// Why a session was lost.
#[derive(Debug, Error)]
pub(super) enum LostReason {
    /// The session machine gave up (bad ack, spool failure, ...).
    #[error(transparent)]
    Session(SessionError),
    /// The receiver closed the connection.
    #[error("receiver closed the session ({code}): {reason}")]
    ReceiverClosed { code: PeerCode, reason: String },
    /// The connection failed (timeout, reset, transport error).
    #[error("{0}")]
    Connection(quinn::ConnectionError),
    /// The receiver finished its stream while the connection stayed up.
    #[error("acknowledgement stream ended")]
    AckStreamEnded,
    /// Reading the receiver's stream failed.
    #[error("acknowledgement stream: {0}")]
    AckStream(ReadError),
    /// Writing a frame failed.
    #[error("write: {0}")]
    Write(quinn::WriteError),
    /// The machine chose to fail back but the probed connection is gone.
    #[error("no connection to fail back to")]
    NoPreferredConnection,
}

/// A session's settings from the sender's.
fn session_config(cfg: &SenderConfig) -> SessionConfig {
    SessionConfig {
        max_frame: cfg.max_frame,
        batch_max_records: cfg.batch_max_records,
        window: cfg.window,
        failback_after: cfg.failback_after,
        linger: cfg.linger,
    }
}

/// Runs one session until it fails, drains on shutdown, or fails back.
pub(super) async fn drive(
    inner: &Arc<Inner>,
    cfg: &SenderConfig,
    session: Established,
    failed_over: bool,
) -> SessionEnd {
    let Established {
        conn,
        send,
        reader,
        welcome,
        address,
        tracked,
    } = session;
    if let Ok(mut c) = inner.current.lock() {
        *c = Some(conn.clone());
    }
    let machine = {
        let mut spool = inner.spool();
        let mut machine = SenderSession::new(
            Instant::now(),
            &welcome,
            &session_config(cfg),
            failed_over,
            &mut *spool,
        );
        if take_events(inner, &mut machine) {
            inner.refresh_gauges(&spool);
        }
        machine
    };
    let mut driver = Driver {
        inner,
        cfg,
        conn,
        send,
        reader,
        address,
        machine,
        stopping: inner.stopping.subscribe(),
        // A flush asked for before this session still applies.
        flush: inner.flush.subscribe(),
        probe: None,
        preferred: None,
        frame: Vec::new(),
        _tracked: tracked,
    };
    let end = driver.run().await;
    driver.close(&end).await;
    end
}

/// Counts and logs the machine's events; returns whether acks changed the
/// spool.
fn take_events(inner: &Inner, machine: &mut SenderSession<Spool>) -> bool {
    let mut changed = false;
    while let Some(event) = machine.poll_event() {
        match event {
            Event::Acked { records } => {
                inner.metrics.records_acked.inc_by(records);
                changed = true;
            }
            Event::Refused(counts) => refused(inner, &counts),
            Event::ReceiverAhead { applied, last_seq } => warn!(
                target: TARGET,
                applied,
                last = last_seq,
                "receiver has applied more than this spool holds (its tail was lost); continuing after the receiver's position"
            ),
        }
    }
    changed
}

/// Counts and logs (at a bounded rate) records a receiver refused.
fn refused(inner: &Inner, counts: &RefusedCounts) {
    for (reason, n) in counts.iter() {
        inner
            .metrics
            .records_refused
            .with_label_values(&[reason.as_str()])
            .inc_by(n);
    }
    let lines = inner
        .refusal_log
        .lock()
        .map(|mut log| log.note(counts, Instant::now()))
        .unwrap_or_default();
    for line in lines {
        match line {
            LogLine::First(reason, n) => warn!(
                target: TARGET,
                reason = %reason,
                records = n,
                "the receiver refused records; they are settled and will not be sent again (further refusals are summarised)"
            ),
            LogLine::Summary { counts, over } => warn!(
                target: TARGET,
                refused = %describe(&counts),
                over = ?over,
                "the receiver refused records"
            ),
        }
    }
}

/// One session's connection and machine.
struct Driver<'a> {
    inner: &'a Arc<Inner>,
    cfg: &'a SenderConfig,
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader,
    address: String,
    machine: SenderSession<Spool>,
    stopping: watch::Receiver<Option<Instant>>,
    flush: watch::Receiver<u64>,
    /// A connection attempt to the preferred receiver.
    probe: Option<JoinHandle<Result<Established, ConnectError>>>,
    /// The preferred receiver's session, once a probe succeeded.
    preferred: Option<Established>,
    frame: Vec<u8>,
    /// Counts the connection's UDP traffic until the session is over.
    _tracked: TrackedConnection,
}

impl Driver<'_> {
    async fn run(&mut self) -> SessionEnd {
        loop {
            if let Some(deadline) = *self.stopping.borrow_and_update() {
                self.machine
                    .handle(Instant::now(), Input::Stop { deadline });
            }
            // Read on every turn: a wake by `flush.changed()` has marked
            // the value seen already.
            let upto = *self.flush.borrow_and_update();
            self.machine.handle(Instant::now(), Input::Flush { upto });
            if let Err(reason) = self.read_ready() {
                return SessionEnd::Lost(reason);
            }
            let wants_records = match self.poll() {
                Step::Transmit(t) => {
                    if let Err(e) = self.send.write_all(&self.frame).await {
                        return SessionEnd::Lost(LostReason::Write(e));
                    }
                    if let Carries::Skip(Skip { from, to, lost }) = t.carries {
                        if lost > 0 {
                            warn!(
                                target: TARGET,
                                from,
                                to,
                                lost,
                                "telling the receiver about records dropped from the spool"
                            );
                        }
                    }
                    self.inner.metrics.bytes_sent.inc_by(t.bytes as u64);
                    continue;
                }
                Step::Probe => {
                    self.start_probe();
                    continue;
                }
                Step::Wait { wants_records } => wants_records,
                Step::End(End::Stopped) => return SessionEnd::Stopped,
                Step::End(End::FailBack) => {
                    return match self.preferred.take() {
                        Some(next) => SessionEnd::FailBack(Box::new(next)),
                        None => SessionEnd::Lost(LostReason::NoPreferredConnection),
                    }
                }
                Step::End(End::Failed(e)) => return SessionEnd::Lost(LostReason::Session(e)),
            };
            if let Some(end) = self.wait(wants_records).await {
                return end;
            }
        }
    }

    /// Polls the machine with the spool locked; counts what it reports and
    /// publishes which appends should wake it, before the lock is released
    /// (so the committer sees every append either before the poll or with
    /// the threshold in place).
    fn poll(&mut self) -> Step {
        let mut spool = self.inner.spool();
        let step = self
            .machine
            .poll(Instant::now(), &mut *spool, &mut self.frame);
        self.inner.wake_on.set(self.machine.wake_on());
        if take_events(self.inner, &mut self.machine) {
            self.inner.refresh_gauges(&spool);
        }
        step
    }

    /// Feeds the machine every frame that arrived, without waiting.
    fn read_ready(&mut self) -> Result<(), LostReason> {
        loop {
            match self.reader.try_next() {
                Ok(Some(frame)) => self.machine.handle(Instant::now(), Input::Frame(frame)),
                Ok(None) => return Ok(()),
                Err(e) => return Err(lost_reason(&self.conn, Some(e))),
            }
        }
    }

    /// Waits for a frame, a spool append (if the machine wants records; the
    /// committer only wakes it for those the machine asked for), a stop or
    /// flush request, the machine's deadline or the probe's outcome.
    async fn wait(&mut self, wants_records: bool) -> Option<SessionEnd> {
        let timeout = self
            .machine
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            read = self.reader.next() => match read {
                Ok(Some(frame)) => self.machine.handle(Instant::now(), Input::Frame(frame)),
                Ok(None) => return Some(SessionEnd::Lost(lost_reason(&self.conn, None))),
                Err(e) => return Some(SessionEnd::Lost(lost_reason(&self.conn, Some(e)))),
            },
            _ = self.inner.wake.notified(), if wants_records => {}
            _ = self.stopping.changed() => {}
            _ = self.flush.changed() => {}
            _ = self.conn.closed() => return Some(SessionEnd::Lost(lost_reason(&self.conn, None))),
            _ = sleep_until_opt(timeout) => {}
            res = join_opt(&mut self.probe), if self.probe.is_some() => {
                self.probe = None;
                self.on_probe(res);
            }
        }
        None
    }

    fn start_probe(&mut self) {
        let inner = self.inner.clone();
        let cfg = self.cfg.clone();
        self.probe = Some(tokio::spawn(async move {
            connect(&inner, &cfg, &cfg.receivers[0]).await
        }));
    }

    fn on_probe(&mut self, res: Option<Result<Established, ConnectError>>) {
        let now = Instant::now();
        match res {
            Some(Ok(next)) => {
                info!(target: TARGET, preferred = %next.address, current = %self.address, "preferred receiver is back; failing back once in-flight batches are acknowledged");
                self.preferred = Some(next);
                self.machine.handle(now, Input::ProbeSucceeded);
            }
            Some(Err(e)) => {
                debug!(target: TARGET, error = %e, "preferred receiver still unreachable");
                self.machine.handle(now, Input::ProbeFailed);
            }
            None => self.machine.handle(now, Input::ProbeFailed),
        }
    }

    /// Closes the connection the way the session ended: after a goodbye
    /// when stopping or failing back, at once when lost.
    async fn close(mut self, end: &SessionEnd) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
        if let Ok(mut c) = self.inner.current.lock() {
            *c = None;
        }
        let reason: &[u8] = match end {
            SessionEnd::Stopped => b"sender stopping",
            SessionEnd::FailBack(_) => b"failing back to the preferred receiver",
            SessionEnd::Lost(reason) => {
                match reason {
                    LostReason::Session(SessionError::Unexpected(t)) => {
                        warn!(target: TARGET, "unexpected {t:?} from receiver");
                    }
                    LostReason::Session(SessionError::Malformed(e)) => {
                        warn!(target: TARGET, error = %e, "malformed message from receiver");
                    }
                    _ => {}
                }
                self.conn
                    .close(close_code(ErrorCode::NoError), b"reconnecting");
                return;
            }
        };
        let mut buf = Vec::new();
        let max_frame = self.machine.max_frame();
        let _ = write_message(&mut self.send, &Message::Bye, max_frame, &mut buf).await;
        let _ = self.send.finish();
        // The receiver answers a bye with its last ack and closes. Wait for
        // that at most BYE_GRACE, and never far past a stop deadline: a
        // receiver that stalled until the deadline will not answer now.
        let grace = match *self.stopping.borrow() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(BYE_GRACE_AFTER_DEADLINE, BYE_GRACE),
            None => BYE_GRACE,
        };
        let _ = tokio::time::timeout(grace, self.conn.closed()).await;
        self.conn.close(close_code(ErrorCode::NoError), reason);
    }
}

/// Longest wait for the receiver's close after a bye.
pub(super) const BYE_GRACE: Duration = Duration::from_secs(2);
/// The same wait once the stop deadline has passed.
const BYE_GRACE_AFTER_DEADLINE: Duration = Duration::from_millis(250);

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn join_opt<T>(h: &mut Option<JoinHandle<T>>) -> Option<T> {
    match h {
        Some(h) => h.await.ok(),
        None => std::future::pending().await,
    }
}

/// Why the session's stream or connection ended, from the connection's
/// close reason, else from the read that failed.
fn lost_reason(conn: &quinn::Connection, read: Option<ReadError>) -> LostReason {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(a)) => LostReason::ReceiverClosed {
            code: PeerCode::from_wire(u64::from(a.error_code)),
            reason: String::from_utf8_lossy(&a.reason).into_owned(),
        },
        Some(e) => LostReason::Connection(e),
        None => read.map_or(LostReason::AckStreamEnded, LostReason::AckStream),
    }
}
