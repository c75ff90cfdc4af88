//! The endpoint in process over loopback: routes, web config (basic auth,
//! TLS with client certificates, reload), and the resource bounds with
//! short limits. The binaries' process tests run the same with the default
//! limits.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use telemetry_test_support::{
    http::{get as http_get, get_with, Client},
    pki::TestPki,
};

use super::*;

/// A page of about `bytes` bytes, and a readiness switch.
struct Fixed {
    page: String,
    ready: AtomicBool,
}

impl Fixed {
    fn new(bytes: usize) -> Arc<Self> {
        let mut page = String::with_capacity(bytes + 64);
        page.push_str("# TYPE filler_value gauge\n");
        let mut i = 0u64;
        while page.len() < bytes {
            page.push_str(&format!("filler_value{{series=\"{i}\"}} {i}\n"));
            i += 1;
        }
        Arc::new(Self {
            page,
            ready: AtomicBool::new(false),
        })
    }
}

impl Exporter for Fixed {
    fn render(&self, format: Format, out: &mut String) {
        out.clear();
        out.push_str(&self.page);
        crate::exposition::finish(out, format);
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("first list not done".into())
        }
    }
}

async fn start(
    exporter: Arc<dyn Exporter>,
    web_config: Option<&Path>,
    limits: Limits,
) -> anyhow::Result<(Endpoint, prometheus::Registry)> {
    telemetry_test_support::init();
    let registry = prometheus::Registry::new();
    let settings = EndpointSettings {
        listen: ([127, 0, 0, 1], 0).into(),
        web_config_file: web_config.map(Path::to_path_buf),
        limits,
    };
    Ok((
        Endpoint::start(&settings, exporter, &registry).await?,
        registry,
    ))
}

/// Runs blocking client code off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client task")
}

fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let gathered = registry.gather();
    crate::status::Families(&gathered)
        .value(name, labels)
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_status_metrics_health_and_readiness() -> anyhow::Result<()> {
    let exporter = Fixed::new(100);
    let (endpoint, _) = start(exporter.clone(), None, Limits::default()).await?;
    let addr = endpoint.local_addr();
    assert_eq!(endpoint.url("/"), format!("http://{addr}/"));
    let (plain, om, health, not_ready, status, missing) = blocking(move || {
        (
            http_get(addr, "/metrics", &[]),
            http_get(
                addr,
                "/metrics",
                &[("Accept", "application/openmetrics-text;version=1.0.0")],
            ),
            http_get(addr, "/healthz", &[]),
            http_get(addr, "/readyz", &[]),
            http_get(addr, "/", &[]),
            http_get(addr, "/nothing", &[]),
        )
    })
    .await;
    let plain = plain?;
    assert_eq!(plain.status, 200);
    assert!(plain
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain; version=0.0.4"));
    assert!(plain.body.contains("filler_value{series=\"0\"} 0\n"));
    let om = om?;
    assert!(om
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"));
    assert_eq!(health?.status, 200);
    let not_ready = not_ready?;
    assert_eq!(not_ready.status, 503);
    assert!(not_ready.body.contains("first list not done"));
    let status = status?;
    assert_eq!(
        status.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(status.body.contains("href=\"/metrics\""), "{}", status.body);
    assert!(status
        .header("content-security-policy")
        .is_some_and(|p| p.contains("default-src 'none'")));
    assert_eq!(missing?.status, 404);
    exporter.ready.store(true, Ordering::SeqCst);
    let now_ready = blocking(move || http_get(addr, "/readyz", &[])).await?;
    assert_eq!(now_ready.status, 200);
    endpoint.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_bind_address_is_a_clear_error() {
    let taken = bind(([127, 0, 0, 1], 0).into()).await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = bind(addr).await.expect_err("port in use");
    assert!(err.to_string().contains(&addr.to_string()));
}

fn write_web_config(path: &Path, password: &str, extra: &str) -> anyhow::Result<()> {
    let hash = bcrypt::hash(password, 4)?;
    std::fs::write(
        path,
        format!("basic_auth_users:\n  prometheus: {hash}\n{extra}"),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_guards_all_but_healthz_and_follows_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("web.yml");
    write_web_config(
        &file,
        "first",
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )?;
    let limits = Limits {
        web_config_poll: Duration::from_millis(100),
        ..Limits::default()
    };
    let exporter = Fixed::new(100);
    exporter.ready.store(true, Ordering::SeqCst);
    let (endpoint, registry) = start(exporter, Some(&file), limits).await?;
    assert_eq!(endpoint.protection(), "plain HTTP, basic auth");
    let addr = endpoint.local_addr();
    let status_of = move |path: &'static str, client: Client| async move {
        blocking(move || get_with(addr, path, &[], &client).map(|r| r.status)).await
    };
    let none = blocking(move || http_get(addr, "/metrics", &[])).await?;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Basic realm=\"telemetry\", charset=\"UTF-8\"")
    );
    assert_eq!(none.header("x-frame-options"), Some("deny"));
    let wrong = Client::default().basic_auth("prometheus", "second");
    let first = Client::default().basic_auth("prometheus", "first");
    for path in ["/metrics", "/", "/readyz"] {
        assert_eq!(status_of(path, wrong.clone()).await?, 401, "{path}");
        assert_eq!(status_of(path, first.clone()).await?, 200, "{path}");
    }
    assert_eq!(status_of("/healthz", Client::default()).await?, 200);
    assert_eq!(
        counter(
            &registry,
            "telemetry_endpoint_requests_unauthorized_total",
            &[]
        ),
        4.0
    );

    // A new password replaces the old one once the file changes.
    write_web_config(&file, "second", "")?;
    let started = Instant::now();
    while status_of("/metrics", first.clone()).await? != 401 {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of("/metrics", wrong.clone()).await?, 200);
    assert_eq!(
        counter(
            &registry,
            "telemetry_endpoint_web_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    // A broken file keeps the config in force, and is counted.
    std::fs::write(&file, "basic_auth_users:\n  prometheus: not-bcrypt\n")?;
    let started = Instant::now();
    while counter(
        &registry,
        "telemetry_endpoint_web_config_reloads_total",
        &[("result", "error")],
    ) < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failure not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of("/metrics", wrong).await?, 200);
    assert_eq!(status_of("/metrics", first).await?, 401);
    endpoint.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_verified_client_certificates() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let server = pki.receiver()?;
    let client = pki.sender("scraper")?;
    let file = pki.dir().join("web.yml");
    std::fs::write(
        &file,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            server.cert.display(),
            server.key.display(),
            pki.ca_path().display()
        ),
    )?;
    let exporter = Fixed::new(100);
    let (endpoint, registry) = start(exporter, Some(&file), Limits::default()).await?;
    let addr = endpoint.local_addr();
    assert!(endpoint.url("/metrics").starts_with("https://"));
    let ca = pki.ca_path();
    let (with_cert, without_cert, plain) = blocking(move || {
        let with = Client::https_with_identity(&ca, "localhost", Some((&client.cert, &client.key)))
            .and_then(|c| get_with(addr, "/metrics", &[], &c));
        let without =
            Client::https(&ca, "localhost").and_then(|c| get_with(addr, "/metrics", &[], &c));
        (with, without, http_get(addr, "/metrics", &[]))
    })
    .await;
    let with_cert = with_cert?;
    assert_eq!(with_cert.status, 200);
    assert!(with_cert.body.contains("filler_value"));
    assert!(
        without_cert.is_err(),
        "no client certificate: {without_cert:?}"
    );
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status != 200));
    let started = Instant::now();
    while counter(
        &registry,
        "telemetry_endpoint_connections_closed_total",
        &[("reason", "tls_handshake")],
    ) < 2.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "handshake failures not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    endpoint.shutdown().await;
    Ok(())
}

