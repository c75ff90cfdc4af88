//! The present-state lane's encoding (no I/O): a sender's current view as
//! record envelopes, split into [`Present`] parts that fit a frame, and
//! reassembled on the other side within a byte limit.
//!
//! A present body is a sequence of records, each a varint length followed
//! by a record envelope ([`crate::proto::record`]). Parts split the body
//! only between records. The assembler checks part numbering, the present
//! id, the total size and that every part's record count matches its
//! bytes; lengths read off the wire only index into bytes already received,
//! they never size an allocation.

use std::ops::Range;

use thiserror::Error;

use super::{
    message::Present,
    record::{encode_record, Payload},
    varint,
};

/// Why parts do not make a present.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PresentError {
    /// A part arrived out of order.
    #[error("present part {got} where part {expected} was due")]
    OutOfOrder {
        /// Expected part number.
        expected: u32,
        /// Received part number.
        got: u32,
    },
    /// A part of another present arrived before the last one finished.
    #[error("present {got} interleaved with present {current}")]
    IdChanged {
        /// The present being assembled.
        current: u64,
        /// The intruder.
        got: u64,
    },
    /// The present exceeds the receiver's limit.
    #[error("present larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A part's body does not hold `count` well-formed records.
    #[error("malformed present body: {0}")]
    Malformed(&'static str),
}

/// Encodes `records` into a present body; returns it and the record count.
pub fn encode_body<T: Payload>(records: &[T]) -> Result<(Vec<u8>, u32), postcard::Error> {
    let mut body = Vec::new();
    let mut envelope = Vec::new();
    for r in records {
        envelope.clear();
        encode_record(r, &mut envelope)?;
        varint::put_u64(&mut body, envelope.len() as u64);
        body.extend_from_slice(&envelope);
    }
    Ok((body, records.len().min(u32::MAX as usize) as u32))
}

/// Splits a body into record-aligned parts of at most `max_part` bytes
/// (a single larger record gets a part of its own): `(count, byte range)`.
pub fn split_parts(body: &[u8], max_part: usize) -> Vec<(u32, Range<usize>)> {
    let mut parts = Vec::new();
    let (mut start, mut count, mut at) = (0usize, 0u32, 0usize);
    while at < body.len() {
        let mut rest = &body[at..];
        let Ok(len) = varint::get_u64(&mut rest) else {
            break;
        };
        let end = (body.len() - rest.len())
            .saturating_add(len as usize)
            .min(body.len());
        if count > 0 && end - start > max_part {
            parts.push((count, start..at));
            start = at;
            count = 0;
        }
        count += 1;
        at = end;
    }
    if count > 0 || parts.is_empty() {
        parts.push((count, start..at));
    }
    parts
}

/// Iterates over the record envelopes of a body, checking bounds.
pub fn records(body: &[u8]) -> impl Iterator<Item = Result<&[u8], PresentError>> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = match varint::get_u64(&mut rest) {
            Ok(len) => len,
            Err(_) => {
                rest = &[];
                return Some(Err(PresentError::Malformed("bad record length")));
            }
        };
        if len > rest.len() as u64 {
            rest = &[];
            return Some(Err(PresentError::Malformed("record beyond the body")));
        }
        let (record, tail) = rest.split_at(len as usize);
        rest = tail;
        Some(Ok(record))
    })
}

/// A complete present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledPresent {
    /// Its id.
    pub id: u64,
    /// Every record up to this sequence is older than the present.
    pub covers_seq: u64,
    /// The body (see [`records`]).
    pub body: Vec<u8>,
    /// Records in it.
    pub count: u64,
}

/// Reassembles the parts of presents arriving on one stream.
#[derive(Debug)]
pub struct PresentAssembler {
    max_bytes: usize,
    current: Option<AssembledPresent>,
    next_part: u32,
}

