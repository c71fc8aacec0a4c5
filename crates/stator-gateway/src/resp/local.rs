//! What a RESP connection answers itself, and how it classifies everything else.
//!
//! Connection-level commands (PING, SELECT, CLIENT, HELLO, COMMAND, INFO, CONFIG GET,
//! QUIT) are answered by the gateway: they have no key, so no partition owns them, and
//! clients send them on connect (redis-cli interactive mode, redis-py, redis-benchmark).

use super::auth::User;
use super::keyspace::{self, FanOut};
use super::transaction::{Transaction, TxWork};
use crate::map::ServiceRoutes;
use stator_api::slot::key_slot;
use stator_kv::{
    command_keys, command_kind, command_slot, runs_script, CommandKind, KeySlot, Value,
};

/// Where a script that declares no KEYS (`EVAL body 0`) runs: one fixed slot, so every
/// gateway sends it to the same partition (Redis Cluster runs it on the node asked).
const KEYLESS_SCRIPT_SLOT: u16 = 0;
use stator_replication::RequestKind;
use std::sync::Arc;

/// Longest argument echoed in an "unknown command" error, as Redis does.
const MAX_ECHOED_ARG_CHARS: usize = 128;

/// The Redis version the gateway reports; clients switch features on it, and 7.0 is the
/// newest whose RESP2 behaviour the gateway follows.
pub const REPORTED_REDIS_VERSION: &str = "7.0.0";

/// Whether the gateway or the kv machine knows the command `argv` names (Redis answers
/// unknown commands with their own error, even before AUTH).
pub(crate) fn is_known(argv: &[Vec<u8>]) -> bool {
    command_kind(argv) != CommandKind::Unknown
        || super::command_table::is_endpoint_command(&argv[0])
}

/// Per-connection state the local commands read and change.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    /// `CLIENT ID`.
    pub(crate) id: u64,
    /// `CLIENT SETNAME`.
    pub(crate) name: Option<Vec<u8>>,
    /// The user authenticated with `AUTH` or `HELLO ... AUTH`, when the service has users.
    pub(crate) user: Option<Arc<User>>,
    /// `HELLO 3` was sent: replies are re-typed by [`super::resp3`].
    pub(crate) resp3: bool,
    /// `MULTI` queue and `WATCH`ed keys.
    pub(crate) tx: Transaction,
    /// The stator node this endpoint belongs to (an agent's listener); `None` on a
    /// gateway. `CLUSTER MYID` and `CLUSTER NODES`' `myself` come from it.
    pub(crate) node: Option<stator_api::ids::NodeId>,
}

