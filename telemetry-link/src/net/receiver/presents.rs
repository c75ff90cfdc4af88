//! The present-state lane of one session: the sender's presents arrive on
//! unidirectional streams, one stream each, reassembled within
//! `max_present_bytes` ([`PresentAssembler`]) and handed to
//! [`Handler::present`]. A malformed, out-of-order or oversized present is
//! refused (its stream stopped) and counted in
//! `telemetry_link_presents_total{result}`; the session goes on. Presents
//! are not sequenced or acknowledged.
//!
//! The handler's answer is counted like a delivery's, on this end only:
//! the records it refused by reason in
//! `telemetry_link_records_rejected_total` and
//! `telemetry_link_present_records_rejected_total`, logged through the
//! sender's rate-limited refusal log, and the present's result: `applied`
//! (nothing refused), `partly_refused` or `handler_refused` (every record).

use thiserror::Error;
use tracing::{debug, warn};

use super::{Handler, PresentDelivery, Shared};
use crate::{
    net::stream::{FrameReader, ReadError},
    proto::{
        message::Message,
        present::{self, AssembledPresent, PresentAssembler, PresentError},
        record::{decode_record, Payload, RecordError},
        refused::RefusedCounts,
    },
    receiver_state::StreamKey,
};

/// Why an assembled present's records cannot be handed over.
#[derive(Debug, Error)]
enum PresentRecordError {
    #[error(transparent)]
    Body(#[from] PresentError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Receives presents until the connection ends, then never returns: the
/// backlog session decides how the connection ended.
pub(super) async fn receive<T: Payload, H: Handler<T>>(
    conn: quinn::Connection,
    shared: &Shared<H>,
    stream: &StreamKey,
    stream_id: u128,
) -> std::convert::Infallible {
    let sender = &stream.sender;
    let count = |result: &str| {
        shared
            .metrics
            .presents
            .with_label_values(&[sender, result])
            .inc();
    };
    loop {
        let Ok(recv) = conn.accept_uni().await else {
            return std::future::pending().await;
        };
        let mut reader = FrameReader::new(recv, shared.limits.max_frame);
        let done = match assemble(&mut reader, shared.limits.max_present_bytes, sender).await {
            Ok(done) => done,
            Err(result) => {
                reader.stop();
                count(result);
                continue;
            }
        };
        let records = present::records(&done.body)
            .map(|r| Ok(decode_record::<T>(r?)?))
            .collect::<Result<Vec<T>, PresentRecordError>>();
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                warn!(sender = %sender, error = %e, "refusing a present with an undecodable record");
                count("refused");
                continue;
            }
        };
        let delivery = PresentDelivery {
            sender: sender.clone(),
            replica: stream.replica.clone(),
            stream_id,
            covers_seq: done.covers_seq,
            records,
        };
        match shared.handler.present(delivery).await {
            Ok(applied) => {
                let refused = applied.refused().capped(done.count);
                debug!(sender = %sender, id = done.id, covers_seq = done.covers_seq, records = done.count, refused = refused.total(), "present applied");
                count(present_result(done.count, &refused));
                if !refused.is_empty() {
                    let m = &shared.metrics;
                    for (reason, n) in refused.iter() {
                        let labels = [sender.as_ref(), reason.as_str()];
                        m.records_rejected.with_label_values(&labels).inc_by(n);
                        m.present_records_rejected
                            .with_label_values(&labels)
                            .inc_by(n);
                    }
                    shared.log_refusals(sender, &stream.replica, Some(&refused));
                }
            }
            Err(e) => {
                warn!(sender = %sender, error = %e, "handler failed on a present");
                count("handler_error");
            }
        }
    }
}

/// The `presents_total` result of a present of `records` records of which
/// the handler refused `refused`.
fn present_result(records: u64, refused: &RefusedCounts) -> &'static str {
    match refused.total() {
        0 => "applied",
        n if n >= records => "handler_refused",
        _ => "partly_refused",
    }
}

/// Reads one stream's parts into a present; `Err` names the result to
/// count (`abandoned`: the stream ended or was reset, `refused`: invalid).
async fn assemble(
    reader: &mut FrameReader,
    max_bytes: usize,
    sender: &str,
) -> Result<AssembledPresent, &'static str> {
    let mut assembler = PresentAssembler::new(max_bytes);
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(ReadError::Stream(_)) => return Err("abandoned"),
            Err(e) => {
                debug!(sender = %sender, error = %e, "unreadable present stream");
                return Err("refused");
            }
        };
        let part = match Message::decode(frame) {
            Ok(Message::Present(part)) => part,
            Ok(other) => {
                debug!(sender = %sender, kind = ?other.message_type(), "unexpected message on a present stream");
                return Err("refused");
            }
            Err(e) => {
                debug!(sender = %sender, error = %e, "malformed present part");
                return Err("refused");
            }
        };
        match assembler.push(&part) {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) => {
                warn!(sender = %sender, error = %e, "refusing a present");
                return Err("refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::refused::RefusedReason;

    #[test]
    fn a_present_is_applied_partly_refused_or_refused_by_the_handler() {
        let none = RefusedCounts::NONE;
        let some = RefusedCounts::of(RefusedReason::Budget, 2);
        assert_eq!(present_result(5, &none), "applied");
        assert_eq!(present_result(0, &none), "applied");
        assert_eq!(present_result(5, &some), "partly_refused");
        assert_eq!(present_result(2, &some), "handler_refused");
    }
}
