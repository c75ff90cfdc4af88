//! A small UDP fault proxy: delay, jitter (hence reordering), duplication
//! and random drop, with bounded memory.
//!
//! What it owns: a listening UDP socket that clients (the sender) talk to,
//! and for each client address an upstream socket towards the target (the
//! receiver), like a NAT. Every datagram in either direction goes through a
//! [`plan`] (drop it, or deliver it once or twice, each copy after
//! `delay + uniform(0, jitter)`) and a [`DelayQueue`].
//!
//! What it guarantees:
//! * **Bounded memory.** The queue never holds more than
//!   [`ProxyConfig::max_queued_bytes`] of payload (datagrams beyond it are
//!   dropped and counted as `overflow`), there are at most
//!   [`ProxyConfig::max_sessions`] client sessions (the least recently
//!   active is evicted), and each socket has one fixed receive buffer.
//! * **Honest statistics.** [`ProxyStats`] counts forwarded, dropped,
//!   duplicated, overflowed and reordered datagrams (a datagram is reordered
//!   when it leaves after one that arrived later in the same direction), so a
//!   scenario can prove the faults really happened.
//! * **Deterministic decisions** for a given seed ([`plan`] is a pure
//!   function of the RNG), which the unit tests rely on.
//!
//! Sockets are passed in (and upstream sockets made by a factory), so the
//! proxy works unchanged inside a network namespace: the caller creates the
//! sockets there (see [`crate::netns::Netns::run`]).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{
    net::UdpSocket,
    sync::{oneshot, Notify},
    time::Instant,
};

/// What the proxy does to each datagram.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..jitter` per datagram (reorders datagrams
    /// closer together than the jitter).
    pub jitter: Duration,
    /// Probability (0..=1) of dropping a datagram.
    pub drop: f64,
    /// Probability (0..=1) of delivering a datagram twice (each copy with
    /// its own delay).
    pub duplicate: f64,
}

/// Proxy settings.
#[derive(Debug, Clone, Copy)]
pub struct ProxyConfig {
    /// Initial faults (changeable with [`FaultProxy::set_faults`]).
    pub faults: Faults,
    /// Upper bound on queued payload bytes.
    pub max_queued_bytes: usize,
    /// Upper bound on client sessions.
    pub max_sessions: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            faults: Faults::default(),
            max_queued_bytes: 8 << 20,
            max_sessions: 16,
            seed: 1,
        }
    }
}

/// The delays after which copies of one datagram are delivered: empty =
/// dropped, one entry = delivered, two = duplicated.
pub fn plan(rng: &mut impl Rng, f: &Faults) -> Vec<Duration> {
    if f.drop > 0.0 && rng.random_bool(f.drop.clamp(0.0, 1.0)) {
        return Vec::new();
    }
    let copies = if f.duplicate > 0.0 && rng.random_bool(f.duplicate.clamp(0.0, 1.0)) {
        2
    } else {
        1
    };
    (0..copies)
        .map(|_| {
            let jitter = if f.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.random_range(0..f.jitter.as_nanos() as u64))
            };
            f.delay + jitter
        })
        .collect()
}

/// A datagram waiting for its departure time.
#[derive(Debug)]
struct Entry<T> {
    due: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// A byte-bounded priority queue by departure time; equal times leave in
/// insertion order.
#[derive(Debug)]
pub struct DelayQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    bytes: usize,
    max_bytes: usize,
    next_seq: u64,
    peak_bytes: usize,
}

impl<T> DelayQueue<T> {
    /// An empty queue holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            bytes: 0,
            max_bytes,
            next_seq: 0,
            peak_bytes: 0,
        }
    }

    /// Queues `item` of `len` bytes for `due`; gives it back if the queue
    /// would exceed its byte bound.
    pub fn push(&mut self, due: Instant, len: usize, item: T) -> Result<(), T> {
        if self.bytes + len > self.max_bytes {
            return Err(item);
        }
        self.bytes += len;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Entry {
            due,
            seq,
            len,
            item,
        }));
        Ok(())
    }

    /// The earliest departure time.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.due)
    }

    /// Removes and returns the next item due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_due()? > now {
            return None;
        }
        let Reverse(e) = self.heap.pop()?;
        self.bytes -= e.len;
        Some(e.item)
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Most bytes ever queued.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    overflow: AtomicU64,
    reordered: AtomicU64,
    send_errors: AtomicU64,
    sessions: AtomicU64,
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams received on either side.
    pub received: u64,
    /// Datagrams sent on (duplicates count twice).
    pub forwarded: u64,
    /// Dropped by the fault plan.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Dropped because the queue was full.
    pub overflow: u64,
    /// Sent after a datagram that arrived later in the same direction.
    pub reordered: u64,
    /// Sends that failed (e.g. the network was down).
    pub send_errors: u64,
    /// Client sessions opened.
    pub sessions: u64,
    /// Most payload bytes queued at once.
    pub peak_queued_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    Up,
    Down,
}

