//! The link's sessions as state machines, free of sockets, tasks, clocks and
//! files (like `quinn-proto` under `quinn`): the async layer in
//! [`crate::net`] feeds them events (a frame arrived, a write finished, a
//! deadline passed, with the current time) and performs the actions they
//! ask for.
//!
//! * [`dedup`]: the receiver's per-sender applied position and its
//!   duplicate, gap and skip rules.
//! * `receiver`: one receiving session, from the hello to the close.

pub mod dedup;
pub(crate) mod receiver;
