//! A UDP relay on loopback that a test can cut, to partition one sender
//! from its receiver while everything else keeps talking.
//!
//! This module owns [`UdpProxy`]: a listening socket the client (a sender's
//! `--receiver`) sends to, and per client address an upstream socket
//! towards the target, like a NAT, so replies find their way back. A cut
//! drops every datagram in both directions (a partition, not a refusal);
//! [`UdpProxy::restore`] forwards again. At most [`MAX_CLIENTS`] client
//! addresses are kept, the least recently active forgotten first.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{net::UdpSocket, task::JoinHandle};

/// Client addresses kept at most.
pub const MAX_CLIENTS: usize = 16;
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct UdpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl UdpProxy {
    /// Starts a relay on a random 127.0.0.1 port towards `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        let addr = socket.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let relay = Relay {
            socket,
            upstream,
            cut: cut.clone(),
            dropped: dropped.clone(),
        };
        let task = tokio::spawn(relay.run());
        Ok(Self {
            addr,
            cut,
            dropped,
            task,
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the relay is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Datagrams dropped by cuts so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Relay {
    socket: Arc<UdpSocket>,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

/// One client's upstream socket and the task relaying its replies.
struct Client {
    upstream: Arc<UdpSocket>,
    replies: JoinHandle<()>,
    used: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl Relay {
    async fn run(self) {
        let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut uses = 0u64;
        loop {
            let Ok((n, from)) = self.socket.recv_from(&mut buf).await else {
                continue;
            };
            if self.cut.load(Ordering::SeqCst) {
                self.dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            uses += 1;
            if !clients.contains_key(&from) {
                let Ok(client) = self.client(from).await else {
                    continue;
                };
                if clients.len() >= MAX_CLIENTS {
                    let oldest = clients.iter().min_by_key(|(_, c)| c.used).map(|(a, _)| *a);
                    if let Some(oldest) = oldest {
                        clients.remove(&oldest);
                    }
                }
                clients.insert(from, client);
            }
            if let Some(client) = clients.get_mut(&from) {
                client.used = uses;
                let _ = client.upstream.send(&buf[..n]).await;
            }
        }
    }

    /// An upstream socket for `from`, with a task relaying its replies.
    async fn client(&self, from: SocketAddr) -> std::io::Result<Client> {
        let upstream = Arc::new(UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        upstream.connect(self.upstream).await?;
        let (socket, up, cut, dropped) = (
            self.socket.clone(),
            upstream.clone(),
            self.cut.clone(),
            self.dropped.clone(),
        );
        let replies = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok(n) = up.recv(&mut buf).await {
                if cut.load(Ordering::SeqCst) {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Ok(Client {
            upstream,
            replies,
            used: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn echo() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn ask(client: &UdpSocket, to: SocketAddr) -> Option<Vec<u8>> {
        client.send_to(b"ping", to).await.unwrap();
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await;
        got.ok().map(|n| buf[..n.unwrap()].to_vec())
    }

    #[tokio::test]
    async fn relays_both_ways_until_cut_and_again_once_restored() {
        let proxy = UdpProxy::start(echo().await).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            ask(&client, proxy.addr()).await.as_deref(),
            Some(&b"ping"[..])
        );
        proxy.cut();
        assert!(proxy.is_cut());
        assert_eq!(ask(&client, proxy.addr()).await, None);
        assert!(proxy.dropped() >= 1);
        proxy.restore();
        assert_eq!(
            ask(&client, proxy.addr()).await.as_deref(),
            Some(&b"ping"[..])
        );
    }
}
