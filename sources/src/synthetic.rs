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
//!   batch per [`TICK`] (10 ms). After `k` ticks exactly `floor(R·k/100)`
//!   records have been sent: the fractional remainders are carried, so any
//!   whole simulated second carries exactly `R` records, even when `R` is not a
//!   multiple of 100. Missed ticks (a slow sink) are caught up in bursts.
//!   With `R = 0` batches of [`UNPACED_BATCH`] records are sent back to back,
//!   yielding to the runtime between them.
//! - **A bounded total.** With `last_value = Some(K)` the source stops after
//!   emitting `K` (`--synthetic-total K`: values up to `K` across restarts); if
//!   `first_value > K` it emits nothing.
//! - **Clean shutdown.** The `shutdown` future is checked between batches; a
//!   batch handed to the sink is never abandoned halfway.
//! - **The present on reconnect.** When the sink's connection counter
//!   changes, the newest sample of every series becomes the sink's present
//!   state, so a receiver shows current values before the backlog drains.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use telemetry_link::{Sample, SeriesKey};
use tokio::time::{interval, MissedTickBehavior};

use telemetry_schema::ClusterRecord;

use crate::sink::{RecordSink, SinkError};

/// Metric name of every synthetic series.
pub const SYNTHETIC_METRIC: &str = "telemetry_synthetic_value";
/// The label that tells the series apart.
pub const SYNTHETIC_SERIES_LABEL: &str = "series";
/// Pacing interval when a rate is set.
pub const TICK: Duration = Duration::from_millis(10);
/// Ticks per second (`1 s / TICK`).
const TICKS_PER_SECOND: u128 = 100;
/// Records per batch when the rate is unlimited (`rate = 0`).
pub const UNPACED_BATCH: u64 = 1024;
/// Largest batch handed to the sink at once when catching up at high rates.
pub const MAX_PACED_BATCH: u64 = 16 * 1024;

