//! # telemetry-reliability
//!
//! The reliability and bad-input suite of the telemetry link. It runs the
//! real `telemetry-sender` and `telemetry-receiver` binaries on two "hosts"
//! — network namespaces joined by a veth pair — and breaks things between
//! them: packet loss, delay, reordering and duplication, partitions, SIGKILL
//! of either side, a full disk under the spool, failover between receivers,
//! a long outage at a high rate, an address change of the sender, and
//! hostile peers. After each scenario it checks the product's promise — no
//! record lost, none applied twice, memory bounded — from the outside: the
//! processes' metrics, their memory in `/proc`, and the receivers' audit
//! logs.
//!
//! Modules, one job each:
//! * [`netns`] — namespaces, the veth pair, running code inside them, RAII
//!   cleanup and removal of stale namespaces of crashed runs;
//! * [`loss`] — random packet loss with nftables;
//! * [`partition`] — link down/up;
//! * [`proxy`] — a UDP fault proxy (delay, jitter/reorder, duplication,
//!   drop; bounded memory);
//! * [`procs`] — starting, signalling and killing the binaries inside the
//!   namespaces;
//! * [`scrape`] — metric polling across namespaces;
//! * [`rss`] — `VmRSS`/`VmHWM` sampling;
//! * [`audit`] — exactly-once verification over audit logs;
//! * [`table`] — the results table;
//! * [`scenarios`] — the scenarios and their shared end-of-run checks.
//!
//! The binary `reliability-suite` runs them (see its `--help`).

// Each scenario and check is a script read top to bottom, one step after
// the other: splitting them would scatter one story over many functions.
#![allow(clippy::too_many_lines)]

pub mod audit;
pub mod loss;
pub mod netns;
pub mod partition;
pub mod procs;
pub mod proxy;
pub mod rss;
pub mod scenarios;
pub mod scrape;
pub mod table;
