//! # telemetry-link
//!
//! A resilient, encrypted telemetry link: QUIC (quinn) with mutual TLS
//! (rustls, ring), a durable on-disk spool on the sending side, and
//! sequence numbers, acknowledgements and receiver-side deduplication so that
//! no record is lost or applied twice across network failures and restarts.
//!
//! ```text
//!  application ──send()──▶ Spool (disk) ──▶ Sender task ══QUIC/mTLS══▶ Receiver ──▶ Handler
//!                             ▲                                            │
//!                             └────────── delete on Ack ◀── persist seq ───┘
//! ```
//!
//! ## Layers
//!
//! * [`proto`] — the wire formats, no IO: framing, messages, batch encoding
//!   with series interning, the present lane's parts, sequence bounds.
//! * [`session`] — both ends' sessions as state machines, no IO: the
//!   sender's hello, resume, window, acks, stop, failback and reconnect
//!   policy; the receiver's dedup cursor and its session from hello to close.
//! * `spool` — the on-disk append-only log with CRC-checked records
//!   (configured with [`SpoolConfig`], reporting [`SpoolStats`] and a
//!   [`RecoveryReport`]).
//! * [`queue`] — a durable FIFO queue on the spool for embedders, with
//!   idempotent producers.
//! * [`net`] — thin quinn/tokio layer: [`Sender`] and [`Receiver`].
//! * [`tls`] — certificates, identities, rustls configurations, reload.
//!
//! ## Delivery guarantee
//!
//! For one sender identity, replica ([`SenderConfig::replica`]) and spool
//! (stream):
//!
//! 1. **No loss.** A record accepted by [`Sender::send`] stays in the spool
//!    until a receiver acknowledges it, which it does only after its
//!    [`Handler`] returned `Ok` and the applied sequence was persisted
//!    (appended to the receiver's state journal and fdatasync'd; one sync
//!    covers every session's positions submitted meanwhile). Crashes, kills, restarts and network outages
//!    on either side only delay delivery. A record can also be *refused*
//!    for good — by the handler ([`Applied`]) or by the link (it does not
//!    decode, or its series is beyond the receiver's interning budget or
//!    label limits): it is then settled the same way, acknowledged and
//!    counted by reason on both ends ([`RefusedReason`]), and never
//!    delivered again; the stream goes on.
//! 2. **No duplicates.** Records reach the handler in sequence order; each
//!    session resumes at the receiver's persisted position; anything older
//!    that arrives again is dropped and counted
//!    (`telemetry_link_duplicates_dropped_total`).
//! 3. **Honest gaps.** The only way records disappear is the spool's size
//!    cap (or disk corruption): they are counted by the sender
//!    (`telemetry_sender_records_dropped_total`) and announced to the
//!    receiver, which counts them as lost for that sender
//!    (`telemetry_link_records_lost_total`). Sequences are never skipped
//!    silently.
//!
//! **Limits**, precisely:
//! * A receiver crash after the handler returned but before the write
//!   cycle carrying its position finished its fdatasync (the sync in
//!   progress, a journal compaction if one is due, then that cycle's own
//!   sync: typically a few milliseconds) lets the next receiver process
//!   hand that batch to its handler again. It is the only case: a position
//!   is acknowledged only once durable, and recovery never yields a
//!   position that was not applied.
//!   [`Delivery::first_seq`] identifies records, so a handler with durable
//!   side effects can recognise them; an in-memory handler cannot observe it.
//! * With a non-default [`FsyncPolicy`], a power cut (not a crash)
//!   can lose records the sender had accepted but not yet synced.
//! * Several receivers (failover) each keep their own applied position;
//!   records acknowledged by one are skipped, not counted as lost, on
//!   another, so each record is applied once across them — except when a
//!   receiver *crashes* after applying a batch but before its ack reached the
//!   sender: the sender then also gives that batch to the next receiver it
//!   reaches. (A graceful receiver shutdown delivers its last ack first.)
//! * Wiping a receiver's state directory, or a sender's spool, starts that
//!   sender's stream afresh.
//!
//! ## The present first
//!
//! After an outage the spooled backlog is history. [`Sender::set_present`]
//! sends the application's current view on its own QUIC stream, beside the
//! backlog, and the receiver hands it to [`Handler::present`] within a round
//! trip of the reconnect however large the backlog is, with `covers_seq`
//! telling which records are older than it. Presents are best effort (the
//! newest one only, not retransmitted) and outside the guarantees above;
//! the backlog still arrives exactly as promised.
//!
//! ## Example
//!
//! ```no_run
//! use std::{net::SocketAddr, sync::Arc};
//! use telemetry_link::{
//!     net::{
//!         Applied, Delivery, Handler, HandlerError, Receiver, ReceiverConfig, Sender,
//!         SenderConfig,
//!     },
//!     tls::TlsFiles,
//! };
//!
//! struct Print;
//! impl Handler<String> for Print {
//!     async fn handle(&self, d: Delivery<String>) -> Result<Applied, HandlerError> {
//!         for (i, r) in d.records.iter().enumerate() {
//!             println!("{} #{}: {r}", d.sender, d.first_seq + i as u64);
//!         }
//!         Ok(Applied::all())
//!     }
//! }
//!
//! # async fn demo(rx_tls: TlsFiles, tx_tls: TlsFiles) -> anyhow::Result<()> {
//! telemetry_link::tls::install_default_provider();
//! let registry = prometheus::Registry::new();
//! let listen: SocketAddr = "127.0.0.1:4433".parse()?;
//! let receiver = Receiver::start::<String, _>(
//!     ReceiverConfig::new(listen, rx_tls, "/var/lib/telemetry/state"),
//!     Arc::new(Print),
//!     &registry,
//! ).await?;
//! let (sender, _recovery) = Sender::<String>::start(
//!     SenderConfig::new(vec!["localhost:4433".into()], tx_tls, "/var/lib/telemetry/spool"),
//!     &registry,
//! ).await?;
//! sender.send(&"hello".to_string()).await?;
//! sender.shutdown(std::time::Duration::from_secs(5)).await;
//! receiver.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod fsutil;
#[cfg(feature = "internals")]
pub mod internals;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod queue;
// The state formats are `pub` so that `internals` can re-export them.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub(crate) mod receiver_state;
pub mod sample;
pub mod session;
// The spool's types are `pub` so that `internals` can re-export them;
// without that feature only those re-exported below leave the crate.
#[cfg_attr(not(feature = "internals"), allow(unreachable_pub))]
pub(crate) mod spool;
pub mod tls;

pub use net::{
    Applied, Delivery, Handler, HandlerError, LinkStatus, PresentDelivery, Receiver,
    ReceiverConfig, Sender, SenderConfig, TransportTuning,
};
pub use proto::{
    record::Payload,
    refused::{RefusedCounts, RefusedReason},
};
pub use receiver_state::{StateDamage, StateError};
pub use sample::{unix_ms, Sample, SeriesKey};
pub use spool::{Appended, FsyncPolicy, RecoveryReport, SpoolConfig, SpoolError, SpoolStats};
pub use tls::TlsFiles;

/// The README's Rust example, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
