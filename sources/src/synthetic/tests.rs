//! The synthetic source on a simulated clock: exact rates, round robin,
//! totals, shutdown, and sends in flight that neither slow the source nor
//! outrun the sink.

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
    // 125/s is 12.5 records per 100 ms tick: the remainder must be carried.
    let source = SyntheticSource {
        tick: TICK,
        series: 3,
        rate: 125,
        first_value: 1,
        last_value: None,
    };
    let (sink, stop, task) = spawn(source);
    tokio::time::sleep(Duration::from_millis(1005)).await;
    assert_eq!(sink.records().len(), 125, "after 1 s");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(sink.records().len(), 500, "after 4 s");
    // Half a second in between: floor(125 * 45 / 10) = 562 in all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.records().len(), 562, "after 4.5 s");
    stop.send(()).ok();
    let last = task.await.unwrap().unwrap();
    assert_eq!(last, 562);
    let values: Vec<u64> = values_and_series(&sink.records())
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(values, (1..=562).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_one_second_tick_hands_over_each_seconds_records_at_once() {
    let source = SyntheticSource {
        tick: Duration::from_secs(1),
        series: 1000,
        rate: 1000,
        first_value: 1,
        last_value: None,
    };
    let (sink, stop, task) = spawn(source);
    tokio::time::sleep(Duration::from_millis(995)).await;
    assert_eq!(sink.records().len(), 0, "nothing before the first tick");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(sink.records().len(), 1000, "one second's records at once");
    tokio::time::sleep(Duration::from_millis(980)).await;
    assert_eq!(sink.records().len(), 1000, "nothing between ticks");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sink.records().len(), 2000);
    stop.send(()).ok();
    assert_eq!(task.await.unwrap().unwrap(), 2000);
    // Every series got one sample per second.
    let series: std::collections::BTreeSet<String> = values_and_series(&sink.records()[..1000])
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(series.len(), 1000);
}

#[tokio::test(start_paused = true)]
async fn slow_rates_below_one_per_tick_are_exact_too() {
    let source = SyntheticSource {
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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
        tick: TICK,
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

/// A sink whose sends take `delay` (or never finish), recording the
/// records as they are handed over and the most sends pending at once.
struct SlowSink {
    delay: Option<Duration>,
    records: std::sync::Mutex<Vec<ClusterRecord>>,
    batches: std::sync::atomic::AtomicUsize,
    pending: std::sync::atomic::AtomicUsize,
    most_pending: std::sync::atomic::AtomicUsize,
    connections: tokio::sync::watch::Sender<u64>,
}

impl SlowSink {
    fn new(delay: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            delay,
            records: std::sync::Mutex::new(Vec::new()),
            batches: 0.into(),
            pending: 0.into(),
            most_pending: 0.into(),
            connections: tokio::sync::watch::channel(0).0,
        })
    }

    fn handed(&self) -> usize {
        self.records.lock().unwrap().len()
    }
}

impl RecordSink for SlowSink {
    async fn send_batch(&self, records: Vec<ClusterRecord>) -> Result<(), SinkError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.records.lock().unwrap().extend(records);
        self.batches.fetch_add(1, SeqCst);
        let now = self.pending.fetch_add(1, SeqCst) + 1;
        self.most_pending.fetch_max(now, SeqCst);
        match self.delay {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        self.pending.fetch_sub(1, SeqCst);
        Ok(())
    }

    fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.subscribe()
    }
}

fn run_on(
    source: SyntheticSource,
    sink: Arc<SlowSink>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<u64, SinkError>>,
) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        source
            .run(&*sink, async move {
                let _ = stop_rx.await;
            })
            .await
    });
    (stop_tx, task)
}

#[tokio::test(start_paused = true)]
async fn sends_slower_than_a_tick_do_not_slow_the_source() {
    // Each send takes 350 ms (3.5 ticks): awaited one by one, 1 s would
    // carry less than a third of the records.
    let sink = SlowSink::new(Some(Duration::from_millis(350)));
    let source = SyntheticSource {
        tick: TICK,
        series: 3,
        rate: 1000,
        first_value: 1,
        last_value: None,
    };
    let (stop, task) = run_on(source, sink.clone());
    tokio::time::sleep(Duration::from_millis(1005)).await;
    assert_eq!(sink.handed(), 1000, "exact rate with sends in flight");
    let most = sink.most_pending.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=MAX_IN_FLIGHT).contains(&most),
        "{most} pending at most"
    );
    stop.send(()).ok();
    assert_eq!(task.await.unwrap().unwrap(), 1000);
    assert_eq!(
        sink.pending.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every send finished before run returned"
    );
    let values: Vec<u64> = values_and_series(&sink.records.lock().unwrap())
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(values, (1..=1000).collect::<Vec<_>>(), "in order");
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_makes_at_most_10_sends_per_second_at_any_rate() {
    // Each send is one durable append (one fsync unless shared): the tick
    // bounds them, whatever the rate.
    for rate in [1, 7, 100, 1_000, 10_000] {
        let sink = SlowSink::new(Some(Duration::from_millis(1)));
        let source = SyntheticSource {
            tick: TICK,
            series: 10,
            rate,
            first_value: 1,
            last_value: None,
        };
        let (stop, task) = run_on(source, sink.clone());
        tokio::time::sleep(Duration::from_millis(10_005)).await;
        stop.send(()).ok();
        task.await.unwrap().unwrap();
        let batches = sink.batches.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(sink.handed() as u64, 10 * rate, "exact at {rate}/s");
        assert!(batches <= 100, "{batches} sends in 10 s at {rate}/s");
        if rate >= 10 {
            assert_eq!(batches, 100, "one send per tick at {rate}/s");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn paced_records_carry_the_time_they_fell_due_not_their_batch_time() {
    // 200/s: 20 records per tick, 5 ms apart.
    let source = SyntheticSource {
        tick: TICK,
        series: 2,
        rate: 200,
        first_value: 1,
        last_value: Some(40),
    };
    let (sink, _stop, task) = spawn(source);
    task.await.unwrap().unwrap();
    let stamps: Vec<i64> = sink
        .records()
        .iter()
        .map(|r| match r {
            ClusterRecord::Sample(s) => s.timestamp_ms,
            other => panic!("unexpected record {other:?}"),
        })
        .collect();
    assert_eq!(stamps.len(), 40);
    let steps: Vec<i64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.iter().all(|&d| d == 5), "5 ms apart: {steps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_cannot_keep_up_holds_the_source_back() {
    let sink = SlowSink::new(None);
    let source = SyntheticSource {
        tick: TICK,
        series: 1,
        rate: 100,
        first_value: 1,
        last_value: None,
    };
    let (_stop, task) = run_on(source, sink.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.handed(),
        10 * MAX_IN_FLIGHT,
        "10 records per tick until {MAX_IN_FLIGHT} sends are pending"
    );
    task.abort();
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
        tick: TICK,
        series: 1,
        rate: 0,
        first_value: 1,
        last_value: None,
    };
    let err = source.run(&sink, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("spool full"));
}
