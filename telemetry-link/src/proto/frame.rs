//! Length-prefixed framing, without IO.
//!
//! Every message on a link stream travels in one frame: a 4-byte big-endian
//! length followed by that many bytes. The length is checked against a hard
//! maximum *before* anything is buffered for it, so a peer can never make us
//! allocate more than `max_frame` bytes (plus one read chunk) per stream.
//!
//! [`FrameDecoder`] is fed bytes as they arrive (in any split) and hands back
//! complete frames; it reports [`FrameError::TooLarge`] as soon as a header
//! announces an oversized frame. [`encode_frame`] is the inverse.

use thiserror::Error;

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// Default hard maximum for one frame's body (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Largest maximum either side may configure (16 MiB).
pub const MAX_FRAME_LIMIT: usize = 16 * 1024 * 1024;

/// Why a byte stream could not be cut into frames.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced a body larger than the negotiated maximum.
    #[error("frame of {announced} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length the header announced.
        announced: u64,
        /// The maximum in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame that were received.
        buffered: usize,
    },
}

/// Writes `body` as one frame (header + body) onto the end of `out`.
///
/// Returns [`FrameError::TooLarge`] when the body exceeds `max`.
pub fn encode_frame(body: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if body.len() > max {
        return Err(FrameError::TooLarge {
            announced: body.len() as u64,
            max,
        });
    }
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Incremental frame decoder: push bytes in, pop whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max: max.min(MAX_FRAME_LIMIT),
        }
    }

    /// The maximum frame body this decoder accepts.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Changes the maximum (after negotiation). Never above [`MAX_FRAME_LIMIT`].
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max.min(MAX_FRAME_LIMIT);
    }

    /// Frees the buffer if it holds nothing and is larger than `keep`
    /// bytes, so an idle connection does not hold on to its largest frame.
    pub fn release_idle(&mut self, keep: usize) {
        if self.buffered() == 0 && self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes are useful right now: the rest of the current
    /// header or body. Callers use it to bound their reads.
    pub fn wanted(&self) -> usize {
        let avail = self.buffered();
        if avail < HEADER_LEN {
            return HEADER_LEN - avail;
        }
        let len = self.peek_len().unwrap_or(0) as usize;
        (HEADER_LEN + len).saturating_sub(avail).max(1)
    }

    fn peek_len(&self) -> Option<u32> {
        let b = self.buf.get(self.start..self.start + HEADER_LEN)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Appends received bytes.
    ///
    /// Fails early if the buffered header already announces an oversized
    /// frame, so callers never buffer a body that will be refused.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.start > 0 && (self.start >= self.buf.len() / 2 || self.start > 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
        self.check_header()
    }

    fn check_header(&self) -> Result<(), FrameError> {
        if let Some(len) = self.peek_len() {
            if len as usize > self.max {
                return Err(FrameError::TooLarge {
                    announced: u64::from(len),
                    max: self.max,
                });
            }
        }
        Ok(())
    }

    /// Whether a complete frame is buffered (errors as [`FrameDecoder::next_frame`]).
    pub fn has_frame(&self) -> Result<bool, FrameError> {
        self.check_header()?;
        Ok(self
            .peek_len()
            .is_some_and(|len| self.buffered() >= HEADER_LEN + len as usize))
    }

    /// Returns the next complete frame body, if one is buffered.
    ///
    /// The returned slice is valid until the next call on the decoder.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.check_header()?;
        let Some(len) = self.peek_len() else {
            return Ok(None);
        };
        let len = len as usize;
        let body_start = self.start + HEADER_LEN;
        if self.buf.len() - body_start < len {
            return Ok(None);
        }
        self.start = body_start + len;
        Ok(Some(&self.buf[body_start..body_start + len]))
    }

    /// Called when the byte stream ended: fine between frames, an error
    /// inside one.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_idle_decoder_frees_a_large_buffer_but_never_buffered_bytes() {
        let mut d = FrameDecoder::new(1 << 20);
        let mut wire = Vec::new();
        encode_frame(&[7u8; 200_000], 1 << 20, &mut wire).unwrap();
        d.push(&wire[..100]).unwrap();
        d.release_idle(1024);
        assert_eq!(d.buffered(), 100, "buffered bytes are kept");
        d.push(&wire[100..]).unwrap();
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(200_000));
        d.release_idle(1024);
        assert_eq!(d.buf.capacity(), 0);
        d.push(&wire).unwrap();
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(200_000));
    }

    #[test]
    fn roundtrip_split_anywhere() {
        let mut wire = Vec::new();
        encode_frame(b"hello", 100, &mut wire).unwrap();
        encode_frame(b"", 100, &mut wire).unwrap();
        encode_frame(&[7u8; 99], 100, &mut wire).unwrap();
        for split in 0..wire.len() {
            let mut d = FrameDecoder::new(100);
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.push(part).unwrap();
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, vec![b"hello".to_vec(), vec![], vec![7u8; 99]]);
            d.finish().unwrap();
        }
    }

    #[test]
    fn oversized_header_is_refused_before_body_arrives() {
        let mut d = FrameDecoder::new(10);
        let err = d.push(&11u32.to_be_bytes()).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                announced: 11,
                max: 10
            }
        );
        // exactly the maximum is fine
        let mut d = FrameDecoder::new(10);
        d.push(&10u32.to_be_bytes()).unwrap();
        assert_eq!(d.wanted(), 10);
        d.push(&[0; 10]).unwrap();
        assert_eq!(d.next_frame().unwrap().unwrap().len(), 10);
    }

    #[test]
    fn huge_announced_length_allocates_nothing() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        assert!(d.push(&u32::MAX.to_be_bytes()).is_err());
        assert!(d.buf.capacity() < 64);
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 0, 0, 5, 1, 2]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 6 }));
    }

    #[test]
    fn encoder_refuses_oversized_body() {
        let mut out = Vec::new();
        assert!(encode_frame(&[0; 11], 10, &mut out).is_err());
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn frames_roundtrip_under_any_chunking(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for b in &bodies {
                encode_frame(b, 300, &mut wire).unwrap();
            }
            let mut d = FrameDecoder::new(300);
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                d.push(part).unwrap();
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            prop_assert_eq!(got, bodies);
            prop_assert!(d.finish().is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(data in proptest::collection::vec(any::<u8>(), 0..2000), max in 0usize..512) {
            let mut d = FrameDecoder::new(max);
            for part in data.chunks(97) {
                if d.push(part).is_err() { break; }
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(f.len() <= max),
                        Ok(None) => break,
                        Err(_) => break,
                    }
                }
                prop_assert!(d.buffered() <= max + HEADER_LEN + 97);
            }
        }
    }
}
