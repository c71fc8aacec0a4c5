//! Scripting through the machine: EVAL, EVALSHA, SCRIPT, FUNCTION and FCALL, with the
//! replies Redis 7.0 gives (checked against redis-server while writing them).

use stator_kv::scripting::{sha1_hex, INSTRUCTION_LIMIT_ERROR};
use stator_kv::{command_keys, command_kind, CommandKind, KvMachine, Value};

fn words(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|part| part.as_bytes().to_vec()).collect()
}

fn run(machine: &mut KvMachine, parts: &[&str]) -> Value {
    machine.apply_argv(1_000, &words(parts))
}

fn error(text: &str) -> Value {
    Value::error(text)
}

#[test]
fn eval_calls_commands_and_converts_replies() {
    let mut machine = KvMachine::new();
    assert_eq!(
        run(
            &mut machine,
            &[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                "k",
                "v"
            ]
        ),
        Value::ok()
    );
    assert_eq!(
        run(
            &mut machine,
            &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"]
        ),
        Value::bulk("v")
    );
    assert_eq!(
        run(
            &mut machine,
            &["EVAL", "return type(redis.call('GET', 'nokey'))", "0"]
        ),
        Value::bulk("boolean")
    );
    assert_eq!(
        run(
            &mut machine,
            &[
                "EVAL",
                "local r = redis.call('SET', 'k', '1') return r.ok",
                "0"
            ]
        ),
        Value::bulk("OK")
    );
    let sha = sha1_hex(b"return redis.call('INCR', 'k')");
    run(&mut machine, &["SET", "k", "x"]);
    assert_eq!(
        run(
            &mut machine,
            &["EVAL", "return redis.call('INCR', 'k')", "0"]
        ),
        error(&format!(
            "ERR value is not an integer or out of range script: {sha}, on @user_script:1."
        ))
    );
    assert_eq!(
        run(
            &mut machine,
            &["EVAL", "return redis.pcall('INCR', 'k')", "0"]
        ),
        error("ERR value is not an integer or out of range")
    );
    assert_eq!(
        run(
            &mut machine,
            &["EVAL", "return redis.call('EVAL', 'return 1', '0')", "0"]
        ),
        error(&format!(
            "ERR This Redis command is not allowed from script script: {}, on @user_script:1.",
            sha1_hex(b"return redis.call('EVAL', 'return 1', '0')")
        ))
    );
    assert_eq!(
        run(
            &mut machine,
            &[
                "EVAL",
                "local ok, e = pcall(redis.call, 'INCR', 'k') return e",
                "0"
            ]
        ),
        Value::bulk("ERR value is not an integer or out of range")
    );
    assert_eq!(
        run(&mut machine, &["EVAL", "return 1", "-1"]),
        error("ERR Number of keys can't be negative")
    );
    assert_eq!(
        run(&mut machine, &["EVAL", "return 1", "3", "a"]),
        error("ERR Number of keys can't be greater than number of args")
    );
}

#[test]
fn evalsha_runs_cached_scripts_and_answers_noscript_otherwise() {
    let mut machine = KvMachine::new();
    let body = "return ARGV[1]";
    let sha = sha1_hex(body.as_bytes());
    assert_eq!(
        run(&mut machine, &["EVALSHA", &sha, "0", "x"]),
        error("NOSCRIPT No matching script. Please use EVAL.")
    );
    assert_eq!(
        run(&mut machine, &["SCRIPT", "LOAD", body]),
        Value::bulk(sha.clone())
    );
    assert_eq!(
        run(&mut machine, &["EVALSHA", &sha.to_uppercase(), "0", "x"]),
        Value::bulk("x")
    );
    assert_eq!(
        run(&mut machine, &["SCRIPT", "EXISTS", &sha, "nope"]),
        Value::Array(Some(vec![Value::Integer(1), Value::Integer(0)]))
    );
    assert_eq!(run(&mut machine, &["SCRIPT", "FLUSH"]), Value::ok());
    assert_eq!(
        run(&mut machine, &["SCRIPT", "EXISTS", &sha]),
        Value::Array(Some(vec![Value::Integer(0)]))
    );
    // EVAL caches what it ran.
    run(&mut machine, &["EVAL", body, "0", "y"]);
    assert_eq!(
        run(&mut machine, &["EVALSHA", &sha, "0", "z"]),
        Value::bulk("z")
    );
    assert_eq!(
        run(&mut machine, &["SCRIPT", "FOO"]),
        error("ERR unknown subcommand 'FOO'. Try SCRIPT HELP.")
    );
}

