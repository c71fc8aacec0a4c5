//! The user verbs: apply, get, describe, delete, drain, events, top. Human tables by
//! default, `-o json` for scripts. Everything printed goes through [`outln!`], which
//! ends the process quietly when stdout is closed (`stator describe service x | head`).

use crate::client::Api;
use anyhow::Context as _;
use stator_api::ids::NodeId;
use stator_api::spec::{parse_spec, SpecFormat};
use stator_api::views::{Event, EventKind, NodeView, PartitionView, ServiceView};
use std::collections::BTreeMap;
use std::path::Path;

/// Events shown at the bottom of `describe`.
const DESCRIBE_EVENTS_SHOWN: usize = 20;
/// Rows `stator top` shows per table unless `--limit` says otherwise.
pub const TOP_DEFAULT_LIMIT: usize = 20;

/// `println!` that exits quietly (status 0) when stdout is a closed pipe, instead of
/// panicking with "failed printing to stdout".
#[macro_export]
macro_rules! outln {
    () => { $crate::commands::write_stdout(format_args!("")) };
    ($($arg:tt)*) => { $crate::commands::write_stdout(format_args!($($arg)*)) };
}

/// Writes one line to stdout; a closed pipe ends the process quietly.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        exit_on_write_error(error);
    }
}

/// Writes bytes to stdout as they are; a closed pipe ends the process quietly.
pub fn write_stdout_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_all(bytes).and_then(|()| out.flush()) {
        exit_on_write_error(error);
    }
}

fn exit_on_write_error(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader has all it wanted (`| head`): that is not a failure.
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {error}");
    std::process::exit(1);
}

/// Output format of the read verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    print_table_indented(header, rows, "");
}

/// `1.2s`, `340ms`, `5m`: the age of an observation.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m", ms / 60_000),
        _ => format!("{}h", ms / 3_600_000),
    }
}

fn ops(per_sec: f64) -> String {
    if per_sec >= 100.0 {
        format!("{per_sec:.0}")
    } else {
        format!("{per_sec:.1}")
    }
}

fn micros(us: u64) -> String {
    if us == 0 {
        // No operation in the window: no latency to speak of.
        "-".to_string()
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn lower<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `stator apply -f FILE`: validates locally (errors name the field), then PUTs it.
pub async fn apply(api: &Api, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let format = SpecFormat::from_path(&file.to_string_lossy());
    let spec = parse_spec(&text, format).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let content_type = match format {
        SpecFormat::Yaml => "application/yaml",
        SpecFormat::Json => "application/json",
        _ => "application/toml",
    };
    let answer = api
        .put_raw(
            &format!("/v1/services/{}", spec.name),
            content_type,
            text.into_bytes(),
        )
        .await?;
    let result = answer
        .get("result")
        .and_then(|r| r.as_str())
        .unwrap_or("applied");
    outln!("service/{} {result}", spec.name);
    Ok(())
}

/// `stator get nodes|services|partitions [SERVICE]`.
pub async fn get(
    api: &Api,
    what: &str,
    service: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    match what {
        "nodes" | "node" | "no" => {
            let nodes: Vec<NodeView> = api.get("/v1/nodes").await?;
            if output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            print_table(
                &[
                    "NAME",
                    "ID",
                    "STATE",
                    "ZONE",
                    "POOL",
                    "CPU",
                    "MEMORY",
                    "REPLICAS",
                    "LEADERS",
                    "INSTANCES",
                    "HEARTBEAT",
                    "ADDRESS",
                ],
                nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.id.to_string(),
                            lower(&n.state),
                            n.zone.clone(),
                            n.pool.clone(),
                            format!("{}m", n.cpu_millis),
                            format!("{}Mi", n.memory_mib),
                            n.replicas.to_string(),
                            n.leaders.to_string(),
                            n.instances.to_string(),
                            n.last_heartbeat_age_ms
                                .map_or_else(|| "-".into(), |ms| format!("{} ago", age(ms))),
                            n.transport_addr.clone(),
                        ]
                    })
                    .collect(),
            );
            print_drain_waits(&nodes);
        }
        "services" | "service" | "svc" => {
            let services: Vec<ServiceView> = api.get("/v1/services").await?;
            if output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&services)?);
                return Ok(());
            }
            print_table(
                &[
                    "NAME",
                    "KIND",
                    "PARTITIONS",
                    "REPLICAS",
                    "LEADERS",
                    "REPLICATED",
                    "INSTANCES",
                ],
                services
                    .iter()
                    .map(|s| {
                        let replicated = lower(&s.kind) == "replicated";
                        let or_dash = |n: u32| {
                            if replicated {
                                n.to_string()
                            } else {
                                "-".into()
                            }
                        };
                        vec![
                            s.name.clone(),
                            lower(&s.kind),
                            or_dash(s.spec.partitions),
                            or_dash(s.spec.replicas),
                            s.status.partitions_with_leader.to_string(),
                            s.status.partitions_replicated.to_string(),
                            format!(
                                "{}/{}",
                                s.status.instances_ready, s.status.instances_assigned
                            ),
                        ]
                    })
                    .collect(),
            );
        }
        "partitions" | "partition" | "pt" => {
            let path = match service {
                Some(s) => format!("/v1/partitions?service={s}"),
                None => "/v1/partitions".into(),
            };
            let partitions: Vec<PartitionView> = api.get(&path).await?;
            if output == Output::Json {
                outln!("{}", serde_json::to_string_pretty(&partitions)?);
                return Ok(());
            }
            print_partitions(&partitions);
        }
        other => anyhow::bail!("get {other}: expected nodes, services or partitions"),
    }
    Ok(())
}

