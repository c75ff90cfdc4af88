//! Harness for link tests: a [`Collector`] handler that records every
//! delivery per sender stream, notices order violations and can refuse
//! records, and helpers that start a receiver and a sender on loopback with
//! certificates from a [`TestPki`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use telemetry_link::{
    net::{
        Applied, Delivery, Handler, HandlerError, PresentDelivery, Receiver, ReceiverConfig,
        Sender, SenderConfig,
    },
    Payload, RefusedReason,
};

use crate::pki::TestPki;

/// The name a [`Collector`] files a sender stream under: the identity for
/// the default replica, `identity@replica` for a named one.
pub fn stream_name(sender: &str, replica: &str) -> String {
    if replica.is_empty() {
        sender.to_owned()
    } else {
        format!("{sender}@{replica}")
    }
}

/// What a [`Collector`] saw from one sender stream.
#[derive(Debug, Clone)]
pub struct SenderLog<T> {
    /// Every applied record with its sequence number, in delivery order.
    pub records: Vec<(u64, T)>,
    /// Every record the collector refused, with its sequence number.
    pub refused: Vec<(u64, RefusedReason)>,
    /// Deliveries whose first sequence was not the previous last + 1.
    pub order_violations: u64,
    /// Connect notifications.
    pub connects: u64,
    /// Presents received, in arrival order.
    pub presents: Vec<PresentLog<T>>,
}

/// A present as a [`Collector`] saw it.
#[derive(Debug, Clone)]
pub struct PresentLog<T> {
    /// Its `covers_seq`.
    pub covers_seq: u64,
    /// Its records the collector applied.
    pub records: Vec<T>,
    /// Its records the collector refused (by the [`Collector::refuse_when`]
    /// policy, as for batches).
    pub refused: u64,
    /// Batch records delivered before it arrived.
    pub after_records: usize,
}

impl<T> Default for SenderLog<T> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            refused: Vec::new(),
            order_violations: 0,
            connects: 0,
            presents: Vec::new(),
        }
    }
}

/// Which records a [`Collector`] refuses.
type RefusePolicy<T> = Box<dyn Fn(&T) -> Option<RefusedReason> + Send + Sync>;

/// A handler that stores everything it is given, by sender stream (see
/// [`stream_name`]).
pub struct Collector<T> {
    logs: Mutex<HashMap<String, SenderLog<T>>>,
    fail_next: Mutex<u32>,
    refuse: Mutex<Option<RefusePolicy<T>>>,
}

impl<T> std::fmt::Debug for Collector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self {
            logs: Mutex::new(HashMap::new()),
            fail_next: Mutex::new(0),
            refuse: Mutex::new(None),
        }
    }
}

impl<T: Clone> Collector<T> {
    /// A new, empty collector.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes the next `n` deliveries fail.
    pub fn fail_next(&self, n: u32) {
        if let Ok(mut f) = self.fail_next.lock() {
            *f = n;
        }
    }

    /// Refuses every record for which `policy` names a reason (it is
    /// logged in [`SenderLog::refused`], not in [`SenderLog::records`]).
    pub fn refuse_when(
        &self,
        policy: impl Fn(&T) -> Option<RefusedReason> + Send + Sync + 'static,
    ) {
        if let Ok(mut r) = self.refuse.lock() {
            *r = Some(Box::new(policy));
        }
    }

    /// A copy of what sender stream `sender` delivered (a [`stream_name`]).
    pub fn log(&self, sender: &str) -> SenderLog<T> {
        self.logs
            .lock()
            .ok()
            .and_then(|l| l.get(sender).cloned())
            .unwrap_or_default()
    }

    /// How many records of sender stream `sender` the collector settled:
    /// applied and refused.
    pub fn settled(&self, sender: &str) -> usize {
        self.logs
            .lock()
            .ok()
            .and_then(|l| l.get(sender).map(|s| s.records.len() + s.refused.len()))
            .unwrap_or(0)
    }

    /// How many records sender stream `sender` delivered (applied ones).
    pub fn count(&self, sender: &str) -> usize {
        self.logs
            .lock()
            .ok()
            .and_then(|l| l.get(sender).map(|s| s.records.len()))
            .unwrap_or(0)
    }

