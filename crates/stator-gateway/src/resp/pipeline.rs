//! A gateway connection's pipelined commands for one partition, sent as one write.
//!
//! The replicas give no order between requests that are in flight together, so the
//! gateway cannot simply send a connection's pipelined `HSET h ...`, `HSET h ...` side by
//! side. Instead the commands of one read bound for one partition travel as ONE
//! `STATOR.EXEC` write (the kv machine's transaction entry, no watched keys): one session
//! sequence number (exactly once, retried whole on a leader change), one Raft entry, the
//! commands applied in the order sent, one reply each. The encoding splices each command's
//! RESP array as received (no re-parsing): `*<n>` becomes the bulk `<argc>` of
//! `STATOR.EXEC 0 [<argc> <arg>...]...`.
//!
//! A batch of reads needs no order among its commands (a read changes nothing another
//! read sees) and no session: [`read_batch_kind`] batches travel as the same
//! `STATOR.EXEC 0 ...` encoding sent as ONE read (the kv machine answers it as a query,
//! in one pass over its applied state): one request, one lease check, one reply frame
//! per batch instead of one per command. A replica too old to know the read form answers
//! [`refused_as_query`]'s error, and the batch is sent again one read at a time.

use bytes::Bytes;
use stator_kv::resp::reply_len;
use stator_kv::transaction::EXEC_COMMAND;
use stator_kv::{queued_command_error, Value};
use stator_replication::RequestKind;

/// Whether `argv` may travel inside a pipeline batch: the kv machine would queue it in a
/// transaction (known, right arity) and it is not a blocking pop (inside `STATOR.EXEC` a
/// blocking pop does not block). Anything else is sent alone, so its own reply (an error,
/// or the blocking wait) is exactly what a single command gets.
pub fn may_batch(argv: &[Vec<u8>]) -> bool {
    const BLOCKING: &[&str] = &[
        "blpop",
        "brpop",
        "blmove",
        "brpoplpush",
        "bzpopmin",
        "bzpopmax",
        "blmpop",
        "bzmpop",
    ];
    let Some(name) = argv.first() else {
        return false;
    };
    !BLOCKING
        .iter()
        .any(|b| name.eq_ignore_ascii_case(b.as_bytes()))
        && queued_command_error(argv).is_none()
}

/// Whether every command of a batch is a read (sent concurrently, not as one write).
pub fn all_reads<P>(commands: &[(RequestKind, P)]) -> bool {
    commands.iter().all(|(kind, _)| *kind != RequestKind::Write)
}

/// The kind of one read to send a batch of reads as: `Some` when there are several and
/// all are of one kind (linearizable, or stale under `READONLY`).
pub fn read_batch_kind<P>(commands: &[(RequestKind, P)]) -> Option<RequestKind> {
    let (first, rest) = commands.split_first()?;
    let kind = first.0;
    (kind != RequestKind::Write && !rest.is_empty() && rest.iter().all(|(k, _)| *k == kind))
        .then_some(kind)
}

/// Whether `reply` is a replica's refusal of a read batch as a query: a kv machine from
/// before read batches (it answers a write's "changes state" error to any `STATOR.EXEC`
/// query). The caller sends the reads one by one instead.
pub fn refused_as_query(reply: &[u8]) -> bool {
    reply.starts_with(b"-ERR 'stator.exec' changes state")
}

/// `STATOR.EXEC 0 [<argc> <arg>...]...` for `commands`, each a RESP array of bulk
/// strings (as the connection forwards them: slices of its input buffer), in order.
pub fn encode<P: AsRef<[u8]>>(commands: &[(RequestKind, P)]) -> Vec<u8> {
    let mut body_len = 0;
    let mut elements = 2;
    for (_, payload) in commands {
        let payload = payload.as_ref();
        body_len += payload.len() + 8;
        elements += 1 + array_len(payload).map_or(0, |(n, _)| n);
    }
    let mut out = Vec::with_capacity(body_len + 64);
    push_header(&mut out, b'*', elements);
    push_bulk(&mut out, EXEC_COMMAND.as_bytes());
    push_bulk(&mut out, b"0");
    for (_, payload) in commands {
        let payload = payload.as_ref();
        let (argc, header) = array_len(payload).expect("a forwarded command is a RESP array");
        push_bulk(&mut out, itoa::Buffer::new().format(argc).as_bytes());
        out.extend_from_slice(&payload[header..]);
    }
    out
}