fn print_partitions(partitions: &[PartitionView]) {
    print_table(
        &[
            "SERVICE",
            "PARTITION",
            "SLOTS",
            "LEADER",
            "TERM",
            "MEMBERS",
            "RF_MET",
            "OPS/S",
            "REPORTED",
        ],
        partitions
            .iter()
            .map(|p| {
                let members: Vec<String> = p
                    .members
                    .iter()
                    .map(|m| {
                        let role = m.role.as_ref().map_or("-".to_string(), lower);
                        let dead = if m.alive { "" } else { ",lost" };
                        format!("{}({role}{dead})", m.name)
                    })
                    .collect();
                vec![
                    p.service.clone(),
                    p.partition.to_string(),
                    format!("{}-{}", p.slots.start, p.slots.end_inclusive),
                    p.leader
                        .as_ref()
                        .map_or("<none>".into(), |l| l.name.clone()),
                    p.leader.as_ref().map_or("-".into(), |l| l.term.to_string()),
                    members.join(" "),
                    if p.replication_factor_met {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    p.load.as_ref().map_or("-".into(), |l| ops(l.ops_per_sec)),
                    p.load
                        .as_ref()
                        .map_or("-".into(), |l| format!("{} ago", age(l.observed_age_ms))),
                ]
            })
            .collect(),
    );
}

/// Under a node table: why each draining node waits, one line per blocked partition.
fn print_drain_waits(nodes: &[NodeView]) {
    for node in nodes.iter().filter(|n| !n.drain_waits.is_empty()) {
        outln!();
        outln!("{} drain waits on:", node.name);
        for reason in &node.drain_waits {
            outln!("  {reason}");
        }
    }
}

/// Node names by id, for events (which carry ids).
type Names = BTreeMap<NodeId, String>;

async fn node_names(api: &Api) -> anyhow::Result<(Vec<NodeView>, Names)> {
    let nodes: Vec<NodeView> = api.get("/v1/nodes").await?;
    let names = nodes.iter().map(|n| (n.id, n.name.clone())).collect();
    Ok((nodes, names))
}

fn name_of(names: &Names, id: NodeId) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("node-{id}"))
}