impl PresentAssembler {
    /// An assembler accepting presents of at most `max_bytes` of body.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            current: None,
            next_part: 0,
        }
    }

    /// Takes one part; returns the present when `part` was its last.
    pub fn push(&mut self, part: &Present<'_>) -> Result<Option<AssembledPresent>, PresentError> {
        if part.part != self.next_part {
            return Err(PresentError::OutOfOrder {
                expected: self.next_part,
                got: part.part,
            });
        }
        let counted = records(part.body).try_fold(0u64, |n, r| r.map(|_| n + 1))?;
        if counted != u64::from(part.count) {
            return Err(PresentError::Malformed(
                "record count does not match the body",
            ));
        }
        let current = self.current.get_or_insert_with(|| AssembledPresent {
            id: part.id,
            covers_seq: part.covers_seq,
            body: Vec::new(),
            count: 0,
        });
        if current.id != part.id {
            return Err(PresentError::IdChanged {
                current: current.id,
                got: part.id,
            });
        }
        if current.body.len() + part.body.len() > self.max_bytes {
            return Err(PresentError::TooLarge {
                limit: self.max_bytes,
            });
        }
        current.body.extend_from_slice(part.body);
        current.count += counted;
        self.next_part += 1;
        if part.last {
            self.next_part = 0;
            return Ok(self.current.take());
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::record::decode_record;

    fn parts_of<'a>(id: u64, body: &'a [u8], max_part: usize) -> Vec<Present<'a>> {
        let split = split_parts(body, max_part);
        let n = split.len();
        split
            .into_iter()
            .enumerate()
            .map(|(i, (count, range))| Present {
                id,
                covers_seq: 10,
                part: i as u32,
                last: i + 1 == n,
                count,
                body: &body[range],
            })
            .collect()
    }

    #[test]
    fn split_and_reassemble_round_trips() {
        let records: Vec<String> = (0..500)
            .map(|i| format!("record-{i}-{}", "x".repeat(i % 37)))
            .collect();
        let (body, count) = encode_body(&records).unwrap();
        assert_eq!(count, 500);
        let parts = parts_of(1, &body, 1000);
        assert!(parts.len() > 5);
        assert!(parts.iter().all(|p| p.body.len() <= 1000));
        let mut asm = PresentAssembler::new(1 << 20);
        let mut done = None;
        for p in &parts {
            done = asm.push(p).unwrap();
        }
        let done = done.unwrap();
        assert_eq!((done.id, done.covers_seq, done.count), (1, 10, 500));
        let back: Vec<String> = records_of(&done.body);
        assert_eq!(back, records);
    }

    fn records_of(body: &[u8]) -> Vec<String> {
        records(body)
            .map(|r| decode_record::<String>(r.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn an_empty_present_is_one_empty_part() {
        let (body, count) = encode_body::<String>(&[]).unwrap();
        let parts = parts_of(4, &body, 100);
        assert_eq!((parts.len(), count), (1, 0));
        let done = PresentAssembler::new(10).push(&parts[0]).unwrap().unwrap();
        assert_eq!(done.count, 0);
    }

    #[test]
    fn bad_parts_are_refused() {
        let records: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        let (body, _) = encode_body(&records).unwrap();
        let parts = parts_of(7, &body, 40);
        let mut asm = PresentAssembler::new(1 << 20);
        assert!(matches!(
            asm.push(&parts[1]),
            Err(PresentError::OutOfOrder {
                expected: 0,
                got: 1
            })
        ));
        asm.push(&parts[0]).unwrap();
        let mut other = parts[1].clone();
        other.id = 8;
        assert!(matches!(
            asm.push(&other),
            Err(PresentError::IdChanged { .. })
        ));
        let mut wrong_count = parts[1].clone();
        wrong_count.count += 1;
        assert!(matches!(
            asm.push(&wrong_count),
            Err(PresentError::Malformed(_))
        ));
        let mut small = PresentAssembler::new(30);
        assert!(parts
            .iter()
            .try_for_each(|p| small.push(p).map(|_| ()))
            .is_err());
        // A length that points past the body.
        let mut bad = PresentAssembler::new(1 << 20);
        let lying = Present {
            id: 1,
            covers_seq: 0,
            part: 0,
            last: true,
            count: 1,
            body: &[200, 1, 0],
        };
        assert!(matches!(bad.push(&lying), Err(PresentError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_parts_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200), count in 0u32..20) {
            let mut asm = PresentAssembler::new(1000);
            let _ = asm.push(&Present { id: 1, covers_seq: 0, part: 0, last: true, count, body: &body });
            let _ = split_parts(&body, 16);
        }
    }
}
