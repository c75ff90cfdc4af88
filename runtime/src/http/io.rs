//! A connection's byte stream with a write timeout: when the socket has
//! accepted no byte for `write_timeout` while a response waits to be
//! written (the client stopped reading), writes fail with `TimedOut` and
//! the connection closes. hyper's header read timeout covers the other
//! direction.
//!
//! How: the first write that cannot proceed arms a timer; any progress
//! disarms it. The timer is polled with the same waker as the write, so
//! the connection's task wakes when it fires even if the socket never
//! becomes writable.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

use super::metrics::{CloseReason, EndpointMetrics};

/// The byte streams a connection can run on (plain TCP or TLS).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// `inner` with a write timeout.
pub(crate) struct TimedWrites {
    inner: Box<dyn Stream>,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: EndpointMetrics,
}

impl TimedWrites {
    pub(crate) fn new(inner: Box<dyn Stream>, timeout: Duration, metrics: EndpointMetrics) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            metrics,
        }
    }

    /// Applies the timeout to the outcome of one write-side poll.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match outcome {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.stalled.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                ready!(timer.as_mut().poll(cx));
                self.metrics.closed(CloseReason::WriteTimeout);
                tracing::debug!("closing a connection whose client stopped reading");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
        }
    }
}

impl AsyncRead for TimedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_timed_out_and_one_that_reads_is_not() {
        let metrics = EndpointMetrics::register(&prometheus::Registry::new()).unwrap();
        let (near, mut far) = tokio::io::duplex(1024);
        let mut timed = TimedWrites::new(Box::new(near), Duration::from_secs(10), metrics);
        // The far end reads slowly: 1 KiB every second, 8 KiB in all.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tokio::io::AsyncReadExt::read(&mut far, &mut buf).await;
            }
            far // then stops reading, keeping the pipe open
        });
        timed.write_all(&[1u8; 8 * 1024]).await.unwrap();
        let started = Instant::now();
        let err = timed.write_all(&[2u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
            "{waited:?}"
        );
        drop(reader);
    }
}
