//! A minimal sender: numbers 1..=TOTAL over the link, each record's value
//! equal to its sequence number. Restartable: it continues after the last
//! number its spool holds.
//!
//! ```text
//! cargo run --example send -- --ca ca.pem --cert sender-a.pem --key sender-a.key \
//!     --receiver 127.0.0.1:4433 --spool /tmp/spool --total 100000
//! ```

use std::time::Duration;

use anyhow::{bail, Context, Result};
use telemetry_link::{Sender, SenderConfig, TlsFiles};

struct Args {
    tls: TlsFiles,
    receivers: Vec<String>,
    spool: String,
    total: u64,
    batch: u64,
    pause: Duration,
}

fn parse() -> Result<Args> {
    let mut a = std::env::args().skip(1);
    let (mut ca, mut cert, mut key, mut spool) = (None, None, None, None);
    let (mut receivers, mut total, mut batch, mut pause) = (Vec::new(), 1000u64, 100u64, 0u64);
    while let Some(flag) = a.next() {
        let mut val = || a.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ca" => ca = Some(val()?),
            "--cert" => cert = Some(val()?),
            "--key" => key = Some(val()?),
            "--receiver" => receivers.push(val()?),
            "--spool" => spool = Some(val()?),
            "--total" => total = val()?.parse()?,
            "--batch" => batch = val()?.parse()?,
            "--pause-ms" => pause = val()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        tls: TlsFiles::new(
            ca.context("--ca")?,
            cert.context("--cert")?,
            key.context("--key")?,
        ),
        receivers,
        spool: spool.context("--spool")?,
        total,
        batch: batch.max(1),
        pause: Duration::from_millis(pause),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    telemetry_link::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = parse()?;
    let registry = prometheus::Registry::new();
    let cfg = SenderConfig::new(args.receivers, args.tls, &args.spool);
    let (sender, recovery) = Sender::<u64>::start(cfg, &registry).await?;
    if !recovery.is_clean() {
        eprintln!("spool recovered: {recovery:?}");
    }
    let mut next = sender.stats().last_seq + 1;
    while next <= args.total {
        let end = (next + args.batch - 1).min(args.total);
        let values: Vec<u64> = (next..=end).collect();
        let appended = sender.send_batch(&values).await?;
        // The value of every record is its sequence number.
        if appended.first_seq != next {
            bail!(
                "spool assigned {} where {next} was expected",
                appended.first_seq
            );
        }
        next = end + 1;
        if !args.pause.is_zero() {
            tokio::time::sleep(args.pause).await;
        }
    }
    let report = sender.shutdown(Duration::from_secs(30)).await;
    println!(
        "sent up to {}; drained: {}; unacked: {}",
        args.total, report.drained, report.unacked
    );
    Ok(())
}
