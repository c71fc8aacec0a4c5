//! The clients: concurrent get/set on a few keys through the gateway's RESP endpoint,
//! paced by the clock (`stator_harness::pace`), one request at a time per connection,
//! every operation recorded.
//!
//! How a reply is classified (what the checker may assume):
//! - `+OK` to SET, a bulk string or null to GET: `ok`.
//! - `-CLUSTERDOWN` (the gateway had no route, nothing was sent) and the gateway's
//!   "nothing was applied" error: `fail`.
//! - `-TRYAGAIN` to a SET (the gateway gave up on the leader; the write may still take
//!   effect), any other error to a SET, a lost connection, or no reply within
//!   [`OP_DEADLINE`]: `unknown`. A GET that did not answer is recorded the same way; it
//!   observed nothing, so the checker ignores it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stator_check::Recorder;
use stator_harness::pace::{PaceOptions, PacedLoad};
use stator_harness::resp::Connection;
use stator_kv::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A client's deadline for one operation. Longer than the gateway's own 5 s request
/// timeout, so the gateway's verdict (`TRYAGAIN`) normally arrives first; past it the
/// operation is `unknown`.
pub const OP_DEADLINE: Duration = Duration::from_secs(8);
/// Time allowed to connect to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Operations scheduled per second per client. A paced rate keeps the history a size
/// the checker handles in seconds while clients still overlap constantly (a client
/// used to pause 0-10 ms between operations, about this rate).
const OPS_PER_SEC_PER_CLIENT: u32 = 100;
/// Time allowed for the final read of every key.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What a reply means for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; for a get, what was read.
    Ok(Option<String>),
    /// Definitely not applied.
    Fail,
    /// May or may not have been applied.
    Unknown,
}

/// Classifies a reply to SET (`is_set`) or GET; see the module doc.
pub fn classify(is_set: bool, reply: &Value) -> Outcome {
    match reply {
        Value::Simple(s) if is_set && s == "OK" => Outcome::Ok(None),
        Value::Bulk(value) if !is_set => Outcome::Ok(
            value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        ),
        Value::Error(message)
            if message.starts_with("CLUSTERDOWN") || message.contains("nothing was applied") =>
        {
            Outcome::Fail
        }
        _ => Outcome::Unknown,
    }
}

/// Counters of one run's clients.
#[derive(Debug, Default, Clone)]
pub struct ErrorSamples {
    /// A few error replies seen, for the log.
    pub samples: Vec<String>,
}

/// One client: its own connection, random stream and write counter. The paced load
/// runs one operation at a time on it, so its history is sequential, as the checker
/// assumes of a client.
struct Client {
    id: u64,
    addr: Arc<str>,
    keys: usize,
    recorder: Recorder,
    rng: StdRng,
    connection: Option<Connection>,
    sequence: u64,
    errors: ErrorSamples,
}

/// The clients of a run, on a [`PacedLoad`]: operations scheduled at
/// [`OPS_PER_SEC_PER_CLIENT`] per client and run on whichever client is idle; a tick
/// that finds every client busy is missed and counted.
pub struct Clients(PacedLoad<(), Client>);

/// What the clients saw, once stopped.
#[derive(Debug, Default)]
pub struct ClientsOutcome {
    /// Error replies seen, a few per client.
    pub samples: Vec<String>,
    /// Operations scheduled while every client was busy.
    pub missed_ticks: u64,
}

