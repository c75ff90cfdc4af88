//! Child processes for black-box tests: located in the cargo target
//! directory, stdout/stderr kept in files, killed on drop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Path of a workspace binary in the target directory the tests run from.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary is not inside a target directory")?;
    let p = profile_dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found; build it first (cargo build -p {} or cargo test --workspace)",
            p.display(),
            name
        );
    }
    Ok(p)
}

/// The directory holding the workspace's binaries of the profile the
/// calling test or bench was built with (where the sender is).
pub fn workspace_bin_dir() -> Result<PathBuf> {
    Ok(workspace_binary("telemetry-sender")?
        .parent()
        .context("binary without a directory")?
        .to_path_buf())
}

/// Whether `program --help` mentions `flag` (older builds lack newer flags).
pub fn help_offers(program: &Path, flag: &str) -> Result<bool> {
    let out = std::process::Command::new(program)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", program.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// A running child process, killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    _log_dir: Option<tempfile::TempDir>,
}

impl ChildProcess {
    /// Spawns `cmd` with stdout and stderr appended to a log file.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            _log_dir: Some(log_dir),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("process already reaped")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line")
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    #[allow(unsafe_code)] // libc calls, each with its SAFETY argument
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let pid = i32::try_from(pid)?;
        // SAFETY: kill(2) with a pid we spawned and own; no memory is shared.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill_9(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already reaped")?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// Waits for the process to exit within `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!(
                    "{} did not exit within {limit:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_timeout(limit)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system, all threads) of a live process, from
/// `/proc/PID/stat` in units of `ticks` per second ([`clock_ticks`]).
pub fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // After the command name (which may hold spaces and parentheses) comes
    // field 3 (state); utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .context("unexpected /proc/PID/stat")?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    if matches!(f.first(), Some(&"Z" | &"X")) {
        bail!("process {pid} exited");
    }
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`
/// (`getconf CLK_TCK`; 100, Linux's usual value, if that fails).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
