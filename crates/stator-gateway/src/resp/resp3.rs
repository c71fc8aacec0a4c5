//! RESP3 replies for connections that sent `HELLO 3`.
//!
//! The kv machine answers in RESP2; a RESP3 connection gets the same reply re-typed as
//! Redis 7 types it: nulls as `_`, `HGETALL`/`CONFIG GET` as maps, `SMEMBERS` and friends
//! as sets, scores as doubles, `WITHSCORES` ranges as `[member, score]` pairs. Simple
//! strings, errors, integers and non-null bulk strings are the same bytes in both, so the
//! common replies pass through without being parsed.

use stator_kv::{parse_reply, Value};

/// How a command's RESP2 reply is re-typed for RESP3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Nulls become `_`; nothing else changes.
    Plain,
    /// A flat `[k1, v1, k2, v2]` array becomes a map.
    Map,
    /// An array becomes a set.
    Set,
    /// A bulk number becomes a double (null stays null).
    Double,
    /// An array of bulk numbers becomes an array of doubles.
    Doubles,
    /// A flat `[member, score, ...]` array becomes `[[member, score(double)], ...]`.
    ScorePairs,
    /// A flat `[field, value, ...]` array becomes `[[field, value], ...]`.
    Pairs,
    /// `ZPOPMIN`/`ZPOPMAX` without a count: `[member, score(double)]`, flat.
    FlatScore,
}

fn has_word(argv: &[Vec<u8>], word: &str) -> bool {
    argv[1..]
        .iter()
        .any(|a| a.eq_ignore_ascii_case(word.as_bytes()))
}

/// The RESP3 shape of `argv`'s reply.
pub(crate) fn shape(argv: &[Vec<u8>]) -> Shape {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    match name.as_str() {
        "hgetall" => Shape::Map,
        "config" if argv.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"get")) => Shape::Map,
        "acl"
            if argv
                .get(1)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"getuser")) =>
        {
            Shape::Map
        }
        "smembers" | "sinter" | "sunion" | "sdiff" => Shape::Set,
        "zscore" | "zincrby" => Shape::Double,
        "zadd" if has_word(argv, "incr") => Shape::Double,
        "zmscore" => Shape::Doubles,
        "zrange" | "zrangebyscore" | "zrevrange" | "zrevrangebyscore" | "zunion" | "zinter"
        | "zdiff" | "zrandmember"
            if has_word(argv, "withscores") =>
        {
            Shape::ScorePairs
        }
        "hrandfield" if has_word(argv, "withvalues") => Shape::Pairs,
        "zpopmin" | "zpopmax" if argv.len() > 2 => Shape::ScorePairs,
        "zpopmin" | "zpopmax" => Shape::FlatScore,
        _ => Shape::Plain,
    }
}

/// `reply` (one RESP2 reply) as a RESP3 connection expects it.
pub(crate) fn convert(reply: Vec<u8>, shape: Shape) -> Vec<u8> {
    let passes_through = match reply.first() {
        Some(b'+' | b'-' | b':') => true,
        Some(b'$') => shape != Shape::Double && reply.get(1) != Some(&b'-'),
        _ => false,
    };
    if passes_through {
        return reply;
    }
    let value = match parse_reply(&reply) {
        Ok(Some((value, used))) if used == reply.len() => value,
        // Not one whole reply: leave it as it is rather than guess.
        _ => return reply,
    };
    let mut out = Vec::with_capacity(reply.len());
    encode(&value, shape, &mut out);
    out
}

