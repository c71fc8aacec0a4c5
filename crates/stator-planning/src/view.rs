//! The cluster as the planner sees it: nodes, allocations and replicas, indexed.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::{Add, Sub};

use stator_api::ids::NodeId;

/// Milli-GPUs in one GPU device: a node's capacity counts whole devices.
pub const MILLI_PER_GPU: u64 = 1000;

/// Most GPU devices one node may have: the devices a replica took are kept as a bit
/// mask of this many bits. A node with more is refused when added to a view.
pub const MAX_GPUS_PER_NODE: usize = 64;

/// A bundle of resources. GPUs are counted in milli-GPUs (one whole GPU = 1000):
/// `gpu_milli` is the total over the devices, for a node its devices times 1000, for
/// a request the sum over the `gpu_count` devices it asks for (`gpu_milli /
/// gpu_count` on each). Sums of bundles (a node's allocation) add both fields; only
/// a [`ClusterView`] knows which device holds what, and its placement checks the
/// devices (a request fits a node when `gpu_count` of its devices each have the
/// per-device share free), not the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// GPU in milli-GPUs (0 for CPU-only), summed over the devices.
    pub gpu_milli: u64,
    /// For a request, the number of GPU devices `gpu_milli` is split over evenly: 1
    /// with `gpu_milli` < 1000 is a fraction of one device (a shared GPU), n with
    /// `gpu_milli` = n x 1000 is n whole devices. 0 (the default) means
    /// `ceil(gpu_milli / 1000)` devices. Ignored for a node's capacity, whose device
    /// count is `gpu_milli / 1000`.
    #[serde(default)]
    pub gpu_count: u32,
}

impl Resources {
    /// CPU and memory, no GPU.
    pub const fn new(cpu_millis: u64, memory_mib: u64) -> Self {
        Resources {
            cpu_millis,
            memory_mib,
            gpu_milli: 0,
            gpu_count: 0,
        }
    }
    /// With a GPU share of `gpu_milli` in total, on `ceil(gpu_milli / 1000)` devices
    /// (a node's capacity: `gpu_milli` = devices x 1000).
    pub const fn with_gpu(cpu_millis: u64, memory_mib: u64, gpu_milli: u64) -> Self {
        Resources {
            cpu_millis,
            memory_mib,
            gpu_milli,
            gpu_count: 0,
        }
    }
    /// A request for `gpu_count` devices with `milli_each` milli-GPUs of each (the
    /// openb trace's `num_gpu` and `gpu_milli`).
    pub const fn with_gpus(
        cpu_millis: u64,
        memory_mib: u64,
        gpu_count: u32,
        milli_each: u64,
    ) -> Self {
        Resources {
            cpu_millis,
            memory_mib,
            gpu_milli: gpu_count as u64 * milli_each,
            gpu_count,
        }
    }
    /// A request's GPU shape: how many devices, and the milli-GPUs it needs on each
    /// (rounded up). None without a GPU share.
    #[inline]
    pub fn gpu_shape(&self) -> Option<(u32, u64)> {
        if self.gpu_milli == 0 {
            return None;
        }
        let devices = if self.gpu_count > 0 {
            self.gpu_count as u64
        } else {
            self.gpu_milli.div_ceil(MILLI_PER_GPU)
        };
        Some((devices as u32, self.gpu_milli.div_ceil(devices)))
    }
    /// Whether a node of capacity `cap`, all its devices free, could hold this
    /// request's GPU share (as many devices as asked, each at most one whole GPU).
    #[inline]
    pub fn gpu_fits_capacity(&self, cap: &Resources) -> bool {
        match self.gpu_shape() {
            None => true,
            Some((n, each)) => n as usize <= cap.gpu_devices() && each <= MILLI_PER_GPU,
        }
    }
    /// The GPU devices of a node of this capacity.
    #[inline]
    pub fn gpu_devices(&self) -> usize {
        (self.gpu_milli / MILLI_PER_GPU) as usize
    }
    /// Whether every component of `self` is at most the one of `other`. For GPUs this
    /// compares the sums: necessary for a request to fit a node, not sufficient (the
    /// devices decide, see [`ClusterView::gpu_fits`]).
    #[inline]
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_mib <= other.memory_mib
            && self.gpu_milli <= other.gpu_milli
    }
    /// Component-wise subtraction that stops at zero.
    #[inline]
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            gpu_milli: self.gpu_milli.saturating_sub(other.gpu_milli),
            gpu_count: self.gpu_count.saturating_sub(other.gpu_count),
        }
    }
    /// Component-wise minimum.
    #[inline]
    pub fn min(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.min(other.cpu_millis),
            memory_mib: self.memory_mib.min(other.memory_mib),
            gpu_milli: self.gpu_milli.min(other.gpu_milli),
            gpu_count: self.gpu_count.min(other.gpu_count),
        }
    }
    /// Whether all components are zero.
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0 && self.memory_mib == 0 && self.gpu_milli == 0
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory_mib: self.memory_mib + o.memory_mib,
            gpu_milli: self.gpu_milli + o.gpu_milli,
            gpu_count: self.gpu_count + o.gpu_count,
        }
    }
}

impl Sub for Resources {
    type Output = Resources;
    /// Panics on underflow: allocation can never go below zero.
    fn sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self
                .cpu_millis
                .checked_sub(o.cpu_millis)
                .expect("cpu underflow"),
            memory_mib: self
                .memory_mib
                .checked_sub(o.memory_mib)
                .expect("memory underflow"),
            gpu_milli: self
                .gpu_milli
                .checked_sub(o.gpu_milli)
                .expect("gpu underflow"),
            gpu_count: self
                .gpu_count
                .checked_sub(o.gpu_count)
                .expect("gpu count underflow"),
        }
    }
}

