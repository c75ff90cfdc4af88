//! The endpoint's own metrics, registered in the binary's registry so they
//! appear on its `/metrics`. Every labelled series with a known label value
//! is exported at 0 from the start.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why the endpoint closed a connection it had accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The request head (or the TLS handshake) did not arrive in time, or
    /// a kept-alive connection stayed idle that long.
    HeaderTimeout,
    /// The client stopped reading a response.
    WriteTimeout,
    /// The TLS handshake failed.
    TlsHandshake,
}

impl CloseReason {
    const ALL: [CloseReason; 3] = [
        CloseReason::HeaderTimeout,
        CloseReason::WriteTimeout,
        CloseReason::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }
}

/// The endpoint's metrics.
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    open: IntGauge,
    refused: IntCounter,
    closed: IntCounterVec,
    unauthorized: IntCounter,
    reloads: IntCounterVec,
}

impl EndpointMetrics {
    /// Registers the metrics in `registry`.
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::with_opts(Opts::new(
            "telemetry_endpoint_connections_open",
            "HTTP connections the operations endpoint holds open.",
        ))?;
        let refused = IntCounter::with_opts(Opts::new(
            "telemetry_endpoint_connections_refused_total",
            "HTTP connections closed at once because the endpoint held its maximum.",
        ))?;
        let closed = IntCounterVec::new(
            Opts::new(
                "telemetry_endpoint_connections_closed_total",
                "HTTP connections the endpoint closed, by reason: header_timeout (no complete request head in time, or idle that long between requests), write_timeout (the client stopped reading), tls_handshake (failed).",
            ),
            &["reason"],
        )?;
        let unauthorized = IntCounter::with_opts(Opts::new(
            "telemetry_endpoint_requests_unauthorized_total",
            "Requests answered 401 because basic authentication failed or was missing.",
        ))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "telemetry_endpoint_web_config_reloads_total",
                "Reloads of the web config file after it or a file it names changed, by result (ok, or error: the previous config stays in use).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(unauthorized.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        for reason in CloseReason::ALL {
            closed.with_label_values(&[reason.label()]);
        }
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Self {
            open,
            refused,
            closed,
            unauthorized,
            reloads,
        })
    }

    pub(crate) fn opened(&self) {
        self.open.inc();
    }

    pub(crate) fn finished(&self) {
        self.open.dec();
    }

    pub(crate) fn refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed.with_label_values(&[reason.label()]).inc();
    }

    pub(crate) fn unauthorized(&self) {
        self.unauthorized.inc();
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}
