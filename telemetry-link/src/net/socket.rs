//! A UDP socket wrapper for the receiver's endpoint that counts datagrams
//! which cannot be QUIC packets for us (quinn drops them silently).
//!
//! It classifies, it does not filter: every datagram still goes to quinn.
//! What it can recognise without connection state: a cleared fixed bit
//! (`not_quic`; the receiver does not negotiate QUIC-bit greasing), a long
//! header of a version other than QUIC v1 (`unsupported_version`), a client
//! Initial smaller than the 1200 bytes QUIC requires (`short_initial`),
//! and truncated long headers. A random datagram that happens to look like a
//! short-header packet is indistinguishable from one for a forgotten
//! connection and is not counted (quinn answers it with a stateless reset).

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use prometheus::IntCounterVec;
use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, UdpPoller,
};

pub(crate) struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    invalid: IntCounterVec,
}

impl fmt::Debug for CountingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingSocket").finish_non_exhaustive()
    }
}

impl CountingSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, invalid: IntCounterVec) -> Self {
        Self { inner, invalid }
    }
}

/// Why a datagram cannot be a QUIC packet for this endpoint, if it cannot.
pub(crate) fn classify_datagram(d: &[u8]) -> Option<&'static str> {
    let &first = d.first()?;
    if first & 0x40 == 0 {
        return Some("not_quic");
    }
    if first & 0x80 != 0 {
        if d.len() < 7 {
            return Some("truncated");
        }
        let version = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
        if version != 1 {
            return Some("unsupported_version");
        }
        let initial = (first >> 4) & 0x3 == 0;
        if initial && d.len() < 1200 {
            return Some("short_initial");
        }
    }
    None
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let res = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &res {
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*n) {
                let data = &buf[..m.len.min(buf.len())];
                for dgram in data.chunks(m.stride.max(1)) {
                    if let Some(reason) = classify_datagram(dgram) {
                        self.invalid.with_label_values(&[reason]).inc();
                        tracing::debug!(from = %m.addr, reason, len = dgram.len(), "invalid datagram");
                    }
                }
            }
        }
        res
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_obvious_garbage() {
        assert_eq!(classify_datagram(&[0x00, 1, 2]), Some("not_quic"));
        assert_eq!(classify_datagram(&[0xc0, 0, 0]), Some("truncated"));
        assert_eq!(
            classify_datagram(&[0xc0, 0xff, 0, 0, 0x1d, 0, 0, 0]),
            Some("unsupported_version")
        );
        assert_eq!(
            classify_datagram(&[0xc0, 0, 0, 0, 1, 0, 0, 0]),
            Some("short_initial")
        );
        let mut initial = vec![0xc0, 0, 0, 0, 1];
        initial.resize(1200, 0);
        assert_eq!(classify_datagram(&initial), None);
        // short header: can't tell
        assert_eq!(classify_datagram(&[0x40, 1, 2, 3]), None);
        assert_eq!(classify_datagram(&[]), None);
    }
}
