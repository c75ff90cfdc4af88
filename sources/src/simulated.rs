//! The simulated cluster: the `php-apache` HorizontalPodAutoscaler walkthrough
//! played without a cluster, producing the same records the real Kubernetes
//! source sends.
//!
//! What it owns: a deterministic model of one Deployment (through its
//! ReplicaSet), its pods and its HPA, driven by a periodic load wave, and the
//! records that describe it.
//!
//! What it guarantees:
//! - **Snapshots.** The first batch is a full snapshot
//!   (`SnapshotBegin{kinds: [Pod, Hpa]}`, one upsert per live object,
//!   `SnapshotEnd`), and a new full snapshot is sent every time
//!   [`RecordSink::connections`] changes, so a receiver that restarted
//!   converges. A snapshot lists exactly the pods that exist at that moment
//!   (failed pods awaiting deletion included).
//! - **The real HPA algorithm** (autoscaling/v2, CPU utilization): every sync
//!   period `desired = ceil(pods · utilization / target)`, no change within a
//!   10 % tolerance, pods that are not running yet count as 0 % when scaling
//!   up and as 100 % when scaling down, scale-up limited to
//!   `max(2·current, current + 4)` per sync, scale-down stabilised over a short
//!   window (the highest recommendation in it wins), clamped to min/max.
//!   Every rescale emits a [`ScaleEvent`] (unique key, the real reason texts)
//!   followed by an [`HpaInfo`] upsert with the new current/desired replicas.
//! - **Pod life cycle.** New pods are upserted `Pending` without node or IP,
//!   then `Running` on `sim-node-1`/`sim-node-2` with an IP in `10.244.<n>.<m>`
//!   after the startup delay. Scale-down deletes pending pods first, then the
//!   newest running ones. With the configured probability per tick a running
//!   pod turns `Failed`, a `Pending` replacement is created at once, and the
//!   failed pod is deleted after a retention delay.
//! - **Usage.** Every tick each running pod reports CPU (its share of the
//!   wave's demand, ±8 % noise, capped at the 0.5-core limit) and working-set
//!   memory (about 22–55 MiB, growing with CPU).
//! - **Determinism.** Given the seed, the sequence of records is fixed; only
//!   timestamps depend on the wall clock at start (they advance with
//!   simulated time, one tick per step).
//!
//! The simulation itself ([`Simulation`]) is a plain state machine with no
//! clock; [`SimulatedCluster::run`] drives it with tokio time.

use std::{
    collections::VecDeque,
    f64::consts::PI,
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use telemetry_schema::{
    ClusterRecord, ContainerRequests, ContainerUsage, HpaInfo, HpaTarget, ObjectKind, ObjectRef,
    PodInfo, PodPhase, PodUsage, ScaleEvent,
};

use crate::sink::{RecordSink, SinkError};

/// The two simulated nodes.
pub const SIM_NODES: [&str; 2] = ["sim-node-1", "sim-node-2"];
/// Reason text of a scale-up event, as the HPA controller writes it.
pub const REASON_ABOVE_TARGET: &str =
    "cpu resource utilization (percentage of request) above target";
/// Reason text of a scale-down event, as the HPA controller writes it.
pub const REASON_BELOW_TARGET: &str = "All metrics below target";
/// The HPA controller's tolerance around the target ratio.
pub const HPA_TOLERANCE: f64 = 0.1;
/// Characters Kubernetes uses for generated name suffixes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const MIB: f64 = 1024.0 * 1024.0;

/// Parameters of the simulation. [`Default`] gives the `php-apache`
/// walkthrough scaling between 1 and 8 replicas once a minute.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedClusterConfig {
    /// Seed of every random choice (names, uids, noise, failures).
    pub seed: u64,
    /// Namespace of all objects.
    pub namespace: String,
    /// Deployment name (also the container name and the pod name prefix).
    pub deployment: String,
    /// HPA name.
    pub hpa: String,
    /// `spec.minReplicas` (at least 1).
    pub min_replicas: i32,
    /// `spec.maxReplicas` (at least `min_replicas`).
    pub max_replicas: i32,
    /// Target average CPU utilization, percent of the request.
    pub target_cpu_utilization_percent: f64,
    /// CPU request of the container, cores.
    pub cpu_request_cores: f64,
    /// CPU limit of the container, cores (usage never exceeds it).
    pub cpu_limit_cores: f64,
    /// Simulation step (usage is reported every step).
    pub tick: Duration,
    /// How often the HPA re-evaluates (real default 15 s).
    pub hpa_sync_period: Duration,
    /// Scale-down stabilisation window (real default 300 s; short here so
    /// the deployment shrinks within the wave).
    pub downscale_stabilization: Duration,
    /// Period of the load wave: a half-sine burst over the first half of each
    /// period, the trough over the second half.
    pub wave_period: Duration,
    /// Total CPU demand at the wave's trough, cores.
    pub trough_load_cores: f64,
    /// Total CPU demand at the wave's crest, cores.
    pub crest_load_cores: f64,
    /// Time a new pod stays `Pending` before it runs.
    pub pod_startup: Duration,
    /// Probability per tick that one running pod fails.
    pub failure_probability: f64,
    /// Time a failed pod stays listed before it is deleted.
    pub failed_pod_retention: Duration,
}

