//! The receiver's authenticated connections with the certificate each peer
//! presented, so that revocation reaches sessions that are already open:
//! after every successful reload of the TLS files, each connection whose
//! certificate the new CRL lists is closed with `NotAllowed` and the
//! reason "certificate revoked", logged and counted
//! (`telemetry_link_sessions_revoked_total`).
//!
//! A handshake that finished under the previous material while a reload
//! ran cannot slip through: a connection is registered first and checked
//! against the material in use second, and a reload installs the material
//! first and scans the registered connections second, so every connection
//! meets the new CRL in at least one of the two checks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
};

use prometheus::IntCounter;
use rustls::pki_types::CertificateDer;
use tracing::warn;

use super::super::close_code;
use crate::{proto::message::ErrorCode, tls::TlsMaterial};

/// The close reason a revoked peer receives.
pub(super) const REVOKED_REASON: &[u8] = b"certificate revoked";

/// One authenticated connection.
pub(super) struct OpenConnection {
    pub(super) conn: quinn::Connection,
    pub(super) certificate: CertificateDer<'static>,
    pub(super) identity: String,
    pub(super) remote: SocketAddr,
}

/// The registry, keyed by quinn's connection id.
#[derive(Default)]
pub(super) struct OpenConnections {
    open: Mutex<HashMap<usize, OpenConnection>>,
}

impl OpenConnections {
    fn lock(&self) -> MutexGuard<'_, HashMap<usize, OpenConnection>> {
        // Every operation leaves the map consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; returns its key for [`OpenConnections::remove`].
    pub(super) fn insert(&self, open: OpenConnection) -> usize {
        let key = open.conn.stable_id();
        self.lock().insert(key, open);
        key
    }

    /// Forgets a connection.
    pub(super) fn remove(&self, key: usize) {
        self.lock().remove(&key);
    }

    /// Closes every connection whose certificate `material` revokes;
    /// returns how many.
    pub(super) fn close_revoked(&self, material: &TlsMaterial, counter: &IntCounter) -> usize {
        let mut open = self.lock();
        let revoked: Vec<usize> = open
            .iter()
            .filter(|(_, c)| material.is_revoked(&c.certificate))
            .map(|(key, _)| *key)
            .collect();
        for key in &revoked {
            if let Some(c) = open.remove(key) {
                close_revoked(&c);
                counter.inc();
            }
        }
        revoked.len()
    }
}

/// Closes a connection whose certificate is revoked, and says so.
fn close_revoked(c: &OpenConnection) {
    warn!(
        sender = %c.identity,
        remote = %c.remote,
        "sender certificate revoked: closing its session"
    );
    c.conn
        .close(close_code(ErrorCode::NotAllowed), REVOKED_REASON);
}
