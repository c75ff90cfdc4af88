//! The web config in force, and following its file.
//!
//! What it owns: the protection each new connection and request gets — the
//! TLS acceptor, the basic-auth users, the extra response headers — built
//! from the `--web-config-file` (or none: plain HTTP, no authentication).
//!
//! What it guarantees: the config is loaded and checked in full before it
//! replaces the one in force, so a request never sees half of a change. A
//! reload happens when the modification time or size of the file, or of a
//! file it names (certificate, key, client CA), changed — polled, like the
//! link's TLS files — or when forced (SIGHUP). A new file that fails to load
//! leaves the previous config in force; the failure is logged and counted
//! (`telemetry_endpoint_web_config_reloads_total{result="error"}`) and the
//! file is tried again when it changes again. Connections already open keep
//! the TLS session they negotiated; their next request is checked against
//! the users in force.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use hyper::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::{
    auth::{BasicAuth, BCRYPT_CONCURRENCY},
    metrics::EndpointMetrics,
    webconfig::{ClientAuth, WebConfig, WebConfigError},
};

/// The protection in force.
#[derive(Default)]
pub(crate) struct Active {
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) client_auth: Option<ClientAuth>,
    pub(crate) auth: Option<Arc<BasicAuth>>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("auth", &self.auth)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Active {
    fn build(config: &WebConfig, bcrypt: &Arc<Semaphore>) -> Result<Self, WebConfigError> {
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(super::tls::server_config(t)?)),
            None => None,
        };
        let auth = if config.basic_auth_users.is_empty() {
            None
        } else {
            let auth = BasicAuth::new(config.basic_auth_users.clone(), bcrypt.clone())
                .map_err(|_| WebConfigError::NoRandomness)?;
            Some(Arc::new(auth))
        };
        Ok(Self {
            tls,
            client_auth: config.tls.as_ref().map(|t| t.client_auth),
            auth,
            headers: config.headers.clone(),
        })
    }

    /// What protects the endpoint, for the startup log and the status page.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (&self.tls, self.client_auth) {
            (None, _) => parts.push("plain HTTP".to_owned()),
            (Some(_), Some(ClientAuth::NoClientCert) | None) => parts.push("TLS".to_owned()),
            (Some(_), Some(policy)) => parts.push(format!("TLS, client certificates {policy:?}")),
        }
        parts.push(if self.auth.is_some() {
            "basic auth".to_owned()
        } else {
            "no authentication".to_owned()
        });
        parts.join(", ")
    }

    /// True with TLS or basic authentication.
    pub(crate) fn is_protected(&self) -> bool {
        self.tls.is_some() || self.auth.is_some()
    }
}

/// Modification time and size of a file (`None` if it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// What a poll did.
#[derive(Debug)]
pub(crate) enum Reload {
    /// Nothing changed (or there is no file).
    Unchanged,
    /// The new config is in force.
    Reloaded,
    /// The new config failed; the previous one stays.
    Failed(WebConfigError),
}

/// The web config file, followed.
#[derive(Debug)]
pub(crate) struct WebConfigState {
    path: Option<PathBuf>,
    current: RwLock<Arc<Active>>,
    /// Stamps of the file and of the files the config in force names.
    stamps: Mutex<(Vec<PathBuf>, Vec<Stamp>)>,
    bcrypt: Arc<Semaphore>,
    metrics: EndpointMetrics,
}

impl WebConfigState {
    /// Loads `path` (errors are fatal at startup); `None`: no protection.
    pub(crate) fn load(
        path: Option<&Path>,
        metrics: EndpointMetrics,
    ) -> Result<Self, WebConfigError> {
        let bcrypt = Arc::new(Semaphore::new(BCRYPT_CONCURRENCY));
        let (active, watched) = match path {
            Some(p) => {
                let config = WebConfig::load(p)?;
                let active = Active::build(&config, &bcrypt)?;
                (active, watched_files(p, &config))
            }
            None => (Active::default(), Vec::new()),
        };
        let stamps = watched.iter().map(|p| stamp(p)).collect();
        Ok(Self {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(active)),
            stamps: Mutex::new((watched, stamps)),
            bcrypt,
            metrics,
        })
    }

    /// The protection in force.
    pub(crate) fn current(&self) -> Arc<Active> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The file, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads when a watched file changed, or always with `force`.
    pub(crate) fn poll(&self, force: bool) -> Reload {
        let Some(path) = &self.path else {
            return Reload::Unchanged;
        };
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<Stamp> = stamps.0.iter().map(|p| stamp(p)).collect();
        if !force && now == stamps.1 {
            return Reload::Unchanged;
        }
        let loaded = WebConfig::load(path)
            .and_then(|config| Ok((Active::build(&config, &self.bcrypt)?, config)));
        match loaded {
            Ok((active, config)) => {
                let watched = watched_files(path, &config);
                let fresh = watched.iter().map(|p| stamp(p)).collect();
                *stamps = (watched, fresh);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(active);
                self.metrics.reloaded(true);
                Reload::Reloaded
            }
            Err(e) => {
                // Tried again when a file changes again.
                stamps.1 = now;
                self.metrics.reloaded(false);
                Reload::Failed(e)
            }
        }
    }
}

fn watched_files(path: &Path, config: &WebConfig) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    files.extend(config.referenced_files().into_iter().map(Path::to_path_buf));
    files
}
