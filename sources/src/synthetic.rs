//! The synthetic source: a counter spread round-robin over N series, at an
//! exact rate, for load tests and end-to-end checks of the link.
//!
//! What it owns: producing [`ClusterRecord::Sample`]s of the metric
//! `telemetry_synthetic_value{series="<i>"}` (`i` in `0..N`; the receiver adds
//! the `cluster` label) into a [`RecordSink`].
//!
//! What it guarantees:
//! - **Consecutive values.** The value is a counter that starts at
//!   `first_value` and grows by one per record, with no gap and no repeat.
//!   The sender binary passes the link's last sequence number + 1, so when the
//!   source is the only producer on a link and the spool was fresh, every
//!   record's value equals its link sequence number — which makes loss,
//!   duplication and reordering visible at the receiver.
//! - **Round robin that survives restarts.** Value `v` goes to series
//!   `v mod N`, so a restarted source continues the rotation where the
//!   previous run stopped.
//! - **Exact long-run rate.** With `rate = R > 0`, records are sent as one
//!   batch per tick (default [`TICK`], 100 ms; `--synthetic-tick`). After
//!   `k` ticks of `T` ms exactly `floor(R·k·T/1000)` records have been handed
//!   to the sink: the fractional remainders are carried, so any whole
//!   simulated second carries exactly `R` records, even when `R` is not a
//!   multiple of the ticks per second. Missed ticks are caught up in bursts.
//!   A 1 s tick hands over each second's records at once, as a scrape every
//!   second would.
//!   With `R = 0` batches of [`UNPACED_BATCH`] records are sent back to back,
//!   yielding to the runtime between them.
//! - **At most 10 batches per second when paced** (at the default tick; one
//!   per tick in general). Every batch is one send
//!   to the sink, and the sender's sink returns from a send only once its
//!   records are durable: one spool append and, unless it shares one with
//!   other sends in flight, one fsync. A steady stream at a fine tick cannot
//!   share fsyncs (each ends before the next tick), so the tick sets the
//!   sender's sync rate: 100 ms keeps it ≤ 10 per second at any rate, and
//!   gives a steady 100 records/s batches of 10. The cost is at most 100 ms
//!   between a record falling due and its send, well below the sender's
//!   default linger (a batch leaves up to 1 s after its first record).
//! - **Each record's own time.** A paced record carries the wall-clock time
//!   at which it fell due at the exact rate (the source's start + its
//!   index / `R`), not its batch's, so the records of one batch keep
//!   distinct timestamps (down to the millisecond); unpaced records carry
//!   the time their batch was made.
//! - **Pipelined sends.** The source does not await a batch's send before
//!   producing the next: up to [`MAX_IN_FLIGHT`] sends are pending at once
//!   ([`InFlight`]), so a send slower than a tick does not slow the source,
//!   and sends pending together share the sink's fsync. With that many
//!   pending it waits for the oldest (back-pressure: the sink cannot keep
//!   up). Batches keep their order.
//! - **A bounded total.** With `last_value = Some(K)` the source stops after
//!   emitting `K` (`--synthetic-total K`: values up to `K` across restarts); if
//!   `first_value > K` it emits nothing.
//! - **Clean shutdown.** The `shutdown` future is checked between batches; a
//!   batch handed to the sink is never abandoned halfway: the pending sends
//!   are awaited before `run` returns.
//! - **The present on reconnect.** When the sink's connection counter
//!   changes, the pending sends are awaited and the newest sample of every
//!   series becomes the sink's present state, so a receiver shows current
//!   values before the backlog drains.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use telemetry_link::{Sample, SeriesKey};
use tokio::time::{interval, MissedTickBehavior};

use telemetry_schema::ClusterRecord;

use crate::sink::{InFlight, RecordSink, SinkError};

