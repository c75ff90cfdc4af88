//! What the receiver's state costs in memory, measured with a counting
//! allocator: a generic sample series, a pod (with its usage) by container
//! count, an HPA, an object unit at its worst (every string at the longest
//! a record may keep), an interned series definition of a connection, and
//! the bytes of the `/metrics` page each writes. `docs/shared-service.md`
//! sizes receivers with these figures; the ceilings below keep them
//! honest (a change that makes state dearer fails here until the document
//! is updated).
//!
//! Bytes are what the program asked the allocator for; the allocator adds
//! about 16 bytes per allocation (reported beside), and a process's RSS
//! adds fragmentation on top (see the reliability suite for whole-process
//! figures). One test, so that nothing else allocates concurrently.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, Ordering},
        Arc,
    },
    time::Instant,
};

use telemetry_link::{
    proto::{
        batch::{BatchDecoder, BatchEncoder, InternLimits},
        record::encode_record,
    },
    Sample, SeriesKey,
};
use telemetry_receiver::{
    interpret::{
        budget::{MAX_ID_BYTES, MAX_LABEL_BYTES, MAX_NAME_BYTES},
        Limits,
    },
    store::{ClusterStore, StoreConfig},
};
use telemetry_runtime::exposition::Format;
use telemetry_schema::{
    ClusterRecord, ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, PodInfo, PodPhase,
    PodUsage,
};

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

// A counting allocator; each block carries its SAFETY argument.
#[allow(unsafe_code)]
// SAFETY: every call forwards to the system allocator with the same
// arguments; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes and allocations now.
fn live() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    )
}

/// What one of `n` things costs: bytes, allocations (per thing).
#[derive(Debug, Clone, Copy)]
struct Cost {
    bytes: f64,
    allocations: f64,
}

impl Cost {
    fn between(before: (isize, isize), after: (isize, isize), n: usize) -> Self {
        Self {
            bytes: (after.0 - before.0) as f64 / n as f64,
            allocations: (after.1 - before.1) as f64 / n as f64,
        }
    }

    /// With the allocator's ~16 bytes per allocation.
    fn with_overhead(&self) -> f64 {
        self.bytes + 16.0 * self.allocations
    }
}

fn roomy() -> Limits {
    Limits {
        max_sample_series: usize::MAX,
        max_sample_bytes: usize::MAX,
        max_objects: usize::MAX,
        ..Limits::default()
    }
}

fn store(timeline: bool) -> ClusterStore {
    let mut store = ClusterStore::new(StoreConfig {
        limits: roomy(),
        ..StoreConfig::default()
    });
    if timeline {
        store.keep_timeline();
    }
    store.sender_connected("cluster-a", Instant::now());
    store
}

fn page_bytes(store: &ClusterStore) -> usize {
    let mut page = String::new();
    store.render_page(Format::Prometheus, &[], &mut page);
    page.len()
}

/// Applies `records` as one stream's deliveries of 1,000 records; returns
/// the cost per thing (`n` things) and the page bytes per thing.
fn measure(timeline: bool, n: usize, records: impl Iterator<Item = ClusterRecord>) -> (Cost, f64) {
    let mut store = store(timeline);
    let empty_page = page_bytes(&store);
    // Records are made and dropped inside the window: only what the store
    // keeps remains.
    let before = live();
    let mut seq = 1;
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let batch: Vec<ClusterRecord> = records.by_ref().take(1000).collect();
        let count = batch.len() as u64;
        let delivered = store.deliver_at("cluster-a", 1, seq, batch, Instant::now());
        assert!(delivered.refused.is_empty(), "{:?}", delivered.refused);
        seq += count;
    }
    let cost = Cost::between(before, live(), n);
    let page = (page_bytes(&store) - empty_page) as f64 / n as f64;
    drop(store);
    (cost, page)
}

fn synthetic(i: usize) -> ClusterRecord {
    let key = SeriesKey::new("telemetry_synthetic_value", [("series", i.to_string())]).unwrap();
    ClusterRecord::Sample(Sample::new(Arc::new(key), 1_700_000_000_000, i as f64))
}

