//! A sender's session with one receiver, as a state machine without IO:
//! where to resume, what to send next, what an ack means for the spool, and
//! when the session is over (stopped, failing back, or failed).
//!
//! The caller (the async layer) owns the connection, the clock and the
//! spool's lock. It feeds the machine what happened ([`Input`]: frames from
//! the receiver, a stop request, the outcome of a probe of the preferred
//! receiver), asks it what to do ([`SenderSession::poll`] → [`Step`]),
//! collects what it should count or log ([`SenderSession::poll_event`]),
//! and wakes it no later than [`SenderSession::poll_timeout`]. Every call
//! takes `now`, so tests drive it with a simulated clock.
//!
//! # What it guarantees
//!
//! * **Resume.** Sending starts right after the receiver's `applied_seq`.
//!   Records the spool no longer holds there — acknowledged by another
//!   receiver, or dropped by the size cap — are announced in one [`Skip`]
//!   whose `lost` counts only the dropped ones. Records dropped after they
//!   were sent are settled by `applied_seq` first (delivered at or below it,
//!   lost above). A receiver that applied more than the spool holds (the
//!   spool lost its tail in a power cut) moves the spool's numbering past
//!   its position, so new records are not taken for duplicates.
//! * **Order and flow control.** Batches and skips cover consecutive
//!   sequences in order; at most [`WindowLimits`] are unacknowledged.
//! * **Batching.** A batch leaves when it is full or once the linger since
//!   its first record has passed; a flush ([`Input::Flush`]), a stop, and
//!   the backlog found at the session's start do not linger (see
//!   `batching`). While it lingers the caller is woken by the appends that
//!   matter ([`SenderSession::wake_on`]) and the deadline
//!   ([`SenderSession::poll_timeout`]), not by every append.
//! * **Acks.** Acks are cumulative. One that goes backwards or covers
//!   sequences never sent ends the session ([`SessionError::BadAck`]); a
//!   good one deletes the records from the spool.
//! * **Refused records** (version 3). A receiver's [`Refused`] report is
//!   checked against what was sent and acknowledged
//!   ([`SessionError::BadReport`]) and reported as [`Event::Refused`] once
//!   the ack covering it arrives; the refused records leave the spool with
//!   that ack like the applied ones.
//! * **Stop.** After [`Input::Stop`] the session ends once everything
//!   spooled is acknowledged, or at the deadline.
//! * **Failback.** On a non-preferred receiver the machine asks for a probe
//!   of the preferred one every `failback_after`; once a probe succeeded it
//!   sends nothing more and ends with [`End::FailBack`] as soon as the
//!   batches in flight are acknowledged, so nothing is sent to both.

mod batching;
mod interface;
#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

pub(crate) use batching::WakeOn;
use batching::{Batching, Unsent};
pub(crate) use interface::{
    Carries, End, Event, Input, SessionConfig, SessionError, Step, Transmit,
};

use super::{
    handshake::BATCH_HEADER_ROOM, refusals::PendingRefusals, spool::SessionSpool,
    window::SendWindow,
};
use crate::{
    proto::{
        batch::{BatchEncoder, ENTRY_OVERHEAD},
        frame::MAX_FRAME_LIMIT,
        message::{Batch, Message, Refused, Skip, Welcome, REPLICA_VERSION},
        refused::RefusedCounts,
    },
    spool::{ReadOutcome, MAX_SEQ},
};

/// Whether a stopping link is done: everything spooled is acknowledged and
/// nothing is in flight, or the deadline has passed.
pub(crate) fn drained_or_due(now: Instant, deadline: Instant, unacked: u64, idle: bool) -> bool {
    (unacked == 0 && idle) || now >= deadline
}

/// Where the session stands with the preferred receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failback {
    /// On the preferred receiver, or failback is off.
    Off,
    /// A probe is due at `at`.
    Waiting { at: Instant },
    /// A probe is running.
    Probing,
    /// The preferred receiver answered: drain the window, then switch.
    Switching,
}

