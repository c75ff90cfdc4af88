//! A real Prometheus (Debian's `prometheus` package) on loopback, with its
//! own configuration and data directory, for tests that write into it or
//! query it; killed on drop.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    http::{get, wait_for},
    process::{free_tcp_port, ChildProcess},
};

/// A running Prometheus.
#[derive(Debug)]
pub struct PrometheusServer {
    process: ChildProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts `prometheus` with `config` (YAML) and the extra `flags`, and
    /// waits until `/-/ready` answers. `Ok(None)` when the binary is not
    /// installed and the environment variable `CI` is not set (a notice is
    /// printed); under `CI` a missing binary is an error.
    pub fn start(config: &str, flags: &[&str]) -> Result<Option<Self>> {
        Self::start_at(([127, 0, 0, 1], free_tcp_port()?).into(), config, flags)
    }

    /// [`PrometheusServer::start`] on a given address.
    pub fn start_at(addr: SocketAddr, config: &str, flags: &[&str]) -> Result<Option<Self>> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                bail!("prometheus is not installed (apt-get install prometheus)");
            }
            eprintln!("NOTICE: prometheus not installed; skipping (apt-get install prometheus)");
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .args(flags);
        let process = ChildProcess::spawn("prometheus", cmd)?;
        wait_for(Duration::from_secs(60), "prometheus /-/ready", || {
            Ok((get(addr, "/-/ready", &[])?.status == 200).then_some(()))
        })?;
        Ok(Some(Self {
            process,
            addr,
            _dir: dir,
        }))
    }

    /// A Prometheus that accepts remote writes
    /// (`--web.enable-remote-write-receiver`) with a one-hour out-of-order
    /// window, so that history older than a series' newest sample (a
    /// replayed backlog, a receiver restart) is accepted; on `addr`, or any
    /// free port. `Ok(None)` as in [`PrometheusServer::start`].
    pub fn remote_write_receiver(addr: Option<SocketAddr>) -> Result<Option<Self>> {
        const CONFIG: &str =
            "global:\n  scrape_interval: 15s\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n";
        let addr = match addr {
            Some(a) => a,
            None => ([127, 0, 0, 1], free_tcp_port()?).into(),
        };
        Self::start_at(addr, CONFIG, &["--web.enable-remote-write-receiver"])
    }

    /// Its remote-write URL.
    pub fn remote_write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// `GET /api/v1/query?query=EXPR&time=T`: the `data.result` array.
    pub fn query(&self, expr: &str, time_s: Option<f64>) -> Result<Vec<serde_json::Value>> {
        let mut path = format!("/api/v1/query?query={}", encode(expr));
        if let Some(t) = time_s {
            path.push_str(&format!("&time={t:.3}"));
        }
        let r = get(self.addr, &path, &[])?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body).with_context(|| format!("query {expr}: {}", r.body))?;
        ensure!(v["status"] == "success", "query {expr}: {}", r.body);
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query returning one series (or `None`
    /// when it returns nothing).
    pub fn scalar(&self, expr: &str) -> Result<Option<f64>> {
        let result = self.query(expr, None)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(value_of(&one["value"])?)),
            _ => bail!("{expr}: {} series, expected one", result.len()),
        }
    }
}

/// `[<unix seconds>, "<value>"]` → the value.
pub fn value_of(pair: &serde_json::Value) -> Result<f64> {
    pair[1]
        .as_str()
        .context("no value")?
        .parse::<f64>()
        .context("value is not a number")
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
