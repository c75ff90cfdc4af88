//! Drives one connection's session machine ([`ReceiverSession`]) over
//! quinn, doing only what it asks, in its order: accept the backlog stream,
//! read frames (waiting, or only what is already buffered for a group
//! commit), claim the stream's slot (identity and replica) and load its
//! state, write the welcome, refusals, refusal reports and acks, hand
//! deliveries to the handler, submit positions to the state writer the
//! moment the machine emits them, wait for durability, finish and close.
//! Beside an established session it runs the present lane. Logs and
//! metrics for what the machine decided are emitted here, with the
//! connection's details; refused records are logged at a bounded rate
//! (the first of each reason per sender, then a summary per minute).

use std::{net::SocketAddr, sync::Arc, time::Instant};

use thiserror::Error;
use tokio::sync::{watch, OwnedMutexGuard};
use tracing::{debug, info, warn};

use super::{
    admission::PendingGuard, handshake, presents, Delivery, Handler, ReceiverLimits, Shared,
};
use crate::{
    net::{
        close_code,
        persist::Durable,
        stream::{write_message, FrameReader, ReadError, WriteError},
    },
    proto::{
        frame::FrameError,
        message::{Ack, Message},
        record::Payload,
        refused::RefusedCounts,
    },
    receiver_state::StreamKey,
    session::receiver::{
        Accepted, Action, Config, Count, Deliver, End, Event, ReceiverSession, Wants,
    },
};

/// Read buffer a session keeps while it waits for the next frame; a larger
/// one (grown for a large batch) is freed.
const IDLE_READ_BUFFER: usize = 64 * 1024;

/// Serves one admitted connection, from its TLS handshake to its close.
pub(super) async fn serve<T: Payload, H: Handler<T>>(
    incoming: quinn::Incoming,
    shared: &Shared<H>,
    pending: PendingGuard<'_>,
) {
    let Some(peer) = handshake::establish(incoming, shared, pending).await else {
        return;
    };
    let sender: Arc<str> = Arc::from(peer.identity.as_str());
    let mut link = Link {
        machine: ReceiverSession::new(sender.clone(), config(&shared.limits), Instant::now()),
        io: Io {
            shared,
            conn: peer.conn,
            remote: peer.remote,
            sender: sender.clone(),
            stream: StreamKey::new(&sender, ""),
            send: None,
            reader: None,
            buf: Vec::new(),
            reply_max_frame: shared.limits.max_frame,
            shutdown: shared.shutdown.clone(),
            shutdown_told: false,
            lost: None,
            udp_reported: (0, 0),
        },
        outgoing: None,
        delivery: None,
        durable: None,
        slot: None,
        stream_id: 0,
        connected: false,
    };
    link.drive(true).await;
    if link.machine.is_welcomed() {
        let stream = link.io.stream.clone();
        let presents =
            presents::receive::<T, H>(link.io.conn.clone(), shared, &stream, link.stream_id);
        tokio::select! {
            () = link.drive(false) => {}
            never = presents => match never {},
        }
    }
    link.conclude();
}

fn config(limits: &ReceiverLimits) -> Config {
    Config {
        max_frame: limits.max_frame,
        intern: limits.intern(),
        hello_timeout: limits.hello_timeout,
        max_frames_per_commit: limits.max_frames_per_commit,
        max_protocol_version: limits.max_protocol_version,
    }
}

/// Why a session was lost, with the IO error behind it.
#[derive(Debug, Error)]
enum LostError {
    #[error("stream finished without bye")]
    Finished,
    #[error(transparent)]
    Read(ReadError),
    #[error("writing ack: {0}")]
    Ack(WriteError),
}

/// A message the machine asked to write, answered with [`Event::Sent`].
enum Outgoing {
    Welcome(Accepted),
    Ack(Ack),
}

/// One frame read, or why none was.
enum Read<'r> {
    Frame(&'r [u8]),
    Finished,
    NotReady,
    Failed(ReadError),
    Shutdown,
}

impl<'r> From<Result<Option<&'r [u8]>, ReadError>> for Read<'r> {
    fn from(r: Result<Option<&'r [u8]>, ReadError>) -> Self {
        match r {
            Ok(Some(frame)) => Read::Frame(frame),
            Ok(None) => Read::Finished,
            Err(e) => Read::Failed(e),
        }
    }
}

struct Link<'a, T, H> {
    machine: ReceiverSession<T>,
    io: Io<'a, H>,
    outgoing: Option<Outgoing>,
    delivery: Option<Deliver<T>>,
    durable: Option<watch::Receiver<Durable>>,
    slot: Option<OwnedMutexGuard<()>>,
    stream_id: u128,
    connected: bool,
}

