//! Sorted-set commands.

use super::list::parse_timeout;
use super::{
    distinct_indexes, format_double, glob_match, index_range, int_arg, parse_cursor, parse_double,
    parse_scan_options, parse_score, scan_page, scan_reply,
};
use crate::command::{Command, CommandSpec};
use crate::keyspace::ExpiryChange;
use crate::machine::{attempt, KvMachine, NOT_A_FLOAT, NOT_POSITIVE, SYNTAX_ERROR, WRONG_TYPE};
use crate::resp::Value;
use crate::types::{Data, ScoreBound, ZSet};

const NOT_A_FLOAT_RANGE: &str = "ERR min or max is not a float";
const NOT_A_LEX_RANGE: &str = "ERR min or max not valid string range item";

/// Members with their scores, owned.
type Members = Vec<(Vec<u8>, f64)>;

/// One end of a lexicographic range: `-`, `+`, `[a` or `(a`.
#[derive(Debug, Clone)]
enum LexBound {
    Min,
    Max,
    Inclusive(Vec<u8>),
    Exclusive(Vec<u8>),
}

impl LexBound {
    fn parse(arg: &[u8]) -> Option<LexBound> {
        match arg {
            [b'+'] => Some(LexBound::Max),
            [b'-'] => Some(LexBound::Min),
            [b'[', rest @ ..] => Some(LexBound::Inclusive(rest.to_vec())),
            [b'(', rest @ ..] => Some(LexBound::Exclusive(rest.to_vec())),
            _ => None,
        }
    }
    fn at_least_min(&self, member: &[u8]) -> bool {
        match self {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Inclusive(min) => member >= min.as_slice(),
            LexBound::Exclusive(min) => member > min.as_slice(),
        }
    }
    fn at_most_max(&self, member: &[u8]) -> bool {
        match self {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Inclusive(max) => member <= max.as_slice(),
            LexBound::Exclusive(max) => member < max.as_slice(),
        }
    }
}

fn parse_score_bound(arg: &[u8]) -> Option<ScoreBound> {
    match arg {
        [b'(', rest @ ..] => parse_double(rest).map(ScoreBound::Exclusive),
        _ => parse_double(arg).map(ScoreBound::Inclusive),
    }
}

/// Which members a range command selects.
enum Selection {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound, LexBound),
}

/// A parsed ZRANGE-family request.
struct RangeRequest {
    selection: Selection,
    reverse: bool,
    /// `(offset, count)`; a negative count means all.
    limit: Option<(i64, i64)>,
    with_scores: bool,
}

/// What selects members, as the legacy command names fix it.
#[derive(Clone, Copy, PartialEq)]
enum RangeKind {
    Auto,
    Rank,
    Score,
    Lex,
}

