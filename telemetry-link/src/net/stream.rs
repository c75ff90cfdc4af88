//! Frames over a quinn stream: a reader that never buffers more than one
//! maximum-size frame, and a writer helper.

use std::time::Duration;

use futures_util::FutureExt;
use thiserror::Error;

use crate::proto::{
    frame::{FrameDecoder, FrameError},
    message::Message,
};

/// Largest single read from a stream.
const READ_CHUNK: usize = 256 * 1024;

/// Reading a frame failed.
#[derive(Debug, Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
    #[error("timed out")]
    Timeout,
}

pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    finished: bool,
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream, max_frame: usize) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(max_frame),
            finished: false,
        }
    }

    /// Waits for the next frame; `None` when the peer finished the stream
    /// cleanly between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<&[u8]>, ReadError> {
        while !self.decoder.has_frame()? {
            if self.finished {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.fill().await?;
        }
        Ok(self.decoder.next_frame()?)
    }

    /// Frees the read buffer when nothing is buffered and it grew beyond
    /// `keep` bytes (a connection about to wait idle need not hold on to
    /// its largest frame).
    pub(crate) fn release_idle(&mut self, keep: usize) {
        self.decoder.release_idle(keep);
    }

    /// Tells the peer to stop sending on this stream (nothing more is read).
    pub(crate) fn stop(&mut self) {
        let _ = self.recv.stop(0u32.into());
    }

    /// Like [`FrameReader::next`] with a deadline.
    pub(crate) async fn next_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<&[u8]>, ReadError> {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// A frame that is available without waiting, if any.
    pub(crate) fn try_next(&mut self) -> Result<Option<&[u8]>, ReadError> {
        loop {
            if self.decoder.has_frame()? {
                return Ok(self.decoder.next_frame()?);
            }
            if self.finished {
                return Ok(None);
            }
            match self.fill().now_or_never() {
                Some(r) => r?,
                None => return Ok(None),
            }
        }
    }

    async fn fill(&mut self) -> Result<(), ReadError> {
        let want = self.decoder.wanted().clamp(1, READ_CHUNK);
        match self.recv.read_chunk(want, true).await? {
            Some(chunk) => self.decoder.push(&chunk.bytes)?,
            None => self.finished = true,
        }
        Ok(())
    }
}

/// Encodes `msg` as one frame into `out` (cleared first).
pub(crate) fn frame_message(
    msg: &Message<'_>,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    msg.encode_frame(max_frame, out)
}

/// Writes one message as a frame.
pub(crate) async fn write_message(
    send: &mut quinn::SendStream,
    msg: &Message<'_>,
    max_frame: usize,
    buf: &mut Vec<u8>,
) -> Result<(), WriteError> {
    frame_message(msg, max_frame, buf)?;
    send.write_all(buf).await?;
    Ok(())
}

/// Writing a frame failed.
#[derive(Debug, Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::WriteError),
}