impl Default for SimulatedClusterConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            namespace: "demo".into(),
            deployment: "php-apache".into(),
            hpa: "php-apache".into(),
            min_replicas: 1,
            max_replicas: 8,
            target_cpu_utilization_percent: 50.0,
            cpu_request_cores: 0.2,
            cpu_limit_cores: 0.5,
            tick: Duration::from_secs(1),
            hpa_sync_period: Duration::from_secs(5),
            downscale_stabilization: Duration::from_secs(15),
            wave_period: Duration::from_secs(60),
            trough_load_cores: 0.06,
            crest_load_cores: 0.96,
            pod_startup: Duration::from_secs(4),
            // One failure every ~3 minutes at a 1 s tick.
            failure_probability: 1.0 / 180.0,
            failed_pod_retention: Duration::from_secs(10),
        }
    }
}

/// A configuration the simulation cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulatedConfigError {
    /// Replica bounds out of order or below 1.
    #[error("replica bounds must satisfy 1 <= min ({min}) <= max ({max})")]
    ReplicaBounds {
        /// Configured minimum.
        min: i32,
        /// Configured maximum.
        max: i32,
    },
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A probability outside `[0, 1]`.
    #[error("failure probability {0} is not within [0, 1]")]
    Probability(f64),
    /// A quantity that must be positive and finite is not.
    #[error("{0} must be a positive finite number")]
    NotPositive(&'static str),
    /// An empty object name.
    #[error("{0} must not be empty")]
    EmptyName(&'static str),
}

impl SimulatedClusterConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), SimulatedConfigError> {
        if self.min_replicas < 1 || self.max_replicas < self.min_replicas {
            return Err(SimulatedConfigError::ReplicaBounds {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        for (name, d) in [
            ("tick", self.tick),
            ("hpa_sync_period", self.hpa_sync_period),
            ("wave_period", self.wave_period),
        ] {
            if d.is_zero() {
                return Err(SimulatedConfigError::ZeroDuration(name));
            }
        }
        if !(0.0..=1.0).contains(&self.failure_probability) {
            return Err(SimulatedConfigError::Probability(self.failure_probability));
        }
        for (name, v) in [
            (
                "target_cpu_utilization_percent",
                self.target_cpu_utilization_percent,
            ),
            ("cpu_request_cores", self.cpu_request_cores),
            ("cpu_limit_cores", self.cpu_limit_cores),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(SimulatedConfigError::NotPositive(name));
            }
        }
        for (name, v) in [
            ("trough_load_cores", self.trough_load_cores),
            ("crest_load_cores", self.crest_load_cores),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(SimulatedConfigError::NotPositive(name));
            }
        }
        for (name, v) in [
            ("namespace", &self.namespace),
            ("deployment", &self.deployment),
            ("hpa", &self.hpa),
        ] {
            if v.is_empty() {
                return Err(SimulatedConfigError::EmptyName(name));
            }
        }
        Ok(())
    }
}

/// A source that simulates the cluster and sends its records to a sink.
#[derive(Debug, Clone)]
pub struct SimulatedCluster {
    config: SimulatedClusterConfig,
}

impl SimulatedCluster {
    /// A simulated cluster with a validated configuration.
    pub fn new(config: SimulatedClusterConfig) -> Result<Self, SimulatedConfigError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &SimulatedClusterConfig {
        &self.config
    }