/// The GPU devices of one node and what each has given out, in milli-GPUs. A request
/// takes `gpu_count` devices with its per-device share free on each (never parts of
/// two devices for one share), chosen by best fit: the devices with the least free
/// that still hold the share, lowest index first among equals. That is what Alibaba's
/// GPU-sharing scheduler extender (gpushare) does by default (its binpack: the
/// most-used device that fits) and what every policy of the simulator uses; a
/// fractional share so lands on an already shared device before a whole free one,
/// which stays free for whole-GPU requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuDevices {
    /// Milli-GPUs given out per device (above 1000 only when a snapshot over-commits).
    used: Vec<u32>,
}

impl GpuDevices {
    /// The devices of a node of this capacity, all free (none for a CPU-only node:
    /// nothing is allocated).
    pub fn of_capacity(capacity: &Resources) -> Self {
        GpuDevices {
            used: vec![0; capacity.gpu_devices()],
        }
    }
    /// Number of devices.
    pub fn len(&self) -> usize {
        self.used.len()
    }
    /// Whether the node has no GPU.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
    /// Milli-GPUs free on device `d`.
    #[inline]
    pub fn free(&self, d: usize) -> u64 {
        MILLI_PER_GPU.saturating_sub(self.used[d] as u64)
    }
    /// Free milli-GPUs of every device, in device order.
    pub fn free_per_device(&self) -> Vec<u64> {
        (0..self.used.len()).map(|d| self.free(d)).collect()
    }
    /// The most milli-GPUs free on one device (0 without devices).
    #[inline]
    pub fn max_free(&self) -> u64 {
        (0..self.used.len())
            .map(|d| self.free(d))
            .max()
            .unwrap_or(0)
    }
    /// How many copies of `r`'s GPU share the devices hold, each device taking as many
    /// shares as fit in its free (u64::MAX without a GPU share).
    pub fn slots(&self, r: &Resources) -> u64 {
        match r.gpu_shape() {
            None => u64::MAX,
            Some((1, each)) => (0..self.used.len()).map(|d| self.free(d) / each).sum(),
            Some((n, each)) => {
                (0..self.used.len())
                    .filter(|&d| self.free(d) >= each)
                    .count() as u64
                    / n as u64
            }
        }
    }
    /// Devices with nothing given out.
    #[inline]
    pub fn whole_free(&self) -> usize {
        self.used.iter().filter(|&&u| u == 0).count()
    }
    /// Whether the devices hold `r`'s GPU shape (always, without a GPU share).
    #[inline]
    pub fn fits(&self, r: &Resources) -> bool {
        match r.gpu_shape() {
            None => true,
            Some((1, each)) => self.max_free() >= each,
            Some((n, each)) => {
                (0..self.used.len())
                    .filter(|&d| self.free(d) >= each)
                    .count()
                    >= n as usize
            }
        }
    }
    /// The devices best fit would give `r` (a bit per device), None if they cannot
    /// hold it (or `r` has no GPU share).
    pub fn choose(&self, r: &Resources) -> Option<u64> {
        let (n, each) = r.gpu_shape()?;
        if n == 1 {
            // The single device with the least free that holds the share.
            let d = (0..self.used.len())
                .filter(|&d| self.free(d) >= each)
                .min_by_key(|&d| (self.free(d), d))?;
            return Some(1 << d);
        }
        let mut fit: Vec<usize> = (0..self.used.len())
            .filter(|&d| self.free(d) >= each)
            .collect();
        if fit.len() < n as usize {
            return None;
        }
        fit.sort_by_key(|&d| (self.free(d), d));
        Some(fit[..n as usize].iter().fold(0, |m, &d| m | 1 << d))
    }
    /// The free milli-GPUs of the device best fit would give a one-device share of
    /// `each` (None if no device holds it): `each` itself is a perfect fit, 1000 a
    /// whole device opened for it.
    #[inline]
    pub fn best_fit_free(&self, each: u64) -> Option<u64> {
        (0..self.used.len())
            .map(|d| self.free(d))
            .filter(|&f| f >= each)
            .min()
    }
    /// Gives `r`'s share out and returns the devices taken (0 without a GPU share).
    /// When the devices cannot hold it (a snapshot that over-commits, as the sums may),
    /// the devices with the most free are over-committed instead, so what is given
    /// out always matches what [`GpuDevices::give_back`] returns.
    pub fn take(&mut self, r: &Resources) -> u64 {
        let Some((n, each)) = r.gpu_shape() else {
            return 0;
        };
        if self.used.is_empty() {
            return 0;
        }
        let mask = self.choose(r).unwrap_or_else(|| {
            let mut all: Vec<usize> = (0..self.used.len()).collect();
            all.sort_by_key(|&d| (self.used[d], d));
            all[..(n as usize).min(all.len())]
                .iter()
                .fold(0, |m, &d| m | 1 << d)
        });
        self.add(mask, each as u32);
        mask
    }
    /// Returns the share of `r` given out on `mask` (what [`GpuDevices::take`] gave).
    pub fn give_back(&mut self, mask: u64, r: &Resources) {
        if let Some((_, each)) = r.gpu_shape() {
            for d in bits(mask) {
                self.used[d] = self.used[d]
                    .checked_sub(each as u32)
                    .expect("gpu device underflow");
            }
        }
    }
    /// Takes `milli` on the devices in `mask`.
    fn add(&mut self, mask: u64, milli: u32) {
        for d in bits(mask) {
            self.used[d] += milli;
        }
    }
    /// Charges `milli` (a node's reserved GPU) on whole devices from the first.
    fn reserve(&mut self, mut milli: u64) {
        for u in &mut self.used {
            let take = milli.min(MILLI_PER_GPU);
            *u += take as u32;
            milli -= take;
        }
    }
}

/// The device numbers set in `mask`.
pub fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..MAX_GPUS_PER_NODE).filter(move |d| mask & (1 << d) != 0)
}

