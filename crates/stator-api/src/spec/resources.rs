//! Resource requests and Kubernetes quantities: [`ResourceSpec`], [`CpuMillis`], [`MemoryMib`] and their parsers.

use super::*;

/// What one replica or instance requests, in Kubernetes quantities
/// (`cpu = "250m"`, `memory = "128Mi"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// CPU: `"250m"` (millicores), `"1"`, `"0.5"` or a number of cores.
    #[serde(default = "default_cpu")]
    pub cpu: CpuMillis,
    /// Memory: `"128Mi"`, `"1Gi"`, `"512M"`, or bytes; rounded up to whole MiB. Also the
    /// limit: a process or container that allocates past it is OOM-killed and restarted.
    #[serde(default = "default_memory")]
    pub memory: MemoryMib,
    /// CPU ceiling (a CFS quota), at least `cpu`; none when absent, so an app may burst
    /// into idle CPU while `cpu` still weighs its share when the node is busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<CpuMillis>,
}

pub(super) fn default_cpu() -> CpuMillis {
    CpuMillis(DEFAULT_CPU_MILLIS)
}
pub(super) fn default_memory() -> MemoryMib {
    MemoryMib(DEFAULT_MEMORY_MIB)
}

impl Default for ResourceSpec {
    fn default() -> Self {
        ResourceSpec {
            cpu: default_cpu(),
            memory: default_memory(),
            cpu_limit: None,
        }
    }
}

impl ResourceSpec {
    /// CPU in millicores.
    pub fn cpu_millis(&self) -> u64 {
        self.cpu.0
    }
    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory.0
    }
    /// CPU ceiling in millicores, if any.
    pub fn cpu_limit_millis(&self) -> Option<u64> {
        self.cpu_limit.map(|limit| limit.0)
    }

    pub(super) fn validate(&self, field: &str) -> Result<(), SpecError> {
        if self.cpu.0 == 0 || self.cpu.0 > MAX_CPU_MILLIS {
            return Err(SpecError::invalid(
                format!("{field}.cpu"),
                format!(
                    "must be between 1m and {}, got {}",
                    MAX_CPU_MILLIS / 1000,
                    self.cpu
                ),
            ));
        }
        if self.memory.0 == 0 || self.memory.0 > MAX_MEMORY_MIB {
            return Err(SpecError::invalid(
                format!("{field}.memory"),
                format!(
                    "must be between 1Mi and {}Gi, got {}",
                    MAX_MEMORY_MIB / 1024,
                    self.memory
                ),
            ));
        }
        if let Some(limit) = self.cpu_limit {
            if limit.0 < self.cpu.0 || limit.0 > MAX_CPU_MILLIS {
                return Err(SpecError::invalid(
                    format!("{field}.cpu_limit"),
                    format!(
                        "must be at least the request cpu = {} and at most {}, got {limit}",
                        self.cpu,
                        MAX_CPU_MILLIS / 1000
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A CPU quantity in millicores. Reads Kubernetes syntax, writes `"<n>m"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuMillis(pub u64);

impl fmt::Display for CpuMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

/// A memory quantity in MiB. Reads Kubernetes syntax, writes `"<n>Mi"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemoryMib(pub u64);

impl fmt::Display for MemoryMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}Mi", self.0)
    }
}

/// Parses a Kubernetes CPU quantity (`"250m"`, `"2"`, `"0.5"`) into millicores.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("CPU quantity {text:?} is not like \"250m\", \"1\" or \"0.5\"");
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = text.parse().map_err(|_| bad())?;
    cores_to_millis(cores).ok_or_else(bad)
}

pub(super) fn cores_to_millis(cores: f64) -> Option<u64> {
    if !cores.is_finite() || cores < 0.0 || cores > u64::MAX as f64 / 1000.0 {
        return None;
    }
    Some((cores * 1000.0).ceil() as u64)
}

/// Parses a Kubernetes memory quantity (`"128Mi"`, `"1Gi"`, `"512M"`, `"1e9"`, bytes)
/// into MiB, rounding up.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    const SUFFIXES: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let text = text.trim();
    let bad = || format!("memory quantity {text:?} is not like \"128Mi\", \"1Gi\" or \"512M\"");
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, multiplier)| text.strip_suffix(suffix).map(|n| (n, *multiplier)))
        .unwrap_or((text, 1.0));
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    bytes_to_mib(value * multiplier).ok_or_else(bad)
}

pub(super) fn bytes_to_mib(bytes: f64) -> Option<u64> {
    if !bytes.is_finite() || bytes < 0.0 {
        return None;
    }
    let mib = (bytes / 1_048_576.0).ceil();
    (mib <= u64::MAX as f64).then_some(mib as u64)
}

/// A quantity as written: a string (`"250m"`) or a bare number (cores, or bytes).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum QuantityText {
    Text(String),
    Integer(u64),
    Float(f64),
}

impl<'de> Deserialize<'de> for CpuMillis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let millis = match QuantityText::deserialize(deserializer)? {
            QuantityText::Text(text) => parse_cpu_millis(&text),
            QuantityText::Integer(cores) => cores
                .checked_mul(1000)
                .ok_or_else(|| format!("CPU quantity {cores} cores is too large")),
            QuantityText::Float(cores) => {
                cores_to_millis(cores).ok_or_else(|| format!("CPU quantity {cores} is not valid"))
            }
        };
        millis.map(CpuMillis).map_err(serde::de::Error::custom)
    }
}

impl Serialize for CpuMillis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryMib {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mib = match QuantityText::deserialize(deserializer)? {
            QuantityText::Text(text) => parse_memory_mib(&text),
            QuantityText::Integer(bytes) => {
                bytes_to_mib(bytes as f64).ok_or_else(|| format!("memory {bytes} is not valid"))
            }
            QuantityText::Float(bytes) => {
                bytes_to_mib(bytes).ok_or_else(|| format!("memory {bytes} is not valid"))
            }
        };
        mib.map(MemoryMib).map_err(serde::de::Error::custom)
    }
}

impl Serialize for MemoryMib {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