/// One line about an event, for people.
pub fn event_message(event: &EventKind, names: &Names) -> String {
    let node = |id: &NodeId| name_of(names, *id);
    match event {
        EventKind::NodeJoined { name, .. } => format!("{name} joined"),
        EventKind::NodeRejoined { name, .. } => format!("{name} rejoined with its identity"),
        EventKind::PartitionReset {
            service,
            partition,
            reason,
        } => format!("{service}/{partition} reset: {reason}"),
        EventKind::NodeLost { name, .. } => format!("{name} missed its heartbeat grace: lost"),
        EventKind::NodeDraining { name, .. } => format!("{name} draining"),
        EventKind::NodeDrained { name, .. } => format!("{name} drained"),
        EventKind::DrainBlocked { name, reasons, .. } => {
            format!("{name} drain waits: {}", reasons.join("; "))
        }
        EventKind::ReplicaPlaced {
            service,
            partition,
            members,
        } => format!(
            "{service}/{partition} placed on {}",
            members.iter().map(node).collect::<Vec<_>>().join(", ")
        ),
        EventKind::ReplicaMoved {
            service,
            partition,
            from,
            to,
            reason,
        } => format!(
            "{service}/{partition} member {} replaced by {} ({reason})",
            node(from),
            node(to)
        ),
        EventKind::ReplicaResized {
            service,
            partition,
            node_id,
            cpu_millis,
        } => format!(
            "{service}/{partition} on {} resized to {cpu_millis}m CPU",
            node(node_id)
        ),
        EventKind::NodeRequested { pool, zone } => {
            format!("node requested from pool {pool} in zone {zone}")
        }
        EventKind::NodeReleased { name, .. } => format!("{name} released"),
        EventKind::LeaderChanged {
            service,
            partition,
            leader,
            term,
        } => match leader {
            Some(id) => format!("{service}/{partition} leader {} (term {term})", node(id)),
            None => format!("{service}/{partition} has no leader (term {term})"),
        },
        EventKind::ServiceApplied {
            service,
            generation,
        } => format!("{service} applied (generation {generation})"),
        EventKind::ServiceDeleted { service } => format!("{service} deleted"),
        EventKind::InstancePlaced {
            service,
            id,
            node_id,
        } => format!("{service} instance {id} placed on {}", node(node_id)),
        EventKind::InstanceRemoved { service, id } => format!("{service} instance {id} removed"),
        EventKind::InstanceOomKilled {
            service,
            id,
            node_id,
            oom_kills,
        } => format!(
            "{service} instance {id} on {} OOM-killed (memory limit; {oom_kills} so far)",
            node(node_id)
        ),
        EventKind::InstanceFinished {
            service,
            id,
            succeeded,
        } => format!(
            "{service} instance {id} {}",
            if *succeeded { "succeeded" } else { "failed" }
        ),
        EventKind::JobFinished { service, phase } => format!("{service} job {}", lower(phase)),
        EventKind::Lagged { missed } => {
            format!("missed {missed} events (this reader fell behind)")
        }
    }
}

fn event_row(event: &Event, names: &Names, now_ms: u64) -> Vec<String> {
    vec![
        format!("{} ago", age(now_ms.saturating_sub(event.time_ms))),
        event.kind.name().to_string(),
        event_message(&event.kind, names),
    ]
}

/// The "Events:" section at the bottom of `describe`.
fn print_events_section(events: &[Event], names: &Names) {
    outln!("Events:");
    if events.is_empty() {
        outln!("  <none since the server started>");
        return;
    }
    let now = stator_server::controller::now_ms();
    let shown = &events[events.len().saturating_sub(DESCRIBE_EVENTS_SHOWN)..];
    print_table_indented(
        &["AGE", "TYPE", "MESSAGE"],
        shown.iter().map(|e| event_row(e, names, now)).collect(),
        "  ",
    );
}

