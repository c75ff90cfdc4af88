//! The operations endpoint of real processes, with the default limits:
//! `--web-config-file` (scrapes over https with the CA, basic auth, a
//! password change picked up from the file, the same flag on the sender),
//! slow clients (unfinished heads closed after the header timeout, the
//! connection cap, four scrapers that never read costing one shared page
//! while a real scrape still answers within a second), and an open-file
//! limit that idle HTTP clients cannot exhaust for the QUIC side.

#![allow(clippy::too_many_lines)] // a process test reads top to bottom as one scenario

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use telemetry_test_support::{
    binaries::{certs_init, receiver_command, receiver_tls, sender_command, sender_tls},
    http::{get, get_with, wait_for, Client},
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::scrape,
};

const LIMIT: Duration = Duration::from_secs(60);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A receiver on fresh loopback ports with `extra` flags, run by
/// `wrapper` (e.g. a shell that lowers a limit) when given.
fn receiver(
    certs: &Path,
    state: &Path,
    extra: &[&str],
    wrapper: Option<&str>,
) -> Result<(ChildProcess, SocketAddr, SocketAddr)> {
    let quic = addr(free_udp_port()?);
    let http = addr(free_tcp_port()?);
    let mut cmd = receiver_command(
        env!("CARGO_BIN_EXE_telemetry-receiver"),
        quic,
        http,
        &receiver_tls(certs),
        state,
    );
    cmd.args(extra);
    if let Some(script) = wrapper {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(script)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        cmd = wrapped;
    }
    Ok((ChildProcess::spawn("receiver", cmd)?, quic, http))
}

fn wait_healthy(http: SocketAddr, client: &Client) -> Result<()> {
    wait_for(LIMIT, "the endpoint", || {
        Ok((get_with(http, "/healthz", &[], client)?.status == 200).then_some(()))
    })
}

fn write_web_config(path: &Path, tls: Option<&Path>, password: &str) -> Result<()> {
    let hash = bcrypt::hash(password, 5)?;
    let mut text = String::new();
    if let Some(certs) = tls {
        let tls = receiver_tls(certs);
        text.push_str(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            tls.cert.display(),
            tls.key.display()
        ));
    }
    text.push_str(&format!("basic_auth_users:\n  prometheus: {hash}\n"));
    // Written whole, then renamed: the poller never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

#[test]
fn web_config_tls_basic_auth_and_reload() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["lab"])?;
    let web = dir.path().join("web.yml");
    write_web_config(&web, Some(&certs), "first secret")?;
    let (_rx, _quic, http) = receiver(
        &certs,
        &dir.path().join("state"),
        &["--web-config-file", web.to_str().context("path")?],
        None,
    )?;
    let https = Client::https(&receiver_tls(&certs).ca, "localhost")?;
    wait_healthy(http, &https)?;
    let first = https.clone().basic_auth("prometheus", "first secret");
    let second = https.clone().basic_auth("prometheus", "second secret");

    let anonymous = get_with(http, "/metrics", &[], &https)?;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic ")));
    assert_eq!(get_with(http, "/metrics", &[], &second)?.status, 401);
    let scraped = get_with(http, "/metrics", &[], &first)?;
    assert_eq!(scraped.status, 200);
    assert!(scraped.body.contains("telemetry_link_senders_connected 0"));
    assert_eq!(get_with(http, "/", &[], &first)?.status, 200);
    assert!(
        get(http, "/metrics", &[]).map_or(true, |r| r.status != 200),
        "plain HTTP on the TLS port"
    );

    write_web_config(&web, Some(&certs), "second secret")?;
    wait_for(LIMIT, "the new password", || {
        Ok((get_with(http, "/metrics", &[], &first)?.status == 401).then_some(()))
    })?;
    // Pages are shared for up to a second: the count shows on a later one.
    wait_for(LIMIT, "the reload counted", || {
        let after = get_with(http, "/metrics", &[], &second)?;
        ensure!(after.status == 200, "status {}", after.status);
        let reloads: Vec<&str> = after
            .body
            .lines()
            .filter(|l| l.starts_with("telemetry_endpoint_web_config_reloads_total"))
            .collect();
        Ok((reloads
            == [
                "telemetry_endpoint_web_config_reloads_total{result=\"error\"} 0",
                "telemetry_endpoint_web_config_reloads_total{result=\"ok\"} 1",
            ])
        .then_some(()))
    })?;

    // The sender takes the same flag.
    let quic = addr(free_udp_port()?);
    let tx_http = addr(free_tcp_port()?);
    let plain = dir.path().join("sender-web.yml");
    write_web_config(&plain, None, "sender secret")?;
    let mut cmd = sender_command(
        workspace_binary("telemetry-sender")?,
        quic,
        &sender_tls(&certs, "lab"),
        &dir.path().join("spool"),
        tx_http,
    );
    cmd.args(["--source", "simulated", "--web-config-file"])
        .arg(&plain);
    let _tx = ChildProcess::spawn("sender", cmd)?;
    wait_healthy(tx_http, &Client::default())?;
    assert_eq!(get(tx_http, "/metrics", &[])?.status, 401);
    let sender_auth = Client::default().basic_auth("prometheus", "sender secret");
    assert_eq!(get_with(tx_http, "/", &[], &sender_auth)?.status, 200);
    Ok(())
}

