//! Two "hosts" on one machine: network namespaces joined by a veth pair.
//!
//! What it owns: creating a receiver namespace and a sender namespace with
//! unique names (`relsuite-<pid>-<n>-rx` / `-tx`), the veth pair between
//! them (addresses exist only inside the namespaces; the host's own
//! network is never touched), running commands inside them
//! (`ip netns exec`), and running Rust closures inside them ([`Netns::run`]
//! enters the namespace on a fresh thread with `setns(2)`, so sockets made
//! there — for metric scrapes, the fault proxy, hostile clients — live in
//! that namespace).
//!
//! What it guarantees: every namespace is removed when its [`Netns`] is
//! dropped — also when a scenario fails or panics — after killing whatever
//! still runs in it; [`cleanup_stale`] removes namespaces (and tmpfs mounts)
//! left behind by earlier runs that crashed or were killed, recognised by the
//! prefix and a process id that is no longer alive.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace (and mount directory) this suite creates.
pub const PREFIX: &str = "relsuite";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `program args` and returns stdout, failing with stderr on a non-zero exit.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `stdin` fed from `input`.
pub fn sh_stdin(program: &str, args: &[&str], input: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}\ninput:\n{input}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Owner pid encoded in one of our names (`relsuite-<pid>-...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Whether this machine lets us make namespaces and veth pairs: root, `ip`
/// and `nft` present, and a probe namespace can be created and removed.
#[allow(unsafe_code)] // libc calls, each with its SAFETY argument
pub fn check_support() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("not running as root: network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN");
    }
    sh("ip", &["-V"]).context("iproute2 (`ip`) is missing: apt-get install iproute2")?;
    sh("nft", &["--version"]).context("`nft` is missing: apt-get install nftables")?;
    let probe = Netns::create("probe").context("cannot create a network namespace")?;
    probe
        .ip(&["link", "set", "lo", "up"])
        .context("cannot configure a network namespace")?;
    drop(probe);
    Ok(())
}

/// Removes namespaces and tmpfs mounts of earlier runs whose process is
/// gone. Returns what it removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // Mounts first (a spool tmpfs of a crashed run).
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(&target), Some(&"tmpfs")) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let Some(base) = std::path::Path::new(target)
            .file_name()
            .and_then(|f| f.to_str())
        else {
            continue;
        };
        if let Some(pid) = owner_pid(base) {
            if !pid_alive(pid) {
                let _ = sh("umount", &["-l", target]);
                removed.push(format!("mount {target}"));
            }
        }
    }
    let list = sh("ip", &["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(pid) = owner_pid(name) {
            if !pid_alive(pid) {
                kill_all_in(name);
                sh("ip", &["netns", "delete", name])
                    .with_context(|| format!("removing stale namespace {name}"))?;
                removed.push(format!("netns {name}"));
            }
        }
    }
    Ok(removed)
}

#[allow(unsafe_code)] // libc calls, each with its SAFETY argument
fn kill_all_in(name: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process id read from `ip netns pids`; no memory shared.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if !pids.trim().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A unique name `relsuite-<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    format!(
        "{PREFIX}-{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted (with everything still running in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `relsuite-<pid>-<n>-<tag>`.
    pub fn create(tag: &str) -> Result<Self> {
        let name = unique_name(tag);
        sh("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace and returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs `program args` inside the namespace with `input` on stdin.
    pub fn exec_stdin(&self, program: &str, args: &[&str], input: &str) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        sh_stdin("ip", &full, input)
    }

    /// Runs `f` on a new thread that entered this namespace. Sockets made in
    /// `f` belong to the namespace for their whole life, whichever thread
    /// uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter_and_run(&self.name, f)
    }
}

/// Runs `f` on a scoped thread inside namespace `name` (see [`Netns::run`]).
#[allow(unsafe_code)] // libc calls, each with its SAFETY argument
pub fn enter_and_run<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("opening namespace {name}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) with a valid namespace fd; it changes only
            // this (scoped, short-lived) thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({name}): {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside namespace {name} panicked"))?
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        if let Err(e) = sh("ip", &["netns", "delete", &self.name]) {
            eprintln!("warning: could not remove namespace {}: {e:#}", self.name);
        }
    }
}

/// Which end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The receiver's namespace.
    Receiver,
    /// The sender's namespace.
    Sender,
}

/// Receiver-side address on the veth link.
pub const RX_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Sender-side address on the veth link.
pub const TX_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Interface name inside the receiver namespace.
pub const RX_IF: &str = "rl-rx";
/// Interface name inside the sender namespace.
pub const TX_IF: &str = "rl-tx";

/// Two namespaces joined by a veth pair: `10.77.0.1/24` (receiver) ↔
/// `10.77.0.2/24` (sender).
#[derive(Debug)]
pub struct Topology {
    /// Receiver namespace.
    pub rx: Netns,
    /// Sender namespace.
    pub tx: Netns,
}

impl Topology {
    /// Creates both namespaces and the link, and checks it with a ping.
    pub fn create() -> Result<Self> {
        let rx = Netns::create("rx")?;
        let tx = Netns::create("tx")?;
        sh(
            "ip",
            &[
                "link",
                "add",
                RX_IF,
                "netns",
                rx.name(),
                "type",
                "veth",
                "peer",
                "name",
                TX_IF,
                "netns",
                tx.name(),
            ],
        )?;
        rx.ip(&["addr", "add", &format!("{RX_IP}/24"), "dev", RX_IF])?;
        tx.ip(&["addr", "add", &format!("{TX_IP}/24"), "dev", TX_IF])?;
        rx.ip(&["link", "set", RX_IF, "up"])?;
        tx.ip(&["link", "set", TX_IF, "up"])?;
        let topo = Self { rx, tx };
        topo.wait_reachable(Duration::from_secs(5))?;
        Ok(topo)
    }

    /// The namespace of `side`.
    pub fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::Receiver => &self.rx,
            Side::Sender => &self.tx,
        }
    }

    /// The veth interface name of `side`.
    pub fn iface(side: Side) -> &'static str {
        match side {
            Side::Receiver => RX_IF,
            Side::Sender => TX_IF,
        }
    }

    /// Adds another address to `side`'s interface.
    pub fn add_address(&self, side: Side, ip: Ipv4Addr) -> Result<()> {
        self.ns(side)
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", Self::iface(side)])?;
        Ok(())
    }

    /// Removes an address from `side`'s interface.
    pub fn del_address(&self, side: Side, ip: Ipv4Addr) -> Result<()> {
        self.ns(side)
            .ip(&["addr", "del", &format!("{ip}/24"), "dev", Self::iface(side)])?;
        Ok(())
    }

    /// Pings the receiver from the sender until it answers.
    pub fn wait_reachable(&self, limit: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            if self
                .tx
                .exec("ping", &["-c", "1", "-W", "1", &RX_IP.to_string()])
                .is_ok()
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("{RX_IP} not reachable from the sender namespace after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_owner_pid() {
        let n = unique_name("rx");
        assert!(n.starts_with("relsuite-"));
        assert_eq!(owner_pid(&n), Some(std::process::id()));
        assert_eq!(owner_pid("relsuite-123-4-tx"), Some(123));
        assert_eq!(owner_pid("other-123-4-tx"), None);
        assert_eq!(owner_pid("relsuite-x-4-tx"), None);
    }
}