enum Dest {
    Upstream(Arc<UdpSocket>),
    Client(SocketAddr),
}

struct Item {
    dest: Dest,
    dir: Dir,
    arrival: u64,
    data: Vec<u8>,
}

struct Session {
    upstream: Arc<UdpSocket>,
    last_active: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// Makes an upstream socket (bound, not connected) for a new client session.
pub type SocketFactory = Arc<dyn Fn() -> io::Result<std::net::UdpSocket> + Send + Sync>;

struct Shared {
    queue: Mutex<DelayQueue<Item>>,
    wake: Notify,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    counters: Counters,
    arrivals: Mutex<HashMap<Dir, (u64, u64)>>, // dir -> (next arrival index, highest index sent)
}

impl Shared {
    fn admit(&self, dest: impl Fn() -> Dest, dir: Dir, data: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let faults = *self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let delays = plan(
            &mut *self.rng.lock().unwrap_or_else(|p| p.into_inner()),
            &faults,
        );
        if delays.is_empty() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if delays.len() > 1 {
            self.counters
                .duplicated
                .fetch_add(delays.len() as u64 - 1, Ordering::Relaxed);
        }
        let arrival = {
            let mut a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
            let e = a.entry(dir).or_insert((0, 0));
            e.0 += 1;
            e.0
        };
        let now = Instant::now();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for d in delays {
            let item = Item {
                dest: dest(),
                dir,
                arrival,
                data: data.to_vec(),
            };
            if q.push(now + d, data.len(), item).is_err() {
                self.counters.overflow.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(q);
        self.wake.notify_one();
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    listen_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("listen_addr", &self.listen_addr)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts forwarding between clients of `listen` and `target`. Upstream
    /// sockets come from `factory` (called once per client address).
    pub fn start(
        listen: std::net::UdpSocket,
        target: SocketAddr,
        factory: SocketFactory,
        cfg: ProxyConfig,
    ) -> Result<Self> {
        listen.set_nonblocking(true)?;
        let listen_addr = listen.local_addr()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(DelayQueue::new(cfg.max_queued_bytes)),
            wake: Notify::new(),
            faults: Mutex::new(cfg.faults),
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            counters: Counters::default(),
            arrivals: Mutex::new(HashMap::new()),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("proxy runtime")?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listen = match UdpSocket::from_std(listen) {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            eprintln!("fault proxy: {e}");
                            return;
                        }
                    };
                    let dispatcher = tokio::spawn(dispatch(sh.clone(), listen.clone()));
                    tokio::select! {
                        _ = serve_clients(sh, listen, target, factory, cfg.max_sessions) => {}
                        _ = stop_rx => {}
                    }
                    dispatcher.abort();
                });
            })?;
        Ok(Self {
            shared,
            listen_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where clients send to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, f: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            received: c.received.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            overflow: c.overflow.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            peak_queued_bytes: self
                .shared
                .queue
                .lock()
                .map_or(0, |q| q.peak_bytes() as u64),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_clients(
    sh: Arc<Shared>,
    listen: Arc<UdpSocket>,
    target: SocketAddr,
    factory: SocketFactory,
    max_sessions: usize,
) {
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match listen.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => continue, // e.g. ICMP errors surfaced on the socket
        };
        let now = Instant::now();
        if !sessions.contains_key(&from) {
            if sessions.len() >= max_sessions.max(1) {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_active)
                    .map(|(a, _)| *a)
                {
                    if let Some(s) = sessions.remove(&oldest) {
                        s.task.abort();
                    }
                }
            }
            let upstream = match factory().and_then(|s| {
                s.set_nonblocking(true)?;
                s.connect(target)?;
                UdpSocket::from_std(s)
            }) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!("fault proxy: cannot open an upstream socket: {e}");
                    continue;
                }
            };
            sh.counters.sessions.fetch_add(1, Ordering::Relaxed);
            let task = tokio::spawn(serve_upstream(sh.clone(), upstream.clone(), from));
            sessions.insert(
                from,
                Session {
                    upstream,
                    last_active: now,
                    task,
                },
            );
        }
        let Some(s) = sessions.get_mut(&from) else {
            continue;
        };
        s.last_active = now;
        let up = s.upstream.clone();
        sh.admit(|| Dest::Upstream(up.clone()), Dir::Up, &buf[..n]);
    }
}

