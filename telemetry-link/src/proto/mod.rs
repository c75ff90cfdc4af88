//! The link protocol as plain data and state machines, free of sockets,
//! timers and files (like `quinn-proto` under `quinn`).
//!
//! * [`frame`]: length-prefixed framing with a hard size limit.
//! * [`message`]: the messages and their postcard encoding.
//! * [`record`]: how one record is enveloped (application value or sample).
//! * [`batch`]: a batch body, with per-connection series interning.
//! * [`dedup`]: the receiver's per-sender applied position and duplicate/gap rules.
//! * [`window`]: the sender's in-flight window and ack processing.

pub mod batch;
pub mod dedup;
pub mod frame;
pub mod message;
pub mod present;
pub mod record;
pub mod seq;
pub mod varint;
pub mod window;