/// Columns padded to their widest cell (counted in characters, so ages like `3µs`
/// line up), each line starting with `indent`.
fn print_table_indented(header: &[&str], rows: Vec<Vec<String>>, indent: &str) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{indent}{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

async fn recent_events(api: &Api) -> anyhow::Result<Vec<Event>> {
    api.get("/v1/events/recent").await
}

/// `stator describe service NAME`.
pub async fn describe_service(api: &Api, name: &str, output: Output) -> anyhow::Result<()> {
    let service: ServiceView = api.get(&format!("/v1/services/{name}")).await?;
    let partitions: Vec<PartitionView> = api.get(&format!("/v1/partitions?service={name}")).await?;
    let events: Vec<Event> = recent_events(api)
        .await?
        .into_iter()
        .filter(|e| e.kind.service() == Some(name))
        .collect();
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "service": service, "partitions": partitions, "events": events
            }))?
        );
        return Ok(());
    }
    let (_, names) = node_names(api).await?;
    print_service_header(&service);
    print_service_status(&service);
    print_instances_section(&service);
    print_partitions_section(&partitions);
    print_events_section(&events, &names);
    Ok(())
}

/// Name, kind, generation, resources and the spec as TOML.
fn print_service_header(service: &ServiceView) {
    let spec = &service.spec;
    outln!("Name:         {}", service.name);
    outln!("Kind:         {}", lower(&service.kind));
    outln!("Generation:   {}", service.generation);
    outln!(
        "Resources:    cpu {}m, memory {}Mi per replica",
        spec.resources.cpu_millis(),
        spec.resources.memory_mib()
    );
    outln!("Spec:");
    for line in toml::to_string_pretty(spec).unwrap_or_default().lines() {
        outln!("  {line}");
    }
}

/// Partitions with a leader and replicated (replicated services), or instances ready and
/// the job's phase (the others).
fn print_service_status(service: &ServiceView) {
    let (spec, status) = (&service.spec, &service.status);
    outln!("Status:");
    match lower(&service.kind).as_str() {
        "replicated" => {
            outln!("  Partitions:             {}", spec.partitions);
            outln!(
                "  With a leader:          {}",
                status.partitions_with_leader
            );
            outln!("  Replication factor met: {}", status.partitions_replicated);
            outln!("  Not placed yet:         {}", status.partitions_unplaced);
        }
        _ => {
            outln!(
                "  Instances ready:        {}/{}",
                status.instances_ready,
                status.instances_assigned
            );
            if let Some(phase) = &status.job_phase {
                outln!("  Job:                    {}", lower(phase));
                outln!("  Completions succeeded:  {}", status.completions_succeeded);
            }
        }
    }
}

/// One row per instance of a stateless service or job (nothing when it has none).
fn print_instances_section(service: &ServiceView) {
    if service.instances.is_empty() {
        return;
    }
    outln!("Instances:");
    print_table_indented(
        &[
            "ID",
            "NODE",
            "ADDRESS",
            "READY",
            "RESTARTS",
            "OOM_KILLS",
            "LAST_EXIT",
        ],
        service
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.id.clone(),
                    i.node.clone(),
                    i.addr.clone().unwrap_or_else(|| "-".into()),
                    if i.ready { "yes".into() } else { "no".into() },
                    i.restarts.to_string(),
                    i.oom_kills.to_string(),
                    i.reason.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
        "  ",
    );
}