/// A node label requirement: the node's label `key` must be one of `values` (or, when
/// `values` is empty, merely present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRequirement {
    /// Label key, e.g. `gpu.model`.
    pub key: String,
    /// Accepted values; empty = any value.
    pub values: Vec<String>,
}

/// One machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The control plane's id for the node.
    pub id: NodeId,
    /// Human name (agent name, trace `sn`).
    pub name: String,
    /// Failure domain.
    pub zone: String,
    /// Node pool the node was provisioned from.
    pub pool: String,
    /// Allocatable capacity.
    pub capacity: Resources,
    /// Already requested by things the view holds no [`Replica`] for (system
    /// daemons, foreign workloads). The view adds its replicas on top of this.
    pub reserved: Resources,
    /// What the node costs per hour, in USD.
    pub price_per_hour: f64,
    /// Free-form labels (`gpu.model`, ...).
    pub labels: BTreeMap<String, String>,
    /// False when cordoned, draining or not ready: no new replicas go there.
    pub schedulable: bool,
}

impl Node {
    /// A schedulable node with no labels and nothing reserved.
    pub fn new(
        id: NodeId,
        zone: &str,
        pool: &str,
        capacity: Resources,
        price_per_hour: f64,
    ) -> Self {
        Node {
            id,
            name: format!("node-{id}"),
            zone: zone.to_string(),
            pool: pool.to_string(),
            capacity,
            reserved: Resources::default(),
            price_per_hour,
            labels: BTreeMap::new(),
            schedulable: true,
        }
    }

    /// USD per hour per "unit" of resource, where a unit is the node's capacity
    /// normalised to one core + 4 GiB (+ one GPU counted as 8 cores' worth): lets
    /// nodes of different shapes be compared by price.
    pub fn price_per_unit(&self) -> f64 {
        let units = self.capacity.cpu_millis as f64 / 1000.0
            + self.capacity.memory_mib as f64 / 4096.0
            + self.capacity.gpu_milli as f64 / 1000.0 * 8.0;
        if units <= 0.0 {
            f64::INFINITY
        } else {
            self.price_per_hour / units
        }
    }
}

/// How a replica's lifetime is expected to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// A service replica that runs until told otherwise.
    LongRunning,
    /// A batch task expected to finish after `expected_duration_s` seconds.
    Job {
        /// Expected run time in seconds.
        expected_duration_s: u64,
    },
}

/// One replica (or task) placed on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// Service name.
    pub service: String,
    /// Partition index within the service (0 for single-partition services and jobs).
    pub partition: u32,
    /// Node hosting it.
    pub node: NodeId,
    /// Requested resources.
    pub resources: Resources,
    /// Long-running or job.
    pub kind: WorkloadKind,
    /// For jobs: when it is expected to end, in the caller's time base (seconds).
    pub expected_end_s: Option<u64>,
    /// Size of the replica's state, for migration cost (0 = stateless).
    pub state_bytes: u64,
}

/// Handle to a replica inside a [`ClusterView`]; stable until the replica is removed.
pub type ReplicaSlot = usize;

/// Bookkeeping per node kept by the view.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeStats {
    /// Requested by the view's replicas (not including `Node::reserved`).
    pub(crate) allocated: Resources,
    pub(crate) long_running: u32,
    pub(crate) jobs: u32,
    /// Latest expected end among the node's jobs.
    pub(crate) job_end_max_s: u64,
    pub(crate) replicas: Vec<ReplicaSlot>,
}

/// The fields a placement scan reads, one small copyable record per node kept in a
/// vector parallel to the node entries: a scan over thousands of nodes then walks a
/// dense array that stays in cache instead of the full [`Node`] records (names,
/// labels, replica lists). Refreshed by every mutation of the node or its replicas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HotNode {
    /// Capacity not yet requested (allocation and `reserved` subtracted, floor zero),
    /// as three plain fields rather than a [`Resources`] (whose device count the scan
    /// never reads): the record then stays at 112 bytes.
    pub(crate) free_cpu: u64,
    pub(crate) free_mem: u64,
    /// Free milli-GPUs summed over the devices (at most 64,000).
    pub(crate) free_gpu: u32,
    /// Requested CPU and memory (capacity less free) and the capacity, as floats so a
    /// score converts nothing per node (exact: integers below 2^53).
    pub(crate) used_cpu: f64,
    pub(crate) used_mem: f64,
    pub(crate) cap_cpu: f64,
    pub(crate) cap_mem: f64,
    /// 1/capacity (0 for an absent resource).
    pub(crate) inv_cpu: f64,
    pub(crate) inv_mem: f64,
    pub(crate) price_per_unit: f64,
    pub(crate) id: NodeId,
    /// Latest expected end among the node's jobs.
    pub(crate) job_end_max_s: u64,
    pub(crate) zone_ix: u32,
    pub(crate) long_running: u32,
    pub(crate) jobs: u32,
    pub(crate) schedulable: bool,
    pub(crate) has_labels: bool,
    pub(crate) has_gpu: bool,
    /// The most milli-GPUs free on one device: a one-device share larger than this
    /// does not fit, whatever the node's sum.
    pub(crate) gpu_max_free: u16,
}

// The scan walks these records: keep one at 112 bytes (it was before GPU devices).
const _: () = assert!(std::mem::size_of::<HotNode>() <= 112);

impl HotNode {
    /// Whether `r` fits the free CPU, memory and GPU sum (GPU devices: `gpu_max_free`).
    #[inline]
    pub(crate) fn holds(&self, r: &Resources) -> bool {
        r.cpu_millis <= self.free_cpu
            && r.memory_mib <= self.free_mem
            && r.gpu_milli <= self.free_gpu as u64
    }

