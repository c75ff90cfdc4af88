//! The remote-write forwarder against a scripted HTTP endpoint: the request
//! is a valid remote-write 1.0 request (headers, snappy, protobuf, samples
//! in order per series); 503 and 429 are retried until accepted, 400 is not
//! retried and counts as failed; what an endpoint has not accepted survives
//! a restart of the forwarder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use telemetry_link::{Sample, SeriesKey};
use telemetry_receiver::remote_write::{wire::WriteRequest, RemoteWrite, RemoteWriteConfig};
use telemetry_schema::ClusterRecord;
use telemetry_test_support::link::{eventually, metric};

const LIMIT: Duration = Duration::from_secs(30);

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP/1.1 endpoint on `bind` answering requests with the scripted
/// statuses (the last one repeats), recording every request.
fn endpoint(bind: SocketAddr, script: Vec<u16>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
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
                log.lock().unwrap().push(Seen { headers, body });
                let status = script[n.min(script.len() - 1)];
                n += 1;
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
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&seen[2].body)
        .unwrap();
    let req = WriteRequest::decode(raw.as_slice()).unwrap();
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