/// Sends half a request head and waits; returns how long until the server
/// closed the connection.
fn time_until_closed(addr: SocketAddr, prefix: &[u8], limit: Duration) -> anyhow::Result<Duration> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(prefix)?;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(started.elapsed())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn slow_heads_idle_connections_and_the_cap() -> anyhow::Result<()> {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 3,
        ..Limits::default()
    };
    let (endpoint, registry) = start(Fixed::new(100), None, limits).await?;
    let addr = endpoint.local_addr();
    let (slow, idle) = blocking(move || {
        (
            time_until_closed(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                Duration::from_secs(5),
            ),
            time_until_closed(addr, b"", Duration::from_secs(5)),
        )
    })
    .await;
    for waited in [slow?, idle?] {
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    assert!(
        counter(
            &registry,
            "telemetry_endpoint_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 2.0
    );

    // Three connections that have not sent a request fill the cap; a
    // scrape takes the place of the oldest, and is answered.
    let before = counter(
        &registry,
        "telemetry_endpoint_connections_closed_total",
        &[("reason", "header_timeout")],
    );
    let half_open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"GET /metrics HTTP/1.1\r\n")?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let scrape = blocking(move || http_get(addr, "/healthz", &[])).await?;
    assert_eq!(scrape.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        counter(
            &registry,
            "telemetry_endpoint_connections_closed_total",
            &[("reason", "header_timeout")]
        ),
        before + 1.0,
        "the oldest half-open connection made room"
    );
    drop(half_open);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Three connections that have sent a request (kept alive) fill the
    // cap; the fourth is closed at once.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()?;
    let refused = blocking(move || time_until_closed(addr, b"", Duration::from_secs(5))).await?;
    assert!(refused < Duration::from_millis(300), "{refused:?}");
    assert_eq!(
        counter(
            &registry,
            "telemetry_endpoint_connections_refused_total",
            &[]
        ),
        1.0
    );
    drop(held);
    // Once they are gone, scrapes are served again.
    let started = Instant::now();
    loop {
        let r = blocking(move || http_get(addr, "/healthz", &[])).await;
        if r.is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    endpoint.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_closed_and_scrapes_still_answer() -> anyhow::Result<()> {
    let limits = Limits {
        write_timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    // Larger than what loopback socket buffers absorb.
    let (endpoint, registry) = start(Fixed::new(24 << 20), None, limits).await?;
    let addr = endpoint.local_addr();
    let stuck: Vec<TcpStream> = (0..4)
        .map(|_| -> anyhow::Result<TcpStream> {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            Ok(s)
        })
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let scrape = blocking(move || http_get(addr, "/healthz", &[])).await?;
    assert_eq!(scrape.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    while counter(
        &registry,
        "telemetry_endpoint_connections_closed_total",
        &[("reason", "write_timeout")],
    ) < 4.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stuck clients not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stuck);
    endpoint.shutdown().await;
    Ok(())
}
