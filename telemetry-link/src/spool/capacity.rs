//! The size cap: the configured [`SpoolConfig::max_bytes`], lowered to what
//! the spool's filesystem has room for, and making room by dropping whole
//! segments, oldest first.
//!
//! The filesystem's free space is read with `statvfs` at open, at most once
//! a second while appending, and at once when a write fails with `ENOSPC`.
//! [`FS_RESERVE`] stays free for the metadata file and other small files.

use std::{fs, io, path::Path, time::Duration};

use super::{error::io_err, segment::Segment, Spool, SpoolConfig, SpoolError};

/// Room kept free on the filesystem for metadata and other small files.
const FS_RESERVE: u64 = 64 * 1024;

/// Bytes available to unprivileged users on the filesystem holding `dir`.
#[allow(unsafe_code)] // statvfs through libc; each block carries its SAFETY argument.
fn fs_available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right size; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(avail.saturating_mul(frsize))
}

/// Whether an I/O error means the disk is full.
pub(super) fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc_enospc()) || e.kind() == io::ErrorKind::StorageFull
}

const fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux and the BSDs
}

/// The segment size for a spool in `dir` whose loaded segments take
/// `existing` bytes: on a filesystem smaller than the cap, segments must be
/// small enough that dropping one frees useful room.
pub(super) fn segment_bytes_for_disk(dir: &Path, existing: u64, cfg: &SpoolConfig) -> u64 {
    let disk_room = fs_available(dir).map(|a| (a + existing).saturating_sub(FS_RESERVE));
    segment_bytes_for_room(disk_room, cfg)
}

/// [`segment_bytes_for_disk`] once the room on disk is known (`None`: not
/// known).
fn segment_bytes_for_room(disk_room: Option<u64>, cfg: &SpoolConfig) -> u64 {
    match disk_room {
        Some(room) if room < cfg.max_bytes => cfg
            .effective_segment_bytes()
            .min((room / 16).max(16 * 1024)),
        _ => cfg.effective_segment_bytes(),
    }
}

/// The cap in force for a spool of `total_bytes` with `available` bytes
/// free on its filesystem (`None`: not known).
fn cap_for(max_bytes: u64, total_bytes: u64, available: Option<u64>) -> u64 {
    match available {
        Some(avail) => max_bytes.min((total_bytes + avail).saturating_sub(FS_RESERVE)),
        None => max_bytes,
    }
}

impl Spool {
    /// The size cap in force (the configured cap, or less if the filesystem
    /// is smaller).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // read through `internals`
    pub fn effective_cap(&self) -> u64 {
        self.effective_cap
    }

    /// Re-reads the filesystem's free space (at most once a second unless
    /// `force`) and sets the cap in force from it.
    pub(super) fn refresh_cap(&mut self, force: bool) {
        let now = std::time::Instant::now();
        if !force
            && self
                .cap_checked
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.cap_checked = Some(now);
        self.effective_cap = cap_for(
            self.cfg.max_bytes,
            self.total_bytes,
            fs_available(&self.dir),
        );
    }

    /// [`Spool::roll`], dropping the oldest closed segments while the disk
    /// is too full to create the new one.
    pub(super) fn roll_making_room(&mut self, dropped: &mut u64) -> Result<(), SpoolError> {
        loop {
            match self.roll() {
                Err(SpoolError::Io { source, .. })
                    if is_no_space(&source) && self.segments.len() > 1 =>
                {
                    self.refresh_cap(true);
                    match self.drop_oldest()? {
                        Some(n) => *dropped += n,
                        None => {
                            return Err(SpoolError::Io {
                                path: self.dir.clone(),
                                source,
                            })
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Drops the oldest segment; returns the unacknowledged records it held
    /// that are lost for sure (see [`Spool::mark_dropped`]), or `None` if
    /// there is nothing to drop.
    pub(super) fn drop_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        if self.segments.len() == 1 {
            if self.active_segment().is_empty() {
                return Ok(None);
            }
            self.roll()?;
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(None);
        };
        let certain = self.account_dropped_segment(&seg);
        self.forget_reader_of(seg.base);
        fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        self.total_bytes -= seg.bytes;
        self.write_meta()?;
        Ok(Some(certain))
    }

    /// Marks the unacknowledged records of a dropped segment as dropped;
    /// returns how many are lost for sure.
    fn account_dropped_segment(&mut self, seg: &Segment) -> u64 {
        let from = seg.base.max(self.acked + 1);
        let n = seg.count_in(from, u64::MAX);
        if n == 0 {
            return 0;
        }
        let certain = self.mark_dropped(from, seg.last);
        tracing::warn!(
            first = from,
            last = seg.last,
            records = n,
            "spool full: dropped oldest records"
        );
        certain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_a_small_filesystem() {
        assert_eq!(cap_for(1 << 30, 0, None), 1 << 30);
        assert_eq!(
            cap_for(1 << 30, 1000, Some(1 << 20)),
            1000 + (1 << 20) - FS_RESERVE
        );
        assert_eq!(cap_for(4000, 1000, Some(1 << 20)), 4000);
        assert_eq!(cap_for(4000, 0, Some(10)), 0, "a full disk leaves no room");
    }

    #[test]
    fn segments_shrink_on_a_small_filesystem() {
        let cfg = SpoolConfig::default();
        assert_eq!(segment_bytes_for_room(None, &cfg), 8 << 20);
        assert_eq!(segment_bytes_for_room(Some(2 << 30), &cfg), 8 << 20);
        assert_eq!(segment_bytes_for_room(Some(2 << 20), &cfg), 128 << 10);
        assert_eq!(segment_bytes_for_room(Some(1000), &cfg), 16 << 10);
    }

    #[test]
    fn no_space_is_recognised() {
        assert!(is_no_space(&io::Error::from_raw_os_error(28)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(2)));
        assert!(fs_available(Path::new("/")).is_some());
        assert!(fs_available(Path::new("/no/such/dir")).is_none());
    }
}