    /// Sends the initial snapshot, then one batch of changes per tick and a
    /// full snapshot whenever the sink's connection counter changes, until
    /// `shutdown` completes. Fails only when the sink refuses records.
    pub async fn run(
        self,
        sink: &impl RecordSink,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SinkError> {
        let tick = self.config.tick;
        let mut connections = sink.connections();
        connections.borrow_and_update();
        let mut simulation = Simulation::new(self.config, unix_millis());
        tracing::info!(
            namespace = %simulation.config.namespace,
            deployment = %simulation.config.deployment,
            seed = simulation.config.seed,
            "simulated cluster starting"
        );
        sink.send_batch(simulation.snapshot()).await?;

        let mut ticker = interval_at(Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watching_connections = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                changed = connections.changed(), if watching_connections => match changed {
                    Ok(()) => {
                        let generation = *connections.borrow_and_update();
                        tracing::debug!(generation, "link reconnected; re-sending the simulated snapshot");
                        let snapshot = simulation.snapshot();
                        sink.set_present(&snapshot)?;
                        sink.send_batch(snapshot).await?;
                    }
                    Err(_) => {
                        tracing::debug!("connection counter closed; no more reconnect snapshots");
                        watching_connections = false;
                    }
                },
                _ = ticker.tick() => {
                    let records = simulation.step();
                    if !records.is_empty() {
                        sink.send_batch(records).await?;
                    }
                }
            }
        }
        tracing::info!("simulated cluster stopped");
        Ok(())
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One simulated pod.
#[derive(Debug, Clone)]
struct SimPod {
    name: String,
    uid: String,
    phase: PodPhase,
    node: String,
    pod_ip: String,
    /// Simulated time at which a pending pod starts running.
    runs_at: Duration,
    /// Simulated time at which a failed pod is deleted.
    deleted_at: Option<Duration>,
    /// Last reported CPU usage, cores (0 unless running).
    cpu_cores: f64,
}

/// The deterministic simulation: call [`Simulation::step`] once per tick and
/// [`Simulation::snapshot`] whenever a full listing is needed.
#[derive(Debug)]
pub struct Simulation {
    config: SimulatedClusterConfig,
    rng: StdRng,
    start_unix_ms: i64,
    /// Simulated time since the start.
    now: Duration,
    replica_set: String,
    /// Pods in creation order.
    pods: Vec<SimPod>,
    /// The ReplicaSet's replica count (= the HPA's current replicas).
    replicas: i32,
    /// Recommendations inside the downscale stabilisation window.
    recommendations: VecDeque<(Duration, i32)>,
    last_sync: Duration,
    /// Next host byte of a pod IP, per node.
    next_host: [u8; 2],
    next_snapshot_id: u64,
}

impl Simulation {
    /// A simulation whose timestamps start at `start_unix_ms`, with
    /// `min_replicas` pods already running. The config must be valid (see
    /// [`SimulatedClusterConfig::validate`]); out-of-range values are clamped.
    pub fn new(mut config: SimulatedClusterConfig, start_unix_ms: i64) -> Self {
        config.min_replicas = config.min_replicas.max(1);
        config.max_replicas = config.max_replicas.max(config.min_replicas);
        config.failure_probability = config.failure_probability.clamp(0.0, 1.0);
        if config.failure_probability.is_nan() {
            config.failure_probability = 0.0;
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let replica_set = format!("{}-{}", config.deployment, random_name(&mut rng, 10));
        let mut simulation = Self {
            replicas: config.min_replicas,
            config,
            rng,
            start_unix_ms,
            now: Duration::ZERO,
            replica_set,
            pods: Vec::new(),
            recommendations: VecDeque::new(),
            last_sync: Duration::ZERO,
            next_host: [2, 2],
            next_snapshot_id: 1,
        };
        for _ in 0..simulation.replicas {
            let index = simulation.create_pod();
            simulation.start_pod(index);
        }
        simulation
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Current replica count of the ReplicaSet (the HPA's current replicas).
    pub fn replicas(&self) -> i32 {
        self.replicas
    }

    /// A full snapshot of pods and the HPA.
    pub fn snapshot(&mut self) -> Vec<ClusterRecord> {
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let mut records = Vec::with_capacity(self.pods.len() + 3);
        records.push(ClusterRecord::SnapshotBegin {
            id,
            kinds: vec![ObjectKind::Pod, ObjectKind::Hpa],
        });
        records.extend(
            self.pods
                .iter()
                .map(|p| ClusterRecord::PodUpsert(self.pod_info(p))),
        );
        records.push(ClusterRecord::HpaUpsert(self.hpa_info()));
        records.push(ClusterRecord::SnapshotEnd { id });
        records
    }

    /// Advances the simulation by one tick and returns the changes.
    pub fn step(&mut self) -> Vec<ClusterRecord> {
        self.now += self.config.tick;
        let mut records = Vec::new();
        self.start_due_pods(&mut records);
        self.delete_expired_failed_pods(&mut records);
        self.inject_failure(&mut records);
        self.report_usage(&mut records);
        if self.now >= self.last_sync + self.config.hpa_sync_period {
            self.last_sync = self.now;
            self.sync_hpa(&mut records);
        }
        records
    }

    fn timestamp_ms(&self) -> i64 {
        self.start_unix_ms + self.now.as_millis() as i64
    }

    fn pod_ref(&self, pod: &SimPod) -> ObjectRef {
        ObjectRef {
            namespace: self.config.namespace.clone(),
            name: pod.name.clone(),
        }
    }

    fn pod_info(&self, pod: &SimPod) -> PodInfo {
        PodInfo {
            namespace: self.config.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            node: pod.node.clone(),
            pod_ip: pod.pod_ip.clone(),
            phase: pod.phase,
            created_by_kind: "ReplicaSet".into(),
            created_by_name: self.replica_set.clone(),
            containers: vec![ContainerRequests {
                name: self.config.deployment.clone(),
                cpu_cores: Some(self.config.cpu_request_cores),
                memory_bytes: None,
                cpu_limit_cores: Some(self.config.cpu_limit_cores),
                memory_limit_bytes: None,
            }],
        }
    }

    fn hpa_info(&self) -> HpaInfo {
        HpaInfo {
            namespace: self.config.namespace.clone(),
            name: self.config.hpa.clone(),
            min_replicas: self.config.min_replicas,
            max_replicas: self.config.max_replicas,
            current_replicas: self.replicas,
            desired_replicas: self.replicas,
            targets: vec![HpaTarget {
                metric_name: "cpu".into(),
                target_type: "utilization".into(),
                value: self.config.target_cpu_utilization_percent,
            }],
        }
    }

    /// Pods that count towards the replica set (not failed).
    fn live_pods(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| p.phase != PodPhase::Failed)
            .count()
    }

    /// Creates a pending pod; returns its index.
    fn create_pod(&mut self) -> usize {
        let name = loop {
            let candidate = format!("{}-{}", self.replica_set, random_name(&mut self.rng, 5));
            if !self.pods.iter().any(|p| p.name == candidate) {
                break candidate;
            }
        };
        let uid = random_uid(&mut self.rng);
        self.pods.push(SimPod {
            name,
            uid,
            phase: PodPhase::Pending,
            node: String::new(),
            pod_ip: String::new(),
            runs_at: self.now + self.config.pod_startup,
            deleted_at: None,
            cpu_cores: 0.0,
        });
        self.pods.len() - 1
    }

    /// Binds a pod to the less loaded node, gives it an IP, marks it running.
    fn start_pod(&mut self, index: usize) {
        let mut per_node = [0usize; 2];
        for pod in self.pods.iter().filter(|p| p.phase == PodPhase::Running) {
            if let Some(n) = SIM_NODES.iter().position(|node| *node == pod.node) {
                per_node[n] += 1;
            }
        }
        let node = if per_node[1] < per_node[0] { 1 } else { 0 };
        let host = self.next_host[node];
        self.next_host[node] = if host >= 254 { 2 } else { host + 1 };
        let pod = &mut self.pods[index];
        pod.phase = PodPhase::Running;
        pod.node = SIM_NODES[node].to_string();
        pod.pod_ip = format!("10.244.{}.{}", node + 1, host);
    }

    fn start_due_pods(&mut self, records: &mut Vec<ClusterRecord>) {
        for index in 0..self.pods.len() {
            if self.pods[index].phase == PodPhase::Pending && self.pods[index].runs_at <= self.now {
                self.start_pod(index);
                records.push(ClusterRecord::PodUpsert(self.pod_info(&self.pods[index])));
            }
        }
    }

    fn delete_expired_failed_pods(&mut self, records: &mut Vec<ClusterRecord>) {
        let now = self.now;
        let (gone, kept): (Vec<SimPod>, Vec<SimPod>) = std::mem::take(&mut self.pods)
            .into_iter()
            .partition(|p| p.deleted_at.is_some_and(|at| at <= now));
        self.pods = kept;
        records.extend(
            gone.iter()
                .map(|p| ClusterRecord::PodDelete(self.pod_ref(p))),
        );
    }

    fn inject_failure(&mut self, records: &mut Vec<ClusterRecord>) {
        if !self.rng.random_bool(self.config.failure_probability) {
            return;
        }
        let running: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].phase == PodPhase::Running)
            .collect();
        if running.is_empty() {
            return;
        }
        let victim = running[self.rng.random_range(0..running.len())];
        let pod = &mut self.pods[victim];
        pod.phase = PodPhase::Failed;
        pod.cpu_cores = 0.0;
        pod.deleted_at = Some(self.now + self.config.failed_pod_retention);
        tracing::debug!(pod = %pod.name, "simulated pod failure");
        records.push(ClusterRecord::PodUpsert(self.pod_info(&self.pods[victim])));
        let replacement = self.create_pod();
        records.push(ClusterRecord::PodUpsert(
            self.pod_info(&self.pods[replacement]),
        ));
    }

    /// Total CPU demand of the wave at the current time, cores: a half-sine
    /// burst over the first half of each period (crest at a quarter period),
    /// the trough over the second half, so the HPA has time to scale back
    /// down to the minimum before the next burst.
    fn demand_cores(&self) -> f64 {
        let phase = (self.now.as_secs_f64() / self.config.wave_period.as_secs_f64()).fract();
        let crest_share = if phase < 0.5 {
            (2.0 * PI * phase).sin()
        } else {
            0.0
        };
        self.config.trough_load_cores
            + (self.config.crest_load_cores - self.config.trough_load_cores) * crest_share
    }

    fn report_usage(&mut self, records: &mut Vec<ClusterRecord>) {
        let running = self
            .pods
            .iter()
            .filter(|p| p.phase == PodPhase::Running)
            .count();
        if running == 0 {
            return;
        }
        let share = self.demand_cores() / running as f64;
        let timestamp_ms = self.timestamp_ms();
        for index in 0..self.pods.len() {
            if self.pods[index].phase != PodPhase::Running {
                continue;
            }
            let cpu_noise = self.rng.random_range(-0.08..=0.08);
            let memory_noise = self.rng.random_range(-1.0..=1.0) * MIB;
            let cpu_cores = (share * (1.0 + cpu_noise)).clamp(0.001, self.config.cpu_limit_cores);
            let memory_bytes =
                (22.0 * MIB + 30.0 * MIB * cpu_cores / self.config.cpu_limit_cores + memory_noise)
                    .round();
            let pod = &mut self.pods[index];
            pod.cpu_cores = cpu_cores;
            records.push(ClusterRecord::PodUsage(PodUsage {
                namespace: self.config.namespace.clone(),
                pod: pod.name.clone(),
                timestamp_ms,
                containers: vec![ContainerUsage {
                    name: self.config.deployment.clone(),
                    cpu_cores,
                    memory_bytes,
                }],
            }));
        }
    }

    /// The HPA's raw recommendation (before stabilisation and limits), or
    /// `None` when no pod reports metrics.
    fn recommend(&self) -> Option<i32> {
        let running: Vec<&SimPod> = self
            .pods
            .iter()
            .filter(|p| p.phase == PodPhase::Running)
            .collect();
        if running.is_empty() {
            return None;
        }
        let pending = self
            .pods
            .iter()
            .filter(|p| p.phase == PodPhase::Pending)
            .count() as f64;
        let request = self.config.cpu_request_cores;
        let target = self.config.target_cpu_utilization_percent / 100.0;
        let used: f64 = running.iter().map(|p| p.cpu_cores).sum();
        let measured = running.len() as f64;
        let ratio = used / (request * measured) / target;
        let current = self.replicas;
        if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            return Some(current);
        }
        // Pods without metrics: 0 % when scaling up, 100 % when scaling down.
        let adjusted = if ratio > 1.0 {
            used / (request * (measured + pending)) / target
        } else {
            (used + pending * request) / (request * (measured + pending)) / target
        };
        if (adjusted - 1.0).abs() <= HPA_TOLERANCE || (adjusted > 1.0) != (ratio > 1.0) {
            return Some(current);
        }
        Some((adjusted * (measured + pending)).ceil() as i32)
    }

    fn sync_hpa(&mut self, records: &mut Vec<ClusterRecord>) {
        let Some(raw) = self.recommend() else {
            return;
        };
        let now = self.now;
        let window = self.config.downscale_stabilization;
        self.recommendations.push_back((now, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| *at + window < now)
        {
            self.recommendations.pop_front();
        }
        let current = self.replicas;
        let stabilized = if raw >= current {
            raw
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(raw);
            highest.min(current)
        };
        let scale_up_limit = (current * 2).max(current + 4);
        let desired = stabilized
            .min(scale_up_limit)
            .clamp(self.config.min_replicas, self.config.max_replicas);
        if desired != current {
            self.rescale(desired, records);
        }
    }

    fn rescale(&mut self, new_replicas: i32, records: &mut Vec<ClusterRecord>) {
        let old_replicas = self.replicas;
        self.replicas = new_replicas;
        let reason = if new_replicas > old_replicas {
            REASON_ABOVE_TARGET
        } else {
            REASON_BELOW_TARGET
        };
        tracing::debug!(old_replicas, new_replicas, "simulated HPA rescale");
        records.push(ClusterRecord::ScaleEvent(ScaleEvent {
            namespace: self.config.namespace.clone(),
            hpa: self.config.hpa.clone(),
            old_replicas,
            new_replicas,
            reason: reason.into(),
            timestamp_ms: self.timestamp_ms(),
            key: format!("{}/1", random_uid(&mut self.rng)),
        }));
        records.push(ClusterRecord::HpaUpsert(self.hpa_info()));

        let target = new_replicas.max(0) as usize;
        while self.live_pods() < target {
            let index = self.create_pod();
            records.push(ClusterRecord::PodUpsert(self.pod_info(&self.pods[index])));
        }
        while self.live_pods() > target {
            // The ReplicaSet deletes pods that are not running first, then the newest.
            let victim = self
                .pods
                .iter()
                .rposition(|p| p.phase == PodPhase::Pending)
                .or_else(|| self.pods.iter().rposition(|p| p.phase == PodPhase::Running));
            let Some(victim) = victim else { break };
            let pod = self.pods.remove(victim);
            records.push(ClusterRecord::PodDelete(self.pod_ref(&pod)));
        }
    }
}

/// `len` characters from Kubernetes' name-suffix alphabet.
fn random_name(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// A version-4-looking UUID.
fn random_uid(rng: &mut StdRng) -> String {
    let bits: u128 = rng.random();
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::VecSink;
    use std::{
        collections::{BTreeMap, HashSet},
        sync::Arc,
    };

    fn quiet_config(seed: u64) -> SimulatedClusterConfig {
        SimulatedClusterConfig {
            seed,
            failure_probability: 0.0,
            ..SimulatedClusterConfig::default()
        }
    }

    /// Steps `steps` times; returns the records of each step.
    fn run_steps(simulation: &mut Simulation, steps: usize) -> Vec<Vec<ClusterRecord>> {
        (0..steps).map(|_| simulation.step()).collect()
    }

    /// Live pods as a receiver would track them.
    #[derive(Default)]
    struct PodModel {
        pods: BTreeMap<String, PodInfo>,
    }

    impl PodModel {
        fn apply(&mut self, record: &ClusterRecord) {
            match record {
                ClusterRecord::PodUpsert(p) => {
                    self.pods.insert(p.name.clone(), p.clone());
                }
                ClusterRecord::PodDelete(r) => {
                    self.pods.remove(&r.name);
                }
                _ => {}
            }
        }
        fn live(&self) -> usize {
            self.pods
                .values()
                .filter(|p| p.phase != PodPhase::Failed)
                .count()
        }
    }

    #[test]
    fn scales_up_above_one_and_back_down_within_ninety_seconds() {
        let mut simulation = Simulation::new(quiet_config(7), 0);
        let steps = run_steps(&mut simulation, 90);
        let events: Vec<(usize, ScaleEvent)> = steps
            .iter()
            .enumerate()
            .flat_map(|(i, records)| {
                records.iter().filter_map(move |r| match r {
                    ClusterRecord::ScaleEvent(e) => Some((i + 1, e.clone())),
                    _ => None,
                })
            })
            .collect();
        let peak = events
            .iter()
            .map(|(_, e)| e.new_replicas)
            .max()
            .unwrap_or(1);
        assert!(peak > 1, "never scaled up: {events:?}");
        assert!(peak <= 8);
        let first_up = events
            .iter()
            .position(|(_, e)| e.direction() == "up")
            .unwrap();
        let back_to_one = events
            .iter()
            .position(|(_, e)| e.direction() == "down" && e.new_replicas == 1)
            .unwrap_or_else(|| {
                panic!(
                    "never scaled back to 1: {:?}",
                    events
                        .iter()
                        .map(|(t, e)| (t, e.old_replicas, e.new_replicas))
                        .collect::<Vec<_>>()
                )
            });
        assert!(first_up < back_to_one);
        assert!(events[back_to_one].0 <= 90);
    }

    #[test]
    fn scale_events_match_hpa_upserts_and_pod_counts() {
        let mut simulation = Simulation::new(quiet_config(3), 0);
        let mut model = PodModel::default();
        model
            .pods
            .extend(simulation.snapshot().iter().filter_map(|r| match r {
                ClusterRecord::PodUpsert(p) => Some((p.name.clone(), p.clone())),
                _ => None,
            }));
        let mut replicas = 1;
        let mut keys = HashSet::new();
        let mut seen = (0, 0);
        for records in run_steps(&mut simulation, 180) {
            for (i, record) in records.iter().enumerate() {
                model.apply(record);
                if let ClusterRecord::ScaleEvent(event) = record {
                    assert_eq!(event.old_replicas, replicas);
                    assert_ne!(event.new_replicas, event.old_replicas);
                    let expected_reason = if event.direction() == "up" {
                        seen.0 += 1;
                        REASON_ABOVE_TARGET
                    } else {
                        seen.1 += 1;
                        REASON_BELOW_TARGET
                    };
                    assert_eq!(event.reason, expected_reason);
                    assert!(keys.insert(event.key.clone()), "duplicate key");
                    match &records[i + 1] {
                        ClusterRecord::HpaUpsert(h) => {
                            assert_eq!(h.current_replicas, event.new_replicas);
                            assert_eq!(h.desired_replicas, event.new_replicas);
                            assert_eq!((h.min_replicas, h.max_replicas), (1, 8));
                        }
                        other => panic!("scale event not followed by an HPA upsert: {other:?}"),
                    }
                    replicas = event.new_replicas;
                }
            }
            assert_eq!(
                model.live() as i32,
                replicas,
                "pods follow the replica count"
            );
        }
        assert!(
            seen.0 >= 2 && seen.1 >= 2,
            "two waves bring ups and downs: {seen:?}"
        );
    }

    #[test]
    fn new_pods_go_pending_without_node_then_running_on_a_sim_node() {
        let config = quiet_config(11);
        let startup = config.pod_startup;
        let mut simulation = Simulation::new(config, 1_000);
        let mut pending_since: BTreeMap<String, Duration> = BTreeMap::new();
        let mut started = 0;
        for _ in 0..60 {
            let records = simulation.step();
            let now = simulation.elapsed();
            for record in &records {
                let ClusterRecord::PodUpsert(pod) = record else {
                    continue;
                };
                assert!(pod.name.starts_with("php-apache-"));
                assert_eq!(pod.created_by_kind, "ReplicaSet");
                assert!(pod.name.starts_with(&pod.created_by_name));
                assert_eq!(pod.name.len(), pod.created_by_name.len() + 6);
                match pod.phase {
                    PodPhase::Pending => {
                        assert!(pod.node.is_empty() && pod.pod_ip.is_empty());
                        pending_since.insert(pod.name.clone(), now);
                    }
                    PodPhase::Running => {
                        let since = pending_since
                            .remove(&pod.name)
                            .expect("running pod was pending first");
                        assert_eq!(now - since, startup);
                        assert!(SIM_NODES.contains(&pod.node.as_str()), "{}", pod.node);
                        let node_octet = if pod.node == SIM_NODES[0] { "1" } else { "2" };
                        assert!(
                            pod.pod_ip.starts_with(&format!("10.244.{node_octet}.")),
                            "{}",
                            pod.pod_ip
                        );
                        started += 1;
                    }
                    other => panic!("unexpected phase {other:?}"),
                }
            }
        }
        assert!(started >= 2, "some pods started: {started}");
    }

    #[test]
    fn usage_is_reported_for_running_pods_with_realistic_values() {
        let mut simulation = Simulation::new(quiet_config(5), 0);
        let mut model = PodModel::default();
        for record in simulation.snapshot() {
            model.apply(&record);
        }
        let mut cpu_seen = Vec::new();
        for records in run_steps(&mut simulation, 60) {
            for record in &records {
                model.apply(record);
                if let ClusterRecord::PodUsage(usage) = record {
                    let pod = model.pods.get(&usage.pod).expect("usage of a known pod");
                    assert_eq!(pod.phase, PodPhase::Running);
                    assert_eq!(usage.containers.len(), 1);
                    let c = &usage.containers[0];
                    assert_eq!(c.name, "php-apache");
                    assert!(c.cpu_cores > 0.0 && c.cpu_cores <= 0.5, "{}", c.cpu_cores);
                    assert!(c.memory_bytes >= 20.0 * MIB && c.memory_bytes <= 60.0 * MIB);
                    cpu_seen.push(c.cpu_cores);
                }
            }
        }
        let max = cpu_seen.iter().cloned().fold(0.0, f64::max);
        let min = cpu_seen.iter().cloned().fold(1.0, f64::min);
        assert!(
            max > 0.2 && min < 0.1,
            "cpu swings around the 0.2 request: {min}..{max}"
        );
    }

    #[test]
    fn failures_mark_a_pod_failed_replace_it_and_delete_it_later() {
        let config = SimulatedClusterConfig {
            seed: 9,
            failure_probability: 1.0,
            crest_load_cores: 0.06,
            ..SimulatedClusterConfig::default()
        };
        let retention = config.failed_pod_retention;
        let mut simulation = Simulation::new(config, 0);
        let initial: Vec<String> = simulation.pods.iter().map(|p| p.name.clone()).collect();
        let first = simulation.step();
        let upserts: Vec<&PodInfo> = first
            .iter()
            .filter_map(|r| match r {
                ClusterRecord::PodUpsert(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(upserts.len(), 2, "{first:?}");
        assert_eq!(upserts[0].phase, PodPhase::Failed);
        assert_eq!(upserts[0].name, initial[0]);
        assert!(!upserts[0].node.is_empty(), "a failed pod keeps its node");
        assert_eq!(upserts[1].phase, PodPhase::Pending);
        assert_ne!(upserts[1].name, upserts[0].name);
        let failed = upserts[0].name.clone();
        assert!(
            !first
                .iter()
                .any(|r| matches!(r, ClusterRecord::PodUsage(u) if u.pod == failed)),
            "a failed pod reports no usage"
        );
        let mut deleted_after = None;
        for step in 2..=20u32 {
            let records = simulation.step();
            if records
                .iter()
                .any(|r| matches!(r, ClusterRecord::PodDelete(o) if o.name == failed))
            {
                deleted_after = Some(step - 1);
                break;
            }
        }
        assert_eq!(deleted_after, Some(retention.as_secs() as u32));
    }

    #[test]
    fn the_same_seed_gives_the_same_records_and_another_seed_does_not() {
        let config = SimulatedClusterConfig {
            seed: 42,
            failure_probability: 0.05,
            ..SimulatedClusterConfig::default()
        };
        let mut a = Simulation::new(config.clone(), 5);
        let mut b = Simulation::new(config.clone(), 5);
        let mut c = Simulation::new(SimulatedClusterConfig { seed: 43, ..config }, 5);
        assert_eq!(a.snapshot(), b.snapshot());
        assert_ne!(a.snapshot(), c.snapshot());
        assert_eq!(run_steps(&mut a, 150), run_steps(&mut b, 150));
    }

    #[test]
    fn uids_look_like_uuids_v4() {
        let mut rng = StdRng::seed_from_u64(1);
        let uid = random_uid(&mut rng);
        let parts: Vec<&str> = uid.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(
            parts[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
        assert_ne!(uid, random_uid(&mut rng));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad_bounds = SimulatedClusterConfig {
            min_replicas: 3,
            max_replicas: 2,
            ..Default::default()
        };
        assert!(matches!(
            SimulatedCluster::new(bad_bounds),
            Err(SimulatedConfigError::ReplicaBounds { min: 3, max: 2 })
        ));
        let bad_probability = SimulatedClusterConfig {
            failure_probability: 1.5,
            ..Default::default()
        };
        assert_eq!(
            SimulatedCluster::new(bad_probability).unwrap_err(),
            SimulatedConfigError::Probability(1.5)
        );
        let zero_tick = SimulatedClusterConfig {
            tick: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            SimulatedCluster::new(zero_tick).unwrap_err(),
            SimulatedConfigError::ZeroDuration("tick")
        );
        assert!(SimulatedCluster::new(SimulatedClusterConfig::default()).is_ok());
    }

    /// Splits records into the snapshots they contain: (begin id, kinds, records between, end id).
    fn snapshots(
        records: &[ClusterRecord],
    ) -> Vec<(u64, Vec<ObjectKind>, Vec<ClusterRecord>, u64)> {
        let mut found = Vec::new();
        let mut open: Option<(u64, Vec<ObjectKind>, Vec<ClusterRecord>)> = None;
        for record in records {
            match record {
                ClusterRecord::SnapshotBegin { id, kinds } => {
                    open = Some((*id, kinds.clone(), Vec::new()))
                }
                ClusterRecord::SnapshotEnd { id } => {
                    let (begin, kinds, inner) = open.take().expect("end without begin");
                    found.push((begin, kinds, inner, *id));
                }
                other => {
                    if let Some((_, _, inner)) = open.as_mut() {
                        inner.push(other.clone());
                    }
                }
            }
        }
        assert!(open.is_none(), "unterminated snapshot");
        found
    }

    #[tokio::test(start_paused = true)]
    async fn run_sends_a_snapshot_first_and_a_full_one_on_every_reconnect() {
        let sink = Arc::new(VecSink::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task_sink = sink.clone();
        let task = tokio::spawn(async move {
            let cluster = SimulatedCluster::new(quiet_config(21)).unwrap();
            cluster
                .run(&*task_sink, async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        // Mid-wave, between ticks: several pods, some possibly pending.
        tokio::time::sleep(Duration::from_millis(20_500)).await;
        let before = sink.take();
        let initial = &snapshots(&before)[0];
        assert!(matches!(before[0], ClusterRecord::SnapshotBegin { .. }));
        assert_eq!(initial.0, initial.3);
        assert_eq!(initial.1, vec![ObjectKind::Pod, ObjectKind::Hpa]);
        let mut model = PodModel::default();
        for record in &before {
            model.apply(record);
        }
        assert!(model.pods.len() > 1, "scaled up by 20 s");

        sink.reconnect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = sink.take();
        let found = snapshots(&after);
        assert_eq!(found.len(), 1, "{after:?}");
        let (begin, kinds, inner, end) = &found[0];
        assert_eq!(begin, end);
        assert!(*begin > initial.0, "a new snapshot id");
        assert_eq!(kinds, &vec![ObjectKind::Pod, ObjectKind::Hpa]);
        let listed: BTreeMap<String, PodInfo> = inner
            .iter()
            .filter_map(|r| match r {
                ClusterRecord::PodUpsert(p) => Some((p.name.clone(), p.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            listed, model.pods,
            "the snapshot lists exactly the live pods"
        );
        let hpas: Vec<&HpaInfo> = inner
            .iter()
            .filter_map(|r| match r {
                ClusterRecord::HpaUpsert(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(hpas.len(), 1);
        assert_eq!(hpas[0].current_replicas as usize, model.live());

        stop_tx.send(()).ok();
        task.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(sink.records().is_empty(), "nothing after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn run_ticks_once_per_interval() {
        let sink = Arc::new(VecSink::new());
        let task_sink = sink.clone();
        let task = tokio::spawn(async move {
            let cluster = SimulatedCluster::new(quiet_config(2)).unwrap();
            cluster
                .run(
                    &*task_sink,
                    tokio::time::sleep(Duration::from_millis(3_500)),
                )
                .await
        });
        task.await.unwrap().unwrap();
        let usage_timestamps: Vec<i64> = sink
            .records()
            .iter()
            .filter_map(|r| match r {
                ClusterRecord::PodUsage(u) => Some(u.timestamp_ms),
                _ => None,
            })
            .collect();
        assert_eq!(
            usage_timestamps.len(),
            3,
            "one usage per tick for the single pod"
        );
        assert_eq!(usage_timestamps[1] - usage_timestamps[0], 1000);
        assert_eq!(usage_timestamps[2] - usage_timestamps[1], 1000);
    }
}
