//! The link's sessions as state machines, free of sockets, tokio, quinn and
//! files (like `quinn-proto` under `quinn`): each takes `now` and what
//! happened as input and says what to send, what to wait for and when it
//! is over. The async layer in [`crate::net`] only moves bytes and timers
//! for them; the unit tests here drive them with a simulated clock (and, on
//! the sender side, an in-memory spool).
//!
//! Sender side:
//! * `handshake`: the hello to send and what the receiver's answer means
//!   (accept, fall back to an older version, refuse).
//! * `sender`: one established session — resume position, batches and
//!   skips within the window, acks, stop/drain, failback.
//! * `window`: the in-flight window and ack validation ([`WindowLimits`]).
//! * `reconnect`: between sessions — backoff ([`Backoff`]) and the order in
//!   which receivers are tried.
//! * `spool`: the spool as the sender session sees it (a trait, so tests use
//!   an in-memory one).
//! * `refusals`: refusal reports waiting for their ack, and the
//!   rate-limited refusal log both ends keep.
//!
//! Receiver side:
//! * [`dedup`]: the receiver's per-sender applied position and its
//!   duplicate, gap and skip rules.
//! * `receiver`: one receiving session, from the hello to the close, for
//!   one (identity, replica) stream.

pub mod dedup;
pub(crate) mod handshake;
pub(crate) mod receiver;
pub(crate) mod reconnect;
pub(crate) mod refusals;
pub(crate) mod sender;
pub(crate) mod spool;
pub(crate) mod window;

pub use reconnect::Backoff;
pub use window::WindowLimits;
