//! Parsing and validation of specs, as users write them.

use super::*;

const DESIGN_EXAMPLE: &str = r#"
name = "sessions"
kind = "replicated"
partitions = 8
replicas = 3
app = { builtin = "kv" }
expose = { resp = "127.0.0.1:6380" }
resources = { cpu = "250m", memory = "128Mi" }
placement = { spread = "zone" }
qos = { p99_latency_ms = 5 }
"#;

fn invalid_field(result: Result<(), SpecError>) -> String {
    match result {
        Err(SpecError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn kv_budget_comes_from_maxmemory_only_and_only_kv_takes_it() {
    let budget = |extra: &str| {
        let spec = parse_spec(&format!("{DESIGN_EXAMPLE}{extra}"), SpecFormat::Auto).unwrap();
        spec.validate().unwrap();
        spec.kv_maxmemory_bytes()
    };
    assert_eq!(budget(""), 0, "no budget unless asked for");
    assert_eq!(budget("maxmemory = \"16Mi\"\n"), 16 * 1024 * 1024);
    assert_eq!(budget("maxmemory = \"0\"\n"), 0, "0: no budget");
    let process = "name = \"r\"\nkind = \"replicated\"\nmaxmemory = \"1Mi\"\n\
                   app = { process = { command = [\"app\"] } }\n";
    let spec = parse_spec(process, SpecFormat::Auto).unwrap();
    assert_eq!(invalid_field(spec.validate()), "maxmemory");
    let stateless = "name = \"w\"\nkind = \"stateless\"\nmaxmemory = \"1Mi\"\n\
                     app = { process = { command = [\"app\"] } }\n";
    let spec = parse_spec(stateless, SpecFormat::Auto).unwrap();
    assert_eq!(invalid_field(spec.validate()), "maxmemory");
}

#[test]
fn replicated_services_may_run_container_apps() {
    let text = "name = \"rooms\"\nkind = \"replicated\"\n\
                app = { container = { image = \"oci:img:1\", command = [\"/app\"] } }\n";
    let spec = parse_spec(text, SpecFormat::Auto).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.kv_maxmemory_bytes(), 0);
}

#[test]
fn accepts_the_design_example() {
    let spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Auto).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.name, "sessions");
    assert_eq!(spec.kind, ServiceKind::Replicated);
    assert_eq!(spec.partitions, 8);
    assert_eq!(spec.replicas, 3);
    assert!(spec.app.is_builtin_kv());
    assert_eq!(
        spec.expose.resp_addr(),
        Some("127.0.0.1:6380".parse().unwrap())
    );
    assert_eq!(spec.resources.cpu_millis(), 250);
    assert_eq!(spec.resources.memory_mib(), 128);
    assert_eq!(spec.placement.spread, SpreadOver::Zone);
    assert_eq!(spec.qos.unwrap().p99_latency_ms, Some(5));
}

#[test]
fn durability_defaults_to_memory_and_validates_the_periodic_interval() {
    let spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Auto).unwrap();
    assert_eq!(spec.durability, Durability::Memory);
    assert_eq!(spec.fsync_interval_ms(), 0);
    let with = |extra: &str| {
        let text = format!("{DESIGN_EXAMPLE}\n{extra}\n");
        parse_spec(&text, SpecFormat::Toml).and_then(|s| s.validate().map(|()| s))
    };
    let disk = with("durability = \"disk\"").unwrap();
    assert_eq!(disk.durability, Durability::Disk);
    let periodic = with("durability = \"periodic\"").unwrap();
    assert_eq!(periodic.fsync_interval_ms(), DEFAULT_FSYNC_INTERVAL_MS);
    let tuned = with("durability = \"periodic\"\nfsync_interval_ms = 200").unwrap();
    assert_eq!(tuned.fsync_interval_ms(), 200);
    let err = with("durability = \"periodic\"\nfsync_interval_ms = 1").unwrap_err();
    assert!(err.to_string().starts_with("fsync_interval_ms:"), "{err}");
    let err = with("durability = \"disk\"\nfsync_interval_ms = 100").unwrap_err();
    assert!(
        err.to_string().contains("durability = \"periodic\""),
        "{err}"
    );
    let err = with("durability = \"always\"").unwrap_err();
    assert!(err.to_string().contains("durability"), "{err}");
    // JSON round trip keeps the mode; memory is left out.
    let json = serde_json::to_string(&disk).unwrap();
    assert!(json.contains("\"durability\":\"disk\""), "{json}");
    assert!(!serde_json::to_string(&spec).unwrap().contains("durability"));
}