    fn of(e: &NodeEntry) -> HotNode {
        let free = free_of(e);
        let cap = &e.node.capacity;
        HotNode {
            free_cpu: free.cpu_millis,
            free_mem: free.memory_mib,
            free_gpu: free.gpu_milli as u32,
            used_cpu: (cap.cpu_millis - free.cpu_millis) as f64,
            used_mem: (cap.memory_mib - free.memory_mib) as f64,
            cap_cpu: cap.cpu_millis as f64,
            cap_mem: cap.memory_mib as f64,
            inv_cpu: e.inv_cpu,
            inv_mem: e.inv_mem,
            price_per_unit: e.price_per_unit,
            id: e.node.id,
            job_end_max_s: e.stats.job_end_max_s,
            zone_ix: e.zone_ix,
            long_running: e.stats.long_running,
            jobs: e.stats.jobs,
            schedulable: e.node.schedulable,
            has_labels: !e.node.labels.is_empty(),
            has_gpu: e.node.capacity.gpu_milli > 0,
            gpu_max_free: e.gpus.max_free() as u16,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub(crate) node: Node,
    pub(crate) zone_ix: u32,
    /// Scoring constants, computed once: 1/capacity (0 for an absent resource) and
    /// the price per unit.
    pub(crate) inv_cpu: f64,
    pub(crate) inv_mem: f64,
    pub(crate) price_per_unit: f64,
    pub(crate) stats: NodeStats,
    /// The node's GPU devices (none for a CPU-only node).
    pub(crate) gpus: GpuDevices,
}

/// Nodes and replicas with the indexes the planner needs: node by id, zone numbers,
/// replicas by node and by (service, partition). Mutations keep every index and each
/// node's allocation in step, so a planner can apply its own actions to a copy and
/// keep planning.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub(crate) nodes: Vec<NodeEntry>,
    /// `hot[i]` summarises `nodes[i]` for placement scans.
    pub(crate) hot: Vec<HotNode>,
    /// `block_free[b]`: the largest free CPU, memory and GPU (each on its own) among
    /// the schedulable nodes `hot[b * SCAN_BLOCK ..][.. SCAN_BLOCK]`. A scan skips a
    /// block whose maxima cannot hold the request: exact (only nodes that fail the
    /// capacity filter are skipped), and most blocks of a packed cluster.
    pub(crate) block_free: Vec<Resources>,
    // Fx-hashed (`rustc_hash`): these maps are looked up several times per partition
    // and round (the lookups were ~26 % of a 10,000-node profile, SipHash ~6 %).
    node_ix: FxHashMap<NodeId, usize>,
    zones: Vec<String>,
    zone_ix: FxHashMap<String, u32>,
    replicas: Vec<Option<Replica>>,
    free_slots: Vec<ReplicaSlot>,
    services: FxHashMap<String, u32>,
    /// `service_names[s]`: the service numbered `s` in `services`.
    service_names: Vec<String>,
    /// Dense partition numbers: `(service number, partition)` -> index into
    /// `members`, assigned when a partition's first replica is added and never
    /// reused, so an index stays valid for the view's life (and its clones').
    partition_ix: FxHashMap<(u32, u32), u32>,
    /// `members[ix]`: slots of the replicas of partition `ix` (empty once all left).
    members: Vec<Vec<ReplicaSlot>>,
    /// `partition_key[ix]`: the `(service number, partition)` of index `ix`.
    partition_key: Vec<(u32, u32)>,
    /// `slot_partition[slot]`: the partition index of the replica in `slot`, so a
    /// removal or a member's partition needs no hash lookup.
    slot_partition: Vec<u32>,
    /// `slot_gpus[slot]`: the GPU devices the replica in `slot` holds (a bit per
    /// device of its node; 0 without a GPU share), so a removal or a move frees the
    /// devices it took.
    slot_gpus: Vec<u64>,
    replica_count: usize,
}

impl ClusterView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of `nodes` holding `replicas`. Panics if a replica names an unknown node
    /// or a node id repeats: the caller built an inconsistent snapshot.
    pub fn from_parts(nodes: Vec<Node>, replicas: Vec<Replica>) -> Self {
        let mut view = ClusterView::new();
        for n in nodes {
            view.add_node(n);
        }
        for r in replicas {
            view.add_replica(r);
        }
        view
    }

    /// Adds a node. Panics if its id is already present.
    pub fn add_node(&mut self, node: Node) {
        assert!(
            !self.node_ix.contains_key(&node.id),
            "node {} added twice",
            node.id
        );
        assert!(
            node.capacity.gpu_devices() <= MAX_GPUS_PER_NODE,
            "node {} has {} GPUs; at most {MAX_GPUS_PER_NODE} per node are supported",
            node.id,
            node.capacity.gpu_devices()
        );
        let zone_ix = self.intern_zone(&node.zone);
        self.node_ix.insert(node.id, self.nodes.len());
        let inv = |c: u64| if c == 0 { 0.0 } else { 1.0 / c as f64 };
        let (inv_cpu, inv_mem) = (inv(node.capacity.cpu_millis), inv(node.capacity.memory_mib));
        let price_per_unit = node.price_per_unit();
        let mut gpus = GpuDevices::of_capacity(&node.capacity);
        gpus.reserve(node.reserved.gpu_milli);
        self.nodes.push(NodeEntry {
            node,
            zone_ix,
            inv_cpu,
            inv_mem,
            price_per_unit,
            stats: NodeStats::default(),
            gpus,
        });
        let last = self.nodes.len() - 1;
        self.hot.push(HotNode::of(&self.nodes[last]));
        self.refresh_block(last / SCAN_BLOCK);
    }

    fn refresh_hot(&mut self, ix: usize) {
        self.hot[ix] = HotNode::of(&self.nodes[ix]);
        self.refresh_block(ix / SCAN_BLOCK);
    }