/// Metric name of every synthetic series.
pub const SYNTHETIC_METRIC: &str = "telemetry_synthetic_value";
/// The label that tells the series apart.
pub const SYNTHETIC_SERIES_LABEL: &str = "series";
/// The default pacing interval when a rate is set: at most 10 sends (and
/// sender fsyncs) per second, see the module documentation.
pub const TICK: Duration = Duration::from_millis(100);
/// Records per batch when the rate is unlimited (`rate = 0`).
pub const UNPACED_BATCH: u64 = 1024;
/// Largest batch handed to the sink at once when catching up at high rates.
pub const MAX_PACED_BATCH: u64 = 16 * 1024;
/// Most sends pending at once (800 ms of records when paced).
pub const MAX_IN_FLIGHT: usize = 8;

/// Generates consecutive counter values over `series` series at `rate`
/// records per second. See the module documentation for the guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSource {
    /// Number of series N (0 is treated as 1).
    pub series: u32,
    /// Records per second; 0 means as fast as the sink accepts them.
    pub rate: u64,
    /// Pacing interval when `rate > 0` (one send per tick); below one
    /// millisecond counts as one millisecond.
    pub tick: Duration,
    /// The first value emitted.
    pub first_value: u64,
    /// The last value to emit, inclusive; `None` runs until shutdown.
    pub last_value: Option<u64>,
}

impl SyntheticSource {
    /// Builds the series keys `telemetry_synthetic_value{series="i"}`, once.
    fn series_keys(&self) -> Result<Vec<Arc<SeriesKey>>, SinkError> {
        let count = self.series.max(1);
        (0..count)
            .map(|i| {
                SeriesKey::new(SYNTHETIC_METRIC, [(SYNTHETIC_SERIES_LABEL, i.to_string())])
                    .map(Arc::new)
                    .map_err(|e| SinkError(format!("synthetic series key refused: {e}")))
            })
            .collect()
    }

    /// Runs until `last_value` was emitted or `shutdown` completes, and
    /// returns the last value emitted (`first_value - 1`, saturating, when
    /// nothing was emitted). Fails only when the sink refuses records.
    pub async fn run(
        self,
        sink: &impl RecordSink,
        shutdown: impl Future<Output = ()>,
    ) -> Result<u64, SinkError> {
        if self.series == 0 {
            tracing::warn!("synthetic source configured with 0 series; using 1");
        }
        let keys = self.series_keys()?;
        let mut generator = ValueGenerator {
            latest: vec![None; keys.len()],
            keys,
            next_value: self.first_value,
            last_value: self.last_value,
        };
        tracing::info!(
            series = generator.keys.len(),
            rate = self.rate,
            first_value = self.first_value,
            last_value = ?self.last_value,
            "synthetic source starting"
        );
        tokio::pin!(shutdown);
        if self.rate == 0 {
            run_unpaced(&mut generator, sink, &mut shutdown).await?;
        } else {
            let tick = self.tick.max(Duration::from_millis(1));
            run_paced(&mut generator, self.rate, tick, sink, &mut shutdown).await?;
        }
        let last = generator.next_value.saturating_sub(1);
        tracing::info!(
            last_value = last,
            finished = generator.is_finished(),
            "synthetic source stopped"
        );
        Ok(last)
    }
}

/// The counter and the series it rotates over.
struct ValueGenerator {
    keys: Vec<Arc<SeriesKey>>,
    /// Each series' newest sample (time, value), for the present state.
    latest: Vec<Option<(i64, f64)>>,
    next_value: u64,
    last_value: Option<u64>,
}

impl ValueGenerator {
    /// True once `last_value` has been emitted (or the counter is exhausted).
    fn is_finished(&self) -> bool {
        match self.last_value {
            Some(last) => self.next_value > last,
            None => self.next_value == u64::MAX,
        }
    }

    /// Values still allowed, capped at `want`.
    fn allowed(&self, want: u64) -> u64 {
        let until = self.last_value.unwrap_or(u64::MAX - 1);
        if self.next_value > until {
            return 0;
        }
        want.min(until - self.next_value + 1)
    }

    /// The present state: the newest sample of every series emitted so far.
    fn present(&self) -> Vec<ClusterRecord> {
        self.keys
            .iter()
            .zip(&self.latest)
            .filter_map(|(key, latest)| {
                latest.map(|(t, v)| ClusterRecord::Sample(Sample::new(key.clone(), t, v)))
            })
            .collect()
    }

