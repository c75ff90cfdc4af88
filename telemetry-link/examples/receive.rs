//! A minimal receiver that prints what arrives.
//!
//! ```text
//! cargo run --example receive -- --ca ca.pem --cert receiver.pem --key receiver.key \
//!     --listen 127.0.0.1:4433 --state /tmp/state
//! ```

use std::{net::SocketAddr, sync::Arc};

use anyhow::{bail, Context, Result};
use telemetry_link::{
    Applied, Delivery, Handler, HandlerError, Receiver, ReceiverConfig, TlsFiles,
};

struct Print;

impl Handler<u64> for Print {
    async fn handle(&self, d: Delivery<u64>) -> Result<Applied, HandlerError> {
        let last = d.first_seq + d.records.len() as u64 - 1;
        println!(
            "{} (replica {:?}): records {}..={} (values {:?}..)",
            d.sender,
            d.replica,
            d.first_seq,
            last,
            d.records.first()
        );
        Ok(Applied::all())
    }

    fn sender_connected(&self, sender: &str, replica: &str) {
        println!("{sender} (replica {replica:?}) connected");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    telemetry_link::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut a = std::env::args().skip(1);
    let (mut ca, mut cert, mut key, mut listen, mut state) = (None, None, None, None, None);
    while let Some(flag) = a.next() {
        let mut val = || a.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ca" => ca = Some(val()?),
            "--cert" => cert = Some(val()?),
            "--key" => key = Some(val()?),
            "--listen" => listen = Some(val()?),
            "--state" => state = Some(val()?),
            other => bail!("unknown flag {other}"),
        }
    }
    let tls = TlsFiles::new(
        ca.context("--ca")?,
        cert.context("--cert")?,
        key.context("--key")?,
    );
    let listen: SocketAddr = listen.unwrap_or_else(|| "127.0.0.1:4433".into()).parse()?;
    let cfg = ReceiverConfig::new(listen, tls, state.context("--state")?);
    let registry = prometheus::Registry::new();
    let receiver = Receiver::start::<u64, _>(cfg, Arc::new(Print), &registry).await?;
    println!("listening on {}", receiver.local_addr());
    tokio::signal::ctrl_c().await?;
    receiver.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