/// Frame and batch sizes for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameLimits {
    /// Largest frame both sides accept.
    max_frame: usize,
    /// Most records per batch.
    max_records: usize,
    /// Payload bytes per batch, so that payloads, per-entry overhead and the
    /// header fit a frame.
    budget: usize,
}

impl FrameLimits {
    fn new(receiver_max_frame: u32, config: &SessionConfig) -> Self {
        let max_frame = (receiver_max_frame as usize)
            .clamp(1024, MAX_FRAME_LIMIT)
            .min(config.max_frame.max(1024));
        let max_records = config
            .batch_max_records
            .clamp(1, (max_frame / ENTRY_OVERHEAD).max(1));
        let budget = max_frame
            .saturating_sub(BATCH_HEADER_ROOM + max_records * ENTRY_OVERHEAD)
            .max(1);
        Self {
            max_frame,
            max_records,
            budget,
        }
    }
}

/// One session's state; see the module documentation.
#[derive(Debug)]
pub(crate) struct SenderSession<S: SessionSpool> {
    window: SendWindow,
    cursor: S::Cursor,
    records: S::Records,
    /// The skip over records another receiver acknowledged, sent first.
    initial_skip: Option<Skip>,
    /// The newest good ack not yet applied to the spool.
    pending_ack: Option<u64>,
    /// Whether the receiver reports refused records (version 3).
    reports: bool,
    /// Refusal reports waiting for their ack.
    refused: PendingRefusals,
    /// Refusals settled by acks not yet applied to the spool.
    settled: RefusedCounts,
    encoder: BatchEncoder,
    body: Vec<u8>,
    limits: FrameLimits,
    stop: Option<Instant>,
    failback: Failback,
    failback_after: Option<Duration>,
    batching: Batching,
    /// Which appends should wake the caller, as of the last poll.
    wake_on: WakeOn,
    end: Option<End>,
    events: VecDeque<Event>,
}

impl<S: SessionSpool> SenderSession<S> {
    /// A session that the receiver welcomed, resuming at its applied
    /// position. `failed_over` says the receiver is not the preferred one.
    /// A resume that fails leaves the session ending at the first poll.
    pub(crate) fn new(
        now: Instant,
        welcome: &Welcome,
        config: &SessionConfig,
        failed_over: bool,
        spool: &mut S,
    ) -> Self {
        let applied = welcome.applied_seq;
        let mut events = VecDeque::new();
        let (cursor, initial_skip, end) = match resume(applied, spool, &mut events) {
            Ok((cursor, skip)) => (cursor, skip, None),
            Err(e) => (spool.cursor(0), None, Some(End::Failed(e))),
        };
        let failback = match config.failback_after {
            Some(after) if failed_over => Failback::Waiting { at: now + after },
            _ => Failback::Off,
        };
        let window = SendWindow::new(applied.min(MAX_SEQ), config.window);
        let limits = FrameLimits::new(welcome.max_frame, config);
        let backlog = initial_skip.is_some() || spool.last_seq() >= window.next_seq();
        Self {
            window,
            cursor,
            records: S::Records::default(),
            initial_skip,
            pending_ack: None,
            reports: welcome.version >= REPLICA_VERSION,
            refused: PendingRefusals::default(),
            settled: RefusedCounts::NONE,
            encoder: BatchEncoder::new(welcome.max_series),
            body: Vec::new(),
            limits,
            stop: None,
            failback,
            failback_after: config.failback_after,
            batching: Batching::new(
                config.linger,
                limits.max_records,
                limits.budget,
                now,
                backlog,
            ),
            wake_on: WakeOn::NEVER,
            end,
            events,
        }
    }

    /// The largest frame this session sends.
    pub(crate) fn max_frame(&self) -> usize {
        self.limits.max_frame
    }