/// The connection's streams and what the driver remembers about them.
struct Io<'a, H> {
    shared: &'a Shared<H>,
    conn: quinn::Connection,
    remote: SocketAddr,
    sender: Arc<str>,
    /// The session's stream: the sender and, once the hello named it, its
    /// replica.
    stream: StreamKey,
    send: Option<quinn::SendStream>,
    reader: Option<FrameReader>,
    buf: Vec<u8>,
    /// Largest frame to write to the sender.
    reply_max_frame: usize,
    shutdown: watch::Receiver<bool>,
    shutdown_told: bool,
    /// The first IO failure that lost the session.
    lost: Option<LostError>,
    /// UDP datagrams and bytes sent on this connection already counted.
    udp_reported: (u64, u64),
}

impl<T: Payload, H: Handler<T>> Link<'_, T, H> {
    /// Performs actions and answers waits until the machine is done, or
    /// (with `until_welcomed`) until the welcome went out.
    async fn drive(&mut self, until_welcomed: bool) {
        loop {
            while let Some(action) = self.machine.poll_action() {
                self.perform(action).await;
            }
            if until_welcomed && self.machine.is_welcomed() {
                return;
            }
            if !self.wait().await {
                return;
            }
        }
    }

    async fn perform(&mut self, action: Action<T>) {
        let io = &mut self.io;
        match action {
            Action::Welcome(accepted) => self.outgoing = Some(Outgoing::Welcome(accepted)),
            Action::Ack(ack) => self.outgoing = Some(Outgoing::Ack(ack)),
            Action::Deliver(d) => self.delivery = Some(d),
            // Synchronous, in the step that emitted it: nothing can cancel
            // the session between the handler's success and this.
            Action::Persist(cursor) => io.shared.persister.submit(&io.stream, cursor),
            Action::Count(c) => io.count(c),
            Action::Report(report) => {
                // The ack written next fails too if this one does.
                if let Some(send) = io.send.as_mut() {
                    let msg = Message::Refused(report);
                    let _ = write_message(send, &msg, io.reply_max_frame, &mut io.buf).await;
                }
            }
            Action::Refuse(refusal) => {
                warn!(remote = %io.remote, sender = %io.sender, "{}", refusal.reason);
                if let Some(send) = io.send.as_mut() {
                    let msg = Message::Refuse(refusal);
                    let _ =
                        write_message(send, &msg, io.shared.limits.max_frame, &mut io.buf).await;
                }
            }
            Action::Finish { grace } => {
                if let Some(send) = io.send.as_mut() {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(grace, send.stopped()).await;
                }
            }
            Action::Close { code, reason } => io.conn.close(close_code(code), reason.as_bytes()),
        }
    }

    /// Waits for what the machine wants and feeds it; `false` when there
    /// is nothing more to wait for.
    async fn wait(&mut self) -> bool {
        match self.machine.wants() {
            Wants::Nothing => return false,
            Wants::Stream => {
                let event = self.io.accept_stream(self.machine.poll_timeout()).await;
                self.machine.handle(event, Instant::now());
            }
            Wants::Frame => {
                let welcomed = self.machine.is_welcomed();
                let event = self
                    .io
                    .next_frame(self.machine.poll_timeout(), welcomed)
                    .await;
                self.machine.handle(event, Instant::now());
            }
            Wants::FrameIfReady => {
                let event = self.io.frame_if_ready();
                self.machine.handle(event, Instant::now());
            }
            Wants::State => {
                let Some(event) = self.load_state().await else {
                    return false;
                };
                self.machine.handle(event, Instant::now());
            }
            Wants::Handled => {
                let Some(d) = self.delivery.take() else {
                    return false;
                };
                let delivery = Delivery {
                    sender: self.io.sender.clone(),
                    replica: self.io.stream.replica.clone(),
                    stream_id: d.stream_id,
                    first_seq: d.first_seq,
                    records: d.records,
                };
                let result = self.io.shared.handler.handle(delivery).await;
                let event = Event::Handled(result.map(|applied| *applied.refused()));
                self.machine.handle(event, Instant::now());
            }
            Wants::Sent => {
                let Some(outgoing) = self.outgoing.take() else {
                    return false;
                };
                let event = self.write(outgoing).await;
                self.machine.handle(event, Instant::now());
            }
            Wants::Durable(target) => {
                let Some(durable) = self.durable.as_mut() else {
                    return false;
                };
                let outcome = durable
                    .wait_for(|d| match d {
                        Durable::Upto(n) => *n >= target,
                        Durable::Failed(_) => true,
                    })
                    .await
                    .map(|d| d.clone());
                let event = match outcome {
                    Ok(Durable::Upto(n)) => Event::Durable(n),
                    Ok(Durable::Failed(e)) => Event::PersistFailed(e),
                    Err(_) => Event::PersisterStopped,
                };
                self.machine.handle(event, Instant::now());
            }
        }
        true
    }

    /// Takes the slot of the hello's stream (superseding an older
    /// connection of the same replica), then reads its stored position.
    /// `None`: this connection was superseded or closed while it waited, or
    /// the slots are unusable.
    async fn load_state(&mut self) -> Option<Event<'static>> {
        let io = &mut self.io;
        io.stream = StreamKey {
            sender: io.sender.clone(),
            replica: self.machine.replica().clone(),
        };
        self.slot = Some(io.shared.slots.claim(&io.stream, &io.conn).await?);
        if io.conn.close_reason().is_some() {
            return None;
        }
        Some(match io.shared.state.load(&io.stream) {
            Ok(stored) => Event::StateLoaded(stored),
            Err(e) => {
                tracing::error!(sender = %io.sender, replica = %io.stream.replica, error = %e, "cannot load sender state; refusing the sender");
                Event::StateUnreadable
            }
        })
    }

    async fn write(&mut self, outgoing: Outgoing) -> Event<'static> {
        let io = &mut self.io;
        match outgoing {
            Outgoing::Welcome(accepted) => {
                io.reply_max_frame = accepted.reply_max_frame;
                let msg = Message::Welcome(accepted.welcome.clone());
                let Some(send) = io.send.as_mut() else {
                    return Event::SendFailed;
                };
                if write_message(send, &msg, io.reply_max_frame, &mut io.buf)
                    .await
                    .is_err()
                {
                    return Event::SendFailed;
                }
                self.connected(&accepted);
                Event::Sent
            }
            Outgoing::Ack(ack) => {
                let Some(send) = io.send.as_mut() else {
                    return Event::SendFailed;
                };
                match write_message(send, &Message::Ack(ack), io.reply_max_frame, &mut io.buf).await
                {
                    Ok(()) => {
                        io.count_udp();
                        Event::Sent
                    }
                    Err(e) => {
                        io.lost.get_or_insert(LostError::Ack(e));
                        Event::SendFailed
                    }
                }
            }
        }
    }

    /// The welcome is out: the session is established.
    fn connected(&mut self, accepted: &Accepted) {
        let io = &self.io;
        let sender = &io.sender;
        let replica = &accepted.replica;
        let applied = accepted.welcome.applied_seq;
        let version = accepted.welcome.version;
        info!(remote = %io.remote, sender = %sender, replica = %replica, version, applied, last = accepted.sender_last_seq, "sender connected");
        io.shared.metrics.senders_connected.inc();
        io.shared.metrics.init_sender(sender);
        io.shared.handler.sender_connected(sender, replica);
        self.durable = Some(io.shared.persister.watch(&io.stream, applied));
        self.stream_id = accepted.stream_id;
        self.connected = true;
    }

    /// After the machine is done (or abandoned): the disconnect, the log
    /// line for how the session ended, and the slot.
    fn conclude(&mut self) {
        self.io.count_udp();
        let io = &self.io;
        let sender = &io.sender;
        if self.connected {
            io.shared.metrics.senders_connected.dec();
            io.shared
                .handler
                .sender_disconnected(sender, &io.stream.replica);
            io.log_refusals(None);
            match self.machine.end() {
                Some(End::Bye) => info!(sender = %sender, "sender closed the session"),
                Some(End::Lost(lost)) => match &io.lost {
                    Some(e) => info!(sender = %sender, error = %e, "sender connection lost"),
                    None => info!(sender = %sender, error = %lost, "sender connection lost"),
                },
                Some(End::Closed(e)) => {
                    warn!(sender = %sender, code = %e.code(), "closing sender session: {e}");
                }
                Some(End::Shutdown | End::Refused(_)) | None => {}
            }
        }
        if let Some(exclusive) = self.slot.take() {
            io.shared.slots.release(&io.stream, &io.conn);
            drop(exclusive);
        }
    }
}

