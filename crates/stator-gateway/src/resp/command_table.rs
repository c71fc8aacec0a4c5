//! `COMMAND`: what each command is and where its keys are, in Redis' reply format.
//!
//! Cluster clients read this to find a command's slot before sending it (redis-py's
//! `RedisCluster` refuses commands it finds no entry for), so the kv commands come
//! straight from the kv machine's table ([`stator_kv::command_table`]) with their key
//! positions, and the connection-level commands answered locally are listed keyless.

use super::local::Dispatch;
use stator_kv::{command_info, command_keys, command_table, CommandInfo, CommandKind, Value};

/// Commands answered by the endpoint itself, not by a partition: (name, Redis arity,
/// flags). Their key positions are all 0.
const CONNECTION_COMMANDS: &[(&str, i32, &[&str])] = &[
    ("select", 2, &["loading", "stale", "fast"]),
    ("client", -2, &["loading", "stale"]),
    ("command", -1, &["loading", "stale"]),
    ("info", -1, &["loading", "stale"]),
    ("hello", -1, &["noscript", "loading", "stale", "fast"]),
    ("quit", -1, &["noscript", "loading", "stale", "fast"]),
    ("config", -2, &["admin", "noscript", "loading", "stale"]),
    ("cluster", -2, &["loading", "stale"]),
    ("readonly", 1, &["loading", "stale", "fast"]),
    ("readwrite", 1, &["loading", "stale", "fast"]),
];

fn entry(name: &str, arity: i32, flags: &[&str], keys: (usize, isize, usize)) -> Value {
    let empty = || Value::Array(Some(Vec::new()));
    Value::Array(Some(vec![
        Value::bulk(name),
        Value::Integer(arity as i64),
        Value::Array(Some(
            flags.iter().map(|f| Value::Simple((*f).into())).collect(),
        )),
        Value::Integer(keys.0 as i64),
        Value::Integer(keys.1 as i64),
        Value::Integer(keys.2 as i64),
        // ACL categories, tips, key specifications, subcommands (Redis 7 layout; clients
        // take the key positions above).
        empty(),
        empty(),
        empty(),
        empty(),
    ]))
}

fn kv_entry(info: CommandInfo) -> Value {
    let flags: &[&str] = match (info.kind, info.first_key) {
        (_, 0) => &["fast", "stale"],
        (CommandKind::Write, _) => &["write", "denyoom"],
        _ => &["readonly", "fast"],
    };
    entry(
        info.name,
        info.arity,
        flags,
        (info.first_key, info.last_key, info.key_step),
    )
}

fn connection_entry(name: &[u8]) -> Option<Value> {
    CONNECTION_COMMANDS
        .iter()
        .find(|(n, _, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(n, arity, flags)| entry(n, *arity, flags, (0, 0, 0)))
}

fn all_entries() -> Vec<Value> {
    command_table()
        .map(kv_entry)
        .chain(
            CONNECTION_COMMANDS
                .iter()
                .map(|(n, arity, flags)| entry(n, *arity, flags, (0, 0, 0))),
        )
        .collect()
}

fn all_names() -> Vec<Value> {
    command_table()
        .map(|c| c.name)
        .chain(CONNECTION_COMMANDS.iter().map(|(n, _, _)| *n))
        .map(Value::bulk)
        .collect()
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

/// `COMMAND [COUNT | LIST | INFO name... | DOCS ... | GETKEYS command args...]`.
pub(crate) fn command(argv: &[Vec<u8>]) -> Dispatch {
    let sub = argv.get(1).map(|s| s.to_ascii_uppercase());
    match sub.as_deref() {
        None => reply(Value::Array(Some(all_entries()))),
        Some(b"COUNT") => reply(Value::Integer(all_entries().len() as i64)),
        Some(b"LIST") => reply(Value::Array(Some(all_names()))),
        Some(b"INFO") if argv.len() == 2 => reply(Value::Array(Some(all_entries()))),
        Some(b"INFO") => reply(Value::Array(Some(
            argv[2..]
                .iter()
                .map(|name| {
                    command_info(name)
                        .map(kv_entry)
                        .or_else(|| connection_entry(name))
                        .unwrap_or(Value::Array(None))
                })
                .collect(),
        ))),
        // No documentation: clients (redis-cli hints) treat an empty answer as "nothing
        // known" and carry on.
        Some(b"DOCS") => reply(Value::Array(Some(Vec::new()))),
        Some(b"GETKEYS") if argv.len() > 2 => {
            let keys = command_keys(&argv[2..]);
            if keys.is_empty() {
                reply(Value::error("ERR The command has no key arguments"))
            } else {
                reply(Value::Array(Some(
                    keys.into_iter().map(|k| Value::bulk(k.to_vec())).collect(),
                )))
            }
        }
        Some(_) => reply(Value::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND, COMMAND COUNT, COMMAND LIST, COMMAND INFO, COMMAND DOCS or COMMAND GETKEYS",
            String::from_utf8_lossy(&argv[1])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> String {
        let argv: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        match command(&argv) {
            Dispatch::Reply(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn entries_carry_key_positions() {
        let set = run(&["COMMAND", "INFO", "set"]);
        assert!(
            set.starts_with(
                "*1\r\n*10\r\n$3\r\nset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:1\r\n:1\r\n"
            ),
            "{set}"
        );
        let mset = run(&["COMMAND", "INFO", "MSET", "nope"]);
        assert!(mset.contains(":1\r\n:-1\r\n:2\r\n"), "{mset}");
        assert!(
            mset.ends_with("*-1\r\n"),
            "unknown commands are nil: {mset}"
        );
        let all = run(&["COMMAND"]);
        assert!(all.contains("$7\r\ncluster\r\n"), "{all}");
        let count = run(&["COMMAND", "COUNT"]);
        assert_eq!(count, format!(":{}\r\n", all_entries().len()));
    }

    #[test]
    fn getkeys_names_the_keys() {
        assert_eq!(
            run(&["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"]),
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert!(run(&["COMMAND", "GETKEYS", "PING"]).starts_with("-ERR"));
        assert_eq!(run(&["COMMAND", "DOCS"]), "*0\r\n");
    }
}