    /// Recomputes one block's maxima of free capacity (`block_free`), adding or
    /// dropping the trailing block as the node count crosses a block boundary.
    fn refresh_block(&mut self, b: usize) {
        let blocks = self.hot.len().div_ceil(SCAN_BLOCK);
        self.block_free.resize(blocks, Resources::default());
        if b >= blocks {
            return;
        }
        let end = ((b + 1) * SCAN_BLOCK).min(self.hot.len());
        let mut m = Resources::default();
        for h in self.hot[b * SCAN_BLOCK..end]
            .iter()
            .filter(|h| h.schedulable)
        {
            m.cpu_millis = m.cpu_millis.max(h.free_cpu);
            m.memory_mib = m.memory_mib.max(h.free_mem);
            m.gpu_milli = m.gpu_milli.max(h.free_gpu as u64);
        }
        self.block_free[b] = m;
    }

    /// Removes a node together with every replica on it; returns the removed replicas.
    pub fn remove_node(&mut self, id: NodeId) -> Vec<Replica> {
        let Some(&ix) = self.node_ix.get(&id) else {
            return Vec::new();
        };
        let slots = self.nodes[ix].stats.replicas.clone();
        let removed: Vec<Replica> = slots
            .into_iter()
            .filter_map(|s| self.remove_replica(s))
            .collect();
        let ix = self.node_ix.remove(&id).expect("indexed");
        self.nodes.swap_remove(ix);
        self.hot.swap_remove(ix);
        if ix < self.nodes.len() {
            let moved = self.nodes[ix].node.id;
            self.node_ix.insert(moved, ix);
        }
        // The last node moved into `ix`: both blocks changed.
        self.refresh_block(ix / SCAN_BLOCK);
        self.refresh_block(self.nodes.len() / SCAN_BLOCK);
        removed
    }

    /// Marks a node (un)schedulable. Returns false if the node is unknown.
    pub fn set_schedulable(&mut self, id: NodeId, schedulable: bool) -> bool {
        match self.node_ix.get(&id) {
            Some(&ix) => {
                self.nodes[ix].node.schedulable = schedulable;
                self.refresh_hot(ix);
                true
            }
            None => false,
        }
    }