#[test]
fn read_only_scripts_refuse_writes() {
    let mut machine = KvMachine::new();
    run(&mut machine, &["SET", "k", "v"]);
    let read = words(&["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k"]);
    assert_eq!(command_kind(&read), CommandKind::Read);
    assert_eq!(machine.query_argv(1_000, &read), Value::bulk("v"));
    let write = words(&[
        "EVAL_RO",
        "return redis.call('SET', KEYS[1], 'x')",
        "1",
        "k",
    ]);
    assert_eq!(
        machine.query_argv(1_000, &write),
        error(&format!(
            "ERR Write commands are not allowed from read-only scripts. script: {}, on @user_script:1.",
            sha1_hex(b"return redis.call('SET', KEYS[1], 'x')")
        ))
    );
}

#[test]
fn functions_load_list_call_and_delete() {
    let mut machine = KvMachine::new();
    let library = "#!lua name=mylib\nredis.register_function('myfunc', function(keys, args) return redis.call('INCR', keys[1]) + #args end)\nredis.register_function{function_name='ro', callback=function(keys, args) return args[1] end, flags={'no-writes'}, description='d'}";
    assert_eq!(
        run(&mut machine, &["FUNCTION", "LOAD", library]),
        Value::bulk("mylib")
    );
    assert_eq!(
        run(&mut machine, &["FUNCTION", "LOAD", library]),
        error("ERR Library 'mylib' already exists")
    );
    assert_eq!(
        run(&mut machine, &["FCALL", "myfunc", "1", "counter", "a", "b"]),
        Value::Integer(3)
    );
    assert_eq!(
        machine.query_argv(1_000, &words(&["FCALL_RO", "ro", "0", "x"])),
        Value::bulk("x")
    );
    assert_eq!(
        machine.query_argv(1_000, &words(&["FCALL_RO", "myfunc", "1", "counter"])),
        error("ERR Can not execute a script with write flag using *_ro command.")
    );
    run(&mut machine, &["SET", "s", "x"]);
    assert_eq!(
        run(&mut machine, &["FCALL", "myfunc", "1", "s"]),
        error("ERR value is not an integer or out of range script: myfunc, on @user_function:2.")
    );
    assert_eq!(
        run(&mut machine, &["FCALL", "nosuch", "0"]),
        error("ERR Function not found")
    );
    let listed = run(&mut machine, &["FUNCTION", "LIST"]);
    let Value::Array(Some(libraries)) = &listed else {
        panic!("{listed:?}")
    };
    assert_eq!(libraries.len(), 1);
    assert_eq!(
        run(
            &mut machine,
            &["FUNCTION", "LOAD", "#!lua name=empty\nreturn 1"]
        ),
        error("ERR No functions registered")
    );
    assert_eq!(
        run(&mut machine, &["FUNCTION", "LOAD", "return 1"]),
        error("ERR Missing library metadata")
    );
    assert_eq!(
        run(&mut machine, &["FUNCTION", "DELETE", "mylib"]),
        Value::ok()
    );
    assert_eq!(
        run(&mut machine, &["FUNCTION", "DELETE", "mylib"]),
        error("ERR Library not found")
    );
}

