//! A connection's way in, before any link message: the TLS handshake within
//! `handshake_timeout`, the sender's identity from its verified
//! certificate, the allow list, and a session slot (see `gate`). Every
//! refusal is counted in `telemetry_link_handshake_failures_total` by
//! reason (certificate problems are counted by the verifier itself, with
//! their own reasons) and logged at a bounded rate (see `failure_log`).

use std::net::SocketAddr;

use tracing::debug;

use super::{
    admission::{NoSession, PendingGuard},
    failure_log::Subject,
    open::REVOKED_REASON,
    Shared,
};
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
    let conn = tls_handshake(incoming, shared).await?;
    pending.done();
    let identity = authorize(&conn, shared, &mut pending, remote)?;
    shared
        .metrics
        .observe_sender_certificate(&identity, tls::peer_certificate(&conn).as_deref());
    Some(Peer {
        conn,
        identity,
        remote,
    })
}

/// The TLS handshake, within `handshake_timeout`: the connection with a
/// verified client certificate, or `None` (counted and logged).
async fn tls_handshake<H>(
    incoming: quinn::Incoming,
    shared: &Shared<H>,
) -> Option<quinn::Connection> {
    let admission = &shared.admission;
    let remote = incoming.remote_address();
    let from = Subject::Address(remote.ip());
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            if let Some(r) = classify_connection_error(&e) {
                admission.count_failure(r);
            }
            debug!(%remote, error = %e, "incoming connection failed");
            return None;
        }
    };
    match tokio::time::timeout(shared.limits.handshake_timeout, connecting).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            let counted = classify_connection_error(&e);
            if let Some(r) = counted {
                admission.count_failure(r);
            }
            let reason = counted
                .or_else(|| certificate_reason(&e))
                .unwrap_or("tls_error");
            admission.log_failure(
                reason,
                from,
                remote,
                &format_args!("TLS handshake failed: {e}"),
            );
            None
        }
        Err(_) => {
            admission.count_failure("handshake_timeout");
            let detail = format_args!(
                "TLS handshake not finished within {:?}",
                shared.limits.handshake_timeout
            );
            admission.log_failure("handshake_timeout", from, remote, &detail);
            None
        }
    }
}

/// Who the authenticated peer is, whether it is allowed, and a session
/// slot: its identity, or `None` (counted, logged and closed).
fn authorize<H>(
    conn: &quinn::Connection,
    shared: &Shared<H>,
    pending: &mut PendingGuard<'_>,
    remote: SocketAddr,
) -> Option<String> {
    let admission = &shared.admission;
    let refuse = |reason: &'static str, subject: Subject, code: ErrorCode, why: &str| {
        admission.count_failure(reason);
        admission.log_failure(reason, subject, remote, &why);
        conn.close(close_code(code), why.as_bytes());
    };
    let identity = match tls::peer_identity(conn) {
        Ok(id) => id,
        Err(e) => {
            let why = format!("certificate identity: {e}");
            refuse(
                "bad_identity",
                Subject::Address(remote.ip()),
                ErrorCode::NotAllowed,
                &why,
            );
            return None;
        }
    };
    let subject = Subject::Identity(identity.clone());
    if let Some(allowed) = &shared.allowed {
        if !allowed.contains(&identity) {
            let why = format!("sender identity {identity:?} is not allowed by this receiver");
            refuse("not_allowed", subject, ErrorCode::NotAllowed, &why);
            return None;
        }
    }
    let Some(certificate) = tls::peer_certificate(conn) else {
        refuse(
            "bad_identity",
            subject,
            ErrorCode::NotAllowed,
            "no certificate",
        );
        return None;
    };
    match pending.open_session(conn, certificate, &identity, remote) {
        Ok(()) => Some(identity),
        Err(NoSession::Busy) => {
            let why = "receiver busy: every session slot is taken";
            refuse("busy", subject, ErrorCode::Busy, why);
            None
        }
        Err(NoSession::Revoked) => {
            let why = std::str::from_utf8(REVOKED_REASON).unwrap_or("revoked");
            refuse("revoked", subject, ErrorCode::NotAllowed, why);
            None
        }
    }
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

/// For the log: the reason of a certificate refusal the verifier counted,
/// from the TLS alert it caused (the verifier's own label can be finer:
/// `not_yet_valid` and `expired` share an alert, as do the causes of
/// `certificate_unknown`).
fn certificate_reason(e: &quinn::ConnectionError) -> Option<&'static str> {
    let quinn::ConnectionError::TransportError(t) = e else {
        return None;
    };
    let alert = u64::from(t.code).checked_sub(0x100)?;
    Some(match alert {
        44 => "revoked",
        45 => "expired",
        48 => "unknown_ca",
        51 => "bad_signature",
        _ => "bad_certificate",
    })
}
