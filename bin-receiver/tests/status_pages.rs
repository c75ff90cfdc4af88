//! The status pages of a real receiver and a real sender (simulated
//! cluster, certificates from `telemetry-certs`), opened in a real browser
//! (headless Chromium): the receiver's page lists the sender's cluster as
//! connected with an applied sequence above 0, the sender's page shows its
//! link and spool numbers, and both screenshots are real pictures, kept
//! under `target/tmp/status-pages/` for a person to look at. Skipped
//! without Chromium unless `CI` is set.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use telemetry_test_support::{
    binaries::{certs_init, receiver_command, receiver_tls, sender_command, sender_tls},
    browser::{png_size, Chromium},
    http::{get, wait_for},
    process::{free_tcp_port, free_udp_port, workspace_binary, ChildProcess},
    prom::scrape,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The cells of the table row whose first cell is `first`, as text.
fn row(dom: &str, first: &str) -> Option<Vec<String>> {
    let start = dom.find(&format!("<td>{first}</td>"))?;
    let end = start + dom[start..].find("</tr>")?;
    Some(
        dom[start..end]
            .split("</td>")
            .filter_map(|cell| cell.rsplit_once('>').map(|(_, text)| text.to_owned()))
            .collect(),
    )
}

/// The text of the fact card labelled `label`.
fn fact(dom: &str, label: &str) -> Option<String> {
    let at = dom.find(&format!("<dt>{label}</dt>"))?;
    let rest = &dom[at..];
    let value_start = rest.find("<dd")?;
    let open_end = value_start + rest[value_start..].find('>')? + 1;
    let close = open_end + rest[open_end..].find("</dd>")?;
    Some(rest[open_end..close].to_owned())
}

fn number(text: &str) -> Option<u64> {
    text.chars()
        .filter(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

fn screenshot(browser: &Chromium, url: &str, name: &str) -> Result<PathBuf> {
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("status-pages")
        .join(name);
    browser.screenshot(url, &file, 1280, 900)?;
    let png = std::fs::read(&file)?;
    assert_eq!(png_size(&png)?, (1280, 900), "{}", file.display());
    // A blank page of this size compresses to a few KiB; text and tables
    // make tens of KiB.
    assert!(
        png.len() > 20_000,
        "{} is only {} bytes",
        file.display(),
        png.len()
    );
    println!("screenshot: {}", file.display());
    Ok(file)
}

#[test]
fn status_pages_in_a_real_browser() -> Result<()> {
    let Some(browser) = Chromium::find()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs_init(&certs, &["lab"])?;
    let quic: SocketAddr = ([127, 0, 0, 1], free_udp_port()?).into();
    let rx_http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let tx_http: SocketAddr = ([127, 0, 0, 1], free_tcp_port()?).into();
    let _receiver = ChildProcess::spawn(
        "receiver",
        receiver_command(
            env!("CARGO_BIN_EXE_telemetry-receiver"),
            quic,
            rx_http,
            &receiver_tls(&certs),
            &dir.path().join("state"),
        ),
    )?;
    let mut sender_cmd = sender_command(
        workspace_binary("telemetry-sender")?,
        quic,
        &sender_tls(&certs, "lab"),
        &dir.path().join("spool"),
        tx_http,
    );
    sender_cmd.args(["--source", "simulated"]);
    let _sender = ChildProcess::spawn("sender", sender_cmd)?;
    wait_for(LIMIT, "records from lab applied", || {
        let e = scrape(rx_http)?;
        Ok(e.value("telemetry_link_applied_seq", &[("sender", "lab")])
            .filter(|seq| *seq > 0.0))
    })?;
    wait_for(LIMIT, "the sender's page", || {
        Ok((get(tx_http, "/", &[])?.status == 200).then_some(()))
    })?;

    let receiver_url = format!("http://{rx_http}/");
    let dom = browser.dump_dom(&receiver_url)?;
    let cells = row(&dom, "lab").with_context(|| format!("no row for lab:\n{dom}"))?;
    assert_eq!(
        cells.get(1).map(String::as_str),
        Some("connected"),
        "{cells:?}"
    );
    let applied = cells.get(3).and_then(|c| number(c)).unwrap_or(0);
    assert!(applied > 0, "applied sequence: {cells:?}");
    let received = cells.get(4).and_then(|c| number(c)).unwrap_or(0);
    assert!(received > 0, "records received: {cells:?}");
    assert!(
        cells.get(8).is_some_and(|c| c.contains(" (in ")),
        "the sender certificate's expiry: {cells:?}"
    );
    assert_eq!(fact(&dom, "Senders connected").as_deref(), Some("1 of 1"));
    assert!(fact(&dom, "Certificate expires").is_some_and(|c| c.contains(" (in ")));

    let sender_url = format!("http://{tx_http}/");
    let dom = browser.dump_dom(&sender_url)?;
    let link = fact(&dom, "Link").with_context(|| format!("no link fact:\n{dom}"))?;
    assert_eq!(link, format!("connected to {quic}"));
    let on_disk = fact(&dom, "On disk").context("spool use")?;
    assert!(on_disk.contains(" of 1.0 GiB ("), "{on_disk}");
    let last_seq = fact(&dom, "Last sequence").and_then(|v| number(&v));
    assert!(last_seq.is_some_and(|s| s > 0), "{last_seq:?}");
    assert!(fact(&dom, "Acknowledged sequence").is_some());
    assert!(fact(&dom, "Source").is_some_and(|s| s.contains("simulated: ready")));

    screenshot(&browser, &receiver_url, "receiver.png")?;
    screenshot(&browser, &sender_url, "sender.png")?;
    Ok(())
}