/// One row per partition: slots, leader, replication and the last reported load.
fn print_partitions_section(partitions: &[PartitionView]) {
    if partitions.is_empty() {
        return;
    }
    outln!("Partitions:");
    print_table_indented(
        &[
            "PARTITION",
            "SLOTS",
            "LEADER",
            "TERM",
            "RF_MET",
            "OPS/S",
            "P99",
            "LAG",
            "REPORTED",
        ],
        partitions
            .iter()
            .map(|p| {
                let load = p.load.as_ref();
                vec![
                    p.partition.to_string(),
                    format!("{}-{}", p.slots.start, p.slots.end_inclusive),
                    p.leader
                        .as_ref()
                        .map_or("<none>".into(), |l| l.name.clone()),
                    p.leader.as_ref().map_or("-".into(), |l| l.term.to_string()),
                    if p.replication_factor_met {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    load.map_or("-".into(), |l| ops(l.ops_per_sec)),
                    load.map_or("-".into(), |l| micros(l.p99_us)),
                    load.map_or("-".into(), |l| l.apply_lag_entries.to_string()),
                    load.map_or("-".into(), |l| format!("{} ago", age(l.observed_age_ms))),
                ]
            })
            .collect(),
        "  ",
    );
}

/// `stator describe node NAME`.
pub async fn describe_node(api: &Api, name: &str, output: Output) -> anyhow::Result<()> {
    let node: NodeView = api.get(&format!("/v1/nodes/{name}")).await?;
    let partitions: Vec<PartitionView> = api.get("/v1/partitions").await?;
    let hosted: Vec<&PartitionView> = partitions
        .iter()
        .filter(|p| p.members.iter().any(|m| m.node_id == node.id))
        .collect();
    let events: Vec<Event> = recent_events(api)
        .await?
        .into_iter()
        .filter(|e| e.kind.node() == Some(node.id) || moved_with(&e.kind, node.id))
        .collect();
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": node, "partitions": hosted, "events": events
            }))?
        );
        return Ok(());
    }
    let (_, names) = node_names(api).await?;
    let percent = |used: u64, total: u64| (used * 100).checked_div(total).unwrap_or(0);
    outln!("Name:         {}", node.name);
    outln!("ID:           {}", node.id);
    outln!("State:        {}", lower(&node.state));
    outln!("Zone:         {}", node.zone);
    outln!("Pool:         {}", node.pool);
    outln!("Transport:    {}", node.transport_addr);
    outln!(
        "Heartbeat:    {}",
        node.last_heartbeat_age_ms
            .map_or_else(|| "none (lost)".into(), |ms| format!("{} ago", age(ms)))
    );
    outln!("Labels:");
    if node.labels.is_empty() {
        outln!("  <none>");
    }
    for (key, value) in &node.labels {
        outln!("  {key}={value}");
    }
    outln!("Capacity:");
    outln!(
        "  cpu:        {}m, requested {}m ({}%)",
        node.cpu_millis,
        node.cpu_requested_millis,
        percent(node.cpu_requested_millis, node.cpu_millis)
    );
    outln!(
        "  memory:     {}Mi, requested {}Mi ({}%)",
        node.memory_mib,
        node.memory_requested_mib,
        percent(node.memory_requested_mib, node.memory_mib)
    );
    outln!("  price:      ${}/h", node.price_per_hour);
    outln!(
        "Load:         {} ops/s over {} leader(s), {} replica(s), {} instance(s)",
        ops(node.ops_per_sec),
        node.leaders,
        node.replicas,
        node.instances
    );
    if lower(&node.state) == "draining" {
        if node.drain_waits.is_empty() {
            outln!("Drain:        moving replicas off, one partition at a time");
        } else {
            outln!("Drain:        waiting on");
            for reason in &node.drain_waits {
                outln!("  {reason}");
            }
        }
    }
    outln!("Replicas:");
    if hosted.is_empty() {
        outln!("  <none>");
    } else {
        print_table_indented(
            &[
                "PARTITION",
                "ROLE",
                "LEADER",
                "APPLIED",
                "DESIGNED",
                "RF_MET",
            ],
            hosted
                .iter()
                .map(|p| {
                    let me = p.members.iter().find(|m| m.node_id == node.id);
                    vec![
                        format!("{}/{}", p.service, p.partition),
                        me.and_then(|m| m.role.as_ref()).map_or("-".into(), lower),
                        p.leader
                            .as_ref()
                            .map_or("<none>".into(), |l| l.name.clone()),
                        me.and_then(|m| m.applied_index)
                            .map_or("-".into(), |i| i.to_string()),
                        if me.is_some_and(|m| m.designed) {
                            "yes".into()
                        } else {
                            "leaving".into()
                        },
                        if p.replication_factor_met {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                })
                .collect(),
            "  ",
        );
    }
    print_events_section(&events, &names);
    Ok(())
}

/// Whether a replica moved to or from `node`.
fn moved_with(kind: &EventKind, node: NodeId) -> bool {
    match kind {
        EventKind::ReplicaMoved { from, to, .. } => *from == node || *to == node,
        EventKind::ReplicaPlaced { members, .. } => members.contains(&node),
        _ => false,
    }
}

/// Splits `SERVICE/N`.
pub fn parse_partition_ref(text: &str) -> anyhow::Result<(String, u32)> {
    let (service, index) = text.rsplit_once('/').ok_or_else(|| {
        anyhow::anyhow!("partition {text:?}: expected SERVICE/N, e.g. sessions/0")
    })?;
    anyhow::ensure!(
        !service.is_empty(),
        "partition {text:?}: expected SERVICE/N, e.g. sessions/0"
    );
    let index = index.parse().map_err(|_| {
        anyhow::anyhow!(
            "partition {text:?}: N must be a partition index (0, 1, ...), got {index:?}"
        )
    })?;
    Ok((service.to_string(), index))
}

/// `stator describe partition SERVICE/N`.
pub async fn describe_partition(api: &Api, reference: &str, output: Output) -> anyhow::Result<()> {
    let (service, index) = parse_partition_ref(reference)?;
    let partitions: Vec<PartitionView> = api
        .get(&format!("/v1/partitions?service={service}"))
        .await?;
    let count = partitions.len();
    let partition = partitions
        .into_iter()
        .find(|p| p.partition == index)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "service {service} has no partition {index} (it has {count}: 0..{})",
                count.saturating_sub(1)
            )
        })?;
    let events: Vec<Event> = recent_events(api)
        .await?
        .into_iter()
        .filter(|e| e.kind.service() == Some(&service) && event_partition(&e.kind) == Some(index))
        .collect();
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "partition": partition, "events": events
            }))?
        );
        return Ok(());
    }
    let (_, names) = node_names(api).await?;
    let p = &partition;
    outln!("Service:      {}", p.service);
    outln!("Partition:    {}", p.partition);
    outln!("Group:        {}", p.group);
    outln!(
        "Slots:        {}-{} ({} slots)",
        p.slots.start,
        p.slots.end_inclusive,
        u32::from(p.slots.end_inclusive) - u32::from(p.slots.start) + 1
    );
    match (&p.leader, &p.load) {
        (Some(leader), Some(load)) => outln!(
            "Leader:       {} (term {}), reported {} ago",
            leader.name,
            leader.term,
            age(load.observed_age_ms)
        ),
        (Some(leader), None) => outln!("Leader:       {} (term {})", leader.name, leader.term),
        (None, _) => outln!("Leader:       <none reported: an election runs, or quorum is lost>"),
    }
    let designed = p.members.iter().filter(|m| m.designed).count();
    let alive = p.members.iter().filter(|m| m.designed && m.alive).count();
    if p.replication_factor_met {
        outln!(
            "Replication:  factor met: {designed} of {} members designed, alive and voting",
            p.replicas
        );
    } else {
        outln!(
            "Replication:  factor NOT met: {designed} of {} members designed, {alive} alive; \
             the control plane is replacing or adding members",
            p.replicas
        );
    }
    if let Some(load) = &p.load {
        outln!("Load:");
        outln!("  ops/s:        {}", ops(load.ops_per_sec));
        outln!("  p99:          {}", micros(load.p99_us));
        outln!("  applied:      {}", load.applied_index);
        outln!("  apply lag:    {} entries", load.apply_lag_entries);
        outln!("  state:        {}", bytes(load.state_bytes));
    }
    outln!("Members:");
    let leader_applied = p.load.as_ref().map(|l| l.applied_index);
    print_table_indented(
        &[
            "NODE", "ROLE", "DESIGNED", "ALIVE", "APPLIED", "LAG", "ADDRESS",
        ],
        p.members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.role.as_ref().map_or("-".into(), lower),
                    if m.designed {
                        "yes".into()
                    } else {
                        "leaving".into()
                    },
                    if m.alive { "yes".into() } else { "lost".into() },
                    m.applied_index.map_or("-".into(), |i| i.to_string()),
                    leader_applied
                        .zip(m.applied_index)
                        .map_or("-".into(), |(l, a)| l.saturating_sub(a).to_string()),
                    m.addr.clone(),
                ]
            })
            .collect(),
        "  ",
    );
    print_events_section(&events, &names);
    Ok(())
}

