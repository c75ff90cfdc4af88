//! The spool on a filesystem smaller than its configured cap: it fills the
//! disk, keeps accepting records by dropping the oldest, counts them, and
//! stays readable. Needs root (it mounts a 2 MiB tmpfs); skipped with a
//! notice otherwise — the reliability suite covers it across processes.

use telemetry_link::{
    internals::{ReadBuf, ReadOutcome, Spool},
    FsyncPolicy, SpoolConfig,
};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[allow(unsafe_code)] // libc calls, each with its SAFETY argument
fn spool_on_a_full_small_filesystem_drops_oldest_and_keeps_going() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: skipping the tmpfs test");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir.path())
        .status()?
        .success();
    anyhow::ensure!(ok, "mounting a tmpfs failed");
    let _mount = Mount(dir.path().to_path_buf());
    let (mut spool, _) = Spool::open(
        dir.path(),
        SpoolConfig {
            max_bytes: 1 << 30, // far above the 2 MiB filesystem
            fsync: FsyncPolicy::EveryBatch,
            ..SpoolConfig::default()
        },
    )?;
    assert!(
        spool.effective_cap() < 2 << 20,
        "cap follows the filesystem: {}",
        spool.effective_cap()
    );
    let payload = vec![7u8; 200];
    let batch: Vec<&[u8]> = (0..100).map(|_| payload.as_slice()).collect();
    let mut dropped = 0;
    for _ in 0..500 {
        // ~10 MB through a 2 MiB filesystem
        dropped += spool.append(&batch)?.dropped;
    }
    let st = spool.stats();
    assert!(dropped > 0);
    assert_eq!(st.dropped_total, dropped);
    assert_eq!(st.last_seq, 50_000);
    assert_eq!(
        st.records + dropped,
        50_000,
        "every record is either kept or counted as dropped"
    );
    let mut cur = spool.cursor(1);
    let mut buf = ReadBuf::new();
    match spool.read(&mut cur, 10, 1 << 20, &mut buf)? {
        ReadOutcome::Gap { from, to, lost } => {
            assert_eq!((from, to, lost), (1, dropped, dropped));
        }
        other => panic!("expected the dropped range first, got {other:?}"),
    }
    Ok(())
}
