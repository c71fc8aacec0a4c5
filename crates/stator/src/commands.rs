//! The user verbs: apply, get, describe, delete, drain. Human tables by default,
//! `-o json` for scripts.

use crate::client::Api;
use anyhow::Context as _;
use stator_api::spec::{parse_spec, SpecFormat};
use stator_server::views::{NodeView, PartitionView, ServiceView};
use std::path::Path;

/// Output format of the read verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
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
    println!("service/{} {result}", spec.name);
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
                println!("{}", serde_json::to_string_pretty(&nodes)?);
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
                            n.transport_addr.clone(),
                        ]
                    })
                    .collect(),
            );
        }
        "services" | "service" | "svc" => {
            let services: Vec<ServiceView> = api.get("/v1/services").await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&services)?);
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
                println!("{}", serde_json::to_string_pretty(&partitions)?);
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
                ]
            })
            .collect(),
    );
}

/// `stator describe service NAME`.
pub async fn describe_service(api: &Api, name: &str, output: Output) -> anyhow::Result<()> {
    let service: ServiceView = api.get(&format!("/v1/services/{name}")).await?;
    let partitions: Vec<PartitionView> = api.get(&format!("/v1/partitions?service={name}")).await?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "service": service, "partitions": partitions })
            )?
        );
        return Ok(());
    }
    println!("Name:        {}", service.name);
    println!("Kind:        {}", lower(&service.kind));
    println!("Generation:  {}", service.generation);
    println!("Spec:");
    for line in toml::to_string_pretty(&service.spec)
        .unwrap_or_default()
        .lines()
    {
        println!("  {line}");
    }
    println!("Status:      {}", serde_json::to_string(&service.status)?);
    if !service.instances.is_empty() {
        println!("Instances:");
        println!(
            "  {:<24} {:<12} {:<6} {:>8} {:>9}  LAST EXIT",
            "ID", "NODE", "READY", "RESTARTS", "OOM KILLS"
        );
        for instance in &service.instances {
            println!(
                "  {:<24} {:<12} {:<6} {:>8} {:>9}  {}",
                instance.id,
                instance.node,
                instance.ready,
                instance.restarts,
                instance.oom_kills,
                instance.reason.as_deref().unwrap_or("-"),
            );
        }
    }
    if !partitions.is_empty() {
        println!("Partitions:");
        print_partitions(&partitions);
    }
    Ok(())
}