fn event_partition(kind: &EventKind) -> Option<u32> {
    match kind {
        EventKind::ReplicaPlaced { partition, .. }
        | EventKind::ReplicaMoved { partition, .. }
        | EventKind::ReplicaResized { partition, .. }
        | EventKind::LeaderChanged { partition, .. } => Some(*partition),
        _ => None,
    }
}

/// `stator events [-f] [--service S]`: the recent events, then (with `-f`) new ones
/// as they happen.
pub async fn events(
    api: &Api,
    follow: bool,
    service: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    if let Some(name) = service {
        // A typo would otherwise print nothing, for ever with -f.
        let _: ServiceView = api.get(&format!("/v1/services/{name}")).await?;
    }
    let (_, mut names) = node_names(api).await?;
    let wanted = |e: &Event| service.is_none() || e.kind.service() == service;
    // Subscribe before reading the history, so nothing falls between the two.
    let stream = if follow {
        Some(api.stream("/v1/events").await?)
    } else {
        None
    };
    let mut last_seq = 0;
    let now = stator_server::controller::now_ms();
    let history: Vec<Event> = recent_events(api).await?;
    if output == Output::Table {
        outln!("{:<10}  {:<18}  MESSAGE", "AGE", "TYPE");
    }
    for event in history.iter().filter(|e| wanted(e)) {
        print_event(event, &names, now, output)?;
    }
    if let Some(last) = history.last() {
        last_seq = last.seq;
    }
    let Some(mut stream) = stream else {
        return Ok(());
    };
    while let Some(event) = stream.next_event().await? {
        // Events already printed from the history come again on the stream.
        if event.seq != 0 && event.seq <= last_seq {
            continue;
        }
        last_seq = last_seq.max(event.seq);
        if let EventKind::NodeJoined { node_id, name } = &event.kind {
            names.insert(*node_id, name.clone());
        }
        if wanted(&event) || matches!(event.kind, EventKind::Lagged { .. }) {
            print_event(&event, &names, stator_server::controller::now_ms(), output)?;
        }
    }
    anyhow::bail!("the server closed the event stream (it stopped, or lost the controller); run `stator events -f` again")
}