/// Parses `min max [BYSCORE|BYLEX] [REV] [LIMIT o c] [WITHSCORES]` at `argv[at..]`, as
/// Redis' `zrangeGenericCommand` does, with the kind and direction a legacy name fixes.
fn parse_range(
    argv: &[Vec<u8>],
    at: usize,
    fixed_kind: RangeKind,
    fixed_reverse: Option<bool>,
    store: bool,
) -> Result<RangeRequest, Value> {
    let mut kind = fixed_kind;
    let mut reverse = fixed_reverse;
    let mut with_scores = false;
    let mut limit: Option<(i64, i64)> = None;
    let mut index = at + 2;
    while index < argv.len() {
        let left = argv.len() - index - 1;
        let word = argv[index].to_ascii_uppercase();
        match word.as_slice() {
            b"WITHSCORES" if !store => with_scores = true,
            b"LIMIT" if left >= 2 => {
                let offset = int_arg(&argv[index + 1])?;
                let count = int_arg(&argv[index + 2])?;
                limit = Some((offset, count));
                index += 2;
            }
            b"REV" if fixed_reverse.is_none() && reverse.is_none() => reverse = Some(true),
            b"BYLEX" if kind == RangeKind::Auto => kind = RangeKind::Lex,
            b"BYSCORE" if kind == RangeKind::Auto => kind = RangeKind::Score,
            _ => return Err(Value::error(SYNTAX_ERROR)),
        }
        index += 1;
    }
    let reverse = reverse.unwrap_or(false);
    let kind = if kind == RangeKind::Auto {
        RangeKind::Rank
    } else {
        kind
    };
    if kind == RangeKind::Rank && limit.is_some_and(|(_, count)| count == -1) {
        // Redis ignores a LIMIT whose count is -1 on a rank range (below it is an error).
        limit = None;
    }
    // Redis takes LIMIT's count of -1 as "no LIMIT given".
    if limit.is_some_and(|(_, count)| count != -1) && kind == RangeKind::Rank {
        return Err(Value::error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && kind == RangeKind::Lex {
        return Err(Value::error(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    let (mut min_at, mut max_at) = (at, at + 1);
    if reverse && kind != RangeKind::Rank {
        std::mem::swap(&mut min_at, &mut max_at);
    }
    let selection = match kind {
        RangeKind::Score => match (
            parse_score_bound(&argv[min_at]),
            parse_score_bound(&argv[max_at]),
        ) {
            (Some(min), Some(max)) => Selection::Score(min, max),
            _ => return Err(Value::error(NOT_A_FLOAT_RANGE)),
        },
        RangeKind::Lex => match (
            LexBound::parse(&argv[min_at]),
            LexBound::parse(&argv[max_at]),
        ) {
            (Some(min), Some(max)) => Selection::Lex(min, max),
            _ => return Err(Value::error(NOT_A_LEX_RANGE)),
        },
        _ => Selection::Rank(int_arg(&argv[min_at])?, int_arg(&argv[max_at])?),
    };
    Ok(RangeRequest {
        selection,
        reverse,
        limit,
        with_scores,
    })
}

/// Members selected by `request`, in reply order.
fn select<'a>(zset: &'a ZSet, request: &RangeRequest) -> Vec<(&'a Vec<u8>, f64)> {
    let mut selected: Vec<(&Vec<u8>, f64)> = match &request.selection {
        Selection::Rank(start, stop) => {
            let Some((start, stop)) = index_range(*start, *stop, zset.len()) else {
                return Vec::new();
            };
            if request.reverse {
                zset.ordered()
                    .rev()
                    .skip(start)
                    .take(stop - start + 1)
                    .collect()
            } else {
                zset.ordered().skip(start).take(stop - start + 1).collect()
            }
        }
        Selection::Score(min, max) => {
            let mut selected: Vec<_> = zset.range_by_score(*min, *max).collect();
            if request.reverse {
                selected.reverse();
            }
            selected
        }
        Selection::Lex(min, max) => lex_range(zset, min, max, request.reverse),
    };
    if let Some((offset, count)) = request.limit {
        if offset < 0 {
            return Vec::new();
        }
        selected.drain(..(offset as usize).min(selected.len()));
        if count >= 0 {
            selected.truncate(count as usize);
        }
    }
    selected
}

/// Redis' lex range walk: from the first member (in score order) at or past `min`, while at
/// or before `max` (mirrored when reversed). Meant for sets whose scores are all equal.
fn lex_range<'a>(
    zset: &'a ZSet,
    min: &LexBound,
    max: &LexBound,
    reverse: bool,
) -> Vec<(&'a Vec<u8>, f64)> {
    if reverse {
        zset.ordered()
            .rev()
            .skip_while(|(member, _)| !max.at_most_max(member))
            .take_while(|(member, _)| min.at_least_min(member))
            .collect()
    } else {
        zset.ordered()
            .skip_while(|(member, _)| !min.at_least_min(member))
            .take_while(|(member, _)| max.at_most_max(member))
            .collect()
    }
}

fn members_reply(members: &[(&Vec<u8>, f64)], with_scores: bool) -> Value {
    let mut reply = Vec::with_capacity(members.len() * if with_scores { 2 } else { 1 });
    for (member, score) in members {
        reply.push(Value::bulk((*member).clone()));
        if with_scores {
            reply.push(Value::bulk(format_double(*score)));
        }
    }
    Value::Array(Some(reply))
}

/// How ZUNION and ZINTER combine a member's scores.
#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

impl Aggregate {
    fn apply(self, current: f64, next: f64) -> f64 {
        match self {
            Aggregate::Sum => {
                let sum = current + next;
                if sum.is_nan() {
                    0.0
                } else {
                    sum
                }
            }
            Aggregate::Min => current.min(next),
            Aggregate::Max => current.max(next),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ZSetOp {
    Union,
    Inter,
    Diff,
}

/// ZADD's flags.
#[derive(Default)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// What ZADD did to one member.
enum AddOutcome {
    Added(f64),
    Updated(f64),
    /// Processed without a change (same score).
    Unchanged(f64),
    Skipped,
}

impl KvMachine {
    pub(crate) fn zset_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        use Command as C;
        match spec.command {
            C::ZScore => {
                let zset = attempt!(self.zset(&argv[1], now_ms));
                Value::Bulk(zset.and_then(|z| z.score(&argv[2])).map(format_double))
            }
            C::ZMScore => {
                let zset = attempt!(self.zset(&argv[1], now_ms));
                Value::Array(Some(
                    argv[2..]
                        .iter()
                        .map(|m| Value::Bulk(zset.and_then(|z| z.score(m)).map(format_double)))
                        .collect(),
                ))
            }
            C::ZRank | C::ZRevRank => {
                let zset = attempt!(self.zset(&argv[1], now_ms));
                match zset.and_then(|z| z.rank(&argv[2]).map(|rank| (z.len(), rank))) {
                    None => Value::null(),
                    Some((len, rank)) if spec.command == C::ZRevRank => {
                        Value::Integer((len - 1 - rank) as i64)
                    }
                    Some((_, rank)) => Value::Integer(rank as i64),
                }
            }
            C::ZCard => {
                Value::Integer(attempt!(self.zset(&argv[1], now_ms)).map_or(0, ZSet::len) as i64)
            }
            C::ZRange
            | C::ZRangeByScore
            | C::ZRevRangeByScore
            | C::ZRangeByLex
            | C::ZRevRangeByLex
            | C::ZRevRange => {
                let (kind, reverse) = match spec.command {
                    C::ZRange => (RangeKind::Auto, None),
                    C::ZRangeByScore => (RangeKind::Score, Some(false)),
                    C::ZRevRangeByScore => (RangeKind::Score, Some(true)),
                    C::ZRangeByLex => (RangeKind::Lex, Some(false)),
                    C::ZRevRangeByLex => (RangeKind::Lex, Some(true)),
                    _ => (RangeKind::Rank, Some(true)),
                };
                let request = attempt!(parse_range(argv, 2, kind, reverse, false));
                let Some(zset) = attempt!(self.zset(&argv[1], now_ms)) else {
                    return Value::Array(Some(Vec::new()));
                };
                members_reply(&select(zset, &request), request.with_scores)
            }
            C::ZCount => self.zcount(now_ms, argv),
            C::ZLexCount => self.zlexcount(now_ms, argv),
            C::ZRandMember => self.zrandmember(now_ms, argv),
            C::ZUnion | C::ZInter | C::ZDiff => self.zset_combined(now_ms, spec, argv),
            C::ZInterCard => self.zintercard(now_ms, argv),
            C::ZScan => self.zscan(now_ms, argv),
            other => unreachable!("{other:?} is not a sorted-set read"),
        }
    }

    /// `ZCOUNT key min max`.
    fn zcount(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let (Some(min), Some(max)) = (parse_score_bound(&argv[2]), parse_score_bound(&argv[3]))
        else {
            return Value::error(NOT_A_FLOAT_RANGE);
        };
        let zset = attempt!(self.zset(&argv[1], now_ms));
        Value::Integer(zset.map_or(0, |z| z.range_by_score(min, max).count()) as i64)
    }

    /// `ZLEXCOUNT key min max`.
    fn zlexcount(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let (Some(min), Some(max)) = (LexBound::parse(&argv[2]), LexBound::parse(&argv[3])) else {
            return Value::error(NOT_A_LEX_RANGE);
        };
        let zset = attempt!(self.zset(&argv[1], now_ms));
        Value::Integer(zset.map_or(0, |z| lex_range(z, &min, &max, false).len()) as i64)
    }

    /// `ZUNION`, `ZINTER`, `ZDIFF`: the combination, not stored.
    fn zset_combined(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let op = match spec.command {
            Command::ZUnion => ZSetOp::Union,
            Command::ZInter => ZSetOp::Inter,
            _ => ZSetOp::Diff,
        };
        let (result, with_scores) = attempt!(self.combine_zsets(now_ms, argv, 1, op, false));
        let members: Vec<(&Vec<u8>, f64)> = result.ordered().collect();
        members_reply(&members, with_scores)
    }

    /// `ZINTERCARD numkeys key [key ...] [LIMIT limit]`.
    fn zintercard(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let numkeys = attempt!(int_arg(&argv[1]));
        if numkeys < 1 {
            return Value::error("ERR at least 1 input key is needed for 'zintercard' command");
        }
        let numkeys = numkeys as usize;
        if numkeys > argv.len() - 2 {
            return Value::error(SYNTAX_ERROR);
        }
        // Redis reads (and type-checks) the keys before the options.
        let inputs = &argv[..2 + numkeys];
        let (result, _) = attempt!(self.combine_zsets(now_ms, inputs, 1, ZSetOp::Inter, true));
        let mut limit = 0usize;
        match &argv[2 + numkeys..] {
            [] => {}
            [word, value] if word.eq_ignore_ascii_case(b"LIMIT") => {
                match crate::resp::parse_i64_strict(value) {
                    Some(n) if n >= 0 => limit = n as usize,
                    _ => return Value::error("ERR LIMIT can't be negative"),
                }
            }
            _ => return Value::error(SYNTAX_ERROR),
        }
        let count = if limit == 0 {
            result.len()
        } else {
            result.len().min(limit)
        };
        Value::Integer(count as i64)
    }

    /// `ZSCAN key cursor [MATCH pattern] [COUNT count]`.
    fn zscan(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        let cursor = attempt!(parse_cursor(&argv[2]));
        let Some(zset) = attempt!(self.zset(&argv[1], now_ms)) else {
            return scan_reply(0, Vec::new());
        };
        let options = attempt!(parse_scan_options(&argv[3..], false));
        let small = Data::ZSet(Box::new(zset.clone())).encoding() == "listpack";
        let (next, page) = if small {
            (0, zset.ordered().map(|(m, s)| (m.as_slice(), s)).collect())
        } else {
            scan_page(
                cursor,
                options.count,
                zset.iter().map(|(m, s)| (m.as_slice(), s)),
            )
        };
        let elements = page
            .into_iter()
            .filter(|(m, _)| options.pattern.is_none_or(|p| glob_match(p, m)))
            .flat_map(|(m, s)| [Value::bulk(m.to_vec()), Value::bulk(format_double(s))])
            .collect();
        scan_reply(next, elements)
    }

    fn zrandmember(&self, now_ms: u64, argv: &[Vec<u8>]) -> Value {
        if argv.len() >= 3 {
            attempt!(int_arg(&argv[2]));
            if argv.len() > 4 || (argv.len() == 4 && !argv[3].eq_ignore_ascii_case(b"WITHSCORES")) {
                return Value::error(SYNTAX_ERROR);
            }
        }
        let zset = attempt!(self.zset(&argv[1], now_ms));
        let mut rng = self.read_rng();
        if argv.len() == 2 {
            return Value::Bulk(
                zset.and_then(|z| z.get_index(rng.below(z.len())).map(|(m, _)| m.clone())),
            );
        }
        let count = attempt!(int_arg(&argv[2]));
        let with_scores = match argv.len() {
            3 => false,
            4 if argv[3].eq_ignore_ascii_case(b"WITHSCORES") => true,
            _ => return Value::error(SYNTAX_ERROR),
        };
        let Some(zset) = zset else {
            return Value::Array(Some(Vec::new()));
        };
        let indexes: Vec<usize> = if count >= 0 {
            distinct_indexes(&mut rng, zset.len(), count as usize)
        } else {
            (0..count.unsigned_abs())
                .map(|_| rng.below(zset.len()))
                .collect()
        };
        let members: Vec<(&Vec<u8>, f64)> = indexes
            .into_iter()
            .map(|i| zset.get_index(i).expect("below len"))
            .collect();
        members_reply(&members, with_scores)
    }

    /// ZUNION/ZINTER/ZDIFF and their STORE forms over `numkeys` at `argv[numkeys_at]`.
    /// Returns the result and whether WITHSCORES was given.
    fn combine_zsets(
        &self,
        now_ms: u64,
        argv: &[Vec<u8>],
        numkeys_at: usize,
        op: ZSetOp,
        store: bool,
    ) -> Result<(ZSet, bool), Value> {
        let numkeys = int_arg(&argv[numkeys_at])?;
        if numkeys < 1 {
            let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
            return Err(Value::error(format!(
                "ERR at least 1 input key is needed for '{name}' command"
            )));
        }
        let numkeys = numkeys as usize;
        if numkeys > argv.len() - numkeys_at - 1 {
            return Err(Value::error(SYNTAX_ERROR));
        }
        let keys = &argv[numkeys_at + 1..numkeys_at + 1 + numkeys];
        // Each input: its members with scores (a set's members score 1), or None if missing.
        let mut inputs: Vec<Option<Members>> = Vec::with_capacity(numkeys);
        for key in keys {
            inputs.push(match self.live(key, now_ms).map(|entry| &entry.data) {
                None => None,
                Some(Data::ZSet(zset)) => Some(zset.iter().map(|(m, s)| (m.clone(), s)).collect()),
                Some(Data::Set(set)) => Some(set.iter().map(|m| (m.clone(), 1.0)).collect()),
                Some(_) => return Err(Value::error(WRONG_TYPE)),
            });
        }
        let mut weights = vec![1.0; numkeys];
        let mut aggregate = Aggregate::Sum;
        let mut with_scores = false;
        let mut index = numkeys_at + 1 + numkeys;
        while index < argv.len() {
            let remaining = argv.len() - index;
            let word = argv[index].to_ascii_uppercase();
            if op != ZSetOp::Diff && remaining > numkeys && word == b"WEIGHTS" {
                for (slot, arg) in weights
                    .iter_mut()
                    .zip(&argv[index + 1..index + 1 + numkeys])
                {
                    *slot = parse_score(arg)
                        .ok_or_else(|| Value::error("ERR weight value is not a float"))?;
                }
                index += 1 + numkeys;
            } else if op != ZSetOp::Diff && remaining >= 2 && word == b"AGGREGATE" {
                aggregate = match argv[index + 1].to_ascii_uppercase().as_slice() {
                    b"SUM" => Aggregate::Sum,
                    b"MIN" => Aggregate::Min,
                    b"MAX" => Aggregate::Max,
                    _ => return Err(Value::error(SYNTAX_ERROR)),
                };
                index += 2;
            } else if !store && word == b"WITHSCORES" {
                with_scores = true;
                index += 1;
            } else {
                return Err(Value::error(SYNTAX_ERROR));
            }
        }
        let weighted = |score: f64, weight: f64| {
            let product = score * weight;
            if product.is_nan() {
                0.0
            } else {
                product
            }
        };
        let mut result = ZSet::default();
        match op {
            ZSetOp::Diff => {
                if let Some(Some(first)) = inputs.first() {
                    let rest: Vec<std::collections::HashSet<&Vec<u8>>> = inputs[1..]
                        .iter()
                        .flatten()
                        .map(|members| members.iter().map(|(m, _)| m).collect())
                        .collect();
                    for (member, score) in first {
                        if !rest.iter().any(|set| set.contains(member)) {
                            result.insert(member.clone(), *score);
                        }
                    }
                }
            }
            ZSetOp::Union | ZSetOp::Inter => {
                // Redis combines the inputs from the smallest to the largest.
                let mut order: Vec<usize> = (0..numkeys).collect();
                order.sort_by_key(|&i| inputs[i].as_ref().map_or(0, Vec::len));
                if op == ZSetOp::Inter && inputs.iter().any(Option::is_none) {
                    return Ok((result, with_scores));
                }
                let mut combined: indexmap::IndexMap<&Vec<u8>, (f64, usize)> =
                    indexmap::IndexMap::new();
                for &i in &order {
                    for (member, score) in inputs[i].iter().flatten() {
                        let score = weighted(*score, weights[i]);
                        combined
                            .entry(member)
                            .and_modify(|(current, seen)| {
                                *current = aggregate.apply(*current, score);
                                *seen += 1;
                            })
                            .or_insert((score, 1));
                    }
                }
                for (member, (score, seen)) in combined {
                    if op == ZSetOp::Union || seen == numkeys {
                        result.insert(member.clone(), score);
                    }
                }
            }
        }
        Ok((result, with_scores))
    }

    pub(crate) fn zset_write(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        use Command as C;
        let key = argv[1].clone();
        match spec.command {
            C::ZAdd => self.zadd(argv),
            C::ZIncrBy => self.zincrby(&argv),
            C::ZRem => {
                let removed = attempt!(self.with_zset(&key, false, |zset| argv[2..]
                    .iter()
                    .filter(|m| zset.remove(m))
                    .count()));
                Value::Integer(removed.unwrap_or(0) as i64)
            }
            C::ZRemRangeByRank | C::ZRemRangeByScore | C::ZRemRangeByLex => {
                self.zrem_range(spec, &argv)
            }
            C::ZPopMin | C::ZPopMax => self.zpop(spec, &argv),
            C::ZMPop | C::BZMPop => self.zset_multi_pop(spec, &argv),
            C::BZPopMin | C::BZPopMax => self.zset_pop_first(spec, &argv),
            C::ZUnionStore | C::ZInterStore | C::ZDiffStore => {
                self.zset_store_combined(spec, &argv)
            }
            C::ZRangeStore => self.zrangestore(&argv),
            other => unreachable!("{other:?} is not a sorted-set write"),
        }
    }

    /// `ZINCRBY key increment member`.
    fn zincrby(&mut self, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        let Some(delta) = parse_score(&argv[2]) else {
            return Value::error(NOT_A_FLOAT);
        };
        attempt!(self.zset(&key, now_ms));
        let flags = AddFlags {
            incr: true,
            ..AddFlags::default()
        };
        let member = argv[3].clone();
        let outcome = attempt!(attempt!(
            self.with_zset(&key, true, |zset| add_member(zset, member, delta, &flags))
        )
        .expect("created"));
        match outcome {
            AddOutcome::Added(score)
            | AddOutcome::Updated(score)
            | AddOutcome::Unchanged(score) => Value::bulk(format_double(score)),
            AddOutcome::Skipped => Value::null(),
        }
    }

    /// `ZREMRANGEBYRANK`, `ZREMRANGEBYSCORE`, `ZREMRANGEBYLEX`: removes the members in the range.
    fn zrem_range(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let selection = match spec.command {
            Command::ZRemRangeByRank => {
                Selection::Rank(attempt!(int_arg(&argv[2])), attempt!(int_arg(&argv[3])))
            }
            Command::ZRemRangeByScore => {
                match (parse_score_bound(&argv[2]), parse_score_bound(&argv[3])) {
                    (Some(min), Some(max)) => Selection::Score(min, max),
                    _ => return Value::error(NOT_A_FLOAT_RANGE),
                }
            }
            _ => match (LexBound::parse(&argv[2]), LexBound::parse(&argv[3])) {
                (Some(min), Some(max)) => Selection::Lex(min, max),
                _ => return Value::error(NOT_A_LEX_RANGE),
            },
        };
        let request = RangeRequest {
            selection,
            reverse: false,
            limit: None,
            with_scores: false,
        };
        let removed = attempt!(self.with_zset(&key, false, |zset| {
            let doomed: Vec<Vec<u8>> = select(zset, &request)
                .into_iter()
                .map(|(m, _)| m.clone())
                .collect();
            for member in &doomed {
                zset.remove(member);
            }
            doomed.len()
        }));
        Value::Integer(removed.unwrap_or(0) as i64)
    }

    /// `ZPOPMIN`, `ZPOPMAX key [count]`.
    fn zpop(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let count = match argv.len() {
            2 => None,
            3 => match crate::resp::parse_i64_strict(&argv[2]) {
                Some(n) if n >= 0 => Some(n as usize),
                _ => return Value::error(NOT_POSITIVE),
            },
            _ => return Value::error(SYNTAX_ERROR),
        };
        let popped =
            attempt!(self.pop_zset(&key, spec.command == Command::ZPopMax, count.unwrap_or(1)));
        let mut reply = Vec::new();
        for (member, score) in popped.unwrap_or_default() {
            reply.push(Value::bulk(member));
            reply.push(Value::bulk(format_double(score)));
        }
        Value::Array(Some(reply))
    }

    /// `ZMPOP`, and `BZMPOP` in its non-blocking form: from the first of the keys that holds a sorted set.
    fn zset_multi_pop(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let blocking = spec.command == Command::BZMPop;
        let at = if blocking { 2 } else { 1 };
        let pop = attempt!(super::parse_multi_pop(argv, at, ["MIN", "MAX"]));
        // Redis checks the timeout after the other arguments.
        if blocking {
            attempt!(parse_timeout(&argv[1]));
        }
        let max = match pop.end.as_slice() {
            b"MIN" => false,
            b"MAX" => true,
            _ => return Value::error(SYNTAX_ERROR),
        };
        for key in pop.keys {
            if let Some(popped) = attempt!(self.pop_zset(key, max, pop.count)) {
                let members = popped
                    .into_iter()
                    .map(|(member, score)| {
                        Value::Array(Some(vec![
                            Value::bulk(member),
                            Value::bulk(format_double(score)),
                        ]))
                    })
                    .collect();
                return Value::Array(Some(vec![
                    Value::bulk(key.clone()),
                    Value::Array(Some(members)),
                ]));
            }
        }
        Value::Array(None)
    }

    /// `BZPOPMIN`, `BZPOPMAX` in their non-blocking form: one member from the first of the keys that holds a sorted set.
    fn zset_pop_first(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        attempt!(parse_timeout(argv.last().expect("arity checked")));
        for key in &argv[1..argv.len() - 1] {
            if let Some(mut popped) =
                attempt!(self.pop_zset(key, spec.command == Command::BZPopMax, 1))
            {
                let (member, score) = popped.pop().expect("a stored sorted set is never empty");
                return Value::Array(Some(vec![
                    Value::bulk(key.clone()),
                    Value::bulk(member),
                    Value::bulk(format_double(score)),
                ]));
            }
        }
        Value::Array(None)
    }

    /// `ZUNIONSTORE`, `ZINTERSTORE`, `ZDIFFSTORE`: the combination stored under the destination.
    fn zset_store_combined(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        let op = match spec.command {
            Command::ZUnionStore => ZSetOp::Union,
            Command::ZInterStore => ZSetOp::Inter,
            _ => ZSetOp::Diff,
        };
        let (result, _) = attempt!(self.combine_zsets(now_ms, argv, 2, op, true));
        let len = result.len();
        self.keyspace
            .insert_data(key, Data::ZSet(Box::new(result)), ExpiryChange::Clear);
        Value::Integer(len as i64)
    }

    /// `ZRANGESTORE dst src min max [BYSCORE | BYLEX] [REV] [LIMIT offset count]`.
    fn zrangestore(&mut self, argv: &[Vec<u8>]) -> Value {
        let key = argv[1].clone();
        let now_ms = self.now_ms;
        let request = attempt!(parse_range(argv, 3, RangeKind::Auto, None, true));
        let source = attempt!(self.zset(&argv[2], now_ms));
        let mut result = ZSet::default();
        if let Some(source) = source {
            for (member, score) in select(source, &request) {
                result.insert(member.clone(), score);
            }
        }
        let len = result.len();
        self.keyspace
            .insert_data(key, Data::ZSet(Box::new(result)), ExpiryChange::Clear);
        Value::Integer(len as i64)
    }

    /// Pops up to `count` lowest (or highest) members; `None` if the key is missing.
    fn pop_zset(
        &mut self,
        key: &[u8],
        highest: bool,
        count: usize,
    ) -> Result<Option<Members>, Value> {
        self.with_zset(key, false, |zset| {
            let members: Vec<(Vec<u8>, f64)> = if highest {
                zset.ordered()
                    .rev()
                    .take(count)
                    .map(|(m, s)| (m.clone(), s))
                    .collect()
            } else {
                zset.ordered()
                    .take(count)
                    .map(|(m, s)| (m.clone(), s))
                    .collect()
            };
            for (member, _) in &members {
                zset.remove(member);
            }
            members
        })
    }

    /// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]`.
    fn zadd(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let mut flags = AddFlags::default();
        let mut index = 2;
        while index < argv.len() {
            match argv[index].to_ascii_uppercase().as_slice() {
                b"NX" => flags.nx = true,
                b"XX" => flags.xx = true,
                b"GT" => flags.gt = true,
                b"LT" => flags.lt = true,
                b"CH" => flags.ch = true,
                b"INCR" => flags.incr = true,
                _ => break,
            }
            index += 1;
        }
        let elements = argv.len() - index;
        if elements == 0 || elements % 2 != 0 {
            return Value::error(SYNTAX_ERROR);
        }
        if flags.nx && flags.xx {
            return Value::error("ERR XX and NX options at the same time are not compatible");
        }
        if ((flags.gt || flags.lt) && flags.nx) || (flags.gt && flags.lt) {
            return Value::error(
                "ERR GT, LT, and/or NX options at the same time are not compatible",
            );
        }
        if flags.incr && elements > 2 {
            return Value::error("ERR INCR option supports a single increment-element pair");
        }
        let mut pairs = Vec::with_capacity(elements / 2);
        for pair in argv[index..].chunks(2) {
            let Some(score) = parse_score(&pair[0]) else {
                return Value::error(NOT_A_FLOAT);
            };
            pairs.push((score, pair[1].clone()));
        }
        let key = &argv[1];
        let now_ms = self.now_ms;
        let exists = attempt!(self.zset(key, now_ms)).is_some();
        if !exists && flags.xx {
            return if flags.incr {
                Value::null()
            } else {
                Value::Integer(0)
            };
        }
        let outcomes = attempt!(self.with_zset(key, true, |zset| {
            let mut outcomes = Vec::with_capacity(pairs.len());
            for (score, member) in pairs {
                match add_member(zset, member, score, &flags) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => return Err(error),
                }
            }
            Ok(outcomes)
        }))
        .expect("created");
        let outcomes = attempt!(outcomes);
        if flags.incr {
            return match outcomes.first() {
                Some(
                    AddOutcome::Added(score)
                    | AddOutcome::Updated(score)
                    | AddOutcome::Unchanged(score),
                ) => Value::bulk(format_double(*score)),
                _ => Value::null(),
            };
        }
        let counted = outcomes
            .iter()
            .filter(|outcome| match outcome {
                AddOutcome::Added(_) => true,
                AddOutcome::Updated(_) => flags.ch,
                _ => false,
            })
            .count();
        Value::Integer(counted as i64)
    }
}

/// Redis' `zsetAdd` for one member.
fn add_member(
    zset: &mut ZSet,
    member: Vec<u8>,
    score: f64,
    flags: &AddFlags,
) -> Result<AddOutcome, Value> {
    match zset.score(&member) {
        Some(current) => {
            if flags.nx {
                return Ok(AddOutcome::Skipped);
            }
            let new_score = if flags.incr { current + score } else { score };
            if new_score.is_nan() {
                return Err(Value::error("ERR resulting score is not a number (NaN)"));
            }
            if (flags.gt && new_score <= current) || (flags.lt && new_score >= current) {
                return Ok(AddOutcome::Skipped);
            }
            if new_score == current {
                return Ok(AddOutcome::Unchanged(current));
            }
            zset.insert(member, new_score);
            Ok(AddOutcome::Updated(new_score))
        }
        None => {
            if flags.xx {
                return Ok(AddOutcome::Skipped);
            }
            zset.insert(member, score);
            Ok(AddOutcome::Added(score + 0.0))
        }
    }
}
