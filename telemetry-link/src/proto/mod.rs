//! The link protocol as plain data and state machines, free of sockets,
//! timers and files (like `quinn-proto` under `quinn`).
//!
//! * [`frame`]: length-prefixed framing with a hard size limit.
//! * [`message`]: the messages and their postcard encoding.
//! * [`record`]: how one record is enveloped (application value or sample).
//! * [`batch`]: a batch body, with per-connection series interning.
//! * [`present`]: the present-state lane's body, parts and reassembly.
//! * [`refused`]: why records are refused, and refusal counts.
//! * [`replica`]: replica names.
//! * [`seq`]: sequence-number bounds shared by the spool and the session.

pub mod batch;
pub mod frame;
pub mod message;
pub mod present;
pub mod record;
pub mod refused;
pub mod replica;
pub mod seq;
pub mod varint;
