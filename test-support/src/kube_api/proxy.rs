//! A TCP proxy in front of the test API server for one client, which a test
//! can cut off from the server while other clients keep talking to it.
//!
//! This module owns [`ApiProxy`]. Each client that must be partitioned on
//! its own gets its own proxy and a kubeconfig naming the proxy
//! ([`ApiProxy::write_kubeconfig`]); the others talk to the server directly
//! or through their own proxies.
//!
//! A cut behaves like a network partition that drops packets, not like a
//! refused connection: bytes stop moving on open connections, and new
//! connections are accepted but never forwarded, so a client's requests hang
//! until its own timeouts give up (the kube client has no read timeout by
//! default, so this is what a caller's deadlines are for). On
//! [`ApiProxy::restore`] the connections held during the cut are closed, as
//! TCP would have given up on them; new connections are forwarded again.
//! Nothing sent during the cut reaches the server.

use std::{net::SocketAddr, path::Path};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// A running proxy; dropping it closes its listener and every connection.
#[derive(Debug)]
pub struct ApiProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiProxy {
    /// Starts a proxy on a random 127.0.0.1 port forwarding to `upstream`
    /// (usually [`super::KubeApiServer::addr`]).
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let cut = watch::channel(false).0;
        let task = tokio::spawn(accept(listener, upstream, cut.subscribe()));
        Ok(ApiProxy { addr, cut, task })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig naming the proxy (context `fake`, as
    /// [`super::KubeApiServer::write_kubeconfig`]).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, super::kubeconfig(&self.url()))
    }

    /// Partitions the client from the server: open connections stall, new
    /// ones are accepted and never answered.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends the partition: connections held during it are closed, new ones
    /// are forwarded.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The accept loop; aborting it drops (closes) every connection it owns.
async fn accept(listener: TcpListener, upstream: SocketAddr, cut: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(forward(client, upstream, cut.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "API proxy accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Holds `client` unanswered until the cut ends, then closes it.
async fn hold(client: TcpStream, mut cut: watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !*cut).await;
    drop(client);
}

/// One client connection: forwarded while not cut, held once cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        return hold(client, cut).await;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client sees its connection closed.
        return;
    };
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|cut| *cut) => true,
    };
    drop(server);
    if was_cut {
        hold(client, cut).await;
    }
}