    /// Adds a replica on its node, charging the node. Panics if the node is unknown.
    pub fn add_replica(&mut self, replica: Replica) -> ReplicaSlot {
        let ix = *self.node_ix.get(&replica.node).unwrap_or_else(|| {
            panic!(
                "replica of {} on unknown node {}",
                replica.service, replica.node
            )
        });
        let service_ix = self.intern_service(&replica.service);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.replicas.push(None);
                self.slot_partition.push(0);
                self.slot_gpus.push(0);
                self.replicas.len() - 1
            }
        };
        Self::charge(&mut self.nodes[ix].stats, &replica, slot);
        self.slot_gpus[slot] = self.nodes[ix].gpus.take(&replica.resources);
        self.refresh_hot(ix);
        let part = self.intern_partition(service_ix, replica.partition);
        self.members[part as usize].push(slot);
        self.slot_partition[slot] = part;
        self.replicas[slot] = Some(replica);
        self.replica_count += 1;
        slot
    }

    /// Removes a replica, releasing its resources. None if the slot is empty.
    pub fn remove_replica(&mut self, slot: ReplicaSlot) -> Option<Replica> {
        let replica = self.replicas.get_mut(slot)?.take()?;
        let ix = self.node_ix[&replica.node];
        Self::release(&mut self.nodes[ix].stats, &replica, slot);
        self.nodes[ix]
            .gpus
            .give_back(self.slot_gpus[slot], &replica.resources);
        self.slot_gpus[slot] = 0;
        self.refresh_hot(ix);
        let part = self.slot_partition[slot] as usize;
        self.members[part].retain(|&s| s != slot);
        self.free_slots.push(slot);
        self.replica_count -= 1;
        Some(replica)
    }

    /// Moves a replica to another node (the end state of a live migration). Panics if
    /// the slot is empty or the target node unknown.
    pub fn move_replica(&mut self, slot: ReplicaSlot, to: NodeId) {
        let from = self.replicas[slot]
            .as_ref()
            .expect("moving an empty slot")
            .node;
        let from_ix = self.node_ix[&from];
        let to_ix = *self
            .node_ix
            .get(&to)
            .unwrap_or_else(|| panic!("move to unknown node {to}"));
        let mut replica = self.replicas[slot].take().expect("checked");
        Self::release(&mut self.nodes[from_ix].stats, &replica, slot);
        self.nodes[from_ix]
            .gpus
            .give_back(self.slot_gpus[slot], &replica.resources);
        replica.node = to;
        Self::charge(&mut self.nodes[to_ix].stats, &replica, slot);
        self.slot_gpus[slot] = self.nodes[to_ix].gpus.take(&replica.resources);
        self.refresh_hot(from_ix);
        self.refresh_hot(to_ix);
        self.replicas[slot] = Some(replica);
    }

    /// Changes a replica's requested resources in place (vertical scaling).
    pub fn resize_replica(&mut self, slot: ReplicaSlot, resources: Resources) {
        let replica = self.replicas[slot]
            .as_mut()
            .expect("resizing an empty slot");
        let ix = self.node_ix[&replica.node];
        let entry = &mut self.nodes[ix];
        entry.stats.allocated = entry.stats.allocated - replica.resources + resources;
        if resources.gpu_shape() != replica.resources.gpu_shape() {
            // A new GPU share: the old devices back, the new ones by best fit.
            entry
                .gpus
                .give_back(self.slot_gpus[slot], &replica.resources);
            self.slot_gpus[slot] = entry.gpus.take(&resources);
        }
        replica.resources = resources;
        self.refresh_hot(ix);
    }

    fn charge(stats: &mut NodeStats, replica: &Replica, slot: ReplicaSlot) {
        stats.allocated = stats.allocated + replica.resources;
        match replica.kind {
            WorkloadKind::LongRunning => stats.long_running += 1,
            WorkloadKind::Job { .. } => {
                stats.jobs += 1;
                stats.job_end_max_s = stats.job_end_max_s.max(replica.expected_end_s.unwrap_or(0));
            }
        }
        stats.replicas.push(slot);
    }

    fn release(stats: &mut NodeStats, replica: &Replica, slot: ReplicaSlot) {
        stats.allocated = stats.allocated - replica.resources;
        match replica.kind {
            WorkloadKind::LongRunning => stats.long_running -= 1,
            WorkloadKind::Job { .. } => {
                stats.jobs -= 1;
                if stats.jobs == 0 {
                    stats.job_end_max_s = 0;
                }
            }
        }
        if let Some(p) = stats.replicas.iter().position(|&s| s == slot) {
            stats.replicas.swap_remove(p);
        }
    }

    fn intern_zone(&mut self, zone: &str) -> u32 {
        if let Some(&z) = self.zone_ix.get(zone) {
            return z;
        }
        let z = self.zones.len() as u32;
        self.zones.push(zone.to_string());
        self.zone_ix.insert(zone.to_string(), z);
        z
    }

    fn intern_partition(&mut self, service_ix: u32, partition: u32) -> u32 {
        let next = self.members.len() as u32;
        let ix = *self
            .partition_ix
            .entry((service_ix, partition))
            .or_insert(next);
        if ix == next {
            self.members.push(Vec::new());
            self.partition_key.push((service_ix, partition));
        }
        ix
    }

    fn intern_service(&mut self, service: &str) -> u32 {
        if let Some(&s) = self.services.get(service) {
            return s;
        }
        let s = self.services.len() as u32;
        self.services.insert(service.to_string(), s);
        self.service_names.push(service.to_string());
        s
    }

    // ----- queries -----

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.replica_count
    }
    /// Number of distinct zones among nodes ever added.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }
    /// Every node, in insertion order (modulo removals).
    pub fn nodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().map(|e| &e.node)
    }
    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.node_ix.get(&id).map(|&ix| &self.nodes[ix].node)
    }
    /// Resources requested on the node by the view's replicas plus `reserved`.
    pub fn allocated(&self, id: NodeId) -> Option<Resources> {
        self.node_ix
            .get(&id)
            .map(|&ix| self.nodes[ix].stats.allocated + self.nodes[ix].node.reserved)
    }
    /// Capacity not yet requested on the node.
    pub fn free(&self, id: NodeId) -> Option<Resources> {
        self.node_ix.get(&id).map(|&ix| free_of(&self.nodes[ix]))
    }
    /// The node's GPU devices (None for an unknown node).
    pub fn gpus(&self, id: NodeId) -> Option<&GpuDevices> {
        self.node_ix.get(&id).map(|&ix| &self.nodes[ix].gpus)
    }
    /// Whether `r` fits the node's free capacity, its GPU devices one by one (not
    /// only their sum). False for an unknown node.
    pub fn fits(&self, id: NodeId, r: &Resources) -> bool {
        self.node_ix
            .get(&id)
            .is_some_and(|&ix| r.fits_in(&free_of(&self.nodes[ix])) && self.nodes[ix].gpus.fits(r))
    }
    /// Whether the node's GPU devices hold `r`'s GPU share (true without one; false
    /// for an unknown node).
    pub fn gpu_fits(&self, id: NodeId, r: &Resources) -> bool {
        self.node_ix
            .get(&id)
            .is_some_and(|&ix| self.nodes[ix].gpus.fits(r))
    }
    /// How many copies of `shape` fit in the node's free capacity, a GPU share counted
    /// on the devices, not the sum (0 for an unknown node or an all-zero shape).
    pub fn copies_fitting(&self, id: NodeId, shape: &Resources) -> u64 {
        self.node_ix.get(&id).map_or(0, |&ix| {
            let e = &self.nodes[ix];
            crate::consolidator::slots(shape, &free_of(e)).min(e.gpus.slots(shape))
        })
    }
    /// The GPU devices the replica in `slot` holds, in device order (empty without a
    /// GPU share or for an empty slot).
    pub fn replica_gpus(&self, slot: ReplicaSlot) -> Vec<usize> {
        match self.replica(slot) {
            Some(_) => bits(self.slot_gpus[slot]).collect(),
            None => Vec::new(),
        }
    }
    /// The replica in a slot.
    pub fn replica(&self, slot: ReplicaSlot) -> Option<&Replica> {
        self.replicas.get(slot).and_then(|r| r.as_ref())
    }
    /// Every replica with its slot.
    pub fn replicas(&self) -> impl Iterator<Item = (ReplicaSlot, &Replica)> + '_ {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(s, r)| r.as_ref().map(|r| (s, r)))
    }
    /// Slots of the replicas on a node.
    pub fn replicas_on(&self, id: NodeId) -> &[ReplicaSlot] {
        match self.node_ix.get(&id) {
            Some(&ix) => &self.nodes[ix].stats.replicas,
            None => &[],
        }
    }
    /// Slots of the replicas of one partition.
    pub fn partition_members(&self, service: &str, partition: u32) -> &[ReplicaSlot] {
        match self.partition_index(service, partition) {
            Some(ix) => &self.members[ix],
            None => &[],
        }
    }
    /// The dense index of a partition (see [`ClusterView::members_at`]): assigned
    /// when its first replica was added, stable for the view's life and kept by
    /// clones. None if the partition never had a replica in this view. Resolve it
    /// once per partition and round; [`ClusterView::members_at`] is then a `Vec`
    /// index instead of two hash lookups.
    pub fn partition_index(&self, service: &str, partition: u32) -> Option<usize> {
        let &s = self.services.get(service)?;
        self.partition_ix
            .get(&(s, partition))
            .map(|&ix| ix as usize)
    }
    /// Whether dense index `ix` is the partition `(service, partition)`: a check of a
    /// remembered index without a hash lookup.
    pub fn partition_is(&self, ix: usize, service: &str, partition: u32) -> bool {
        self.partition_key.get(ix).is_some_and(|&(s, p)| {
            p == partition
                && self
                    .service_names
                    .get(s as usize)
                    .is_some_and(|name| name == service)
        })
    }
    /// Slots of the replicas of the partition with dense index `ix` (empty for an
    /// index this view never assigned).
    pub fn members_at(&self, ix: usize) -> &[ReplicaSlot] {
        self.members.get(ix).map(|v| v.as_slice()).unwrap_or(&[])
    }
    /// The dense partition index of the replica in `slot`, None if the slot is empty.
    pub fn partition_index_of(&self, slot: ReplicaSlot) -> Option<usize> {
        self.replica(slot)?;
        Some(self.slot_partition[slot] as usize)
    }
    /// Nodes hosting a replica of the partition.
    pub fn partition_nodes(&self, service: &str, partition: u32) -> Vec<NodeId> {
        self.partition_members(service, partition)
            .iter()
            .map(|&s| self.replicas[s].as_ref().expect("indexed").node)
            .collect()
    }
    /// Every (service, partition) present, sorted for determinism.
    pub fn partition_keys(&self) -> Vec<(String, u32)> {
        let mut names: Vec<(&String, &u32)> = self.services.iter().collect();
        names.sort_by_key(|(_, &ix)| ix);
        let names: Vec<&String> = names.into_iter().map(|(n, _)| n).collect();
        let mut keys: Vec<(String, u32)> = self
            .partition_key
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| !m.is_empty())
            .map(|(&(s, p), _)| (names[s as usize].clone(), p))
            .collect();
        keys.sort();
        keys
    }
    /// Zone of a node.
    pub fn zone_of(&self, id: NodeId) -> Option<&str> {
        self.node(id).map(|n| n.zone.as_str())
    }
    /// The zone of a node as its interned number (`zone_name` gives the name back):
    /// comparing zones by number allocates nothing.
    pub fn zone_index_of(&self, id: NodeId) -> Option<u32> {
        self.node_ix.get(&id).map(|&ix| self.nodes[ix].zone_ix)
    }
    /// The name of an interned zone number.
    pub fn zone_name(&self, zone: u32) -> Option<&str> {
        self.zones.get(zone as usize).map(String::as_str)
    }
    /// Count of long-running replicas and of jobs on a node.
    pub fn workload_counts(&self, id: NodeId) -> (u32, u32) {
        match self.node_ix.get(&id) {
            Some(&ix) => (self.nodes[ix].stats.long_running, self.nodes[ix].stats.jobs),
            None => (0, 0),
        }
    }
    pub(crate) fn node_index(&self, id: NodeId) -> Option<usize> {
        self.node_ix.get(&id).copied()
    }
}