    /// Takes in something that happened.
    pub(crate) fn handle(&mut self, now: Instant, input: Input<'_>) {
        if self.end.is_some() {
            return;
        }
        match input {
            Input::Frame(frame) => {
                if let Err(e) = self.on_frame(frame) {
                    self.end = Some(End::Failed(e));
                }
            }
            Input::Stop { deadline } => self.stop = Some(deadline),
            Input::ProbeSucceeded => {
                if self.failback == Failback::Probing {
                    self.failback = Failback::Switching;
                }
            }
            Input::ProbeFailed => {
                if self.failback == Failback::Probing {
                    self.failback = match self.failback_after {
                        Some(after) => Failback::Waiting { at: now + after },
                        None => Failback::Off,
                    };
                }
            }
            Input::Flush { upto } => self.batching.flush(upto),
        }
    }

    /// Decides the next step. A [`Step::Transmit`] has put its frame in
    /// `out` and counts as sent.
    pub(crate) fn poll(&mut self, now: Instant, spool: &mut S, out: &mut Vec<u8>) -> Step {
        self.wake_on = WakeOn::NEVER;
        if let Some(end) = self.end.take() {
            return Step::End(end);
        }
        if let Err(e) = self.apply_ack(spool) {
            return Step::End(End::Failed(e));
        }
        if let Some(deadline) = self.stop {
            if drained_or_due(now, deadline, spool.unacked(), self.window.is_idle()) {
                return Step::End(End::Stopped);
            }
        }
        match self.failback {
            Failback::Switching if self.window.is_idle() => return Step::End(End::FailBack),
            Failback::Waiting { at } if now >= at => {
                self.failback = Failback::Probing;
                return Step::Probe;
            }
            _ => {}
        }
        let sending = self.can_send();
        if sending {
            let unsent = self.unsent(spool);
            self.batching.observe(now, &unsent);
            let urgent = self.stop.is_some() || self.initial_skip.is_some();
            if self.batching.is_due(now, &unsent, urgent) {
                match self.transmit(spool, out) {
                    Ok(Some(t)) => {
                        // All sent: the next record starts a new linger.
                        self.batching.observe(now, &self.unsent(spool));
                        return Step::Transmit(t);
                    }
                    Ok(None) => {}
                    Err(e) => return Step::End(End::Failed(e)),
                }
            }
            self.wake_on = self.batching.wake_on(&unsent);
        }
        Step::Wait {
            wants_records: sending,
        }
    }

    /// Which appends should wake the caller while it waits after the last
    /// [`Step::Wait`]: the first record of a batch, or enough records to
    /// fill one ([`WakeOn::NEVER`] when the window is full). The caller
    /// records it with the spool locked, as the poll left it, so that no
    /// append is missed.
    pub(crate) fn wake_on(&self) -> WakeOn {
        self.wake_on
    }

    fn can_send(&self) -> bool {
        self.failback != Failback::Switching && self.window.has_room()
    }

    /// What waits to be sent.
    fn unsent(&self, spool: &S) -> Unsent {
        let next_seq = self.window.next_seq();
        Unsent {
            next_seq,
            records: (spool.last_seq() + 1).saturating_sub(next_seq),
            bytes: spool.unsent_bytes(&self.cursor),
            appended_bytes: spool.appended_bytes(),
        }
    }

