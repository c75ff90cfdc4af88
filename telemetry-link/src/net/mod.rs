//! The thin async layer: quinn endpoints and tokio tasks that move frames
//! between the network, the spool and the application, driving the
//! state machines of [`crate::proto`] and [`crate::session`].

mod persist;
pub mod receiver;
pub mod sender;
mod socket;
mod stream;
mod transport;

pub use receiver::{
    Applied, Delivery, Handler, HandlerError, PresentDelivery, ReadyHandle, Receiver,
    ReceiverConfig, ReceiverError, ReceiverLimits,
};
pub use sender::{
    Flushed, LinkStatus, SendError, Sender, SenderConfig, SenderError, ShutdownReport,
    DEFAULT_LINGER,
};
pub use transport::TransportTuning;

fn close_code(code: crate::proto::message::ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.as_u32())
}