fn print_event(event: &Event, names: &Names, now_ms: u64, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string(event)?),
        Output::Table => {
            let row = event_row(event, names, now_ms);
            outln!("{:<10}  {:<18}  {}", row[0], row[1], row[2]);
        }
    }
    Ok(())
}

/// `stator top`: nodes and partitions by load, from the last heartbeats.
pub async fn top(api: &Api, limit: usize, output: Output) -> anyhow::Result<()> {
    anyhow::ensure!(limit >= 1, "--limit: at least 1, got {limit}");
    let mut nodes: Vec<NodeView> = api.get("/v1/nodes").await?;
    let mut partitions: Vec<PartitionView> = api.get("/v1/partitions").await?;
    nodes.retain(|n| lower(&n.state) != "lost");
    nodes.sort_by(|a, b| {
        b.ops_per_sec
            .total_cmp(&a.ops_per_sec)
            .then(b.leaders.cmp(&a.leaders))
            .then(a.name.cmp(&b.name))
    });
    let load_of = |p: &PartitionView| p.load.as_ref().map_or(-1.0, |l| l.ops_per_sec);
    partitions.sort_by(|a, b| {
        load_of(b)
            .total_cmp(&load_of(a))
            .then(a.service.cmp(&b.service))
            .then(a.partition.cmp(&b.partition))
    });
    nodes.truncate(limit);
    partitions.truncate(limit);
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "nodes": nodes, "partitions": partitions })
            )?
        );
        return Ok(());
    }
    outln!("NODES (by ops/s; lost nodes left out)");
    print_table(
        &[
            "NAME",
            "STATE",
            "OPS/S",
            "LEADERS",
            "REPLICAS",
            "CPU_REQ",
            "MEM_REQ",
            "HEARTBEAT",
        ],
        nodes
            .iter()
            .map(|n| {
                let pct = |used: u64, total: u64| {
                    (used * 100)
                        .checked_div(total)
                        .map_or_else(|| "-".to_string(), |p| format!("{p}%"))
                };
                vec![
                    n.name.clone(),
                    lower(&n.state),
                    ops(n.ops_per_sec),
                    n.leaders.to_string(),
                    n.replicas.to_string(),
                    pct(n.cpu_requested_millis, n.cpu_millis),
                    pct(n.memory_requested_mib, n.memory_mib),
                    n.last_heartbeat_age_ms
                        .map_or("-".into(), |ms| format!("{} ago", age(ms))),
                ]
            })
            .collect(),
    );
    outln!();
    outln!("PARTITIONS (busiest first)");
    print_table(
        &[
            "PARTITION",
            "LEADER",
            "OPS/S",
            "P99",
            "LAG",
            "STATE",
            "RF_MET",
            "REPORTED",
        ],
        partitions
            .iter()
            .map(|p| {
                let load = p.load.as_ref();
                vec![
                    format!("{}/{}", p.service, p.partition),
                    p.leader
                        .as_ref()
                        .map_or("<none>".into(), |l| l.name.clone()),
                    load.map_or("-".into(), |l| ops(l.ops_per_sec)),
                    load.map_or("-".into(), |l| micros(l.p99_us)),
                    load.map_or("-".into(), |l| l.apply_lag_entries.to_string()),
                    load.map_or("-".into(), |l| bytes(l.state_bytes)),
                    if p.replication_factor_met {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    load.map_or("-".into(), |l| format!("{} ago", age(l.observed_age_ms))),
                ]
            })
            .collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_references_parse_or_say_what_is_expected() {
        assert_eq!(
            parse_partition_ref("sessions/3").unwrap(),
            ("sessions".to_string(), 3)
        );
        for bad in ["sessions", "/3", "sessions/x", "sessions/-1", ""] {
            let error = parse_partition_ref(bad).unwrap_err().to_string();
            assert!(
                error.contains("SERVICE/N") || error.contains("partition index"),
                "{error}"
            );
        }
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(340), "340ms");
        assert_eq!(age(1_250), "1.2s");
        assert_eq!(age(125_000), "2m");
        assert_eq!(age(7_300_000), "2h");
    }

    #[test]
    fn every_event_has_a_message_naming_nodes() {
        let names: Names = [(2, "node-2".to_string())].into_iter().collect();
        let message = event_message(
            &EventKind::LeaderChanged {
                service: "s".into(),
                partition: 1,
                leader: Some(2),
                term: 4,
            },
            &names,
        );
        assert_eq!(message, "s/1 leader node-2 (term 4)");
    }
}