/// Generates consecutive counter values over `series` series at `rate`
/// records per second. See the module documentation for the guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSource {
    /// Number of series N (0 is treated as 1).
    pub series: u32,
    /// Records per second; 0 means as fast as the sink accepts them.
    pub rate: u64,
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
            run_paced(&mut generator, self.rate, sink, &mut shutdown).await?;
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

    /// Sets the present whenever the link (re)connected since the last call.
    fn present_on_reconnect(
        &self,
        connections: &mut tokio::sync::watch::Receiver<u64>,
        sink: &impl RecordSink,
    ) -> Result<(), SinkError> {
        if connections.has_changed().unwrap_or(false) {
            connections.borrow_and_update();
            sink.set_present(&self.present())?;
        }
        Ok(())
    }

    /// The next `count` records (fewer when `last_value` is reached).
    fn next_batch(&mut self, count: u64) -> Vec<ClusterRecord> {
        let count = self.allowed(count);
        let timestamp_ms = unix_millis();
        let series = self.keys.len() as u64;
        let mut batch = Vec::with_capacity(count as usize);
        for _ in 0..count {
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
    while !generator.is_finished() {
        if shutdown_requested(shutdown).await {
            return Ok(());
        }
        generator.present_on_reconnect(&mut connections, sink)?;
        let batch = generator.next_batch(UNPACED_BATCH);
        sink.send_batch(batch).await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

async fn run_paced<F: Future<Output = ()>>(
    generator: &mut ValueGenerator,
    rate: u64,
    sink: &impl RecordSink,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Result<(), SinkError> {
    let mut ticker = interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // `interval` fires at once: that is tick 0, when 0 records are due.
    let mut ticks: u128 = 0;
    let mut sent: u128 = 0;
    ticker.tick().await;
    let mut connections = sink.connections();
    connections.borrow_and_update();
    while !generator.is_finished() {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Ok(()),
            Ok(()) = connections.changed() => {
                connections.borrow_and_update();
                sink.set_present(&generator.present())?;
                continue;
            }
            _ = ticker.tick() => {}
        }
        ticks += 1;
        let due = rate as u128 * ticks / TICKS_PER_SECOND;
        while sent < due && !generator.is_finished() {
            let want = (due - sent).min(MAX_PACED_BATCH as u128) as u64;
            let batch = generator.next_batch(want);
            sent += batch.len() as u128;
            sink.send_batch(batch).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::VecSink;
    use tokio::sync::oneshot;

    fn values_and_series(records: &[ClusterRecord]) -> Vec<(u64, String)> {
        records
            .iter()
            .map(|r| match r {
                ClusterRecord::Sample(s) => {
                    assert_eq!(s.series.name(), SYNTHETIC_METRIC);
                    (
                        s.value as u64,
                        s.series
                            .label(SYNTHETIC_SERIES_LABEL)
                            .unwrap_or("")
                            .to_string(),
                    )
                }
                other => panic!("unexpected record {other:?}"),
            })
            .collect()
    }

    /// Spawns `source` on a shared `VecSink`; returns the sink, the shutdown
    /// trigger and the task.
    fn spawn(
        source: SyntheticSource,
    ) -> (
        Arc<VecSink>,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<u64, SinkError>>,
    ) {
        let sink = Arc::new(VecSink::new());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task_sink = sink.clone();
        let task = tokio::spawn(async move {
            source
                .run(&*task_sink, async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        (sink, stop_tx, task)
    }

    #[tokio::test(start_paused = true)]
    async fn paced_rate_is_exact_over_simulated_seconds_with_fractional_ticks() {
        // 250/s is 2.5 records per 10 ms tick: the remainder must be carried.
        let source = SyntheticSource {
            series: 3,
            rate: 250,
            first_value: 1,
            last_value: None,
        };
        let (sink, stop, task) = spawn(source);
        tokio::time::sleep(Duration::from_millis(1005)).await;
        assert_eq!(sink.records().len(), 250, "after 1 s");
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(sink.records().len(), 1000, "after 4 s");
        // Half a second in between: floor(250 * 50 / 100) = 125 more.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.records().len(), 1125, "after 4.5 s");
        stop.send(()).ok();
        let last = task.await.unwrap().unwrap();
        assert_eq!(last, 1125);
        let values: Vec<u64> = values_and_series(&sink.records())
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(values, (1..=1125).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_below_one_per_tick_are_exact_too() {
        let source = SyntheticSource {
            series: 1,
            rate: 7,
            first_value: 10,
            last_value: None,
        };
        let (sink, stop, task) = spawn(source);
        tokio::time::sleep(Duration::from_millis(10_005)).await;
        assert_eq!(sink.records().len(), 70);
        stop.send(()).ok();
        assert_eq!(task.await.unwrap().unwrap(), 79);
    }

    #[tokio::test(start_paused = true)]
    async fn values_rotate_round_robin_by_value_so_restarts_continue_the_rotation() {
        let source = SyntheticSource {
            series: 4,
            rate: 0,
            first_value: 6,
            last_value: Some(13),
        };
        let (sink, _stop, task) = spawn(source);
        assert_eq!(task.await.unwrap().unwrap(), 13);
        let got = values_and_series(&sink.records());
        let expected: Vec<(u64, String)> = (6..=13).map(|v| (v, (v % 4).to_string())).collect();
        assert_eq!(got, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn series_keys_are_built_once_and_shared() {
        let source = SyntheticSource {
            series: 2,
            rate: 0,
            first_value: 0,
            last_value: Some(5),
        };
        let (sink, _stop, task) = spawn(source);
        task.await.unwrap().unwrap();
        let records = sink.records();
        let arc = |i: usize| match &records[i] {
            ClusterRecord::Sample(s) => s.series.clone(),
            _ => unreachable!(),
        };
        assert!(Arc::ptr_eq(&arc(0), &arc(2)));
        assert!(Arc::ptr_eq(&arc(1), &arc(5)));
        assert!(!Arc::ptr_eq(&arc(0), &arc(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_source_stops_after_last_value_in_full_batches() {
        let source = SyntheticSource {
            series: 5,
            rate: 0,
            first_value: 1,
            last_value: Some(3000),
        };
        let (sink, _stop, task) = spawn(source);
        assert_eq!(task.await.unwrap().unwrap(), 3000);
        let values: Vec<u64> = values_and_series(&sink.records())
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(values, (1..=3000).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn paced_source_stops_at_last_value_without_shutdown() {
        let source = SyntheticSource {
            series: 2,
            rate: 1000,
            first_value: 1,
            last_value: Some(1500),
        };
        let (sink, _stop, task) = spawn(source);
        let started = tokio::time::Instant::now();
        assert_eq!(task.await.unwrap().unwrap(), 1500);
        assert_eq!(sink.records().len(), 1500);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn total_already_reached_emits_nothing() {
        let source = SyntheticSource {
            series: 2,
            rate: 100,
            first_value: 51,
            last_value: Some(50),
        };
        let (sink, _stop, task) = spawn(source);
        assert_eq!(task.await.unwrap().unwrap(), 50);
        assert!(sink.records().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_source_honours_shutdown_between_batches() {
        let source = SyntheticSource {
            series: 3,
            rate: 0,
            first_value: 1,
            last_value: None,
        };
        let (sink, stop, task) = spawn(source);
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        stop.send(()).ok();
        let last = task.await.unwrap().unwrap();
        let values: Vec<u64> = values_and_series(&sink.records())
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert!(!values.is_empty());
        assert_eq!(values.len() as u64 % UNPACED_BATCH, 0, "whole batches only");
        assert_eq!(last, values.len() as u64);
        assert_eq!(values, (1..=last).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn paced_source_honours_shutdown() {
        let source = SyntheticSource {
            series: 1,
            rate: 100,
            first_value: 1,
            last_value: None,
        };
        let (sink, stop, task) = spawn(source);
        tokio::time::sleep(Duration::from_millis(205)).await;
        stop.send(()).ok();
        assert_eq!(task.await.unwrap().unwrap(), 20);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(sink.records().len(), 20, "nothing after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn sink_failure_is_reported() {
        struct RefusingSink(tokio::sync::watch::Sender<u64>);
        impl RecordSink for RefusingSink {
            async fn send_batch(&self, _records: Vec<ClusterRecord>) -> Result<(), SinkError> {
                Err(SinkError("spool full".into()))
            }
            fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
                self.0.subscribe()
            }
        }
        let sink = RefusingSink(tokio::sync::watch::channel(0).0);
        let source = SyntheticSource {
            series: 1,
            rate: 0,
            first_value: 1,
            last_value: None,
        };
        let err = source.run(&sink, std::future::pending()).await.unwrap_err();
        assert!(err.to_string().contains("spool full"));
    }
}