/// Nodes per block of [`ClusterView::block_free`]: small enough that a block with
/// one node of room costs a short scan, large enough that skipping a block saves
/// most of its nodes' filter checks.
pub(crate) const SCAN_BLOCK: usize = 64;

#[inline]
pub(crate) fn free_of(e: &NodeEntry) -> Resources {
    e.node
        .capacity
        .saturating_sub(&(e.stats.allocated + e.node.reserved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(service: &str, partition: u32, node: NodeId) -> Replica {
        Replica {
            service: service.into(),
            partition,
            node,
            resources: Resources::new(100, 100),
            kind: WorkloadKind::LongRunning,
            expected_end_s: None,
            state_bytes: 0,
        }
    }

    fn gpu_replica(service: &str, node: NodeId, count: u32, each: u64) -> Replica {
        Replica {
            resources: Resources::with_gpus(1000, 1024, count, each),
            ..replica(service, 0, node)
        }
    }

    fn gpu_node(id: NodeId, gpus: u64) -> Node {
        Node::new(
            id,
            "a",
            "g",
            Resources::with_gpu(32000, 65536, gpus * 1000),
            5.0,
        )
    }

    #[test]
    fn gpu_shapes() {
        assert_eq!(Resources::new(1, 1).gpu_shape(), None);
        assert_eq!(
            Resources::with_gpus(1, 1, 1, 600).gpu_shape(),
            Some((1, 600))
        );
        assert_eq!(
            Resources::with_gpus(1, 1, 4, 1000).gpu_shape(),
            Some((4, 1000))
        );
        // No count: whole devices by the sum, the share split evenly over them.
        assert_eq!(Resources::with_gpu(1, 1, 500).gpu_shape(), Some((1, 500)));
        assert_eq!(Resources::with_gpu(1, 1, 2000).gpu_shape(), Some((2, 1000)));
        let cap = Resources::with_gpu(1, 1, 2000);
        assert!(Resources::with_gpus(1, 1, 2, 1000).gpu_fits_capacity(&cap));
        assert!(!Resources::with_gpus(1, 1, 4, 1000).gpu_fits_capacity(&cap));
        assert!(Resources::new(1, 1).gpu_fits_capacity(&Resources::new(1, 1)));
    }

    #[test]
    fn a_fractional_share_never_straddles_two_devices() {
        let mut v = ClusterView::from_parts(vec![gpu_node(1, 2)], vec![]);
        let a = v.add_replica(gpu_replica("a", 1, 1, 700));
        let b = v.add_replica(gpu_replica("b", 1, 1, 700));
        // Best fit: the second 0.7 cannot share the first's device, so it opens the other.
        assert_ne!(v.replica_gpus(a), v.replica_gpus(b));
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![300, 300]);
        // 0.6 GPU is free in sum (0.3 + 0.3), but on no one device.
        let r = Resources::with_gpus(1000, 1024, 1, 600);
        assert!(r.fits_in(&v.free(1).unwrap()));
        assert!(!v.fits(1, &r));
        assert!(!v.gpu_fits(1, &r));
        assert!(v.fits(1, &Resources::with_gpus(1000, 1024, 1, 300)));
        // Warm-spare counting agrees: two 0.3 shares fit, no 0.6 one.
        assert_eq!(
            v.copies_fitting(1, &Resources::with_gpus(1000, 1024, 1, 300)),
            2
        );
        assert_eq!(
            v.copies_fitting(1, &Resources::with_gpus(1000, 1024, 1, 600)),
            0
        );
        assert_eq!(v.copies_fitting(1, &Resources::new(1000, 1024)), 30);
    }

    #[test]
    fn fractional_shares_go_to_the_most_used_device_that_holds_them() {
        let mut v = ClusterView::from_parts(vec![gpu_node(1, 3)], vec![]);
        let big = v.add_replica(gpu_replica("big", 1, 1, 600));
        let small = v.add_replica(gpu_replica("small", 1, 1, 300));
        // 0.3 joins the 0.6 on its device rather than opening a whole one.
        assert_eq!(v.replica_gpus(big), v.replica_gpus(small));
        assert_eq!(v.gpus(1).unwrap().whole_free(), 2);
        // 0.2 no longer fits there (0.1 left): it opens the next device.
        let next = v.add_replica(gpu_replica("next", 1, 1, 200));
        assert_eq!(v.replica_gpus(next), vec![1]);
    }

    #[test]
    fn whole_gpu_requests_take_whole_free_devices() {
        let mut v = ClusterView::from_parts(vec![gpu_node(1, 4)], vec![]);
        let frac = v.add_replica(gpu_replica("frac", 1, 1, 500));
        assert_eq!(v.replica_gpus(frac), vec![0]);
        let three = v.add_replica(gpu_replica("three", 1, 3, 1000));
        assert_eq!(v.replica_gpus(three), vec![1, 2, 3]);
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![500, 0, 0, 0]);
        // A whole GPU is not there, though half of one is.
        assert!(!v.fits(1, &Resources::with_gpus(1000, 1024, 1, 1000)));
        assert!(v.fits(1, &Resources::with_gpus(1000, 1024, 1, 500)));
    }

    #[test]
    fn removing_or_moving_a_replica_frees_the_devices_it_took() {
        let mut v = ClusterView::from_parts(vec![gpu_node(1, 2), gpu_node(2, 2)], vec![]);
        let a = v.add_replica(gpu_replica("a", 1, 1, 400));
        let w = v.add_replica(gpu_replica("w", 1, 1, 1000));
        assert_eq!(v.replica_gpus(a), vec![0]);
        assert_eq!(v.replica_gpus(w), vec![1]);
        v.move_replica(w, 2);
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![600, 1000]);
        assert_eq!(v.gpus(2).unwrap().free_per_device(), vec![0, 1000]);
        v.remove_replica(a);
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![1000, 1000]);
        assert!(v.replica_gpus(a).is_empty());
        v.remove_node(2);
        assert!(v.gpus(2).is_none());
        // A resize to another GPU share gives the old devices back first.
        let b = v.add_replica(gpu_replica("b", 1, 1, 300));
        v.resize_replica(b, Resources::with_gpus(1000, 1024, 2, 1000));
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![0, 0]);
        v.resize_replica(b, Resources::new(1000, 1024));
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![1000, 1000]);
    }

    #[test]
    fn an_over_committed_snapshot_is_given_back_exactly() {
        // A snapshot may hold more than the devices do; taking and giving back stay
        // in step so nothing underflows.
        let mut v = ClusterView::from_parts(vec![gpu_node(1, 1)], vec![]);
        let a = v.add_replica(gpu_replica("a", 1, 1, 800));
        let b = v.add_replica(gpu_replica("b", 1, 1, 800));
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![0]);
        v.remove_replica(a);
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![200]);
        v.remove_replica(b);
        assert_eq!(v.gpus(1).unwrap().free_per_device(), vec![1000]);
    }

    #[test]
    fn partition_indexes_are_stable_through_removals_and_clones() {
        let mut v = ClusterView::from_parts(
            vec![
                Node::new(1, "a", "p", Resources::new(4000, 4096), 1.0),
                Node::new(2, "b", "p", Resources::new(4000, 4096), 1.0),
            ],
            vec![],
        );
        let s0 = v.add_replica(replica("s", 0, 1));
        let t3 = v.add_replica(replica("t", 3, 2));
        let s0b = v.add_replica(replica("s", 0, 2));
        let (ps, pt) = (
            v.partition_index("s", 0).unwrap(),
            v.partition_index("t", 3).unwrap(),
        );
        assert_ne!(ps, pt);
        assert_eq!(v.members_at(ps), &[s0, s0b]);
        assert_eq!(v.partition_index_of(t3), Some(pt));
        assert_eq!(v.partition_index("s", 1), None);
        assert_eq!(v.partition_index("u", 0), None);
        // Emptied: the index stays, with no members, and the key leaves the list.
        v.remove_replica(t3);
        assert_eq!(v.partition_index("t", 3), Some(pt));
        assert!(v.members_at(pt).is_empty());
        assert_eq!(v.partition_index_of(t3), None);
        assert_eq!(v.partition_keys(), vec![("s".to_string(), 0)]);
        // Re-added (in the freed slot): the same index; a clone keeps the numbering.
        let t3b = v.add_replica(replica("t", 3, 1));
        assert_eq!(v.partition_index("t", 3), Some(pt));
        let c = v.clone();
        assert_eq!(c.members_at(pt), &[t3b]);
        assert_eq!(c.partition_members("s", 0), &[s0, s0b]);
        assert!(c.members_at(99).is_empty());
    }
}
