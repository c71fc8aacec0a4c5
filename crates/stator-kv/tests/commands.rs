//! Per-command behaviour of the kv machine, checked against Redis' replies.

use stator_kv::{KvMachine, Value};

fn argv(line: &str) -> Vec<Vec<u8>> {
    line.split_whitespace()
        .map(|word| word.as_bytes().to_vec())
        .collect()
}

/// A machine driven at an explicit clock, for readable tests.
struct Harness {
    machine: KvMachine,
    now_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Harness {
            machine: KvMachine::new(),
            now_ms: 1_000_000,
        }
    }
    fn run(&mut self, line: &str) -> Value {
        self.machine.apply_argv(self.now_ms, &argv(line))
    }
    fn advance_ms(&mut self, ms: u64) {
        self.now_ms += ms;
    }
}

fn ok() -> Value {
    Value::ok()
}
fn bulk(text: &str) -> Value {
    Value::bulk(text)
}
fn int(n: i64) -> Value {
    Value::Integer(n)
}
fn err(text: &str) -> Value {
    Value::error(text)
}
fn nil() -> Value {
    Value::null()
}

#[test]
fn get_set_del_exists() {
    let mut h = Harness::new();
    assert_eq!(h.run("GET k"), nil());
    assert_eq!(h.run("SET k v"), ok());
    assert_eq!(h.run("get k"), bulk("v"));
    // The machine holds a whole partition: keys of different slots are fine here (the
    // gateway and cluster-mode agents decide what crosses partitions or slots).
    assert_eq!(h.run("EXISTS k k nope"), int(2));
    assert_eq!(h.run("EXISTS {t}a {t}a {t}b"), int(0));
    assert_eq!(h.run("SET {t}a 1"), ok());
    assert_eq!(h.run("EXISTS {t}a {t}a {t}b"), int(2));
    assert_eq!(h.run("DEL {t}a {t}a {t}b"), int(1));
    assert_eq!(h.run("DEL k"), int(1));
    assert_eq!(h.run("DEL k"), int(0));
    assert_eq!(h.machine.key_count(), 0);
    assert_eq!(h.machine.data_bytes(), 0);
}

#[test]
fn set_conditions_and_get_option() {
    let mut h = Harness::new();
    assert_eq!(h.run("SET k v1 XX"), nil());
    assert_eq!(h.run("SET k v1 NX"), ok());
    assert_eq!(h.run("SET k v2 NX"), nil());
    assert_eq!(h.run("SET k v2 XX"), ok());
    assert_eq!(h.run("SET k v3 GET"), bulk("v2"));
    assert_eq!(h.run("SET k v4 NX GET"), bulk("v3"));
    assert_eq!(h.run("GET k"), bulk("v3"));
    assert_eq!(h.run("SET other x GET"), nil());
    assert_eq!(h.run("SET k v NX XX"), err("ERR syntax error"));
    assert_eq!(h.run("SET k v BOGUS"), err("ERR syntax error"));
    assert_eq!(h.run("SETNX k v"), int(0));
    assert_eq!(h.run("SETNX fresh v"), int(1));
    assert_eq!(h.run("GETSET fresh w"), bulk("v"));
    assert_eq!(h.run("GETDEL fresh"), bulk("w"));
    assert_eq!(h.run("GETDEL fresh"), nil());
}

