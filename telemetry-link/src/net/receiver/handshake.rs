//! A connection's way in, before any link message: the TLS handshake within
//! `hello_timeout`, the sender's identity from its verified certificate,
//! and the allow list. Every refusal is counted in
//! `telemetry_link_handshake_failures_total` by reason (certificate
//! problems are counted by the verifier itself, with their own reasons).

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::{admission::PendingGuard, Shared};
use crate::{
    net::close_code,
    proto::message::ErrorCode,
    tls::{self, is_certificate_alert},
};

/// An authenticated, allowed sender's connection.
pub(super) struct Peer {
    pub(super) conn: quinn::Connection,
    pub(super) identity: String,
    pub(super) remote: SocketAddr,
}

/// Completes the handshake of an admitted connection; `None` when it
/// failed or was refused (already counted, logged and closed).
pub(super) async fn establish<H>(
    incoming: quinn::Incoming,
    shared: &Shared<H>,
    mut pending: PendingGuard<'_>,
) -> Option<Peer> {
    let remote = incoming.remote_address();
    let fail = |reason: &'static str| {
        shared
            .metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
    };
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            if let Some(r) = classify_connection_error(&e) {
                fail(r);
            }
            debug!(%remote, error = %e, "incoming connection failed");
            return None;
        }
    };
    let conn = match tokio::time::timeout(shared.limits.hello_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(r) = classify_connection_error(&e) {
                fail(r);
            }
            info!(%remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            fail("handshake_timeout");
            return None;
        }
    };
    pending.done();
    let identity = match tls::peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            fail("bad_identity");
            warn!(%remote, error = %e, "sender certificate has no usable identity");
            let reason = format!("certificate identity: {e}");
            conn.close(close_code(ErrorCode::NotAllowed), reason.as_bytes());
            return None;
        }
    };
    if let Some(allowed) = &shared.allowed {
        if !allowed.contains(&identity) {
            fail("not_allowed");
            warn!(%remote, sender = %identity, "sender identity not in the allow list; refused");
            let reason = format!("sender identity {identity:?} is not allowed by this receiver");
            conn.close(close_code(ErrorCode::NotAllowed), reason.as_bytes());
            return None;
        }
    }
    shared
        .metrics
        .observe_sender_certificate(&identity, tls::peer_certificate(&conn).as_deref());
    Some(Peer {
        conn,
        identity,
        remote,
    })
}

/// Metric label for a failed handshake (`None`: counted elsewhere or not a
/// failure).
fn classify_connection_error(e: &quinn::ConnectionError) -> Option<&'static str> {
    use quinn::ConnectionError as C;
    match e {
        C::TransportError(t) => {
            let code = u64::from(t.code);
            // CRYPTO_ERROR codes are 0x0100 + TLS alert.
            if (0x100..0x200).contains(&code) {
                let alert = (code - 0x100) as u8;
                if is_certificate_alert(alert) {
                    return None; // counted by the verifier, by reason
                }
                return Some(match alert {
                    116 => "no_certificate",
                    120 => "alpn_mismatch",
                    70 => "tls_version",
                    _ => "tls_error",
                });
            }
            Some("transport_error")
        }
        C::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            if (0x100..0x200).contains(&code) {
                Some("peer_rejected_certificate")
            } else {
                Some("peer_closed")
            }
        }
        C::ApplicationClosed(_) => Some("peer_closed"),
        C::TimedOut => Some("handshake_timeout"),
        C::VersionMismatch => Some("quic_version"),
        C::Reset => Some("reset"),
        C::LocallyClosed | C::CidsExhausted => None,
    }
}
