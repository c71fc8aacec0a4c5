//! SORT and SORT_RO over lists, sets and sorted sets: numeric or ALPHA order, ASC/DESC,
//! LIMIT, `GET #` and STORE. BY and GET patterns that name other keys are refused: those
//! keys may live in another partition.

use crate::command::{Command, CommandSpec};
use crate::keyspace::ExpiryChange;
use crate::machine::{attempt, KvMachine, NOT_AN_INTEGER, SYNTAX_ERROR, WRONG_TYPE};
use crate::resp::{parse_i64_strict, Value};
use crate::types::{Data, List};
use std::cmp::Ordering;

/// The error for BY / GET patterns that would read other keys.
const PATTERN_REFUSED: &str = "ERR SORT BY and GET patterns that name other keys are not supported (those keys may live in another partition); sort in the client, or use BY nosort / GET #";

/// What a `GET` option returns for each element.
enum Get {
    /// `GET #`: the element itself.
    Element,
    /// A pattern without `*`: Redis finds no key and answers nil.
    Nothing,
}

struct SortOptions {
    sort: bool,
    descending: bool,
    alpha: bool,
    limit: Option<(i64, i64)>,
    gets: Vec<Get>,
    store: Option<Vec<u8>>,
}

fn parse_options(argv: &[Vec<u8>], read_only: bool) -> Result<SortOptions, Value> {
    let mut options = SortOptions {
        sort: true,
        descending: false,
        alpha: false,
        limit: None,
        gets: Vec::new(),
        store: None,
    };
    let mut index = 2;
    while index < argv.len() {
        let word = argv[index].to_ascii_uppercase();
        let left = argv.len() - index - 1;
        match word.as_slice() {
            b"ASC" => options.descending = false,
            b"DESC" => options.descending = true,
            b"ALPHA" => options.alpha = true,
            b"LIMIT" if left >= 2 => {
                let offset = parse_i64_strict(&argv[index + 1])
                    .ok_or_else(|| Value::error(NOT_AN_INTEGER))?;
                let count = parse_i64_strict(&argv[index + 2])
                    .ok_or_else(|| Value::error(NOT_AN_INTEGER))?;
                options.limit = Some((offset, count));
                index += 2;
            }
            b"STORE" if left >= 1 && !read_only => {
                options.store = Some(argv[index + 1].clone());
                index += 1;
            }
            b"BY" if left >= 1 => {
                let pattern = &argv[index + 1];
                if pattern.contains(&b'*') {
                    return Err(Value::error(PATTERN_REFUSED));
                }
                // A pattern without `*` names no key: Redis skips sorting.
                options.sort = false;
                index += 1;
            }
            b"GET" if left >= 1 => {
                let pattern = &argv[index + 1];
                options.gets.push(if pattern.as_slice() == b"#" {
                    Get::Element
                } else if pattern.contains(&b'*') {
                    return Err(Value::error(PATTERN_REFUSED));
                } else {
                    Get::Nothing
                });
                index += 1;
            }
            _ => return Err(Value::error(SYNTAX_ERROR)),
        }
        index += 1;
    }
    Ok(options)
}

/// A number as C's `strtod` reads the whole element (leading spaces allowed, nothing
/// after), as Redis' SORT does; `None` if it is not one.
fn sort_score(element: &[u8]) -> Option<f64> {
    let end = element
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(element.len());
    let text = std::str::from_utf8(&element[..end]).ok()?;
    let text = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    if text.is_empty() {
        return Some(0.0);
    }
    let number: f64 = text.parse().ok()?;
    (!number.is_nan() && number.is_finite() || text.to_ascii_lowercase().contains("inf"))
        .then_some(number)
}

impl KvMachine {
    /// `SORT key [BY pattern] [LIMIT offset count] [GET pattern]... [ASC|DESC] [ALPHA]
    /// [STORE destination]` and SORT_RO (no STORE).
    pub(crate) fn sort(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let (output, store) = attempt!(self.sorted(self.now_ms, spec, argv));
        match store {
            None => Value::Array(Some(output.into_iter().map(Value::Bulk).collect())),
            Some(destination) => {
                let count = output.len();
                let mut list = List::default();
                for item in output {
                    list.push(item.unwrap_or_default(), false);
                }
                self.keyspace.insert_data(
                    destination,
                    Data::List(Box::new(list)),
                    ExpiryChange::Clear,
                );
                Value::Integer(count as i64)
            }
        }
    }

    /// SORT_RO answered as a read.
    pub(crate) fn sort_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        let (output, _) = attempt!(self.sorted(now_ms, spec, argv));
        Value::Array(Some(output.into_iter().map(Value::Bulk).collect()))
    }

    /// The reply elements of a SORT, and its STORE destination.
    #[allow(clippy::type_complexity)] // reason: a one-off pair, named at its two callers
    fn sorted(
        &self,
        now_ms: u64,
        spec: &CommandSpec,
        argv: &[Vec<u8>],
    ) -> Result<(Vec<Option<Vec<u8>>>, Option<Vec<u8>>), Value> {
        let read_only = spec.command == Command::SortRo;
        let options = parse_options(argv, read_only)?;
        let mut elements: Vec<Vec<u8>> = match self.live(&argv[1], now_ms).map(|e| &e.data) {
            None => Vec::new(),
            Some(Data::List(list)) => list.items.iter().cloned().collect(),
            Some(Data::Set(set)) => set.iter().cloned().collect(),
            Some(Data::ZSet(zset)) => zset.ordered().map(|(m, _)| m.clone()).collect(),
            Some(_) => return Err(Value::error(WRONG_TYPE)),
        };
        // An unsorted set is in no defined order; with STORE Redis sorts it so replicas
        // agree, and so does stator.
        let is_set = matches!(
            self.live(&argv[1], now_ms).map(|e| &e.data),
            Some(Data::Set(_))
        );
        let (sort, alpha) = if !options.sort && is_set && options.store.is_some() {
            (true, true)
        } else {
            (options.sort, options.alpha)
        };
        if sort {
            if alpha {
                elements.sort();
            } else {
                let mut scored = Vec::with_capacity(elements.len());
                for element in elements {
                    let Some(score) = sort_score(&element) else {
                        return Err(Value::error(
                            "ERR One or more scores can't be converted into double",
                        ));
                    };
                    scored.push((score, element));
                }
                scored.sort_by(|a, b| {
                    a.0.partial_cmp(&b.0)
                        .unwrap_or(Ordering::Equal)
                        .then_with(|| a.1.cmp(&b.1))
                });
                elements = scored.into_iter().map(|(_, element)| element).collect();
            }
            if options.descending {
                elements.reverse();
            }
        } else if options.descending && !is_set {
            elements.reverse();
        }
        if let Some((offset, count)) = options.limit {
            let len = elements.len() as i64;
            let start = offset.clamp(0, len);
            let count = if count < 0 { len } else { count };
            let end = start.saturating_add(count).min(len);
            elements = elements.drain(start as usize..end as usize).collect();
        }
        let output: Vec<Option<Vec<u8>>> = if options.gets.is_empty() {
            elements.into_iter().map(Some).collect()
        } else {
            elements
                .iter()
                .flat_map(|element| {
                    options.gets.iter().map(move |get| match get {
                        Get::Element => Some(element.clone()),
                        Get::Nothing => None,
                    })
                })
                .collect()
        };
        Ok((output, options.store))
    }
}