#[test]
fn yaml_and_json_read_the_same_spec() {
    let yaml = r#"
name: sessions
kind: replicated
partitions: 8
replicas: 3
app: { builtin: kv }
expose: { resp: "127.0.0.1:6380" }
resources: { cpu: 250m, memory: 128Mi }
placement: { spread: zone }
qos: { p99_latency_ms: 5 }
"#;
    let toml_spec = parse_spec(DESIGN_EXAMPLE, SpecFormat::Toml).unwrap();
    let yaml_spec = parse_spec(yaml, SpecFormat::Auto).unwrap();
    assert_eq!(toml_spec, yaml_spec);
    let json = serde_json::to_string(&toml_spec).unwrap();
    assert_eq!(parse_spec(&json, SpecFormat::Auto).unwrap(), toml_spec);
}

#[test]
fn reads_process_apps_and_probes_in_every_format() {
    let toml_text = r#"
name = "web"
kind = "stateless"
instances = 3
port = 8080
app = { process = { command = ["python3", "-m", "http.server", "8080"], env = { A = "1" }, working_dir = "/tmp" } }
readiness = { http = { path = "/" } }
expose = { http = "127.0.0.1:8088" }
"#;
    let spec = parse_spec(toml_text, SpecFormat::Auto).unwrap();
    spec.validate().unwrap();
    let AppSpec::Process(process) = &spec.app else {
        panic!("expected a process app")
    };
    assert_eq!(process.command[0], "python3");
    assert_eq!(process.env["A"], "1");
    assert!(matches!(spec.readiness, Some(Probe::Http(_))));
    let yaml = serde_yaml_ng::to_string(&spec).unwrap();
    assert_eq!(parse_spec(&yaml, SpecFormat::Yaml).unwrap(), spec);
}

