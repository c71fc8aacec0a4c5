//! What a replica or instance runs: [`AppSpec`] (built-in, process, container) and [`ProcessSpec`].

use super::*;

/// What a replica or instance runs.
///
/// Written as `{ builtin = "kv" }`, `{ process = { command = [...], env = {...},
/// working_dir = "..." } }` or `{ container = { image = "oci:DIR:TAG", ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAppSpec", into = "RawAppSpec")]
pub enum AppSpec {
    /// A state machine compiled into the agent, by name (`kv`).
    Builtin(String),
    /// An external process: a `stator-sm/1` state machine for replicated services, the
    /// program itself for stateless services and jobs.
    Process(ProcessSpec),
    /// An OCI image run by the agent's container driver (stateless services and jobs).
    Container(ContainerSpec),
}

/// Built-in state machines the agent ships.
pub const BUILTIN_APPS: [&str; 1] = ["kv"];

impl AppSpec {
    /// Whether this is the built-in kv store (the one the RESP endpoint speaks to).
    pub fn is_builtin_kv(&self) -> bool {
        matches!(self, AppSpec::Builtin(name) if name == "kv")
    }

    /// Whether this runs a program of its own (what stateless services and jobs need).
    pub fn is_process_or_container(&self) -> bool {
        matches!(self, AppSpec::Process(_) | AppSpec::Container(_))
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        match self {
            AppSpec::Builtin(name) => {
                if !BUILTIN_APPS.contains(&name.as_str()) {
                    return Err(SpecError::invalid(
                        "app.builtin",
                        format!(
                            "unknown built-in app {name:?}; the built-ins are {BUILTIN_APPS:?}"
                        ),
                    ));
                }
                Ok(())
            }
            AppSpec::Process(process) => process.validate("app.process"),
            AppSpec::Container(container) => container.validate("app.container"),
        }
    }
}

/// The on-the-wire shape of [`AppSpec`]: a table with exactly one of two keys. Parsed
/// through this struct rather than a serde enum so TOML, YAML and JSON all accept the
/// same `{ builtin = ... }` shape and the error names the field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<ProcessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<ContainerSpec>,
}

impl TryFrom<RawAppSpec> for AppSpec {
    type Error = String;
    fn try_from(raw: RawAppSpec) -> Result<Self, String> {
        match (raw.builtin, raw.process, raw.container) {
            (Some(name), None, None) => Ok(AppSpec::Builtin(name)),
            (None, Some(process), None) => Ok(AppSpec::Process(process)),
            (None, None, Some(container)) => Ok(AppSpec::Container(container)),
            _ => Err("app: set exactly one of `builtin` (e.g. app = { builtin = \"kv\" }), `process` (app = { process = { command = [\"...\"] } }) or `container` (app = { container = { image = \"oci:DIR:TAG\" } })".to_string()),
        }
    }
}

impl From<AppSpec> for RawAppSpec {
    fn from(app: AppSpec) -> Self {
        match app {
            AppSpec::Builtin(name) => RawAppSpec {
                builtin: Some(name),
                process: None,
                container: None,
            },
            AppSpec::Process(process) => RawAppSpec {
                builtin: None,
                process: Some(process),
                container: None,
            },
            AppSpec::Container(container) => RawAppSpec {
                builtin: None,
                process: None,
                container: Some(container),
            },
        }
    }
}

/// An external process to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Directory to start in; the agent's data directory for the instance when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

impl ProcessSpec {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if self.command.is_empty() || self.command[0].trim().is_empty() {
            return Err(SpecError::invalid(
                format!("{field}.command"),
                "must name a program, e.g. command = [\"python3\", \"app.py\"]",
            ));
        }
        validate_command_and_env(field, &self.command, &self.env)?;
        if self.working_dir.as_deref() == Some("") {
            return Err(SpecError::invalid(
                format!("{field}.working_dir"),
                "must be a directory path, or left out",
            ));
        }
        Ok(())
    }
}

/// The limits every app that runs a command shares (processes and containers): the
/// argument count, the number of environment variables and their names.
pub(crate) fn validate_command_and_env(
    field: &str,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), SpecError> {
    if command.len() > MAX_COMMAND_ARGS {
        return Err(SpecError::invalid(
            format!("{field}.command"),
            format!(
                "at most {MAX_COMMAND_ARGS} arguments, got {}",
                command.len()
            ),
        ));
    }
    if env.len() > MAX_ENV_VARS {
        return Err(SpecError::invalid(
            format!("{field}.env"),
            format!("at most {MAX_ENV_VARS} variables, got {}", env.len()),
        ));
    }
    for key in env.keys() {
        let valid = !key.is_empty()
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(SpecError::invalid(
                format!("{field}.env"),
                format!("variable name {key:?} must be letters, digits and '_', not starting with a digit"),
            ));
        }
    }
    Ok(())
}