#[test]
fn scripts_are_deterministic_and_bounded() {
    let body = "return {math.random(1000000), math.random(1000000)}";
    let mut first = KvMachine::new();
    let mut second = KvMachine::new();
    first.set_entry_index(42);
    second.set_entry_index(42);
    assert_eq!(
        run(&mut first, &["EVAL", body, "0"]),
        run(&mut second, &["EVAL", body, "0"])
    );
    for global in ["os", "io", "loadfile", "dofile"] {
        let reply = run(&mut first, &["EVAL", &format!("return {global}"), "0"]);
        assert!(reply.is_error(), "{global}: {reply:?}");
    }
    assert_eq!(
        run(
            &mut first,
            &["EVAL", "redis.call('SET', 'w', '1') while true do end", "0"]
        ),
        error(INSTRUCTION_LIMIT_ERROR)
    );
    // Writes made before the limit stay, on every replica alike.
    assert_eq!(run(&mut first, &["GET", "w"]), Value::bulk("1"));
}

#[test]
fn scripts_route_by_their_keys_and_stay_in_their_slots() {
    assert_eq!(
        command_keys(&words(&["EVAL", "return 1", "2", "a", "b", "arg"])),
        vec![b"a".as_slice(), b"b"]
    );
    assert_eq!(
        command_keys(&words(&["FCALL", "f", "1", "k", "arg"])),
        vec![b"k".as_slice()]
    );
    assert!(command_keys(&words(&["EVAL", "return 1", "0", "arg"])).is_empty());
    let mut machine = KvMachine::new();
    let reply = run(
        &mut machine,
        &["EVAL", "return redis.call('GET', 'elsewhere')", "1", "{t}k"],
    );
    assert!(
        matches!(&reply, Value::Error(text) if text.contains("pass every key the script uses in KEYS")),
        "{reply:?}"
    );
    assert_eq!(
        run(
            &mut machine,
            &[
                "EVAL",
                "return redis.call('SET', '{t}other', 1)",
                "1",
                "{t}k"
            ]
        ),
        Value::ok()
    );
}