/// Opens a connection and sends `bytes` (maybe nothing).
fn open(http: SocketAddr, bytes: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect(http)?;
    s.write_all(bytes)?;
    Ok(s)
}

/// Shrinks `s`'s receive buffer, so that the kernel cannot absorb a page
/// the client does not read (loopback buffers grow to tens of MiB).
#[allow(unsafe_code)] // setsockopt, with its SAFETY argument
fn small_receive_buffer(s: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let bytes: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt(2) on a socket this function borrows, reading a
    // c_int that lives across the call; no memory is shared.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(())
}

/// How long until the server closes `s` (reading whatever it sends).
fn until_closed(mut s: TcpStream, limit: Duration) -> Result<Duration> {
    s.set_read_timeout(Some(limit))?;
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(started.elapsed())
            }
            Err(e) => return Err(e).context("the server did not close the connection"),
        }
    }
}

fn endpoint_counter(http: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    scrape(http)?
        .value(name, labels)
        .with_context(|| format!("no {name}"))
}

#[test]
fn slow_clients_are_bounded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["load-a", "load-b"])?;
    // Series budgets above the 60,000 each sender keeps.
    let budget = ["--budget-series", "100000"];
    let (rx, quic, http) = receiver(&certs, &dir.path().join("state"), &budget, None)?;
    wait_healthy(http, &Client::default())?;
    // A page larger than a socket's send buffer (4 MiB here): two clusters
    // of 60,000 synthetic series.
    let mut senders = Vec::new();
    for id in ["load-a", "load-b"] {
        let mut cmd = sender_command(
            workspace_binary("telemetry-sender")?,
            quic,
            &sender_tls(&certs, id),
            &dir.path().join(id),
            addr(free_tcp_port()?),
        );
        cmd.args([
            "--source",
            "synthetic",
            "--synthetic-series",
            "60000",
            "--synthetic-rate",
            "0",
            "--synthetic-total",
            "60000",
        ]);
        senders.push(ChildProcess::spawn(id, cmd)?);
    }
    let page = wait_for(Duration::from_secs(120), "120,000 series", || {
        let page = get(http, "/metrics", &[])?;
        Ok((page.body.matches("telemetry_synthetic_value{").count() >= 120_000).then_some(page))
    })?;
    let page_kib = page.body.len() as u64 / 1024;
    ensure!(page_kib > 6 * 1024, "page of {page_kib} KiB");
    let before = rx.rss_kib()?;

    // Four scrapers that never read, one client that never finishes its
    // head, and a scrape that reads.
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let stuck: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = TcpStream::connect(http)?;
            small_receive_buffer(&s)?;
            (&s).write_all(request)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let slow_head = open(http, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")?;
    std::thread::sleep(Duration::from_secs(2));
    let during = rx.rss_kib()?;
    let started = Instant::now();
    let real = get(http, "/metrics", &[])?;
    let answered = started.elapsed();
    assert_eq!(real.status, 200);
    assert!(
        answered < Duration::from_secs(1),
        "a real scrape took {answered:?}"
    );
    let growth = during.saturating_sub(before);
    println!(
        "page {page_kib} KiB; RSS before {before} KiB, with 4 non-reading scrapers {during} KiB (+{growth} KiB); a real scrape answered in {answered:?}"
    );
    // At most one more page (a fresh render) plus allocator slack, not a
    // copy per scraper.
    assert!(
        growth < page_kib + 16 * 1024,
        "RSS grew by {growth} KiB for a {page_kib} KiB page"
    );

    let head_closed = until_closed(slow_head, Duration::from_secs(30))?;
    assert!(
        head_closed > Duration::from_secs(5) && head_closed < Duration::from_secs(12),
        "an unfinished head was closed after {head_closed:?} (+2 s)"
    );
    wait_for(LIMIT, "the non-reading scrapers closed", || {
        let closed = endpoint_counter(
            http,
            "telemetry_endpoint_connections_closed_total",
            &[("reason", "write_timeout")],
        )?;
        Ok((closed >= 4.0).then_some(()))
    })?;
    drop(stuck);

    // The cap, 64 open connections: half-open ones make room for a scrape
    // (the oldest is closed)...
    let held: Vec<TcpStream> = (0..64)
        .map(|_| open(http, b"GET / HTTP/1.1\r\n"))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(http, "/healthz", &[])?.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    // ... connections that sent a request (kept alive) do not: the next
    // one is closed at once.
    let held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = open(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let _ = s.read(&mut [0u8; 256])?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let refused = until_closed(open(http, b"")?, Duration::from_secs(5))?;
    assert!(refused < Duration::from_secs(1), "{refused:?}");
    drop(held);
    wait_for(LIMIT, "the refusal counted", || {
        let refused = endpoint_counter(http, "telemetry_endpoint_connections_refused_total", &[])?;
        Ok((refused >= 1.0).then_some(()))
    })?;
    Ok(())
}

#[test]
fn idle_http_clients_cannot_take_the_file_descriptors_of_the_link() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["lab"])?;
    let (rx, quic, http) = receiver(
        &certs,
        &dir.path().join("state"),
        &[],
        Some("ulimit -n 128 && exec \"$0\" \"$@\""),
    )?;
    wait_healthy(http, &Client::default())?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", rx.pid().context("pid")?))?;
    ensure!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("128")),
        "the limit did not apply:\n{limits}"
    );
    // 140 idle connections, re-opened as the endpoint closes them.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                open.retain(|s| {
                    let mut byte = [0u8; 1];
                    match (&*s).read(&mut byte) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    }
                });
                while open.len() < 140 {
                    match TcpStream::connect(http) {
                        Ok(s) if s.set_nonblocking(true).is_ok() => open.push(s),
                        _ => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let tx_http = addr(free_tcp_port()?);
    let mut cmd = sender_command(
        workspace_binary("telemetry-sender")?,
        quic,
        &sender_tls(&certs, "lab"),
        &dir.path().join("spool"),
        tx_http,
    );
    cmd.args(["--source", "simulated"]);
    let _tx = ChildProcess::spawn("sender", cmd)?;
    let connected = wait_for(LIMIT, "the sender's link", || {
        let e = scrape(tx_http)?;
        Ok((e.value("telemetry_sender_acked_seq", &[]).unwrap_or(0.0) > 0.0).then_some(()))
    });
    stop.store(true, Ordering::SeqCst);
    let _ = attacker.join();
    connected.context("the receiver accepted no sender while HTTP clients held connections")?;
    // Connections beyond the cap were closed: refused, or closed to make
    // room for a newer one.
    wait_for(LIMIT, "connections beyond the cap counted", || {
        let refused = endpoint_counter(http, "telemetry_endpoint_connections_refused_total", &[])?;
        let made_room = endpoint_counter(
            http,
            "telemetry_endpoint_connections_closed_total",
            &[("reason", "header_timeout")],
        )?;
        Ok((refused + made_room > 0.0).then_some(()))
    })?;
    Ok(())
}