    /// Sets the present once every send in flight returned.
    async fn set_present<F: Future<Output = Result<(), SinkError>>>(
        &self,
        in_flight: &mut InFlight<F>,
        sink: &impl RecordSink,
    ) -> Result<(), SinkError> {
        in_flight.drain().await?;
        sink.set_present(&self.present())
    }

    /// The next `count` records (fewer when `last_value` is reached), all
    /// stamped now.
    fn next_batch(&mut self, count: u64) -> Vec<ClusterRecord> {
        let now = unix_millis();
        self.next_batch_stamped(count, |_| now)
    }

    /// The next `count` records, the `i`-th of them stamped `stamp(i)`.
    fn next_batch_stamped(&mut self, count: u64, stamp: impl Fn(u64) -> i64) -> Vec<ClusterRecord> {
        let count = self.allowed(count);
        let series = self.keys.len() as u64;
        let mut batch = Vec::with_capacity(count as usize);
        for i in 0..count {
            let timestamp_ms = stamp(i);
            let value = self.next_value;
            let index = (value % series) as usize;
            self.latest[index] = Some((timestamp_ms, value as f64));
            let key = &self.keys[index];
            batch.push(ClusterRecord::Sample(Sample::new(
                key.clone(),
                timestamp_ms,
                value as f64,
            )));
            self.next_value += 1;
        }
        batch
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// True if `shutdown` has already completed, without waiting.
async fn shutdown_requested<F: Future<Output = ()>>(shutdown: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}

async fn run_unpaced<F: Future<Output = ()>>(
    generator: &mut ValueGenerator,
    sink: &impl RecordSink,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Result<(), SinkError> {
    let mut connections = sink.connections();
    connections.borrow_and_update();
    let mut in_flight = InFlight::new(MAX_IN_FLIGHT);
    while !generator.is_finished() {
        if shutdown_requested(shutdown).await {
            break;
        }
        if connections.has_changed().unwrap_or(false) {
            connections.borrow_and_update();
            generator.set_present(&mut in_flight, sink).await?;
        }
        let batch = generator.next_batch(UNPACED_BATCH);
        in_flight.push(sink.send_batch(batch)).await?;
        tokio::task::yield_now().await;
    }
    in_flight.drain().await
}

async fn run_paced<F: Future<Output = ()>>(
    generator: &mut ValueGenerator,
    rate: u64,
    tick: Duration,
    sink: &impl RecordSink,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Result<(), SinkError> {
    let mut ticker = interval(tick);
    let tick_us = tick.as_micros();
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // `interval` fires at once: that is tick 0, when 0 records are due.
    let mut ticks: u128 = 0;
    let mut sent: u128 = 0;
    ticker.tick().await;
    let start_ms = unix_millis();
    // Record `n` (0-based) falls due at start + (n + 1) / rate.
    let due_ms = |n: u128| start_ms + ((n + 1) * 1000 / rate as u128) as i64;
    let mut connections = sink.connections();
    connections.borrow_and_update();
    let mut in_flight = InFlight::new(MAX_IN_FLIGHT);
    while !generator.is_finished() {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => break,
            Ok(()) = connections.changed() => {
                connections.borrow_and_update();
                generator.set_present(&mut in_flight, sink).await?;
                continue;
            }
            done = in_flight.next() => {
                done?;
                continue;
            }
            _ = ticker.tick() => {}
        }
        ticks += 1;
        let due = rate as u128 * ticks * tick_us / 1_000_000;
        while sent < due && !generator.is_finished() {
            let want = (due - sent).min(MAX_PACED_BATCH as u128) as u64;
            let first = sent;
            let batch = generator.next_batch_stamped(want, |i| due_ms(first + i as u128));
            sent += batch.len() as u128;
            in_flight.push(sink.send_batch(batch)).await?;
        }
    }
    in_flight.drain().await
}

#[cfg(test)]
mod tests;
