//! Periodic polling of metrics.k8s.io/v1beta1 `PodMetrics` into [`PodUsage`].
//!
//! This module owns the metrics poll loop and its availability state: when
//! the metrics API is absent (404, 503) or forbidden (403) it logs **one**
//! warning, retries slowly without logging again, and logs once when usage
//! is available again. Other failures (the API server unreachable) are
//! logged once per outage too and retried at the normal interval. Nothing
//! here stops the rest of the source.

use std::time::Duration;

use kube::api::{Api, ListParams};
use telemetry_schema::PodUsage;
use tokio::sync::{mpsc, watch};

use super::{
    convert::{pod_usage, PodMetrics},
    leader::Leadership,
};

/// Why a metrics poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetricsFailure {
    /// The API group is not served: no metrics-server, or it is down.
    Absent(String),
    /// RBAC forbids listing pod metrics.
    Forbidden(String),
    /// Anything else (network, API server restarting).
    Other(String),
}

impl MetricsFailure {
    pub(crate) fn classify(err: &kube::Error) -> Self {
        match err {
            kube::Error::Api(s) if s.code == 404 || s.code == 503 => {
                MetricsFailure::Absent(s.message.clone())
            }
            kube::Error::Api(s) if s.is_forbidden() => MetricsFailure::Forbidden(s.message.clone()),
            other => MetricsFailure::Other(other.to_string()),
        }
    }

    /// Absent and forbidden are retried at the slow interval.
    fn is_persistent(&self) -> bool {
        !matches!(self, MetricsFailure::Other(_))
    }
}

/// Pod metrics per list page.
const METRICS_PAGE_SIZE: u32 = 500;

/// Settings of the poller.
#[derive(Clone)]
pub(crate) struct MetricsPoller {
    pub(crate) client: kube::Client,
    /// One list per entry; `None` lists all namespaces.
    pub(crate) scopes: Vec<Option<String>>,
    pub(crate) label_selector: Option<String>,
    pub(crate) interval: Duration,
    pub(crate) retry_interval: Duration,
    /// With leader election: this replica's leadership. A standby polls
    /// every [`STANDBY_SLOWDOWN`] intervals and at once when it starts
    /// leading.
    pub(crate) leadership: Option<watch::Receiver<Leadership>>,
}

/// A standby lists pod metrics this many times less often than a leader:
/// it ships none of them, and what it holds only seeds the present of a
/// takeover, which polls again at once (the receiver keeps a newer
/// measurement over an older one, so a stale one cannot move a series
/// back).
pub(crate) const STANDBY_SLOWDOWN: u32 = 4;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl MetricsPoller {
    async fn poll_once(&self, warned_bad: &mut bool) -> Result<Vec<PodUsage>, kube::Error> {
        let mut lp = ListParams::default();
        if let Some(sel) = &self.label_selector {
            lp = lp.labels(sel);
        }
        let mut out = Vec::new();
        for scope in &self.scopes {
            let api: Api<PodMetrics> = match scope {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            // Page through the list so that only one page of full objects
            // is decoded at a time.
            let mut page = lp.clone().limit(METRICS_PAGE_SIZE);
            loop {
                let list = api.list(&page).await?;
                let now = now_ms();
                for m in &list.items {
                    match pod_usage(m, now) {
                        Ok(u) => out.push(u),
                        Err(error) if !*warned_bad => {
                            *warned_bad = true;
                            tracing::warn!(%error, "skipping pod metrics with a malformed quantity (further ones at debug)");
                        }
                        Err(error) => {
                            tracing::debug!(%error, "skipping pod metrics with a malformed quantity")
                        }
                    }
                }
                match list.metadata.continue_.as_deref() {
                    Some(token) if !token.is_empty() => page = page.continue_token(token),
                    _ => break,
                }
            }
        }
        crate::memory::release_free_memory();
        Ok(out)
    }

    /// Polls until `tx` is closed, starting once `ready` is true.
    pub(crate) async fn run(
        mut self,
        mut ready: watch::Receiver<bool>,
        tx: mpsc::Sender<Vec<PodUsage>>,
    ) {
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        let mut unavailable = false;
        let mut warned_bad = false;
        loop {
            let pause = match self.poll_once(&mut warned_bad).await {
                Ok(usage) => {
                    if unavailable {
                        tracing::info!(
                            "metrics.k8s.io is available again; pod usage is reported again"
                        );
                        unavailable = false;
                    }
                    if tx.send(usage).await.is_err() {
                        return;
                    }
                    self.interval
                }
                Err(err) => {
                    let failure = MetricsFailure::classify(&err);
                    let pause = if failure.is_persistent() {
                        self.retry_interval
                    } else {
                        self.interval
                    };
                    if unavailable {
                        tracing::debug!(error = %err, "metrics.k8s.io still unavailable");
                    } else {
                        unavailable = true;
                        let retry = humantime::format_duration(pause);
                        match &failure {
                            MetricsFailure::Absent(msg) => tracing::warn!(
                                detail = %msg,
                                "metrics.k8s.io/v1beta1 is not served (is metrics-server installed and running?); \
                                 pod usage will not be reported, everything else is; retrying every {retry}"
                            ),
                            MetricsFailure::Forbidden(msg) => tracing::warn!(
                                detail = %msg,
                                "RBAC: the service account may not \"list\" \"pods\" (group \"metrics.k8s.io\") — \
                                 check the ClusterRole in k8s/sender/; pod usage from metrics.k8s.io will not be \
                                 reported, everything else is; retrying every {retry}"
                            ),
                            MetricsFailure::Other(msg) => tracing::warn!(
                                error = %msg,
                                "listing metrics.k8s.io pod metrics failed; retrying every {retry}"
                            ),
                        }
                    }
                    pause
                }
            };
            let standing_by = self.is_standing_by();
            let pause = if standing_by && pause == self.interval {
                self.interval * STANDBY_SLOWDOWN
            } else {
                pause
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
                () = leads(self.leadership.as_mut(), standing_by) => {}
            }
        }
    }

    fn is_standing_by(&self) -> bool {
        self.leadership
            .as_ref()
            .is_some_and(|l| matches!(*l.borrow(), Leadership::Standby { .. }))
    }
}

/// Resolves when a replica that was `standing_by` starts leading; never
/// otherwise (no election, already leading, or the election has ended).
async fn leads(leadership: Option<&mut watch::Receiver<Leadership>>, standing_by: bool) {
    match leadership {
        Some(rx) if standing_by => {
            if rx
                .wait_for(|l| matches!(l, Leadership::Leader { .. }))
                .await
                .is_err()
            {
                std::future::pending::<()>().await;
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_err(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("m", reason).with_code(code).boxed())
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(
            MetricsFailure::classify(&api_err(404, "NotFound")),
            MetricsFailure::Absent("m".into())
        );
        assert_eq!(
            MetricsFailure::classify(&api_err(503, "ServiceUnavailable")),
            MetricsFailure::Absent("m".into())
        );
        assert_eq!(
            MetricsFailure::classify(&api_err(403, "Forbidden")),
            MetricsFailure::Forbidden("m".into())
        );
        assert!(matches!(
            MetricsFailure::classify(&api_err(500, "InternalError")),
            MetricsFailure::Other(_)
        ));
        assert!(MetricsFailure::Absent(String::new()).is_persistent());
        assert!(!MetricsFailure::Other(String::new()).is_persistent());
    }
}