fn typical_series(i: usize) -> ClusterRecord {
    let key = SeriesKey::new(
        "http_server_requests_seconds_count",
        [
            ("method", "GET".to_owned()),
            ("status", "200".to_owned()),
            ("route", format!("/api/v1/items/{}", i % 100)),
            (
                "instance",
                format!("10.0.{}.{}:8080", i / 250 % 250, i % 250),
            ),
            ("job", "shop-backend".to_owned()),
            ("pod", format!("shop-backend-7d9f8c6b5-{i:05}")),
        ],
    )
    .unwrap();
    ClusterRecord::Sample(Sample::new(Arc::new(key), 1_700_000_000_000, i as f64))
}

/// A pod of `containers` containers and its usage; `long`: every string
/// at the longest a record may keep.
fn pod(i: usize, containers: usize, long: bool) -> [ClusterRecord; 2] {
    let text = |s: String, max: usize| {
        if long {
            format!("{s:x<max$}")
        } else {
            s
        }
    };
    let names: Vec<String> = (0..containers)
        .map(|c| text(format!("container-{c}"), MAX_LABEL_BYTES))
        .collect();
    let namespace = text("shop".into(), MAX_LABEL_BYTES);
    let name = text(format!("shop-backend-7d9f8c6b5-{i:05}"), MAX_NAME_BYTES);
    let info = PodInfo {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: text(format!("0b6c7a9e-1f2d-4c3b-9a8e-{i:012}"), MAX_ID_BYTES),
        node: text(format!("node-{}", i % 50), MAX_NAME_BYTES),
        pod_ip: text(format!("10.1.{}.{}", i / 250 % 250, i % 250), MAX_ID_BYTES),
        phase: PodPhase::Running,
        created_by_kind: text("ReplicaSet".into(), MAX_LABEL_BYTES),
        created_by_name: text("shop-backend-7d9f8c6b5".into(), MAX_NAME_BYTES),
        containers: names
            .iter()
            .map(|n| ContainerRequests {
                name: n.clone(),
                cpu_cores: Some(0.25),
                memory_bytes: Some(256e6),
                cpu_limit_cores: Some(1.0),
                memory_limit_bytes: Some(512e6),
            })
            .collect(),
    };
    let usage = PodUsage {
        namespace,
        pod: name,
        timestamp_ms: 1_700_000_000_000,
        containers: names
            .iter()
            .map(|n| ContainerUsage {
                name: n.clone(),
                cpu_cores: 0.1,
                memory_bytes: 1e8,
            })
            .collect(),
    };
    [
        ClusterRecord::PodUpsert(info),
        ClusterRecord::PodUsage(usage),
    ]
}

fn hpa(i: usize) -> ClusterRecord {
    ClusterRecord::HpaUpsert(HpaInfo {
        namespace: "shop".into(),
        name: format!("shop-backend-{i:05}"),
        min_replicas: 2,
        max_replicas: 10,
        current_replicas: 3,
        desired_replicas: 4,
        targets: vec![HpaTarget {
            metric_name: "cpu".into(),
            target_type: "utilization".into(),
            value: 60.0,
        }],
    })
}

/// Interning cost per series of one connection.
fn interned(n: usize, record: fn(usize) -> ClusterRecord) -> (Cost, f64) {
    let mut encoder = BatchEncoder::new(u32::MAX);
    let mut body = Vec::new();
    let mut envelope = Vec::new();
    let mut charged = 0usize;
    for i in 0..n {
        let r = record(i);
        if let ClusterRecord::Sample(s) = &r {
            charged += telemetry_link::proto::batch::definition_cost(&s.series);
        }
        envelope.clear();
        encode_record(&r, &mut envelope).unwrap();
        encoder.push_record(&envelope, &mut body).unwrap();
    }
    let mut entries = Vec::new();
    let before = live();
    let mut decoder = BatchDecoder::with_limits(InternLimits {
        max_series: u32::MAX,
        max_definition_bytes: usize::MAX,
        ..InternLimits::new(u32::MAX)
    });
    decoder.decode(&body, n as u32, &mut entries).unwrap();
    drop(entries);
    let cost = Cost::between(before, live(), n);
    assert_eq!(decoder.interned(), n);
    (cost, charged as f64 / n as f64)
}