    /// Waits until `sender` delivered at least `n` records (applied ones).
    pub async fn wait_for(&self, sender: &str, n: usize, limit: Duration) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        while self.count(sender) < n {
            if start.elapsed() > limit {
                anyhow::bail!(
                    "only {} of {n} records from {sender} after {limit:?}",
                    self.count(sender)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl<T: Payload + Clone> Handler<T> for Collector<T> {
    async fn handle(&self, d: Delivery<T>) -> Result<Applied, HandlerError> {
        {
            let mut f = self.fail_next.lock().map_err(|_| "poisoned")?;
            if *f > 0 {
                *f -= 1;
                return Err("collector told to fail".into());
            }
        }
        let refuse = self.refuse.lock().map_err(|_| "poisoned")?;
        let mut logs = self.logs.lock().map_err(|_| "poisoned")?;
        let log = logs.entry(stream_name(&d.sender, &d.replica)).or_default();
        let last = log
            .records
            .last()
            .map(|(s, _)| *s)
            .max(log.refused.last().map(|(s, _)| *s));
        if last.is_some_and(|l| d.first_seq != l + 1) {
            log.order_violations += 1;
        }
        let mut applied = Applied::all();
        for (i, r) in d.records.into_iter().enumerate() {
            let seq = d.first_seq + i as u64;
            match refuse.as_ref().and_then(|policy| policy(&r)) {
                Some(reason) => {
                    applied.refuse(reason, 1);
                    log.refused.push((seq, reason));
                }
                None => log.records.push((seq, r)),
            }
        }
        Ok(applied)
    }

    async fn present(&self, p: PresentDelivery<T>) -> Result<Applied, HandlerError> {
        let refuse = self.refuse.lock().map_err(|_| "poisoned")?;
        let mut logs = self.logs.lock().map_err(|_| "poisoned")?;
        let log = logs.entry(stream_name(&p.sender, &p.replica)).or_default();
        let after_records = log.records.len();
        let mut applied = Applied::all();
        let mut records = Vec::with_capacity(p.records.len());
        for r in p.records {
            match refuse.as_ref().and_then(|policy| policy(&r)) {
                Some(reason) => {
                    applied.refuse(reason, 1);
                }
                None => records.push(r),
            }
        }
        log.presents.push(PresentLog {
            covers_seq: p.covers_seq,
            records,
            refused: applied.refused().total(),
            after_records,
        });
        Ok(applied)
    }

    fn sender_connected(&self, sender: &str, replica: &str) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.entry(stream_name(sender, replica))
                .or_default()
                .connects += 1;
        }
    }
}

/// Polls `cond` every 20 ms until it holds; an error naming `what` after
/// `limit`.
pub async fn eventually(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    while !cond() {
        anyhow::ensure!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Asserts that `seqs` is exactly `1..=n` (nothing lost, nothing twice).
pub fn assert_exactly_once(seqs: impl IntoIterator<Item = u64>, n: u64) {
    let mut v: Vec<u64> = seqs.into_iter().collect();
    let len = v.len();
    v.sort_unstable();
    v.dedup();
    assert_eq!(len, v.len(), "{} duplicate deliveries", len - v.len());
    assert_eq!(v.len() as u64, n, "expected {n} records, got {}", v.len());
    assert_eq!(v.first().copied(), (n > 0).then_some(1));
    assert_eq!(v.last().copied(), (n > 0).then_some(n));
}

/// Starts a receiver on 127.0.0.1 (port 0 = any) with `state_dir`.
pub async fn start_receiver<T: Payload, H: Handler<T>>(
    pki: &TestPki,
    port: u16,
    state_dir: &Path,
    handler: Arc<H>,
    tune: impl FnOnce(&mut ReceiverConfig),
) -> anyhow::Result<(Receiver, prometheus::Registry)> {
    let registry = prometheus::Registry::new();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cfg = ReceiverConfig::new(listen, pki.receiver()?, state_dir);
    tune(&mut cfg);
    let r = Receiver::start::<T, H>(cfg, handler, &registry).await?;
    Ok((r, registry))
}

/// Starts a receiver on `port` again after the previous one stopped or was
/// dropped, retrying for up to 10 s while the old socket is released.
pub async fn restart_receiver<T: Payload, H: Handler<T>>(
    pki: &TestPki,
    port: u16,
    state_dir: &Path,
    handler: Arc<H>,
    tune: impl Fn(&mut ReceiverConfig),
) -> anyhow::Result<(Receiver, prometheus::Registry)> {
    let limit = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start_receiver::<T, H>(pki, port, state_dir, handler.clone(), &tune).await {
            Ok(r) => return Ok(r),
            Err(e) if tokio::time::Instant::now() < limit => {
                tracing::debug!("rebinding: {e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts a sender with identity `id` towards `receivers`. Batches do not
/// linger (`linger` is zero, so tests see records at once); `tune` may
/// change that.
pub async fn start_sender<T: Payload>(
    pki: &TestPki,
    id: &str,
    receivers: &[SocketAddr],
    spool_dir: &Path,
    tune: impl FnOnce(&mut SenderConfig),
) -> anyhow::Result<(Sender<T>, prometheus::Registry)> {
    let registry = prometheus::Registry::new();
    let mut cfg = SenderConfig::new(
        receivers.iter().map(|a| a.to_string()).collect(),
        pki.sender(id)?,
        spool_dir,
    );
    cfg.linger = std::time::Duration::ZERO;
    tune(&mut cfg);
    let (s, _report) = Sender::<T>::start(cfg, &registry).await?;
    Ok((s, registry))
}

/// Whether a registry exports a series of `name` carrying `labels` (at
/// whatever value, zero included).
pub fn exported(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> bool {
    registry.gather().iter().any(|fam| {
        fam.name() == name
            && fam.get_metric().iter().any(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
    })
}

/// Value of an unlabelled or labelled metric in a registry (sum over
/// matching series), for assertions.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for fam in registry.gather() {
        if fam.name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let ok = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if !ok {
                continue;
            }
            // A metric is either a counter or a gauge; the other reads 0.
            total += m.get_counter().get_value() + m.get_gauge().get_value();
        }
    }
    total
}
