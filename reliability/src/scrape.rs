//! Metric polling of processes that live in another network namespace.
//!
//! What it owns: a [`Scraper`] that GETs `/metrics` from inside the
//! namespace (a fresh thread enters it with `setns`, see
//! [`crate::netns::enter_and_run`]) and parses the text format with
//! `telemetry_test_support::prom`; and [`poll`], which waits for a condition
//! on scraped values.
//!
//! What it guarantees: every scrape is a fresh HTTP request (no cached
//! values); a failed scrape is an error, never a default value.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use telemetry_test_support::{http, prom::Exposition};

use crate::netns::enter_and_run;

/// Scrapes one endpoint inside one namespace.
#[derive(Debug, Clone)]
pub struct Scraper {
    ns: String,
    addr: SocketAddr,
}

impl Scraper {
    /// `/metrics` at `addr` inside namespace `ns`.
    pub fn new(ns: &str, addr: SocketAddr) -> Self {
        Self {
            ns: ns.to_owned(),
            addr,
        }
    }

    /// One scrape.
    pub fn scrape(&self) -> Result<Exposition> {
        let addr = self.addr;
        let resp = enter_and_run(&self.ns, move || http::get(addr, "/metrics", &[]))??;
        if resp.status != 200 {
            bail!(
                "GET http://{addr}/metrics in {}: status {}",
                self.ns,
                resp.status
            );
        }
        Exposition::parse(&resp.body).context("parsing /metrics")
    }

    /// A single metric (sum over matching label sets; 0 when absent).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(self.scrape()?.sum(name, labels))
    }
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`
/// with the last error or value description.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut last;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what} ({last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
