//! Memory of a process: `VmRSS` (now) and `VmHWM` (peak) from
//! `/proc/PID/status`, and a background sampler.
//!
//! What it owns: reading the two values, and an [`RssSampler`] thread that
//! polls a (changeable) pid every interval and keeps every sample.
//!
//! What it guarantees: a vanished process reads as `None`, never as 0; the
//! sampler stops when dropped.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Memory figures in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mem {
    /// Resident set size now.
    pub rss_kb: u64,
    /// Peak resident set size ("high water mark").
    pub hwm_kb: u64,
}

/// Parses the `VmRSS`/`VmHWM` lines of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<Mem> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// Reads `/proc/PID/status`.
pub fn read(pid: u32) -> Option<Mem> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Which process.
    pub pid: u32,
    /// RSS in KiB.
    pub rss_kb: u64,
}

/// Samples the RSS of `pid` (which can be changed, e.g. after a restart)
/// every `every` until dropped.
#[derive(Debug)]
pub struct RssSampler {
    pid: Arc<AtomicU32>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let pid = Arc::new(AtomicU32::new(pid));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, st) = (pid.clone(), samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let pid = p.load(Ordering::Relaxed);
                if let Some(m) = read(pid) {
                    if let Ok(mut v) = s.lock() {
                        v.push(Sample {
                            at: Instant::now(),
                            pid,
                            rss_kb: m.rss_kb,
                        });
                    }
                }
                std::thread::sleep(every);
            }
        });
        Self {
            pid,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Follows another process from now on.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Largest RSS sampled in `[from, to]`.
    pub fn max_between(&self, from: Instant, to: Instant) -> Option<u64> {
        self.samples()
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.rss_kb)
            .max()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_reads_itself() {
        let text = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Mem {
                rss_kb: 1024,
                hwm_kb: 2048
            })
        );
        assert_eq!(parse_status("Name: kernel thread\n"), None);
        let me = read(std::process::id()).expect("own status");
        assert!(me.rss_kb > 0 && me.hwm_kb >= me.rss_kb);
        let s = RssSampler::start(std::process::id(), Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!s.samples().is_empty());
        assert!(
            s.max_between(Instant::now() - Duration::from_secs(5), Instant::now())
                .unwrap_or(0)
                > 0
        );
    }
}
