//! Readiness probes: TCP, HTTP and exec.

use super::*;

/// How an agent decides an instance is ready for traffic.
///
/// Written as `{ tcp = { port = 8080 } }`, `{ http = { port = 8080, path = "/healthz" } }`
/// or `{ exec = { command = ["check.sh"] } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
pub enum Probe {
    /// Ready when a TCP connection to `port` on the instance's host succeeds.
    Tcp(TcpProbe),
    /// Ready when `GET http://127.0.0.1:<port><path>` answers 2xx.
    Http(HttpProbe),
    /// Ready when `command` exits with status 0.
    Exec(ExecProbe),
}

/// A TCP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// Port to connect to; the service's `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An HTTP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// Port to query; the service's `port` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path to GET, starting with `/`.
    #[serde(default = "default_probe_path")]
    pub path: String,
}

pub(super) fn default_probe_path() -> String {
    "/".to_string()
}

/// An exec readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    /// Program and arguments, run in the instance's working directory.
    pub command: Vec<String>,
}

impl Probe {
    pub(super) fn validate(&self, field: &str) -> Result<(), SpecError> {
        match self {
            Probe::Tcp(TcpProbe { port: Some(0) })
            | Probe::Http(HttpProbe { port: Some(0), .. }) => Err(SpecError::invalid(
                format!("{field}.port"),
                "must be between 1 and 65535, or left out to use the service's port",
            )),
            Probe::Http(HttpProbe { path, .. }) if !path.starts_with('/') => {
                Err(SpecError::invalid(
                    format!("{field}.http.path"),
                    format!("must start with '/', got {path:?}"),
                ))
            }
            Probe::Exec(ExecProbe { command })
                if command.is_empty() || command.len() > MAX_COMMAND_ARGS =>
            {
                Err(SpecError::invalid(
                    format!("{field}.exec.command"),
                    format!("must name a program and at most {MAX_COMMAND_ARGS} arguments"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// On-the-wire shape of [`Probe`]: exactly one key, like [`AppSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<ExecProbe>,
}

impl TryFrom<RawProbe> for Probe {
    type Error = String;
    fn try_from(raw: RawProbe) -> Result<Self, String> {
        match (raw.tcp, raw.http, raw.exec) {
            (Some(tcp), None, None) => Ok(Probe::Tcp(tcp)),
            (None, Some(http), None) => Ok(Probe::Http(http)),
            (None, None, Some(exec)) => Ok(Probe::Exec(exec)),
            _ => Err("readiness: set exactly one of `tcp`, `http` or `exec`, e.g. readiness = { tcp = { port = 8080 } }".to_string()),
        }
    }
}

impl From<Probe> for RawProbe {
    fn from(probe: Probe) -> Self {
        let mut raw = RawProbe {
            tcp: None,
            http: None,
            exec: None,
        };
        match probe {
            Probe::Tcp(tcp) => raw.tcp = Some(tcp),
            Probe::Http(http) => raw.http = Some(http),
            Probe::Exec(exec) => raw.exec = Some(exec),
        }
        raw
    }
}