/// What to do with one parsed command.
#[derive(Debug, PartialEq)]
pub(crate) enum Dispatch {
    /// Answer with these bytes.
    Reply(Vec<u8>),
    /// Answer with these bytes, then close the connection (QUIT).
    ReplyAndClose(Vec<u8>),
    /// Send to the partition owning `slot` as `kind`.
    Forward {
        /// The slot of the command's keys.
        slot: u16,
        /// Write or linearizable read.
        kind: RequestKind,
    },
    /// Like `Forward`, but the keys span several slots of one partition: sent alone, after
    /// every earlier command of the connection is answered and before any later one.
    ForwardAlone {
        /// The slot of the first key; its partition owns every key.
        slot: u16,
        /// Write or linearizable read.
        kind: RequestKind,
    },
    /// A keyspace command over every partition, also sent alone.
    FanOut(FanOut),
    /// `WATCH`'s version read or `EXEC`'s one write, also sent alone.
    Transaction(TxWork),
    /// A cluster topology command (`CLUSTER SLOTS`, `SHARDS`, `NODES`) asked while the
    /// map leaves some slot without a node: answered once the map covers every slot, or
    /// after [`super::cluster::TOPOLOGY_HOLD`] with what it has.
    Topology(Vec<Vec<u8>>),
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

fn error(message: impl Into<String>) -> Dispatch {
    reply(Value::error(message))
}

fn name_is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// Classifies `argv` (non-empty) and answers what the gateway answers itself.
pub(crate) fn dispatch(
    argv: &[Vec<u8>],
    state: &mut ConnectionState,
    service: Option<&ServiceRoutes>,
) -> Dispatch {
    let name = &argv[0];
    // A gateway spans every partition; an agent's cluster listener answers for itself.
    if let Some(fan) = keyspace::classify(argv).filter(|_| state.node.is_none()) {
        return match fan {
            Ok(fan) => Dispatch::FanOut(fan),
            Err(value) => reply(value),
        };
    }
    match command_kind(argv) {
        CommandKind::Read | CommandKind::Write if name_is(name, "ping") || name_is(name, "echo") => {
            ping_or_echo(argv)
        }
        kind @ (CommandKind::Read | CommandKind::Write) => match command_slot(argv) {
            KeySlot::Slot(slot) => Dispatch::Forward {
                slot,
                kind: if kind == CommandKind::Write { RequestKind::Write } else { RequestKind::Read },
            },
            KeySlot::CrossSlot => match one_partition(argv, service) {
                Some(slot) => Dispatch::ForwardAlone {
                    slot,
                    kind: if kind == CommandKind::Write { RequestKind::Write } else { RequestKind::Read },
                },
                None => error(
                    "CROSSSLOT Keys in request don't hash to the same slot; put a {hash tag} in the keys to keep them together",
                ),
            },
            // A script without KEYS runs on the partition owning slot 0 (a one-partition
            // service: all keys); in cluster mode the node leading slot 0 runs it.
            KeySlot::NoKeys if runs_script(argv) => Dispatch::Forward {
                slot: KEYLESS_SCRIPT_SLOT,
                kind: if kind == CommandKind::Write { RequestKind::Write } else { RequestKind::Read },
            },
            // Every other kv command but PING and ECHO takes a key first: no key means too
            // few arguments.
            KeySlot::NoKeys => error(format!(
                "ERR wrong number of arguments for '{}' command",
                String::from_utf8_lossy(name).to_lowercase()
            )),
        },
        CommandKind::Unknown => local(argv, state, service),
    }
}

/// The slot of the first key when every key of `argv` lives in one partition of
/// `service` (a one-partition service takes any keys, as a standalone Redis does).
fn one_partition(argv: &[Vec<u8>], service: Option<&ServiceRoutes>) -> Option<u16> {
    let service = service?;
    let keys = command_keys(argv);
    let first = key_slot(keys.first()?);
    let partition = service.route_index(first)?;
    keys[1..]
        .iter()
        .all(|key| service.route_index(key_slot(key)) == Some(partition))
        .then_some(first)
}

fn ping_or_echo(argv: &[Vec<u8>]) -> Dispatch {
    if name_is(&argv[0], "echo") {
        return match argv {
            [_, message] => reply(Value::bulk(message.clone())),
            _ => error("ERR wrong number of arguments for 'echo' command"),
        };
    }
    match argv {
        [_] => reply(Value::Simple("PONG".into())),
        [_, message] => reply(Value::bulk(message.clone())),
        _ => error("ERR wrong number of arguments for 'ping' command"),
    }
}

fn local(
    argv: &[Vec<u8>],
    state: &mut ConnectionState,
    service: Option<&ServiceRoutes>,
) -> Dispatch {
    let name = argv[0].as_slice();
    let sub = argv.get(1).map(|s| s.to_ascii_uppercase());
    let sub = sub.as_deref();
    if name_is(name, "select") {
        return match argv {
            [_, db] if db.as_slice() == b"0" => reply(Value::ok()),
            [_, _] => {
                error("ERR DB index is out of range; stator kv services have only database 0")
            }
            _ => error("ERR wrong number of arguments for 'select' command"),
        };
    }
    if name_is(name, "quit") {
        return Dispatch::ReplyAndClose(Value::ok().to_bytes());
    }
    if name_is(name, "client") {
        return client(argv, sub, state);
    }
    if name_is(name, "command") {
        return super::command_table::command(argv);
    }
    if name_is(name, "cluster") {
        return super::cluster::cluster(argv, state, service);
    }
    if name_is(name, "readonly") || name_is(name, "readwrite") {
        return super::cluster::read_mode(argv);
    }
    if name_is(name, "info") {
        return reply(Value::bulk(
            info(state, service) + &super::cluster::info_section(service),
        ));
    }
    if name_is(name, "hello") {
        return hello(argv, state);
    }
    if name_is(name, "config") {
        return config(argv, sub);
    }
    unknown(argv)
}

fn client(argv: &[Vec<u8>], sub: Option<&[u8]>, state: &mut ConnectionState) -> Dispatch {
    match (sub, argv.len()) {
        (Some(b"SETNAME"), 3) => {
            if argv[2].iter().any(|&b| b == b' ' || b == b'\n' || b == b'\r') {
                return error("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            state.name = (!argv[2].is_empty()).then(|| argv[2].clone());
            reply(Value::ok())
        }
        (Some(b"GETNAME"), 2) => reply(Value::Bulk(state.name.clone())),
        (Some(b"ID"), 2) => reply(Value::Integer(state.id as i64)),
        // Library name and version (redis-py, Jedis send these on connect): accepted.
        (Some(b"SETINFO"), 4) => reply(Value::ok()),
        (Some(b"INFO"), 2) => reply(Value::bulk(format!(
            "id={} name={} db=0 cmd=client|info\n",
            state.id,
            String::from_utf8_lossy(state.name.as_deref().unwrap_or_default())
        ))),
        _ => error(format!(
            "ERR unknown subcommand or wrong number of arguments for 'client|{}'; the stator gateway supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO",
            String::from_utf8_lossy(argv.get(1).map(Vec::as_slice).unwrap_or_default()).to_lowercase()
        )),
    }
}

fn hello(argv: &[Vec<u8>], state: &mut ConnectionState) -> Dispatch {
    // After `HELLO 3` the connection's replies are re-typed for RESP3 (maps, sets,
    // doubles, nulls: see `resp3`); HELLO's own reply is the map Redis sends.
    let resp3 = match argv.get(1).map(Vec::as_slice) {
        None => state.resp3,
        Some(b"2") => false,
        Some(b"3") => true,
        Some(_) => return error("NOPROTO unsupported protocol version"),
    };
    // Options after the version: AUTH is ignored (the gateway has no users), SETNAME names
    // the connection.
    // AUTH was checked by `auth::intercept` before this runs.
    let mut index = 2;
    while index < argv.len() {
        if name_is(&argv[index], "setname") && index + 1 < argv.len() {
            state.name = Some(argv[index + 1].clone());
            index += 2;
        } else if name_is(&argv[index], "auth") && index + 2 < argv.len() {
            // Checked by `auth::intercept` before this runs.
            index += 3;
        } else {
            return error("ERR syntax error in HELLO options");
        }
    }
    let fields = vec![
        Value::bulk("server"),
        Value::bulk("redis"),
        Value::bulk("version"),
        Value::bulk(REPORTED_REDIS_VERSION),
        Value::bulk("proto"),
        Value::Integer(if resp3 { 3 } else { 2 }),
        Value::bulk("id"),
        Value::Integer(state.id as i64),
        Value::bulk("mode"),
        Value::bulk("standalone"),
        Value::bulk("role"),
        Value::bulk("master"),
        Value::bulk("modules"),
        Value::Array(Some(Vec::new())),
    ];
    state.resp3 = resp3;
    if !resp3 {
        return reply(Value::Array(Some(fields)));
    }
    let mut out = format!("%{}\r\n", fields.len() / 2).into_bytes();
    for field in &fields {
        field.encode(&mut out);
    }
    Dispatch::Reply(out)
}

fn config(argv: &[Vec<u8>], sub: Option<&[u8]>) -> Dispatch {
    match (sub, argv.len()) {
        // redis-benchmark reads these two on start; anything else is unknown, which
        // Redis answers with an empty list too.
        (Some(b"GET"), 3) => {
            let wanted = argv[2].to_ascii_lowercase();
            let value = match wanted.as_slice() {
                b"save" => Some(""),
                b"appendonly" => Some("no"),
                b"databases" => Some("1"),
                _ => None,
            };
            reply(Value::Array(Some(match value {
                Some(value) => vec![Value::bulk(wanted), Value::bulk(value)],
                None => Vec::new(),
            })))
        }
        _ => error("ERR the stator gateway supports only CONFIG GET; configure services with `stator apply`"),
    }
}

fn info(state: &ConnectionState, service: Option<&ServiceRoutes>) -> String {
    let (name, partitions, with_leader) = service.map_or(("", 0, 0), |s| {
        (
            s.name.as_str(),
            s.partitions.len(),
            s.partitions
                .iter()
                .filter(|p| p.leader_addr.is_some())
                .count(),
        )
    });
    let mode = if service.is_some_and(|s| s.cluster) {
        "cluster"
    } else {
        "standalone"
    };
    format!(
        "# Server\r\nredis_version:{REPORTED_REDIS_VERSION}\r\nredis_mode:{mode}\r\n\
         stator_version:{}\r\nstator_role:{}\r\nprocess_id:{}\r\n\r\n\
         # Clients\r\nclient_id:{}\r\n\r\n\
         # Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n\
         # Stator\r\nstator_service:{name}\r\nstator_partitions:{partitions}\r\n\
         stator_partitions_with_leader:{with_leader}\r\n",
        env!("CARGO_PKG_VERSION"),
        if state.node.is_some() {
            "agent"
        } else {
            "gateway"
        },
        std::process::id(),
        state.id,
    )
}

fn unknown(argv: &[Vec<u8>]) -> Dispatch {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        printable(&argv[0])
    );
    for arg in &argv[1..] {
        message.push_str(&format!("'{}' ", printable(arg)));
    }
    error(message)
}

fn printable(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg)
        .chars()
        .take(MAX_ECHOED_ARG_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> Dispatch {
        let argv: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        dispatch(
            &argv,
            &mut ConnectionState {
                id: 7,
                ..ConnectionState::default()
            },
            None,
        )
    }

    fn text(d: Dispatch) -> String {
        match d {
            Dispatch::Reply(b) | Dispatch::ReplyAndClose(b) => String::from_utf8(b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn routes_kv_commands_by_kind_and_slot() {
        assert_eq!(
            run(&["SET", "foo", "1"]),
            Dispatch::Forward {
                slot: 12182,
                kind: RequestKind::Write
            }
        );
        assert_eq!(
            run(&["get", "foo"]),
            Dispatch::Forward {
                slot: 12182,
                kind: RequestKind::Read
            }
        );
        assert!(
            text(run(&["MGET", "foo", "bar"])).starts_with("-CROSSSLOT"),
            "without a map no partition is known to own both"
        );
        assert_eq!(
            text(run(&["GET"])),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        // Scripts without KEYS go to slot 0's partition, wrapped with ACL keys or not.
        for (script, kind) in [
            (&["EVAL", "return 1", "0"][..], RequestKind::Write),
            (&["EVAL_RO", "return 1", "0"], RequestKind::Read),
            (&["FCALL", "f", "0"], RequestKind::Write),
            (
                &["STATOR.ACLKEYS", "1", "a*", "EVAL", "return 1", "0"],
                RequestKind::Write,
            ),
        ] {
            assert_eq!(
                run(script),
                Dispatch::Forward { slot: 0, kind },
                "{script:?}"
            );
        }
    }

    #[test]
    fn answers_connection_commands_locally() {
        assert_eq!(text(run(&["PING"])), "+PONG\r\n");
        assert_eq!(text(run(&["ping", "hi"])), "$2\r\nhi\r\n");
        assert_eq!(text(run(&["ECHO", "x"])), "$1\r\nx\r\n");
        assert_eq!(text(run(&["SELECT", "0"])), "+OK\r\n");
        assert!(text(run(&["SELECT", "1"])).starts_with("-ERR DB index is out of range"));
        assert_eq!(text(run(&["COMMAND", "DOCS"])), "*0\r\n");
        assert_eq!(text(run(&["CLIENT", "ID"])), ":7\r\n");
        assert!(text(run(&["HELLO", "3"])).starts_with("%7\r\n$6\r\nserver"));
        assert!(text(run(&["HELLO", "4"])).starts_with("-NOPROTO"));
        assert!(text(run(&["HELLO", "2"])).starts_with("*14\r\n"));
        assert!(text(run(&["INFO"])).contains("redis_version:"));
        assert_eq!(
            text(run(&["CONFIG", "GET", "save"])),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert!(matches!(run(&["QUIT"]), Dispatch::ReplyAndClose(_)));
        assert_eq!(
            run(&["FLUSHALL", "ASYNC"]),
            Dispatch::FanOut(FanOut::Flush(vec![b"FLUSHALL".to_vec(), b"ASYNC".to_vec()]))
        );
        assert_eq!(
            text(run(&["NOSUCH", "x"])),
            "-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n"
        );
    }

    #[test]
    fn client_name_round_trips() {
        let mut state = ConnectionState::default();
        let argv =
            |w: &[&str]| -> Vec<Vec<u8>> { w.iter().map(|s| s.as_bytes().to_vec()).collect() };
        assert_eq!(
            dispatch(&argv(&["CLIENT", "SETNAME", "app"]), &mut state, None),
            reply(Value::ok())
        );
        assert_eq!(
            dispatch(&argv(&["client", "getname"]), &mut state, None),
            reply(Value::bulk("app"))
        );
    }
}
