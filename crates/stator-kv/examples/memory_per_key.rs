//! Bytes per small string, hash field, sorted-set member and set member: `KvMachine` (heap bytes
//! counted by a wrapping allocator) against `redis-server` (`INFO memory` used_memory), in
//! the same run. `STATOR_MEMORY_ITEMS` sets the count (default 1,000,000).
//!
//! `cargo run --release -p stator-kv --example memory_per_key` (needs redis-server).

use stator_kv::{encode_command, parse_reply, KvMachine, Value};
use stator_testkit::RedisServer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Commands sent to Redis before reading their replies.
const PIPELINE: usize = 1_000;

/// Builds the i-th command of a workload.
type MakeCommand = Box<dyn Fn(usize) -> Vec<Vec<u8>>>;

fn workloads() -> Vec<(&'static str, MakeCommand)> {
    vec![
        (
            "small string",
            Box::new(|i| {
                vec![
                    b"SET".to_vec(),
                    format!("key:{i}").into_bytes(),
                    format!("v{i}").into_bytes(),
                ]
            }),
        ),
        (
            "hash field",
            Box::new(|i| {
                vec![
                    b"HSET".to_vec(),
                    format!("hash:{}", i / 100).into_bytes(),
                    format!("field:{i}").into_bytes(),
                    format!("v{i}").into_bytes(),
                ]
            }),
        ),
        (
            "sorted-set member",
            Box::new(|i| {
                vec![
                    b"ZADD".to_vec(),
                    format!("zset:{}", i / 1000).into_bytes(),
                    format!("{i}").into_bytes(),
                    format!("member:{i}").into_bytes(),
                ]
            }),
        ),
        (
            "set member",
            Box::new(|i| {
                vec![
                    b"SADD".to_vec(),
                    format!("set:{}", i / 1000).into_bytes(),
                    format!("member:{i}").into_bytes(),
                ]
            }),
        ),
    ]
}

fn redis_used_memory(stream: &mut TcpStream) -> i64 {
    let reply = call(stream, &[b"INFO".to_vec(), b"memory".to_vec()]);
    let Value::Bulk(Some(text)) = reply else {
        panic!("INFO answered {reply:?}")
    };
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .expect("used_memory in INFO memory")
        .trim()
        .parse()
        .unwrap()
}

fn call(stream: &mut TcpStream, argv: &[Vec<u8>]) -> Value {
    stream.write_all(&encode_command(argv)).unwrap();
    read_replies(stream, 1).pop().unwrap()
}

fn read_replies(stream: &mut TcpStream, count: usize) -> Vec<Value> {
    let mut buffer = Vec::new();
    let mut replies = Vec::with_capacity(count);
    let mut chunk = vec![0u8; 1 << 16];
    while replies.len() < count {
        while let Some((value, used)) = parse_reply(&buffer).unwrap() {
            buffer.drain(..used);
            replies.push(value);
            if replies.len() == count {
                return replies;
            }
        }
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "redis-server closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
    }
    replies
}

fn main() {
    let items: usize = std::env::var("STATOR_MEMORY_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let server = RedisServer::start(&[]).expect("redis-server");
    let mut stream = server.connect().expect("connect to redis-server");
    println!("{items} items each; bytes per item (stator heap / redis used_memory)");
    println!(
        "{:<18} {:>10} {:>10} {:>7}",
        "workload", "stator", "redis", "ratio"
    );
    for (name, make) in workloads() {
        call(&mut stream, &[b"FLUSHALL".to_vec()]);
        let redis_before = redis_used_memory(&mut stream);
        for start in (0..items).step_by(PIPELINE) {
            let end = (start + PIPELINE).min(items);
            let mut batch = Vec::new();
            for i in start..end {
                batch.extend(encode_command(&make(i)));
            }
            stream.write_all(&batch).unwrap();
            read_replies(&mut stream, end - start);
        }
        let redis_bytes = redis_used_memory(&mut stream) - redis_before;

        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let mut machine = KvMachine::new();
        for i in 0..items {
            machine.apply_owned(1, make(i));
        }
        let stator_bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
        drop(machine);
        let per = |bytes: isize| bytes as f64 / items as f64;
        println!(
            "{:<18} {:>10.1} {:>10.1} {:>6.2}x",
            name,
            per(stator_bytes),
            per(redis_bytes as isize),
            stator_bytes as f64 / redis_bytes as f64
        );
    }
    // Dropping the server kills it.
    drop(server);
}