fn report(what: &str, cost: Cost, page: f64) {
    eprintln!(
        "{what:<44} {:>7.0} B  ({:>4.1} allocations, {:>7.0} B with allocator overhead)  page {:>6.0} B",
        cost.bytes,
        cost.allocations,
        cost.with_overhead(),
        page
    );
}

#[test]
fn state_costs_what_the_sizing_guide_says() {
    const N: usize = 20_000;
    let (series, series_page) = measure(false, N, (0..N).map(synthetic));
    report("sample series (synthetic)", series, series_page);
    let (typical, typical_page) = measure(false, N, (0..N).map(typical_series));
    report("sample series (6 labels, ~120 B)", typical, typical_page);
    let mut pods = Vec::new();
    for (containers, timeline) in [(1, false), (3, false), (1, true), (3, true)] {
        let records = (0..N).flat_map(|i| pod(i, containers, false));
        let (cost, page) = measure(timeline, N, records);
        let what = format!(
            "pod, {containers} container(s), usage{}",
            if timeline { ", remote write" } else { "" }
        );
        report(&what, cost, page);
        pods.push((containers, timeline, cost, page));
    }
    // An object unit at its worst: every string as long as allowed.
    let mut worst: (f64, f64) = (0.0, 0.0);
    for containers in [0, 1, 3] {
        let records = (0..N).flat_map(|i| pod(i, containers, true));
        let (cost, page) = measure(true, N, records);
        let what = format!("pod, {containers} long container(s), usage, remote write");
        report(&what, cost, page);
        let units = 1.0 + containers as f64;
        worst.0 = worst.0.max(cost.with_overhead() / units);
        worst.1 = worst.1.max(page / units);
    }
    eprintln!(
        "an object unit at its worst: {:.0} B, page {:.0} B",
        worst.0, worst.1
    );
    let (hpas, hpa_page) = measure(false, N, (0..N).map(hpa));
    report("HPA, 1 target", hpas, hpa_page);
    let (definition, charged) = interned(N, synthetic);
    report("interned definition (synthetic)", definition, 0.0);
    let (typical_definition, typical_charged) = interned(N, typical_series);
    report("interned definition (6 labels)", typical_definition, 0.0);
    eprintln!(
        "definition bytes charged: synthetic {charged:.0} B, 6 labels {typical_charged:.0} B"
    );

    // The ceilings docs/shared-service.md uses (with allocator overhead).
    let ceilings = [
        ("sample series (synthetic)", series.with_overhead(), 250.0),
        ("sample series (6 labels)", typical.with_overhead(), 650.0),
        ("synthetic page bytes per series", series_page, 80.0),
        ("6-label page bytes per series", typical_page, 220.0),
        ("HPA (2 units)", hpas.with_overhead(), 850.0),
        ("HPA page bytes (2 units)", hpa_page, 1100.0),
        (
            "interned synthetic definition",
            definition.with_overhead(),
            420.0,
        ),
        (
            "interned 6-label definition",
            typical_definition.with_overhead(),
            1100.0,
        ),
        ("object unit at its worst", worst.0, 4200.0),
        ("object unit's page bytes at its worst", worst.1, 3600.0),
    ];
    for (containers, timeline, cost, page) in &pods {
        let units = 1.0 + *containers as f64;
        let per_unit = cost.with_overhead() / units;
        let ceiling = if *timeline { 1400.0 } else { 750.0 };
        assert!(
            per_unit <= ceiling,
            "a pod of {containers} container(s) (timeline {timeline}) costs {per_unit:.0} B per unit, above {ceiling}"
        );
        assert!(
            page / units <= 1100.0,
            "a pod of {containers} container(s) writes {:.0} page bytes per unit",
            page / units
        );
    }
    for (what, got, ceiling) in ceilings {
        assert!(got <= ceiling, "{what}: {got:.0} B, above {ceiling}");
        assert!(got > 0.0, "{what}: nothing measured");
    }
}