#[test]
fn rejects_unknown_fields_and_wrong_types_naming_them() {
    let unknown = DESIGN_EXAMPLE.replace("replicas = 3", "replicas = 3\nreplica = 3");
    let err = parse_spec(&unknown, SpecFormat::Toml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("replica"), "{err}");
    let wrong_type = DESIGN_EXAMPLE.replace("partitions = 8", "partitions = \"eight\"");
    let err = parse_spec(&wrong_type, SpecFormat::Toml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("partitions"), "{err}");
    let both_apps = DESIGN_EXAMPLE.replace(
        "app = { builtin = \"kv\" }",
        "app = { builtin = \"kv\", process = { command = [\"x\"] } }",
    );
    let err = parse_spec(&both_apps, SpecFormat::Toml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one"), "{err}");
    let yaml_unknown = "name: a\napp: { builtin: kv }\nbogus: 1\n";
    let err = parse_spec(yaml_unknown, SpecFormat::Yaml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn validation_names_the_field_and_the_fix() {
    let base = parse_spec(DESIGN_EXAMPLE, SpecFormat::Toml).unwrap();
    let mut spec = base.clone();
    spec.replicas = 0;
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "replicas: must be 1, 3, 5 or 7 (an odd number keeps a majority), got 0"
    );
    spec = base.clone();
    spec.partitions = 1_000_000_000;
    assert_eq!(
        spec.validate().unwrap_err().to_string(),
        "partitions: must be between 1 and 1024, got 1000000000"
    );
    spec = base.clone();
    spec.name = "Bad_Name".into();
    assert_eq!(invalid_field(spec.validate()), "name");
    spec = base.clone();
    spec.expose.resp = Some("nowhere".into());
    assert_eq!(invalid_field(spec.validate()), "expose.resp");
    spec = base.clone();
    spec.expose.tls = Some(RespTlsSpec {
        cert_file: "/etc/stator/kv.pem".into(),
        key_file: "".into(),
    });
    spec.expose.resp = Some("127.0.0.1:6380".into());
    assert_eq!(invalid_field(spec.validate()), "expose.tls.key_file");
    spec.expose.resp = None;
    spec.expose.cluster = None;
    assert_eq!(invalid_field(spec.validate()), "expose.tls");
    spec = base.clone();
    spec.expose.auth = Some(AuthSpec {
        password_file: " ".into(),
        users: Vec::new(),
    });
    assert_eq!(invalid_field(spec.validate()), "expose.auth.password_file");
    spec = base.clone();
    spec.expose.auth = Some(AuthSpec {
        password_file: "/etc/stator/kv.pass".into(),
        users: vec![AclUserSpec {
            name: "default".into(),
            password_file: "/etc/stator/app.pass".into(),
            commands: vec!["+@read".into()],
            keys: vec!["user:*".into()],
        }],
    });
    assert_eq!(invalid_field(spec.validate()), "expose.auth.users[0].name");
    if let Some(auth) = spec.expose.auth.as_mut() {
        auth.users[0].name = "app".into();
        auth.users[0].commands.push("get".into());
    }
    assert_eq!(
        invalid_field(spec.validate()),
        "expose.auth.users[0].commands"
    );
    spec = base.clone();
    assert!(
        spec.expose.cluster_enabled(),
        "cluster mode is on by default"
    );
    spec.expose.cluster = Some(false);
    spec.validate().unwrap();
    assert!(!spec.expose.cluster_enabled());
    spec.expose.resp = None;
    assert_eq!(invalid_field(spec.validate()), "expose.cluster");
    spec = base.clone();
    spec.election_timeout_ms = Some(1);
    assert_eq!(invalid_field(spec.validate()), "election_timeout_ms");
    spec = base.clone();
    spec.app = AppSpec::Builtin("nope".into());
    assert_eq!(invalid_field(spec.validate()), "app.builtin");
    spec = base.clone();
    spec.instances = 4;
    assert_eq!(invalid_field(spec.validate()), "instances");
    spec = base;
    spec.kind = ServiceKind::Job;
    spec.app = AppSpec::Process(ProcessSpec::default());
    spec.expose = ExposeSpec::default();
    assert_eq!(invalid_field(spec.validate()), "app.process.command");
}

#[test]
fn parses_kubernetes_quantities() {
    assert_eq!(parse_cpu_millis("250m"), Ok(250));
    assert_eq!(parse_cpu_millis("1"), Ok(1000));
    assert_eq!(parse_cpu_millis("0.5"), Ok(500));
    assert_eq!(parse_cpu_millis("2.25"), Ok(2250));
    assert!(parse_cpu_millis("fast").is_err());
    assert!(parse_cpu_millis("-1").is_err());
    assert_eq!(parse_memory_mib("128Mi"), Ok(128));
    assert_eq!(parse_memory_mib("1Gi"), Ok(1024));
    assert_eq!(parse_memory_mib("1.5Gi"), Ok(1536));
    assert_eq!(parse_memory_mib("512M"), Ok(489));
    assert_eq!(parse_memory_mib("1Ki"), Ok(1));
    assert_eq!(parse_memory_mib("134217728"), Ok(128));
    assert!(parse_memory_mib("lots").is_err());
    let spec = parse_spec(
        "name = \"a\"\napp = { builtin = \"kv\" }\nresources = { cpu = 2, memory = 1073741824 }",
        SpecFormat::Toml,
    )
    .unwrap();
    assert_eq!(spec.resources.cpu_millis(), 2000);
    assert_eq!(spec.resources.memory_mib(), 1024);
    let err = parse_spec(
        "name = \"a\"\napp = { builtin = \"kv\" }\nresources = { cpu = \"fast\" }",
        SpecFormat::Toml,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("CPU quantity"), "{err}");
}

#[test]
fn jobs_take_their_own_fields_only() {
    let job = parse_spec(
        "name = \"batch\"\nkind = \"job\"\ncompletions = 2\nretries = 1\nbackoff_ms = 100\napp = { process = { command = [\"true\"] } }",
        SpecFormat::Auto,
    )
    .unwrap();
    job.validate().unwrap();
    let mut bad = job.clone();
    bad.retries = 1000;
    assert_eq!(invalid_field(bad.validate()), "retries");
    bad = job;
    bad.port = Some(80);
    assert_eq!(invalid_field(bad.validate()), "port");
}

#[test]
fn node_pools_validate() {
    let pool = parse_node_pool(
        "name = \"small\"\ncpu = \"4\"\nmemory = \"16Gi\"\nprice_per_hour = 0.17\nboot_delay_s = 60\nmin = 0\nmax = 10",
        SpecFormat::Auto,
    )
    .unwrap();
    pool.validate().unwrap();
    assert_eq!(pool.cpu, CpuMillis(4000));
    assert_eq!(pool.memory, MemoryMib(16384));
    let mut bad = pool;
    bad.min = 11;
    assert_eq!(invalid_field(bad.validate()), "min");
}

#[test]
fn detects_formats() {
    assert_eq!(SpecFormat::Auto.detect("{\"name\":1}"), SpecFormat::Json);
    assert_eq!(SpecFormat::Auto.detect("name = \"x\""), SpecFormat::Toml);
    assert_eq!(
        SpecFormat::Auto.detect("name: x\nenv: {a: \"b=c\"}"),
        SpecFormat::Yaml
    );
    assert_eq!(SpecFormat::from_path("a/b.yml"), SpecFormat::Yaml);
}