/// A script run for an ACL user (`STATOR.ACLKEYS`, as the gateway wraps it) reaches only
/// keys matching the user's patterns, with Redis 7.0's script ACL error (checked against
/// redis-server with `ACL SETUSER alice on >pw ~a* +@all`), in writes, reads through the
/// log or as queries, functions, `pcall`, and inside `STATOR.EXEC`.
#[test]
fn scripts_of_acl_users_reach_only_their_keys() {
    use stator_kv::encode_script_acl;
    use stator_kv::script_acl::SCRIPT_KEY_DENIED;
    let mut machine = KvMachine::new();
    run(&mut machine, &["SET", "b", "secret"]);
    let as_alice = |parts: &[&str]| encode_script_acl(&words(&["a*"]), &words(parts));
    let set_b = "return redis.call('set','b','1')";
    let wrapped = as_alice(&["EVAL", set_b, "0"]);
    assert_eq!(command_kind(&wrapped), CommandKind::Write);
    assert_eq!(
        machine.apply_argv(1_000, &wrapped),
        error(&format!(
            "{SCRIPT_KEY_DENIED} script: {}, on @user_script:1.",
            sha1_hex(set_b.as_bytes())
        ))
    );
    assert_eq!(run(&mut machine, &["GET", "b"]), Value::bulk("secret"));
    // Keys the patterns allow work; pcall sees the error as a table.
    let body = "redis.call('set','a1','x') return {redis.call('get','a1'), redis.pcall('get','b')}";
    assert_eq!(
        machine.apply_argv(1_000, &as_alice(&["EVAL", body, "0"])),
        Value::Array(Some(vec![Value::bulk("x"), error(SCRIPT_KEY_DENIED)]))
    );
    // A multi-key call is refused if any key is outside.
    let mset = as_alice(&["EVAL", "return redis.call('mset','a1','x','b','y')", "0"]);
    assert!(
        matches!(machine.apply_argv(1_000, &mset), Value::Error(e) if e.starts_with(SCRIPT_KEY_DENIED))
    );
    assert_eq!(run(&mut machine, &["GET", "b"]), Value::bulk("secret"));
    // The wrapper routes as its script: keys and read-only queries.
    let read = as_alice(&["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "b"]);
    assert_eq!(command_keys(&read), vec![&b"b"[..]]);
    assert_eq!(command_kind(&read), CommandKind::Read);
    assert!(
        matches!(machine.query_argv(1_000, &read), Value::Error(e) if e.starts_with(SCRIPT_KEY_DENIED))
    );
    let allowed = as_alice(&["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "a1"]);
    assert_eq!(machine.query_argv(1_000, &allowed), Value::bulk("x"));
    // Functions.
    run(
        &mut machine,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=l\nredis.register_function('f', function(k, a) return redis.call('get', a[1]) end)",
        ],
    );
    assert_eq!(
        machine.apply_argv(1_000, &as_alice(&["FCALL", "f", "0", "b"])),
        error(&format!(
            "{SCRIPT_KEY_DENIED} script: f, on @user_function:2."
        ))
    );
    assert_eq!(
        machine.apply_argv(1_000, &as_alice(&["FCALL", "f", "0", "a1"])),
        Value::bulk("x")
    );
    // Inside a transaction.
    let exec = stator_kv::encode_exec(&[], &[as_alice(&["EVAL", set_b, "0"])]);
    assert!(matches!(
        machine.apply_argv(1_000, &exec),
        Value::Array(Some(replies)) if matches!(&replies[0], Value::Error(e) if e.starts_with(SCRIPT_KEY_DENIED))
    ));
    // The rights end with the command: the next script runs unrestricted.
    assert_eq!(
        run(&mut machine, &["EVAL", "return redis.call('get','b')", "0"]),
        Value::bulk("secret")
    );
    // Only script commands may be wrapped, and scripts may not call the wrapper.
    assert!(matches!(
        machine.apply_argv(1_000, &words(&["STATOR.ACLKEYS", "1", "a*", "GET", "b"])),
        Value::Error(e) if e.starts_with("ERR malformed STATOR.ACLKEYS")
    ));
    assert!(matches!(
        run(&mut machine, &["EVAL", "return redis.call('stator.aclkeys','0','get','b')", "0"]),
        Value::Error(e) if e.starts_with("ERR This Redis command is not allowed from script")
    ));
}

/// A script run for an ACL user whose command rules refuse some commands
/// (`STATOR.ACLKEYS ... RIGHTS`, as the gateway wraps it) runs only the commands the rules
/// allow, with Redis 7.0's script error (checked against redis-server with
/// `ACL SETUSER u on nopass +@all -set ~*` and `-@all +eval +get ~a*`): the command is
/// checked before its keys, after unknown and script-only commands, in writes, queries,
/// functions, `pcall` and inside `STATOR.EXEC`, and the rules end with the command.
#[test]
fn scripts_of_acl_users_run_only_their_commands() {
    use stator_kv::script_acl::{SCRIPT_COMMAND_DENIED, SCRIPT_KEY_DENIED};
    use stator_kv::{encode_script_rights, CommandRights};
    let mut machine = KvMachine::new();
    run(&mut machine, &["SET", "b", "secret"]);
    let no_set = CommandRights::parse(&["+@all", "-set"]).unwrap();
    let as_user = |patterns: &[&str], rights: &CommandRights, parts: &[&str]| {
        encode_script_rights(&words(patterns), Some(rights), &words(parts))
    };
    let set_b = "return redis.call('set','b','1')";
    let wrapped = as_user(&["*"], &no_set, &["EVAL", set_b, "0"]);
    assert_eq!(command_kind(&wrapped), CommandKind::Write);
    assert_eq!(
        machine.apply_argv(1_000, &wrapped),
        error(&format!(
            "{SCRIPT_COMMAND_DENIED} script: {}, on @user_script:1.",
            sha1_hex(set_b.as_bytes())
        ))
    );
    assert_eq!(run(&mut machine, &["GET", "b"]), Value::bulk("secret"));
    let body = "redis.call('incr','n') return {redis.call('get','n'), redis.pcall('set','b','x')}";
    assert_eq!(
        machine.apply_argv(1_000, &as_user(&["*"], &no_set, &["EVAL", body, "0"])),
        Value::Array(Some(vec![Value::bulk("1"), error(SCRIPT_COMMAND_DENIED)]))
    );
    // Unknown and script-only commands keep their own errors.
    let unknown = "return redis.call('nosuch','a')";
    assert!(matches!(
        machine.apply_argv(1_000, &as_user(&["*"], &no_set, &["EVAL", unknown, "0"])),
        Value::Error(e) if e.starts_with("ERR Unknown Redis command called from script")
    ));
    // The command is checked before the keys.
    let reader = CommandRights::parse(&["-@all", "+eval", "+get"]).unwrap();
    let set_b_as_reader = as_user(&["a*"], &reader, &["EVAL", set_b, "0"]);
    assert!(matches!(
        machine.apply_argv(1_000, &set_b_as_reader),
        Value::Error(e) if e.starts_with(SCRIPT_COMMAND_DENIED)
    ));
    let get_b = as_user(
        &["a*"],
        &reader,
        &["EVAL", "return redis.call('get','b')", "0"],
    );
    assert!(matches!(
        machine.apply_argv(1_000, &get_b),
        Value::Error(e) if e.starts_with(SCRIPT_KEY_DENIED)
    ));
    // Categories: `+@read` lets reads through and nothing else.
    let read_only = CommandRights::parse(&["-@all", "+@read"]).unwrap();
    let query = as_user(
        &["*"],
        &read_only,
        &[
            "EVAL_RO",
            "return {redis.call('get','b'), redis.pcall('hgetall','b')}",
            "0",
        ],
    );
    assert_eq!(command_kind(&query), CommandKind::Read);
    assert!(matches!(
        machine.query_argv(1_000, &query),
        Value::Array(Some(replies)) if replies[0] == Value::bulk("secret")
    ));
    let no_get = CommandRights::parse(&["+@all", "-get"]).unwrap();
    let refused_query = as_user(
        &["*"],
        &no_get,
        &["EVAL_RO", "return redis.call('get','b')", "0"],
    );
    assert!(matches!(
        machine.query_argv(1_000, &refused_query),
        Value::Error(e) if e.starts_with(SCRIPT_COMMAND_DENIED)
    ));
    // Functions and transactions.
    run(
        &mut machine,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=l\nredis.register_function('f', function(k, a) return redis.call('set', a[1], 'v') end)",
        ],
    );
    assert_eq!(
        machine.apply_argv(1_000, &as_user(&["*"], &no_set, &["FCALL", "f", "0", "b"])),
        error(&format!(
            "{SCRIPT_COMMAND_DENIED} script: f, on @user_function:2."
        ))
    );
    let exec = stator_kv::encode_exec(&[], &[as_user(&["*"], &no_set, &["EVAL", set_b, "0"])]);
    assert!(matches!(
        machine.apply_argv(1_000, &exec),
        Value::Array(Some(replies)) if matches!(&replies[0], Value::Error(e) if e.starts_with(SCRIPT_COMMAND_DENIED))
    ));
    assert_eq!(run(&mut machine, &["GET", "b"]), Value::bulk("secret"));
    // The rights end with the command: the next script runs unrestricted.
    assert_eq!(run(&mut machine, &["EVAL", set_b, "0"]), Value::ok());
    // Rules that do not parse are refused with what to do.
    assert!(matches!(
        machine.apply_argv(1_000, &words(&["STATOR.ACLKEYS", "0", "RIGHTS", "1", "+@nosuch", "EVAL", "return 1", "0"])),
        Value::Error(e) if e.starts_with("ERR malformed STATOR.ACLKEYS rights: category @nosuch")
    ));
}