    /// The next thing to count or log, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the machine must be polled again even if nothing happens: the
    /// stop deadline, the next failback probe, or — while it can send —
    /// the end of a batch's linger.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let probe = match self.failback {
            Failback::Waiting { at } => Some(at),
            _ => None,
        };
        let linger = self
            .batching
            .deadline()
            .filter(|_| self.end.is_none() && self.can_send());
        [self.stop, probe, linger].into_iter().flatten().min()
    }

    fn on_frame(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        match Message::decode(frame).map_err(SessionError::Malformed)? {
            Message::Ack(ack) => {
                let newly = self
                    .window
                    .on_ack(ack.applied_seq)
                    .map_err(SessionError::BadAck)?;
                if newly > 0 {
                    self.pending_ack = Some(ack.applied_seq);
                }
                if let Some(counts) = self.refused.on_ack(ack.applied_seq) {
                    self.settled.merge(&counts);
                }
                Ok(())
            }
            Message::Refused(report) if self.reports => self.on_report(&report),
            other => Err(SessionError::Unexpected(other.message_type())),
        }
    }

    fn on_report(&mut self, report: &Refused) -> Result<(), SessionError> {
        self.refused
            .on_report(report, self.window.acked(), self.window.last_sent())
            .map_err(SessionError::BadReport)
    }

    /// Deletes what the newest ack covers from the spool (once per poll,
    /// however many acks arrived since).
    fn apply_ack(&mut self, spool: &mut S) -> Result<(), SessionError> {
        let Some(acked) = self.pending_ack.take() else {
            return Ok(());
        };
        let records = spool.ack(acked).map_err(SessionError::Spool)?;
        spool.settle_delivered(acked).map_err(SessionError::Spool)?;
        self.events.push_back(Event::Acked { records });
        if !self.settled.is_empty() {
            self.events
                .push_back(Event::Refused(std::mem::take(&mut self.settled)));
        }
        Ok(())
    }

    /// Frames the next batch or skip into `out`, if there is one.
    fn transmit(
        &mut self,
        spool: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Option<Transmit>, SessionError> {
        let outcome = match self.initial_skip.take() {
            Some(Skip { from, to, lost }) => ReadOutcome::Gap { from, to, lost },
            None => spool
                .read(
                    &mut self.cursor,
                    self.limits.max_records,
                    self.limits.budget,
                    &mut self.records,
                )
                .map_err(SessionError::SpoolRead)?,
        };
        let (last_seq, carries) = match outcome {
            ReadOutcome::Records { first_seq, count } => {
                self.body.clear();
                for envelope in S::records(&self.records) {
                    self.encoder
                        .push_record(envelope, &mut self.body)
                        .map_err(SessionError::UnreadableRecord)?;
                }
                let batch = Message::Batch(Batch {
                    first_seq,
                    count: count as u32,
                    body: &self.body,
                });
                batch
                    .encode_frame(self.limits.max_frame, out)
                    .map_err(SessionError::BatchFraming)?;
                let last_seq = first_seq + count as u64 - 1;
                (last_seq, Carries::Batch { first_seq, count })
            }
            ReadOutcome::Gap { from, to, lost } => {
                let skip = Skip { from, to, lost };
                Message::Skip(skip)
                    .encode_frame(self.limits.max_frame, out)
                    .map_err(SessionError::SkipFraming)?;
                (to, Carries::Skip(skip))
            }
            ReadOutcome::Empty => return Ok(None),
        };
        self.window.on_sent(last_seq, out.len());
        spool.mark_sent(last_seq);
        Ok(Some(Transmit {
            last_seq,
            bytes: out.len(),
            carries,
        }))
    }
}

/// Brings the spool in line with the receiver's applied position; returns
/// the read cursor and the skip to send first, if any.
fn resume<S: SessionSpool>(
    applied: u64,
    spool: &mut S,
    events: &mut VecDeque<Event>,
) -> Result<(S::Cursor, Option<Skip>), SessionError> {
    if applied > MAX_SEQ {
        return Err(SessionError::ImpossibleApplied(applied));
    }
    let last_seq = spool.last_seq();
    if applied > last_seq {
        events.push_back(Event::ReceiverAhead { applied, last_seq });
        spool
            .advance_next_seq(applied + 1)
            .map_err(SessionError::Spool)?;
    }
    let records = spool.ack(applied).map_err(SessionError::Spool)?;
    events.push_back(Event::Acked { records });
    // Records dropped after being sent are settled now: those this receiver
    // applied were delivered; the others are lost, counted here and in the
    // skip the receiver is about to get.
    spool
        .settle_uncertain(applied)
        .map_err(SessionError::Spool)?;
    // Records another receiver already acknowledged may still sit in the
    // spool: skip them (they are delivered, not lost).
    let acked = spool.acked_seq();
    let skip = (acked > applied).then(|| Skip {
        from: applied + 1,
        to: acked,
        lost: spool.lost_in(applied + 1, acked),
    });
    Ok((spool.cursor(acked.max(applied) + 1), skip))
}