async fn serve_upstream(sh: Arc<Shared>, upstream: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => sh.admit(|| Dest::Client(client), Dir::Down, &buf[..n]),
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await, // ICMP refusals while the target is down
        }
    }
}

async fn dispatch(sh: Arc<Shared>, listen: Arc<UdpSocket>) {
    loop {
        let next = sh.queue.lock().map(|q| q.next_due()).unwrap_or(None);
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = sh.wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        loop {
            let item = {
                let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.pop_due(Instant::now())
            };
            let Some(item) = item else { break };
            {
                let mut a = sh.arrivals.lock().unwrap_or_else(|p| p.into_inner());
                let e = a.entry(item.dir).or_insert((0, 0));
                if item.arrival < e.1 {
                    sh.counters.reordered.fetch_add(1, Ordering::Relaxed);
                }
                e.1 = e.1.max(item.arrival);
            }
            let res = match &item.dest {
                Dest::Upstream(s) => s.send(&item.data).await,
                Dest::Client(addr) => listen.send_to(&item.data, *addr).await,
            };
            match res {
                Ok(_) => sh.counters.forwarded.fetch_add(1, Ordering::Relaxed),
                Err(_) => sh.counters.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
    }

    fn factory() -> SocketFactory {
        Arc::new(|| std::net::UdpSocket::bind("127.0.0.1:0"))
    }

    #[test]
    fn plan_follows_the_probabilities() {
        let mut rng = StdRng::seed_from_u64(7);
        let none = Faults::default();
        assert_eq!(plan(&mut rng, &none), vec![Duration::ZERO]);
        let all_dropped = Faults { drop: 1.0, ..none };
        assert!(plan(&mut rng, &all_dropped).is_empty());
        let dup = Faults {
            duplicate: 1.0,
            delay: Duration::from_millis(50),
            ..none
        };
        assert_eq!(plan(&mut rng, &dup), vec![Duration::from_millis(50); 2]);
        let mixed = Faults {
            drop: 0.2,
            duplicate: 0.1,
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(20),
        };
        let (mut dropped, mut dups) = (0, 0);
        for _ in 0..20_000 {
            let p = plan(&mut rng, &mixed);
            match p.len() {
                0 => dropped += 1,
                2 => dups += 1,
                _ => {}
            }
            for d in p {
                assert!(
                    d >= Duration::from_millis(50) && d < Duration::from_millis(70),
                    "{d:?}"
                );
            }
        }
        assert!((3600..4400).contains(&dropped), "~20% dropped: {dropped}");
        assert!(
            (1400..1800).contains(&dups),
            "~10% of the 80% kept duplicated: {dups}"
        );
        // Deterministic for a seed.
        let a: Vec<_> = (0..50)
            .map(|_| plan(&mut StdRng::seed_from_u64(3), &mixed))
            .collect();
        let b: Vec<_> = (0..50)
            .map(|_| plan(&mut StdRng::seed_from_u64(3), &mixed))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn queue_orders_by_due_time_keeps_fifo_for_ties_and_bounds_bytes() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(100);
        q.push(t0 + Duration::from_millis(30), 10, "c").unwrap();
        q.push(t0 + Duration::from_millis(10), 10, "a").unwrap();
        q.push(t0 + Duration::from_millis(10), 10, "b").unwrap();
        assert_eq!(q.push(t0, 71, "too big"), Err("too big"), "byte bound");
        assert_eq!(q.bytes(), 30);
        assert_eq!(q.pop_due(t0), None, "nothing due yet");
        let later = t0 + Duration::from_millis(40);
        assert_eq!(
            (
                q.pop_due(later),
                q.pop_due(later),
                q.pop_due(later),
                q.pop_due(later)
            ),
            (Some("a"), Some("b"), Some("c"), None)
        );
        assert_eq!((q.bytes(), q.peak_bytes(), q.len()), (0, 30, 0));
        q.push(t0, 100, "fits again").unwrap();
        assert!(!q.is_empty());
    }

    /// An echo server that also counts what it got.
    fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let s = loopback();
        let addr = s.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                c.fetch_add(1, Ordering::Relaxed);
                let _ = s.send_to(&buf[..n], from);
            }
        });
        (addr, count)
    }

    /// A proxy in front of `target` with `faults` and the default limits.
    fn proxy(target: SocketAddr, faults: Faults) -> FaultProxy {
        FaultProxy::start(
            loopback(),
            target,
            factory(),
            ProxyConfig {
                faults,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// The `u32`s the client receives until its read times out.
    fn received(c: &std::net::UdpSocket) -> Vec<u32> {
        let mut order = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(n) = c.recv(&mut buf) {
            order.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
        }
        order
    }

    fn client() -> std::net::UdpSocket {
        let c = loopback();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c
    }

    #[test]
    fn delays_both_ways() {
        let (target, _) = echo();
        let faults = Faults {
            delay: Duration::from_millis(40),
            ..Faults::default()
        };
        let p = proxy(target, faults);
        let c = client();
        let start = std::time::Instant::now();
        c.send_to(b"ping", p.listen_addr()).unwrap();
        let mut buf = [0u8; 16];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
        // The reply is counted as forwarded just after it was sent: the
        // client may see it first.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while p.stats().forwarded < 2 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = p.stats();
        assert_eq!((st.received, st.forwarded, st.sessions), (2, 2, 1));
    }

    #[test]
    fn jitter_reorders_and_duplicates_arrive_twice() {
        let (target, got) = echo();
        let faults = Faults {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(30),
            duplicate: 0.5,
            drop: 0.0,
        };
        let p = proxy(target, faults);
        let c = client();
        for i in 0..200u32 {
            c.send_to(&i.to_be_bytes(), p.listen_addr()).unwrap();
        }
        let order = received(&c);
        let st = p.stats();
        assert!(st.duplicated > 50, "{st:?}");
        assert!(st.reordered > 10, "{st:?}");
        assert!(
            order.windows(2).any(|w| w[1] < w[0]),
            "client saw reordering"
        );
        // Each way duplicates: the echo saw more than 200, the client more still.
        assert!(got.load(Ordering::Relaxed) > 200);
        assert!(order.len() as u64 > got.load(Ordering::Relaxed));
        let mut distinct = order.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct,
            (0..200).collect::<Vec<_>>(),
            "nothing lost without a drop rate"
        );
    }

    #[test]
    fn without_jitter_order_is_kept_and_drop_loses_some() {
        let (target, _) = echo();
        let faults = Faults {
            delay: Duration::from_millis(2),
            drop: 0.3,
            ..Faults::default()
        };
        let p = proxy(target, faults);
        let c = client();
        for i in 0..300u32 {
            c.send_to(&i.to_be_bytes(), p.listen_addr()).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        let order = received(&c);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
        // Kept with probability 0.7 each way: ~49% come back.
        assert!((90..210).contains(&order.len()), "{}", order.len());
        let st = p.stats();
        assert_eq!(st.reordered, 0);
        assert!(st.dropped > 100, "{st:?}");
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let (target, got) = echo();
        let faults = Faults {
            delay: Duration::from_millis(300),
            ..Faults::default()
        };
        let cfg = ProxyConfig {
            faults,
            max_queued_bytes: 64 * 1024,
            ..Default::default()
        };
        let p = FaultProxy::start(loopback(), target, factory(), cfg).unwrap();
        let c = client();
        let payload = [0u8; 1000];
        for _ in 0..500 {
            c.send_to(&payload, p.listen_addr()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let st = p.stats();
        assert!(st.peak_queued_bytes <= 64 * 1024, "{st:?}");
        assert!(st.overflow > 0, "{st:?}");
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            got.load(Ordering::Relaxed) <= 65,
            "only what fitted went through"
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let (target, _) = echo();
        let cfg = ProxyConfig {
            max_sessions: 2,
            ..Default::default()
        };
        let p = FaultProxy::start(loopback(), target, factory(), cfg).unwrap();
        let clients: Vec<_> = (0..5).map(|_| client()).collect();
        let mut buf = [0u8; 8];
        for c in &clients {
            c.send_to(b"x", p.listen_addr()).unwrap();
            assert_eq!(c.recv(&mut buf).unwrap(), 1);
        }
        assert_eq!(p.stats().sessions, 5);
        // The most recent client still works after evictions.
        clients[4].send_to(b"y", p.listen_addr()).unwrap();
        assert_eq!(clients[4].recv(&mut buf).unwrap(), 1);
    }
}