/// The replies of a batch of `count` commands from the reply to its `STATOR.EXEC`: the
/// elements of the array, as bytes. Any other reply (the partition had no leader within
/// the deadline, a migration moved a slot, the data budget is full) is the reply of every
/// command of the batch.
///
/// Each reply is a slice of `reply` (one buffer for the batch, shared, not copied).
pub fn split(reply: Vec<u8>, count: usize) -> Vec<Bytes> {
    let reply = Bytes::from(reply);
    if let Some((n, mut at)) = array_len(&reply).filter(|(n, _)| *n == count) {
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            // Cut out, not parsed: no value is built for a reply that is only forwarded.
            match reply_len(&reply[at..]) {
                Ok(Some(used)) => {
                    replies.push(reply.slice(at..at + used));
                    at += used;
                }
                _ => break,
            }
        }
        if replies.len() == n && at == reply.len() {
            return replies;
        }
    }
    if reply.first() == Some(&b'-') {
        return vec![reply; count];
    }
    let error = Value::error(
        "ERR internal gateway error: a partition answered a pipeline batch with a reply the gateway cannot split; the writes of this batch may or may not have been applied",
    )
    .to_bytes();
    vec![Bytes::from(error); count]
}

/// `(n, header length)` of a RESP array header `*<n>\r\n` at the start of `bytes`.
fn array_len(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.first() != Some(&b'*') {
        return None;
    }
    let end = bytes.iter().position(|&b| b == b'\r')?;
    if bytes.get(end + 1) != Some(&b'\n') {
        return None;
    }
    let n: usize = std::str::from_utf8(&bytes[1..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    // Digits on the stack, not a `String`: two numbers per command.
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    push_header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_kv::{encode_command, encode_exec, parse_command};

    #[test]
    fn encodes_what_encode_exec_builds() {
        let commands = [
            vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()],
            vec![b"HSET".to_vec(), b"h".to_vec(), b"f".to_vec(), b"".to_vec()],
            vec![b"GET".to_vec(), b"k".to_vec()],
            // Counts and lengths of several digits.
            std::iter::once(b"MSET".to_vec())
                .chain((0..6).flat_map(|i| [format!("key{i}").into_bytes(), vec![b'x'; 100]]))
                .collect(),
        ];
        let batch: Vec<_> = commands
            .iter()
            .map(|argv| (RequestKind::Write, encode_command(argv)))
            .collect();
        let expected = encode_command(&encode_exec(&[], &commands));
        assert_eq!(encode(&batch), expected);
        let (argv, used) = parse_command(&encode(&batch)).unwrap().unwrap();
        assert_eq!(used, expected.len());
        assert_eq!(argv[0], b"STATOR.EXEC");
    }

    #[test]
    fn splits_an_array_reply_and_repeats_an_error() {
        let reply = b"*3\r\n+OK\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n".to_vec();
        assert_eq!(
            split(reply, 3),
            vec![
                b"+OK\r\n".to_vec(),
                b":1\r\n".to_vec(),
                b"*2\r\n$1\r\na\r\n$-1\r\n".to_vec()
            ]
        );
        // The replies share the batch reply's one buffer: no copy per command.
        let reply = b"*2\r\n+OK\r\n:1\r\n".to_vec();
        let start = reply.as_ptr() as usize;
        let parts = split(reply, 2);
        assert_eq!(parts[0].as_ptr() as usize, start + 4);
        assert_eq!(parts[1].as_ptr() as usize, start + 9);
        let error = b"-TRYAGAIN no leader\r\n".to_vec();
        assert_eq!(split(error.clone(), 2), vec![error.clone(), error]);
        assert!(split(b"*1\r\n+OK\r\n".to_vec(), 2)[0].starts_with(b"-ERR internal"));
    }

    #[test]
    fn reads_of_one_kind_go_as_one_read() {
        let get = |kind| (kind, encode_command(&["GET", "k"]));
        assert_eq!(
            read_batch_kind(&[get(RequestKind::Read), get(RequestKind::Read)]),
            Some(RequestKind::Read)
        );
        assert_eq!(
            read_batch_kind(&[get(RequestKind::StaleRead), get(RequestKind::StaleRead)]),
            Some(RequestKind::StaleRead)
        );
        assert_eq!(
            read_batch_kind(&[get(RequestKind::Read)]),
            None,
            "one read: itself"
        );
        assert_eq!(
            read_batch_kind(&[get(RequestKind::Read), get(RequestKind::StaleRead)]),
            None
        );
        assert_eq!(
            read_batch_kind(&[get(RequestKind::Read), get(RequestKind::Write)]),
            None
        );
        // What a kv machine without read batches answers to one (its `changes_state`).
        let old = Value::error(
            "ERR 'stator.exec' changes state and cannot run as a read-only query; send it as a write",
        )
        .to_bytes();
        assert!(refused_as_query(&old));
        assert!(!refused_as_query(b"*1\r\n$-1\r\n"));
    }

    #[test]
    fn blocking_pops_and_bad_arity_go_alone() {
        let argv = |words: &[&str]| -> Vec<Vec<u8>> {
            words.iter().map(|w| w.as_bytes().to_vec()).collect()
        };
        assert!(may_batch(&argv(&["set", "k", "v"])));
        assert!(!may_batch(&argv(&["set", "k"])));
        assert!(!may_batch(&argv(&["BLPOP", "l", "0"])));
        assert!(!may_batch(&argv(&["nosuchcommand", "k"])));
    }
}
