//! Building the `kube::Client` the Kubernetes source talks through.
//!
//! This module owns the choice between in-cluster / inferred configuration
//! and an explicit kubeconfig file with an optional context. It also makes
//! sure rustls uses the ring crypto provider (the build has no aws-lc-rs).

use std::path::PathBuf;

use kube::config::{Config, InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// The client configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// Neither a kubeconfig nor the in-cluster service account was usable.
    #[error("no Kubernetes configuration found (in-cluster or $KUBECONFIG/~/.kube/config): {0}")]
    Infer(#[source] InferConfigError),
    /// The kubeconfig (or its context) was unusable.
    #[error("kubeconfig {}: {source}", path.as_ref().map_or_else(|| "(default)".to_owned(), |p| p.display().to_string()))]
    Kubeconfig {
        /// The file given, if any.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: KubeconfigError,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Installs the ring provider as rustls' process default (ignored if one is
/// already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client for `kubeconfig` (with `context`, or its current context), or,
/// without a file, the inferred configuration: `$KUBECONFIG` /
/// `~/.kube/config` if present (honouring `context`), else the in-cluster
/// service account. Must be called inside a tokio runtime.
pub async fn client_from(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<kube::Client, ClientConfigError> {
    install_crypto_provider();
    let options = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, &options.context) {
        (Some(path), _) => {
            let kc =
                Kubeconfig::read_from(&path).map_err(|source| ClientConfigError::Kubeconfig {
                    path: Some(path.clone()),
                    source,
                })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|source| ClientConfigError::Kubeconfig {
                    path: Some(path),
                    source,
                })?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| ClientConfigError::Kubeconfig { path: None, source })?,
        (None, None) => Config::infer().await.map_err(ClientConfigError::Infer)?,
    };
    tracing::info!(cluster_url = %config.cluster_url, "Kubernetes client configured");
    kube::Client::try_from(config).map_err(ClientConfigError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: one
  cluster:
    server: http://127.0.0.1:1
- name: two
  cluster:
    server: http://127.0.0.1:2
contexts:
- name: first
  context:
    cluster: one
    user: u
- name: second
  context:
    cluster: two
    user: u
current-context: first
users:
- name: u
  user: {}
";

    #[tokio::test]
    async fn kubeconfig_file_with_and_without_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let c = client_from(Some(path.clone()), None).await.unwrap();
        assert_eq!(c.default_namespace(), "default");
        // The selected context decides the server; check it via the config.
        let kc = Kubeconfig::read_from(&path).unwrap();
        let cfg = Config::from_custom_kubeconfig(
            kc,
            &KubeConfigOptions {
                context: Some("second".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(cfg.cluster_url.port_u16(), Some(2));
        assert!(client_from(Some(path.clone()), Some("second".into()))
            .await
            .is_ok());
        let Err(err) = client_from(Some(path), Some("nope".into())).await else {
            panic!("an unknown context must fail")
        };
        assert!(matches!(err, ClientConfigError::Kubeconfig { .. }), "{err}");
    }

    #[tokio::test]
    async fn missing_kubeconfig_file_is_an_error() {
        let Err(err) = client_from(Some("/nonexistent/kubeconfig".into()), None).await else {
            panic!("a missing file must fail")
        };
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }
}