impl<H> Io<'_, H> {
    /// Adds what the connection sent since the last call to the sender's
    /// UDP counters (called at each ack and at the end, so an idle session
    /// costs nothing).
    fn count_udp(&mut self) {
        let udp = self.conn.stats().udp_tx;
        let (datagrams, bytes) = self.udp_reported;
        let m = &self.shared.metrics;
        let sender: &str = &self.sender;
        m.udp_datagrams_sent
            .with_label_values(&[sender])
            .inc_by(udp.datagrams.saturating_sub(datagrams));
        m.udp_bytes_sent
            .with_label_values(&[sender])
            .inc_by(udp.bytes.saturating_sub(bytes));
        self.udp_reported = (udp.datagrams.max(datagrams), udp.bytes.max(bytes));
    }

    /// Logs refusals through the sender's rate-limited log (`None`: what is
    /// left, as the session ends).
    fn log_refusals(&self, counts: Option<&RefusedCounts>) {
        self.shared
            .log_refusals(&self.sender, &self.stream.replica, counts);
    }

    async fn accept_stream(&mut self, deadline: Option<Instant>) -> Event<'static> {
        let accepted = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.conn.accept_bi()).await,
            None => Ok(self.conn.accept_bi().await),
        };
        match accepted {
            Ok(Ok((send, recv))) => {
                self.send = Some(send);
                self.reader = Some(FrameReader::new(recv, self.shared.limits.max_frame));
                Event::StreamOpened
            }
            Ok(Err(e)) => {
                debug!(remote = %self.remote, sender = %self.sender, error = %e, "connection ended before hello");
                Event::StreamFailed
            }
            Err(_) => Event::Timeout,
        }
    }

    /// The next frame: before the welcome against the hello deadline, after
    /// it until a frame arrives or shutdown is requested.
    async fn next_frame(&mut self, deadline: Option<Instant>, welcomed: bool) -> Event<'_> {
        let Some(reader) = self.reader.as_mut() else {
            return Event::StreamFailed;
        };
        if welcomed {
            // Between commits: an idle session keeps a small buffer only.
            reader.release_idle(IDLE_READ_BUFFER);
        }
        let read = if let Some(d) = deadline {
            let limit = d.saturating_duration_since(Instant::now());
            match reader.next_within(limit).await {
                Err(ReadError::Timeout) => return Event::Timeout,
                other => Read::from(other),
            }
        } else if welcomed && !self.shutdown_told {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => Read::Shutdown,
                r = reader.next() => Read::from(r),
            }
        } else {
            Read::from(reader.next().await)
        };
        Self::event_of(
            read,
            &mut self.lost,
            &mut self.shutdown_told,
            welcomed,
            self.remote,
        )
    }

    /// A frame only if one is already here (after a shutdown request, the
    /// request instead).
    fn frame_if_ready(&mut self) -> Event<'_> {
        if !self.shutdown_told && *self.shutdown.borrow() {
            self.shutdown_told = true;
            return Event::Shutdown;
        }
        let Some(reader) = self.reader.as_mut() else {
            return Event::StreamFailed;
        };
        let read = match reader.try_next() {
            Ok(Some(frame)) => Read::Frame(frame),
            Ok(None) => Read::NotReady,
            Err(e) => Read::Failed(e),
        };
        Self::event_of(
            read,
            &mut self.lost,
            &mut self.shutdown_told,
            true,
            self.remote,
        )
    }

    fn event_of<'r>(
        read: Read<'r>,
        lost: &mut Option<LostError>,
        shutdown_told: &mut bool,
        welcomed: bool,
        remote: SocketAddr,
    ) -> Event<'r> {
        match read {
            Read::Frame(frame) => Event::Frame(frame),
            Read::NotReady => Event::NoFrameWaiting,
            Read::Shutdown => {
                *shutdown_told = true;
                Event::Shutdown
            }
            Read::Finished => {
                lost.get_or_insert(LostError::Finished);
                Event::StreamFinished
            }
            Read::Failed(ReadError::Frame(e)) => {
                if !welcomed && !matches!(e, FrameError::TooLarge { .. }) {
                    debug!(%remote, error = %e, "hello read failed");
                }
                Event::BadFraming(e)
            }
            Read::Failed(e) => {
                if !welcomed {
                    debug!(%remote, error = %e, "hello read failed");
                }
                lost.get_or_insert(LostError::Read(e));
                Event::StreamFailed
            }
        }
    }

    fn count(&self, c: Count) {
        let m = &self.shared.metrics;
        let sender: &str = &self.sender;
        match c {
            Count::HandshakeFailure(reason) => {
                m.handshake_failures.with_label_values(&[reason]).inc();
            }
            Count::StreamReset => m.stream_resets.with_label_values(&[sender]).inc(),
            Count::Duplicates(n) => m.duplicates_dropped.with_label_values(&[sender]).inc_by(n),
            Count::Refused(counts) => {
                for (reason, n) in counts.iter() {
                    m.records_rejected
                        .with_label_values(&[sender, reason.as_str()])
                        .inc_by(n);
                }
                self.log_refusals(Some(&counts));
            }
            Count::Received(n) => m.records_received.with_label_values(&[sender]).inc_by(n),
            Count::Lost(n) => m.records_lost.with_label_values(&[sender]).inc_by(n),
            Count::AppliedSeq(n) => m
                .applied_seq
                .with_label_values(&[sender, &self.stream.replica])
                .set(n as i64),
            Count::ProtocolError(code) => {
                m.protocol_errors.with_label_values(&[code.as_str()]).inc();
            }
        }
    }
}