impl Clients {
    /// Starts `clients` clients on `keys` keys against `addr`.
    pub fn start(addr: &str, clients: usize, keys: usize, seed: u64, recorder: Recorder) -> Self {
        let options = PaceOptions {
            rate_per_sec: u32::try_from(clients)
                .unwrap_or(u32::MAX)
                .saturating_mul(OPS_PER_SEC_PER_CLIENT),
            max_in_flight: clients,
            max_queued: 0,
        };
        let addr: Arc<str> = addr.into();
        let made = AtomicU64::new(0);
        let make = move || {
            let id = made.fetch_add(1, Ordering::Relaxed);
            Client {
                id,
                addr: addr.clone(),
                keys,
                recorder: recorder.clone(),
                rng: StdRng::seed_from_u64(seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                connection: None,
                sequence: 0,
                errors: ErrorSamples::default(),
            }
        };
        Clients(PacedLoad::start(
            options,
            make,
            |mut client, _tick| async move {
                client.operation().await;
                (client, ())
            },
        ))
    }

    /// Stops scheduling and waits for the operations in flight.
    pub async fn stop(self) -> ClientsOutcome {
        let record = self.0.finish().await;
        ClientsOutcome {
            samples: record
                .states
                .into_iter()
                .flat_map(|c| c.errors.samples)
                .collect(),
            missed_ticks: record.missed,
        }
    }
}

impl Client {
    /// One random get or set, recorded; without a connection, one attempt to connect.
    async fn operation(&mut self) {
        if self.connection.is_none() {
            match Connection::connect_timeout(&*self.addr, CONNECT_TIMEOUT).await {
                Ok(c) => self.connection = Some(c),
                Err(_) => {
                    // The gateway is down: this client sits out a while.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
        }
        let conn = self.connection.as_mut().expect("connected above");
        let key = format!("k{}", self.rng.gen_range(0..self.keys));
        let is_set = self.rng.gen_bool(0.5);
        let client = self.id;
        let (pending, value) = if is_set {
            self.sequence += 1;
            let value = format!("c{client}-{}", self.sequence);
            (
                self.recorder.set(client, key.clone(), value.clone()),
                Some(value),
            )
        } else {
            (self.recorder.get(client, key.clone()), None)
        };
        let argv: Vec<&[u8]> = match &value {
            Some(v) => vec![b"SET", key.as_bytes(), v.as_bytes()],
            None => vec![b"GET", key.as_bytes()],
        };
        let outcome = match tokio::time::timeout(OP_DEADLINE, conn.call(&argv)).await {
            Ok(Ok(reply)) => {
                let outcome = classify(is_set, &reply);
                if let (Value::Error(message), true) = (&reply, self.errors.samples.len() < 5) {
                    self.errors.samples.push(message.clone());
                }
                outcome
            }
            // A broken connection or a timeout: the request may have reached the cluster.
            // The connection's state is unknown too, so open a new one.
            Ok(Err(_)) | Err(_) => {
                self.connection = None;
                Outcome::Unknown
            }
        };
        match outcome {
            Outcome::Ok(read) if is_set => {
                debug_assert!(read.is_none());
                pending.ok()
            }
            Outcome::Ok(read) => pending.ok_read(read),
            Outcome::Fail => pending.fail(),
            Outcome::Unknown => pending.unknown(),
        }
    }
}

/// Reads every key once more after the run (retrying until each answers, at most
/// [`FINAL_READ_TIMEOUT`]); records the reads as client `client`. Returns the values of
/// the keys that answered.
pub async fn final_reads(
    addr: &str,
    keys: usize,
    client: u64,
    recorder: &Recorder,
) -> BTreeMap<String, Option<String>> {
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut values = BTreeMap::new();
    let mut connection: Option<Connection> = None;
    for index in 0..keys {
        let key = format!("k{index}");
        while Instant::now() < deadline {
            if connection.is_none() {
                match Connection::connect_timeout(addr, CONNECT_TIMEOUT).await {
                    Ok(c) => connection = Some(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let conn = connection.as_mut().expect("connected above");
            let pending = recorder.get(client, key.clone());
            match tokio::time::timeout(OP_DEADLINE, conn.call(&[b"GET".as_slice(), key.as_bytes()]))
                .await
            {
                Ok(Ok(reply)) => match classify(false, &reply) {
                    Outcome::Ok(value) => {
                        pending.ok_read(value.clone());
                        values.insert(key.clone(), value);
                        break;
                    }
                    Outcome::Fail => pending.fail(),
                    Outcome::Unknown => pending.unknown(),
                },
                Ok(Err(_)) | Err(_) => {
                    connection = None;
                    pending.unknown();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    values
}

/// Waits until the endpoint answers PING, at most `timeout`.
pub async fn wait_ready(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut conn) = Connection::connect_timeout(addr, CONNECT_TIMEOUT).await {
            if let Ok(Ok(Value::Simple(_))) =
                tokio::time::timeout(Duration::from_secs(2), conn.call(&[b"PING"])).await
            {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the RESP endpoint {addr} did not answer PING within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_history_statuses() {
        assert_eq!(classify(true, &Value::ok()), Outcome::Ok(None));
        assert_eq!(
            classify(false, &Value::bulk("v")),
            Outcome::Ok(Some("v".into()))
        );
        assert_eq!(classify(false, &Value::null()), Outcome::Ok(None));
        assert_eq!(
            classify(true, &Value::error("CLUSTERDOWN no route")),
            Outcome::Fail
        );
        assert_eq!(
            classify(
                true,
                &Value::error(
                    "TRYAGAIN partition 0 ...; the write may or may not have been applied"
                )
            ),
            Outcome::Unknown
        );
        assert_eq!(
            classify(true, &Value::error("ERR something new")),
            Outcome::Unknown
        );
        // A SET answered like a GET is not an acknowledgement.
        assert_eq!(classify(true, &Value::bulk("x")), Outcome::Unknown);
    }
}