fn header(out: &mut Vec<u8>, marker: u8, len: usize) {
    out.push(marker);
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn double(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bulk(Some(text)) => {
            let text = String::from_utf8_lossy(text);
            // Redis prints doubles as RESP3 `,` with `inf`/`-inf` for infinities.
            let shown = match text.as_ref() {
                "inf" | "+inf" => "inf".to_string(),
                "-inf" => "-inf".to_string(),
                other => other.to_string(),
            };
            out.push(b',');
            out.extend_from_slice(shown.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        other => encode(other, Shape::Plain, out),
    }
}

fn encode(value: &Value, shape: Shape, out: &mut Vec<u8>) {
    let items = match value {
        Value::Bulk(None) | Value::Array(None) => return out.extend_from_slice(b"_\r\n"),
        Value::Array(Some(items)) => items,
        Value::Bulk(Some(_)) if shape == Shape::Double => return double(value, out),
        other => return other.encode(out),
    };
    match shape {
        Shape::Map if items.len() % 2 == 0 => {
            header(out, b'%', items.len() / 2);
            for item in items {
                encode(item, Shape::Plain, out);
            }
        }
        Shape::Set => {
            header(out, b'~', items.len());
            for item in items {
                encode(item, Shape::Plain, out);
            }
        }
        Shape::Doubles => {
            header(out, b'*', items.len());
            for item in items {
                double(item, out);
            }
        }
        Shape::ScorePairs | Shape::Pairs if items.len() % 2 == 0 => {
            header(out, b'*', items.len() / 2);
            for pair in items.chunks(2) {
                header(out, b'*', 2);
                encode(&pair[0], Shape::Plain, out);
                if shape == Shape::ScorePairs {
                    double(&pair[1], out);
                } else {
                    encode(&pair[1], Shape::Plain, out);
                }
            }
        }
        Shape::FlatScore if items.len() == 2 => {
            header(out, b'*', 2);
            encode(&items[0], Shape::Plain, out);
            double(&items[1], out);
        }
        _ => {
            header(out, b'*', items.len());
            for item in items {
                encode(item, Shape::Plain, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn convert_value(value: Value, words: &[&str]) -> String {
        String::from_utf8(convert(value.to_bytes(), shape(&argv(words)))).unwrap()
    }

    #[test]
    fn common_replies_pass_through_and_nulls_change() {
        assert_eq!(convert_value(Value::ok(), &["SET", "k", "v"]), "+OK\r\n");
        assert_eq!(
            convert_value(Value::bulk("v"), &["GET", "k"]),
            "$1\r\nv\r\n"
        );
        assert_eq!(convert_value(Value::Bulk(None), &["GET", "k"]), "_\r\n");
        assert_eq!(
            convert_value(
                Value::Array(Some(vec![Value::bulk("a"), Value::Bulk(None)])),
                &["MGET", "a", "b"]
            ),
            "*2\r\n$1\r\na\r\n_\r\n"
        );
    }

    #[test]
    fn typed_replies_become_maps_sets_and_doubles() {
        let flat = Value::Array(Some(vec![Value::bulk("f"), Value::bulk("1.5")]));
        assert_eq!(
            convert_value(flat.clone(), &["HGETALL", "h"]),
            "%1\r\n$1\r\nf\r\n$3\r\n1.5\r\n"
        );
        assert_eq!(
            convert_value(flat.clone(), &["SMEMBERS", "s"]),
            "~2\r\n$1\r\nf\r\n$3\r\n1.5\r\n"
        );
        assert_eq!(
            convert_value(flat.clone(), &["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
            "*1\r\n*2\r\n$1\r\nf\r\n,1.5\r\n"
        );
        assert_eq!(
            convert_value(flat, &["ZPOPMIN", "z"]),
            "*2\r\n$1\r\nf\r\n,1.5\r\n"
        );
        assert_eq!(
            convert_value(Value::bulk("2"), &["ZSCORE", "z", "m"]),
            ",2\r\n"
        );
        assert_eq!(
            convert_value(Value::Bulk(None), &["ZSCORE", "z", "m"]),
            "_\r\n"
        );
        assert_eq!(
            convert_value(Value::error("WRONGTYPE x"), &["HGETALL", "h"]),
            "-WRONGTYPE x\r\n"
        );
    }
}
