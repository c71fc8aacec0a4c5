//! What the kv's examples share (a module, not an example: cargo discovers only
//! `examples/*.rs` and `examples/*/main.rs`).

/// Commands per entry: one `-P 16` pipeline of one connection.
pub const BATCH: usize = 16;

/// The environment variable `name` as a number, or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Seed of [`random_sets`]' generator: the same keys in every run and build.
pub const SEED: u64 = 0x5eed;

/// `SET key:{tag}:<key, 12 digits> value` as a command's arguments.
pub fn set(key: u64, value: &[u8]) -> Vec<Vec<u8>> {
    vec![
        b"SET".to_vec(),
        format!("key:{{tag}}:{key:012}").into_bytes(),
        value.to_vec(),
    ]
}

/// One `STATOR.EXEC` entry of [`BATCH`] [`set`]s of `value` on keys below `keys`, drawn
/// by a fixed LCG whose state is `state` (start it at [`SEED`]).
pub fn random_sets(state: &mut u64, keys: u64, value: &[u8]) -> Vec<u8> {
    let queued: Vec<Vec<Vec<u8>>> = (0..BATCH)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            set((*state >> 33) % keys, value)
        })
        .collect();
    stator_kv::encode_command(&stator_kv::encode_exec(&[], &queued))
}

/// A one-thread runtime, as a replica's host runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}