#[test]
fn set_expiry_options() {
    let mut h = Harness::new();
    assert_eq!(h.run("SET k v EX 10"), ok());
    assert_eq!(h.run("TTL k"), int(10));
    assert_eq!(h.run("PTTL k"), int(10_000));
    assert_eq!(h.run("SET k v PX 1500"), ok());
    assert_eq!(h.run("TTL k"), int(2), "TTL rounds to the nearest second");
    assert_eq!(h.run("SET k v2 KEEPTTL"), ok());
    assert_eq!(h.run("PTTL k"), int(1500));
    assert_eq!(h.run("SET k v3"), ok());
    assert_eq!(h.run("TTL k"), int(-1), "plain SET clears the TTL");
    let at_s = h.now_ms / 1000 + 5;
    assert_eq!(h.run(&format!("SET k v EXAT {at_s}")), ok());
    assert_eq!(h.run("PTTL k"), int(5000));
    assert_eq!(h.run(&format!("SET k v PXAT {}", h.now_ms + 7)), ok());
    assert_eq!(h.run("PTTL k"), int(7));
    // Errors, in Redis' order: syntax first, then the number.
    assert_eq!(h.run("SET k v EX 10 PX 10"), err("ERR syntax error"));
    assert_eq!(h.run("SET k v EX 10 KEEPTTL"), err("ERR syntax error"));
    assert_eq!(h.run("SET k v KEEPTTL EX 10"), err("ERR syntax error"));
    assert_eq!(h.run("SET k v EX"), err("ERR syntax error"));
    assert_eq!(
        h.run("SET k v EX abc"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        h.run("SET k v EX 0"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        h.run("SET k v PX -5"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        h.run("SET k v EX 9223372036854775807"),
        err("ERR invalid expire time in 'set' command")
    );
    // An absolute time in the past writes and deletes at once.
    assert_eq!(h.run("SET k v PXAT 1"), ok());
    assert_eq!(h.run("EXISTS k"), int(0));
}

#[test]
fn setex_and_psetex() {
    let mut h = Harness::new();
    assert_eq!(h.run("SETEX k 3 v"), ok());
    assert_eq!(h.run("PTTL k"), int(3000));
    assert_eq!(h.run("PSETEX k 20 v"), ok());
    assert_eq!(h.run("PTTL k"), int(20));
    assert_eq!(
        h.run("SETEX k 0 v"),
        err("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        h.run("SETEX k x v"),
        err("ERR value is not an integer or out of range")
    );
}

#[test]
fn keys_expire_on_the_applied_clock() {
    let mut h = Harness::new();
    h.run("SET k v PX 100");
    h.advance_ms(100);
    assert_eq!(
        h.run("GET k"),
        bulk("v"),
        "alive at exactly its expiry, as Redis"
    );
    assert_eq!(h.run("PTTL k"), int(0));
    h.advance_ms(1);
    assert_eq!(h.run("GET k"), nil());
    assert_eq!(h.run("TTL k"), int(-2));
    assert_eq!(h.machine.key_count(), 0, "the sweep reclaimed it");
    // The clock never goes backwards: an older stamp does not revive anything.
    h.run("SET j v PX 10");
    h.advance_ms(20);
    h.run("PING");
    h.now_ms -= 20;
    assert_eq!(h.run("GET j"), nil());
}

#[test]
fn counters() {
    let mut h = Harness::new();
    assert_eq!(h.run("INCR n"), int(1));
    assert_eq!(h.run("INCRBY n 10"), int(11));
    assert_eq!(h.run("DECR n"), int(10));
    assert_eq!(h.run("DECRBY n -5"), int(15));
    assert_eq!(h.run("GET n"), bulk("15"));
    assert_eq!(
        h.run("INCRBY n x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(h.run("SET s abc"), ok());
    assert_eq!(
        h.run("INCR s"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(h.run("SET s 007"), ok());
    assert_eq!(
        h.run("INCR s"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(h.run("SET m 9223372036854775807"), ok());
    assert_eq!(
        h.run("INCR m"),
        err("ERR increment or decrement would overflow")
    );
    assert_eq!(
        h.run("DECRBY n -9223372036854775808"),
        err("ERR decrement would overflow")
    );
    // INCR keeps the TTL.
    assert_eq!(h.run("SET t 1 EX 100"), ok());
    assert_eq!(h.run("INCR t"), int(2));
    assert_eq!(h.run("TTL t"), int(100));
}

#[test]
fn incrbyfloat() {
    let mut h = Harness::new();
    assert_eq!(h.run("INCRBYFLOAT f 10.5"), bulk("10.5"));
    assert_eq!(h.run("INCRBYFLOAT f -0.5"), bulk("10"));
    assert_eq!(
        h.run("INCRBYFLOAT f abc"),
        err("ERR value is not a valid float")
    );
    assert_eq!(h.run("SET s abc"), ok());
    assert_eq!(
        h.run("INCRBYFLOAT s 1"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        h.run("INCRBYFLOAT f inf"),
        err("ERR increment would produce NaN or Infinity")
    );
}

#[test]
fn append_and_strlen() {
    let mut h = Harness::new();
    assert_eq!(h.run("STRLEN k"), int(0));
    assert_eq!(h.run("APPEND k Hello"), int(5));
    assert_eq!(h.run("APPEND k World"), int(10));
    assert_eq!(h.run("GET k"), bulk("HelloWorld"));
    assert_eq!(h.run("STRLEN k"), int(10));
    assert_eq!(h.machine.data_bytes(), 11);
}

#[test]
fn mget_mset_take_any_keys_of_the_partition() {
    let mut h = Harness::new();
    assert_eq!(h.run("MSET {u}a 1 {u}b 2"), ok());
    assert_eq!(
        h.run("MGET {u}a {u}b {u}c"),
        Value::Array(Some(vec![bulk("1"), bulk("2"), nil()]))
    );
    assert_eq!(h.run("MSET a 1 b 2"), ok());
    assert_eq!(
        h.run("MGET a b"),
        Value::Array(Some(vec![bulk("1"), bulk("2")]))
    );
    assert_eq!(
        h.run("MSET {u}a 1 {u}b"),
        err("ERR wrong number of arguments for 'mset' command")
    );
}

#[test]
fn expire_family_and_options() {
    let mut h = Harness::new();
    assert_eq!(h.run("EXPIRE nope 10"), int(0));
    h.run("SET k v");
    assert_eq!(h.run("EXPIRE k 10 XX"), int(0));
    assert_eq!(h.run("EXPIRE k 10 GT"), int(0), "no TTL counts as infinite");
    assert_eq!(h.run("EXPIRE k 10 NX"), int(1));
    assert_eq!(h.run("EXPIRE k 20 NX"), int(0));
    assert_eq!(h.run("EXPIRE k 5 GT"), int(0));
    assert_eq!(h.run("EXPIRE k 20 GT"), int(1));
    assert_eq!(h.run("EXPIRE k 30 LT"), int(0));
    assert_eq!(h.run("PEXPIRE k 1500 LT"), int(1));
    assert_eq!(h.run("PTTL k"), int(1500));
    assert_eq!(h.run(&format!("PEXPIREAT k {}", h.now_ms + 42)), int(1));
    assert_eq!(h.run("PTTL k"), int(42));
    assert_eq!(
        h.run(&format!("EXPIREAT k {}", h.now_ms / 1000 + 60)),
        int(1)
    );
    assert_eq!(h.run("TTL k"), int(60));
    assert_eq!(h.run("PERSIST k"), int(1));
    assert_eq!(h.run("PERSIST k"), int(0));
    assert_eq!(h.run("TTL k"), int(-1));
    assert_eq!(
        h.run("EXPIRE k 10 NX XX"),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        h.run("EXPIRE k 10 GT LT"),
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(h.run("EXPIRE k 10 FOO"), err("ERR Unsupported option FOO"));
    assert_eq!(
        h.run("EXPIRE k ten"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        h.run("EXPIRE k 9223372036854775807"),
        err("ERR invalid expire time in 'expire' command")
    );
    // A time not in the future deletes the key.
    assert_eq!(h.run("EXPIRE k 0"), int(1));
    assert_eq!(h.run("EXISTS k"), int(0));
    h.run("SET k v");
    assert_eq!(h.run("PEXPIRE k -1"), int(1));
    assert_eq!(h.run("GET k"), nil());
}

#[test]
fn errors_use_redis_wording() {
    let mut h = Harness::new();
    assert_eq!(
        h.run("GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        h.run("GET a b"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        h.run("SET k"),
        err("ERR wrong number of arguments for 'set' command")
    );
    assert_eq!(
        h.run("FOO a b"),
        err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        h.run("FOO"),
        err("ERR unknown command 'FOO', with args beginning with: ")
    );
    assert_eq!(h.run("PING"), Value::Simple("PONG".into()));
    assert_eq!(h.run("PING hi"), bulk("hi"));
    assert_eq!(h.run("ECHO hi"), bulk("hi"));
    assert!(h.machine.apply_argv(0, &[]).is_error());
}

#[test]
fn queries_only_read() {
    let mut h = Harness::new();
    h.run("SET k v PX 100");
    let machine = &h.machine;
    assert_eq!(machine.query_argv(h.now_ms, &argv("GET k")), bulk("v"));
    assert_eq!(
        machine.query_argv(h.now_ms + 101, &argv("GET k")),
        nil(),
        "a later read sees the expiry"
    );
    assert_eq!(
        machine.query_argv(0, &argv("GET k")),
        bulk("v"),
        "an older read time never rewinds"
    );
    let write = machine.query_argv(h.now_ms, &argv("SET k w"));
    assert!(write.is_error(), "{write:?}");
    assert_eq!(h.run("GET k"), bulk("v"));
}

#[test]
fn types_answer_wrongtype_and_empty_collections_vanish() {
    let mut h = Harness::new();
    assert_eq!(h.run("HSET h f v"), int(1));
    assert_eq!(
        h.run("LPUSH h x"),
        err("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    assert_eq!(h.run("TYPE h"), Value::Simple("hash".into()));
    assert_eq!(h.run("HDEL h f"), int(1));
    assert_eq!(
        h.run("EXISTS h"),
        int(0),
        "the last field removed deletes the key"
    );
    assert_eq!(h.run("ZADD z 1 a 2 b"), int(2));
    assert_eq!(
        h.run("ZRANGE z 0 -1 WITHSCORES"),
        Value::Array(Some(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]))
    );
    assert_eq!(h.machine.data_bytes(), 1 + 2 * (1 + 8));
}

#[test]
fn transactions_apply_as_one_entry_and_watch_sees_writes() {
    let mut h = Harness::new();
    let version = |h: &mut Harness| match h.run("STATOR.VERSION k") {
        Value::Array(Some(items)) => match items[0] {
            Value::Integer(v) => v as u64,
            _ => unreachable!(),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(version(&mut h), 0, "a missing key has version 0");
    let queued = vec![argv("SET k 1"), argv("INCR k"), argv("LPUSH k x")];
    let exec = stator_kv::encode_exec(&[(b"k".to_vec(), 0)], &queued);
    assert_eq!(
        h.machine.apply_argv(h.now_ms, &exec),
        Value::Array(Some(vec![
            ok(),
            int(2),
            err("WRONGTYPE Operation against a key holding the wrong kind of value")
        ]))
    );
    let seen = version(&mut h);
    h.run("SET k 5");
    let exec = stator_kv::encode_exec(&[(b"k".to_vec(), seen)], &[argv("GET k")]);
    assert_eq!(h.machine.apply_argv(h.now_ms, &exec), Value::Array(None));
    let exec = stator_kv::encode_exec(&[], &[argv("GET k"), argv("GET")]);
    assert_eq!(
        h.machine.apply_argv(h.now_ms, &exec),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(h.run("GET k"), bulk("5"));
}

#[test]
fn blocking_pops_answer_at_once() {
    let mut h = Harness::new();
    assert_eq!(
        h.run("BLPOP {q}a {q}b 0"),
        Value::Array(None),
        "would block"
    );
    assert_eq!(h.run("RPUSH {q}b x"), int(1));
    assert_eq!(
        h.run("BLPOP {q}a {q}b 0"),
        Value::Array(Some(vec![bulk("{q}b"), bulk("x")]))
    );
    assert_eq!(h.run("BZPOPMIN z 1.5"), Value::Array(None));
}

#[test]
fn multi_pops_and_zintercard_answer_as_redis() {
    let mut h = Harness::new();
    h.run("RPUSH l a b c");
    h.run("ZADD z 1 a 2 b 3 c");
    let err = |text: &str| Value::error(text);
    assert_eq!(
        h.run("LMPOP 0 l LEFT"),
        err("ERR numkeys should be greater than 0")
    );
    assert_eq!(h.run("LMPOP 2 l LEFT"), err("ERR syntax error"));
    assert_eq!(h.run("LMPOP 1 l MIDDLE"), err("ERR syntax error"));
    assert_eq!(
        h.run("LMPOP 1 l LEFT COUNT 0"),
        err("ERR count should be greater than 0")
    );
    assert_eq!(
        h.run("LMPOP 1 l LEFT COUNT 1 extra"),
        err("ERR syntax error")
    );
    assert_eq!(
        h.run("LMPOP 2 nol l RIGHT COUNT 2"),
        Value::Array(Some(vec![
            bulk("l"),
            Value::Array(Some(vec![bulk("c"), bulk("b")]))
        ]))
    );
    assert_eq!(h.run("LMPOP 1 nol LEFT"), Value::Array(None));
    assert_eq!(h.run("BLMPOP 0 1 nol LEFT"), Value::Array(None));
    assert_eq!(
        h.run("BLMPOP -1 1 nol LEFT"),
        err("ERR timeout is negative")
    );
    assert_eq!(
        h.run("LMPOP 1 z LEFT"),
        err("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    assert_eq!(
        h.run("ZMPOP 1 z MIN COUNT 2"),
        Value::Array(Some(vec![
            bulk("z"),
            Value::Array(Some(vec![
                Value::Array(Some(vec![bulk("a"), bulk("1")])),
                Value::Array(Some(vec![bulk("b"), bulk("2")])),
            ]))
        ]))
    );
    assert_eq!(
        h.run("BZMPOP 1 1 z MAX"),
        Value::Array(Some(vec![
            bulk("z"),
            Value::Array(Some(vec![Value::Array(Some(vec![bulk("c"), bulk("3")]))]))
        ]))
    );
    assert_eq!(h.run("ZMPOP 1 z MIN"), Value::Array(None));
    h.run("ZADD z 1 a 2 b");
    h.run("ZADD z2 1 a 3 b 4 c");
    assert_eq!(h.run("ZINTERCARD 2 z z2"), int(2));
    assert_eq!(h.run("ZINTERCARD 2 z z2 LIMIT 1"), int(1));
    assert_eq!(
        h.run("ZINTERCARD 0 z"),
        err("ERR at least 1 input key is needed for 'zintercard' command")
    );
    assert_eq!(
        h.run("ZINTERCARD 2 z z2 LIMIT -1"),
        err("ERR LIMIT can't be negative")
    );
    assert_eq!(h.run("ZINTERCARD 3 z z2"), err("ERR syntax error"));
    assert_eq!(h.run("OBJECT FREQ nokey"), Value::null());
    assert!(h.run("OBJECT FREQ z").is_error());
    assert_eq!(h.run("OBJECT IDLETIME z"), int(0));
}

#[test]
fn sort_orders_lists_sets_and_sorted_sets() {
    let mut h = Harness::new();
    h.run("RPUSH l 3 1 2 10");
    let array = |items: &[&str]| Value::Array(Some(items.iter().map(|i| bulk(i)).collect()));
    assert_eq!(h.run("SORT l"), array(&["1", "2", "3", "10"]));
    assert_eq!(h.run("SORT l DESC LIMIT 1 2"), array(&["3", "2"]));
    assert_eq!(h.run("SORT l ALPHA"), array(&["1", "10", "2", "3"]));
    assert_eq!(h.run("SORT l STORE d"), int(4));
    assert_eq!(h.run("LRANGE d 0 -1"), array(&["1", "2", "3", "10"]));
    assert!(
        h.run("SORT l BY w_*").is_error(),
        "patterns naming other keys are refused"
    );
    h.run("RPUSH l x");
    assert_eq!(
        h.run("SORT l"),
        Value::error("ERR One or more scores can't be converted into double")
    );
    assert_eq!(h.run("SORT_RO l STORE d"), Value::error("ERR syntax error"));
}
