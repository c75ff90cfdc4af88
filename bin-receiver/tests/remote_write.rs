//! The remote-write forwarder against a scripted HTTP endpoint: the request
//! is a valid remote-write 1.0 request (headers, snappy, protobuf, samples
//! in order per series); 503 and 429 are retried until accepted, 400 is not
//! retried and counts as failed — only for the sender whose samples the
//! endpoint refuses, the other senders' samples of the same request still
//! arrive; series the interpretation refuses (bad names) never reach the
//! endpoint; what an endpoint has not accepted survives a restart of the
//! forwarder. And as a process: secrets in a remote-write URL or header
//! appear nowhere — not in the log, not in /metrics, not in the state
//! directory's paths.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use telemetry_link::{Sample, SeriesKey};
use telemetry_receiver::remote_write::{wire::WriteRequest, RemoteWrite, RemoteWriteConfig};
use telemetry_schema::ClusterRecord;
use telemetry_test_support::link::{eventually, metric};

const LIMIT: Duration = Duration::from_secs(30);

/// One request as the endpoint saw it, and its answer.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
}

impl Seen {
    fn request(&self) -> WriteRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&self.body)
            .unwrap();
        WriteRequest::decode(raw.as_slice()).unwrap()
    }
}

/// An HTTP/1.1 endpoint on `bind` answering the `n`th request (from 0)
/// with `answer(n, body)`, recording every request.
fn serve(
    bind: SocketAddr,
    answer: impl Fn(usize, &[u8]) -> u16 + Send + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind(bind).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            // Keep-alive: several requests per connection.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut headers = Vec::new();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).expect("header");
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        if k == "content-length" {
                            length = v.parse().expect("length");
                        }
                        headers.push((k, v));
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                let status = answer(n, &body);
                n += 1;
                log.lock().unwrap().push(Seen {
                    headers,
                    body,
                    status,
                });
                let reason = match status {
                    204 => "No Content",
                    400 => "Bad Request",
                    429 => "Too Many Requests",
                    _ => "Service Unavailable",
                };
                let text = if status == 400 {
                    "out of order sample"
                } else {
                    ""
                };
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                if stream.write_all(response.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (addr, seen)
}

/// An endpoint answering with the scripted statuses (the last one repeats).
fn endpoint(bind: SocketAddr, script: Vec<u16>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    serve(bind, move |n, _| script[n.min(script.len() - 1)])
}

fn samples(n: usize) -> Vec<ClusterRecord> {
    (0..n)
        .map(|i| {
            let key = SeriesKey::new("job_value", [("series", (i % 2).to_string())]).unwrap();
            ClusterRecord::Sample(Sample::new(Arc::new(key), 1_000 + i as i64, i as f64))
        })
        .collect()
}

fn config(addr: SocketAddr, dir: &std::path::Path) -> RemoteWriteConfig {
    let mut cfg = RemoteWriteConfig::new(
        vec![format!("http://{addr}/api/v1/write")],
        dir.to_path_buf(),
    );
    cfg.timeout = Duration::from_secs(5);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_and_429_and_sends_a_valid_request() {
    telemetry_test_support::init();
    let (addr, seen) = endpoint(any_port(), vec![503, 429, 204]);
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let mut cfg = config(addr, dir.path());
    cfg.headers = vec!["X-Scope-OrgID: tenant-1".into()];
    let rw = RemoteWrite::start(cfg, &registry).unwrap();
    rw.forward("lab", 1, 1, &samples(10), 0).await.unwrap();
    let endpoint = format!("http://{addr}/api/v1/write");
    let m = |name: &str| metric(&registry, name, &[("endpoint", &endpoint)]);
    eventually(LIMIT, "the samples accepted", || {
        m("telemetry_remote_write_samples_sent_total") == 10.0
    })
    .await
    .unwrap();
    assert_eq!(
        m("telemetry_remote_write_samples_retried_total"),
        20.0,
        "two retries of 10"
    );
    assert_eq!(m("telemetry_remote_write_samples_failed_total"), 0.0);
    assert_eq!(m("telemetry_remote_write_samples_pending"), 0.0);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let header = |s: &Seen, k: &str| {
        s.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(&seen[2], "content-encoding").as_deref(),
        Some("snappy")
    );
    assert_eq!(
        header(&seen[2], "x-scope-orgid").as_deref(),
        Some("tenant-1")
    );
    assert_eq!(
        header(&seen[2], "content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(
        header(&seen[2], "x-prometheus-remote-write-version").as_deref(),
        Some("0.1.0")
    );
    assert!(header(&seen[2], "user-agent").is_some_and(|u| u.starts_with("telemetry-receiver/")));
    assert_eq!(seen[0].body, seen[2].body, "a retry sends the same request");
    let req = seen[2].request();
    assert_eq!(req.timeseries.len(), 2);
    for ts in &req.timeseries {
        let names: Vec<(&str, &str)> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(names[0], ("__name__", "job_value"));
        assert_eq!(names[1], ("cluster", "lab"));
        assert_eq!(ts.samples.len(), 5);
        assert!(ts
            .samples
            .windows(2)
            .all(|w| w[0].timestamp < w[1].timestamp));
    }
    rw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_not_retried_and_counts_as_failed() {
    telemetry_test_support::init();
    let (addr, seen) = endpoint(any_port(), vec![400, 204]);
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let rw = RemoteWrite::start(config(addr, dir.path()), &registry).unwrap();
    rw.forward("lab", 1, 1, &samples(4), 0).await.unwrap();
    let endpoint = format!("http://{addr}/api/v1/write");
    let m = |name: &str| metric(&registry, name, &[("endpoint", &endpoint)]);
    eventually(LIMIT, "the refusal counted", || {
        m("telemetry_remote_write_samples_failed_total") == 4.0
    })
    .await
    .unwrap();
    rw.forward("lab", 1, 5, &samples(3), 0).await.unwrap();
    eventually(LIMIT, "the next batch accepted", || {
        m("telemetry_remote_write_samples_sent_total") == 3.0
    })
    .await
    .unwrap();
    assert_eq!(m("telemetry_remote_write_samples_retried_total"), 0.0);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the refused request was not sent again"
    );
    rw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_samples_survive_a_restart_and_a_redelivery_is_not_queued_twice() {
    telemetry_test_support::init();
    // Nothing listens yet: every attempt fails and the samples stay queued.
    let port: SocketAddr = (
        [127, 0, 0, 1],
        telemetry_test_support::process::free_tcp_port().unwrap(),
    )
        .into();
    let dir = tempfile::tempdir().unwrap();
    {
        let registry = prometheus::Registry::new();
        let rw = RemoteWrite::start(config(port, dir.path()), &registry).unwrap();
        rw.forward("lab", 1, 1, &samples(6), 0).await.unwrap();
        assert_eq!(rw.pending_samples(), 6);
        rw.shutdown(Duration::from_millis(100)).await;
    }
    // The endpoint comes up on that port; a new forwarder (a restarted
    // receiver) finds the queue; the link hands records 1..=6 over again.
    let (addr, seen) = endpoint(port, vec![204]);
    let registry = prometheus::Registry::new();
    let rw = RemoteWrite::start(config(addr, dir.path()), &registry).unwrap();
    rw.forward("lab", 1, 1, &samples(6), 0).await.unwrap();
    let endpoint = format!("http://{addr}/api/v1/write");
    let m = |name: &str| metric(&registry, name, &[("endpoint", &endpoint)]);
    eventually(LIMIT, "the queued samples sent", || {
        m("telemetry_remote_write_samples_sent_total") == 6.0
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        m("telemetry_remote_write_samples_sent_total"),
        6.0,
        "sent once, not twice"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    rw.shutdown(Duration::from_secs(1)).await;
}

fn any_port() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

fn sample(name: &str, labels: &[(&str, &str)], t: i64) -> ClusterRecord {
    let key = SeriesKey::new(name, labels.iter().copied()).unwrap();
    ClusterRecord::Sample(Sample::new(Arc::new(key), t, 1.0))
}

/// The `cluster` label of every series of a request.
fn clusters(req: &WriteRequest) -> Vec<String> {
    req.timeseries
        .iter()
        .flat_map(|ts| ts.labels.iter().filter(|l| l.name == "cluster"))
        .map(|l| l.value.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_refused_samples_do_not_cost_another_sender_its_samples() {
    telemetry_test_support::init();
    // Both senders' samples are queued while the endpoint is down, so the
    // first request mixes them.
    let port: SocketAddr = (
        [127, 0, 0, 1],
        telemetry_test_support::process::free_tcp_port().unwrap(),
    )
        .into();
    let dir = tempfile::tempdir().unwrap();
    let mut a_records = samples(3);
    a_records.push(sample("poison_marker", &[], 2_000));
    {
        let registry = prometheus::Registry::new();
        let rw = RemoteWrite::start(config(port, dir.path()), &registry).unwrap();
        rw.forward("a", 1, 1, &a_records, 0).await.unwrap();
        rw.forward("b", 1, 1, &samples(6), 0).await.unwrap();
        assert_eq!(rw.pending_samples(), 10);
        rw.shutdown(Duration::from_millis(100)).await;
    }
    // The endpoint refuses every request holding sender a's marker series.
    let (addr, seen) = serve(port, |_, body| {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        let poisoned = req.timeseries.iter().any(|ts| {
            ts.labels
                .iter()
                .any(|l| l.name == "__name__" && l.value == "poison_marker")
        });
        if poisoned {
            400
        } else {
            204
        }
    });
    let registry = prometheus::Registry::new();
    let rw = RemoteWrite::start(config(addr, dir.path()), &registry).unwrap();
    let endpoint = format!("http://{addr}/api/v1/write");
    let m = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("endpoint", endpoint.as_str())];
        all.extend_from_slice(labels);
        metric(&registry, name, &all)
    };
    eventually(LIMIT, "sender b's samples accepted", || {
        m("telemetry_remote_write_samples_sent_total", &[]) == 6.0
    })
    .await
    .unwrap();
    assert_eq!(
        m(
            "telemetry_remote_write_samples_failed_total",
            &[("reason", "refused")]
        ),
        4.0,
        "sender a's samples, refused when sent alone"
    );
    assert_eq!(m("telemetry_remote_write_samples_pending", &[]), 0.0);
    let seen = seen.lock().unwrap().clone();
    let statuses: Vec<(u16, Vec<String>)> = seen
        .iter()
        .map(|s| {
            let mut c = clusters(&s.request());
            c.sort();
            c.dedup();
            (s.status, c)
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (400, vec!["a".to_owned(), "b".to_owned()]),
            (400, vec!["a".to_owned()]),
            (204, vec!["b".to_owned()]),
        ]
    );
    let b_samples: usize = seen[2]
        .request()
        .timeseries
        .iter()
        .map(|ts| ts.samples.len())
        .sum();
    assert_eq!(b_samples, 6, "every sample of sender b arrived");
    rw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_with_invalid_names_never_reach_the_endpoint() {
    telemetry_test_support::init();
    // An empty name cannot even be a series key.
    assert!(SeriesKey::new("", [("a", "b")]).is_err());
    let (addr, seen) = endpoint(any_port(), vec![204]);
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let rw = RemoteWrite::start(config(addr, dir.path()), &registry).unwrap();
    let records = vec![
        sample("bad-name!", &[("x", "1")], 1_000),
        sample("dup_name", &[("__name__", "other_name")], 1_000),
        sample("bad_label", &[("bad-label", "1")], 1_000),
        sample("ok_metric", &[("x", "1")], 1_000),
    ];
    rw.forward("lab", 1, 1, &records, 0).await.unwrap();
    let endpoint = format!("http://{addr}/api/v1/write");
    eventually(LIMIT, "the valid sample accepted", || {
        metric(
            &registry,
            "telemetry_remote_write_samples_sent_total",
            &[("endpoint", &endpoint)],
        ) >= 1.0
    })
    .await
    .unwrap();
    rw.shutdown(Duration::from_secs(1)).await;
    let seen = seen.lock().unwrap().clone();
    let mut names = Vec::new();
    for s in &seen {
        for ts in s.request().timeseries {
            let name: Vec<&str> = ts
                .labels
                .iter()
                .filter(|l| l.name == "__name__")
                .map(|l| l.value.as_str())
                .collect();
            assert_eq!(name.len(), 1, "exactly one __name__: {:?}", ts.labels);
            assert!(
                ts.labels.iter().all(|l| !l.name.contains('-')),
                "{:?}",
                ts.labels
            );
            names.push(name[0].to_owned());
        }
    }
    assert_eq!(names, vec!["ok_metric".to_owned()]);
}

/// Every path under `dir`, as text.
fn paths_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

/// The receiver as a process (its demo sender provides samples to forward)
/// with secrets in a remote-write URL and header.
#[test]
fn secrets_of_remote_write_settings_appear_nowhere() {
    use telemetry_test_support::{
        http::{get, wait_for},
        process::{free_tcp_port, free_udp_port, ChildProcess},
    };
    let secrets = ["SECRET", "u:p@"];
    let state = tempfile::tempdir().unwrap();
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port().unwrap()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port().unwrap()).into();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-receiver"));
    cmd.arg("--demo")
        .args(["--listen", &quic.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "--remote-write",
            "http://u:p@127.0.0.1:1/api/v1/write?api_key=SECRET",
            "--remote-write-header",
            "Authorization: Bearer SECRET2",
        ])
        .env("RUST_LOG", "debug");
    let mut receiver = ChildProcess::spawn("receiver", cmd).unwrap();
    // Samples are forwarded, and the endpoint (nothing listens) refuses
    // the connection: the retries are logged.
    let endpoint = r#"endpoint="http://127.0.0.1:1/api/v1/write""#;
    let exposition = wait_for(Duration::from_secs(60), "requests retried", || {
        let text = get(metrics, "/metrics", &[])?.body;
        let retried = text.lines().any(|l| {
            l.starts_with("telemetry_remote_write_samples_retried_total")
                && l.contains(endpoint)
                && !l.ends_with(" 0")
        });
        Ok(retried.then_some(text))
    })
    .unwrap();
    receiver.terminate(Duration::from_secs(20)).unwrap();
    let log = receiver.output();
    assert!(log.contains("remote write failed; retrying"), "{log}");
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!exposition.contains(secret), "{secret} in /metrics");
        for path in paths_under(state.path()) {
            assert!(!path.contains(secret), "{secret} in {path}");
        }
    }

    // A header without a colon: a startup error that does not echo it.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_telemetry-receiver"));
    cmd.arg("--demo")
        .args(["--remote-write", "http://127.0.0.1:1/api/v1/write"])
        .args(["--remote-write-header", "Authorization Bearer SECRET2"]);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(text.contains("remote-write header #1"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}
