//! The receiver's quinn endpoint: its server configuration (TLS material
//! plus transport settings), binding it with the long-lived keys and the
//! datagram-counting socket, and swapping in reloaded TLS material for new
//! handshakes, then closing the open sessions the new CRL revokes.

use std::sync::Arc;

use tracing::{info, warn};

use super::{admission::Admission, keys::endpoint_keys, ReceiverConfig, ReceiverError};
use crate::{
    metrics::ReceiverMetrics,
    net::{socket::CountingSocket, TransportTuning},
    tls::{self, Reload, TlsError},
};

/// What a server configuration is built from besides the TLS material.
#[derive(Clone)]
pub(super) struct ServerTemplate {
    transport: Arc<quinn::TransportConfig>,
    failures: tls::FailureSink,
}

impl ServerTemplate {
    /// A template whose certificate verifier counts refusals in `metrics`.
    pub(super) fn new(transport: &TransportTuning, metrics: &ReceiverMetrics) -> Self {
        let hs = metrics.handshake_failures.clone();
        Self {
            transport: transport.build(true),
            failures: Arc::new(move |reason| hs.with_label_values(&[reason]).inc()),
        }
    }

    /// The server configuration for `material`.
    pub(super) fn build(
        &self,
        material: &tls::TlsMaterial,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let rustls_cfg = material.server_config(self.failures.clone())?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(self.transport.clone());
        cfg.migration(true);
        Ok(cfg)
    }
}

/// Receive buffer asked for the receiver's socket: a reconnect storm or a
/// handshake flood arrives in bursts of full-size Initial datagrams, and
/// every one the kernel drops costs its sender a retransmission timer
/// (about a second). The kernel caps it at `net.core.rmem_max`.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds the endpoint on `config.listen`: stateless resets and connection
/// IDs keyed from the state directory, no QUIC-bit greasing (so datagrams
/// without the fixed bit can be counted as not QUIC), a receive buffer of
/// up to [`RECEIVE_BUFFER`].
pub(super) fn bind(
    config: &ReceiverConfig,
    server: quinn::ServerConfig,
    metrics: &ReceiverMetrics,
) -> Result<quinn::Endpoint, ReceiverError> {
    let keys = endpoint_keys(&config.state_dir)?;
    let mut ep_cfg = quinn::EndpointConfig::new(Arc::new(keys.reset));
    let cid_key = keys.cid;
    ep_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    ep_cfg.grease_quic_bit(false);
    let bind_err = |source| ReceiverError::Bind {
        addr: config.listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
    enlarge_receive_buffer(&socket);
    let runtime = quinn::default_runtime().ok_or(ReceiverError::NoRuntime)?;
    let wrapped = runtime.wrap_udp_socket(socket).map_err(bind_err)?;
    let counting = Arc::new(CountingSocket::new(
        wrapped,
        metrics.invalid_datagrams.clone(),
    ));
    quinn::Endpoint::new_with_abstract_socket(ep_cfg, Some(server), counting, runtime)
        .map_err(bind_err)
}

/// Asks for [`RECEIVE_BUFFER`]; says so when the kernel gives less (the
/// socket works either way).
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    let Ok(state) = quinn::udp::UdpSocketState::new(socket.into()) else {
        return;
    };
    let _ = state.set_recv_buffer_size(socket.into(), RECEIVE_BUFFER);
    match state.recv_buffer_size(socket.into()) {
        // Linux reports twice the size asked for (its bookkeeping share).
        Ok(got) if got < RECEIVE_BUFFER => info!(
            bytes = got,
            wanted = RECEIVE_BUFFER,
            "UDP receive buffer smaller than wanted (raise net.core.rmem_max): handshake bursts may lose datagrams"
        ),
        _ => {}
    }
}

/// Re-reads the TLS files (only if they changed, unless `force`) and
/// installs the new material for new handshakes, then closes every open
/// session whose certificate the new CRL revokes; counts the outcome. On
/// error the previous material stays in use.
pub(super) fn reload(
    endpoint: &quinn::Endpoint,
    admission: &Admission,
    template: &ServerTemplate,
    force: bool,
) -> Result<(), TlsError> {
    let metrics = &admission.metrics;
    let Ok(mut guard) = admission.tls.lock() else {
        return Err(TlsError::Config("TLS state lock poisoned".into()));
    };
    match guard.poll(force) {
        Reload::Unchanged => Ok(()),
        Reload::Reloaded => match template.build(guard.current()) {
            Ok(cfg) => {
                endpoint.set_server_config(Some(cfg));
                metrics.tls_reloads.with_label_values(&["ok"]).inc();
                let closed = admission
                    .open
                    .close_revoked(guard.current(), &metrics.admission.sessions_revoked);
                info!(
                    revoked_sessions_closed = closed,
                    "TLS material reloaded; new handshakes use it"
                );
                Ok(())
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["error"]).inc();
                Err(e)
            }
        },
        Reload::Failed(e) => {
            metrics.tls_reloads.with_label_values(&["error"]).inc();
            warn!(error = %e, "TLS reload failed; keeping the previous certificate");
            Err(e)
        }
    }
}
