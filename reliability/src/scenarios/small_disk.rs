//! Scenario 5: the spool on a small filesystem (an 8 MiB tmpfs, with
//! `--spool-max-bytes 32MiB` so the cap must follow the free space) that
//! fills up during a 30 s outage at 10 000 records/s (~20 MB of spool).
//! The sender must keep running, drop the oldest records by policy and
//! count them; the receiver must report exactly that many as lost; the
//! audit log must show every other record exactly once and the payload
//! values must be intact.
//!
//! Recovery time: from healing until the backlog that survived on disk was
//! acknowledged.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::{positions, wait_acked, wait_produced, Ctx, Outcome, Stage, RX_METRICS_PORT};
use crate::{
    netns::{sh, unique_name, RX_IP},
    partition::Partition,
};

/// Scenario name.
pub const NAME: &str = "5 full disk (8MiB tmpfs)";

/// A tmpfs mount, unmounted on drop. Its directory name starts with the
/// suite's prefix and pid, so a crashed run's mount is found and removed by
/// [`crate::netns::cleanup_stale`].
#[derive(Debug)]
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. `8m`) in a new directory under `parent`.
    pub fn new(parent: &Path, size: &str) -> Result<Self> {
        let path = parent.join(unique_name("spoolfs"));
        std::fs::create_dir_all(&path)?;
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &path.display().to_string(),
            ],
        )
        .context("mounting a tmpfs for the spool")?;
        Ok(Self { path })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", &self.path.display().to_string()]);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut st = Stage::new(ctx, NAME)?;
    let mount = TmpfsMount::new(&st.dir, "8m")?;
    let spec = st.receiver_spec(RX_IP, RX_METRICS_PORT, "state", "audit-rx.log");
    let mut rx = st.start_receiver("rx", &spec)?;
    let (rate, secs) = (10_000u64, 45u64);
    let total = rate * secs;
    let mut tx_spec = st.sender_spec(&[spec.listen], rate, total);
    tx_spec.spool_dir = mount.path().join("spool");
    tx_spec.spool_max_bytes = Some("32MiB".into());
    let mut tx = st.start_sender("tx", &tx_spec)?;

    wait_produced(&tx, rate * 5, Duration::from_secs(30))?;
    let cut = Partition::start(&st.topo)?;
    let mut peak_spool = 0f64;
    while cut.since.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(e) = tx.scrape() {
            peak_spool =
                peak_spool.max(e.value("telemetry_sender_spool_bytes", &[]).unwrap_or(0.0));
        }
        st.check(tx.is_running(), "the sender died while its disk was full");
        if !tx.is_running() {
            break;
        }
    }
    let e = tx.scrape()?;
    let dropped_in_outage = e
        .value("telemetry_sender_records_dropped_total", &[])
        .unwrap_or(0.0) as u64;
    let healed = cut.heal()?;
    let (last_at_heal, _) = positions(&tx)?;
    if let Ok(at) = wait_acked(&tx, last_at_heal, Duration::from_secs(60)) {
        st.row.recovery = Some(at - healed);
    }
    st.note(format!(
        "spool peaked at {:.1} MiB on the 8 MiB filesystem; {dropped_in_outage} records dropped by policy during the outage",
        peak_spool / 1048576.0
    ));
    st.check(
        dropped_in_outage > 0,
        "the disk never filled (no records dropped): the scenario did not test anything",
    );
    st.check(
        peak_spool <= 8.0 * 1048576.0,
        format!("spool grew to {peak_spool} bytes on an 8 MiB filesystem"),
    );
    let log = super::plain_log(&tx.output());
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("corrupt") || l.contains("ERROR"))
        .take(5)
        .collect();
    st.check(bad.is_empty(), format!("sender log shows trouble: {bad:?}"));
    let report = st.finish_single(
        &mut tx,
        &mut rx,
        &spec.audit_log,
        total,
        Duration::from_secs(120),
    )?;
    st.check(
        report.missing > 0,
        "nothing was lost although the disk filled",
    );
    drop(mount);
    Ok(st.outcome(Some(&report)))
}
