//! RESP2 codec: incremental command and reply parsers, and reply/command encoding.
//!
//! The parsers are stateless: they look at the bytes buffered so far and either return one
//! complete message with the number of bytes it used, `None` when more bytes are needed, or
//! an error for input that can never become valid. They never trust a length from the wire
//! to size an allocation: memory grows only with bytes actually received.

use thiserror::Error;

/// Longest bulk string accepted, as Redis' default `proto-max-bulk-len` (512 MiB): clients
/// built for Redis never send more, and anything longer is garbage or an attack.
pub const MAX_BULK_BYTES: usize = 512 * 1024 * 1024;

/// Most elements in one command or reply array. A command this wide would stall its
/// partition's log for every other client, so larger ones are refused rather than applied.
pub const MAX_ARRAY_ELEMENTS: usize = 1024 * 1024;

/// Longest inline command line (telnet / interactive input), as Redis' `PROTO_INLINE_MAX_SIZE`.
/// Also bounds simple-string and error reply lines.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// Longest length header (`*<n>` / `$<n>` / `:<n>`) before its CRLF: an i64 needs at most 20
/// characters, so a longer header is garbage and is refused before it is buffered forever.
pub const MAX_HEADER_LINE_BYTES: usize = 32;

/// Deepest nesting of reply arrays: bounds recursion so hostile input cannot overflow the stack.
pub const MAX_REPLY_DEPTH: usize = 32;

/// Fewest bytes one encoded bulk element can take (`$0\r\n\r\n`), used to cap the
/// capacity reserved for an array by the bytes actually buffered.
const MIN_BULK_ENCODED_BYTES: usize = 6;

/// Fewest bytes one encoded reply element can take (`_\r\n`).
const MIN_REPLY_ENCODED_BYTES: usize = 3;

/// A command's arguments, its name first, as the client sent them.
pub type Argv = Vec<Vec<u8>>;

/// Arguments kept on the stack by [`parse_whole_array_borrowed`]: a `STATOR.EXEC` entry of
/// 16 three-argument commands (2 + 16 x 4) and a little more; longer lists spill to the
/// heap.
pub const BORROWED_INLINE_ARGS: usize = 72;

/// The argument slices of one array, borrowed from the buffer they were parsed from.
pub type BorrowedArgs<'a> = smallvec::SmallVec<[&'a [u8]; BORROWED_INLINE_ARGS]>;

/// What the array parser collects arguments into: a `Vec`, or [`BorrowedArgs`] on the
/// stack.
trait ArgList<T> {
    fn with_room(count: usize) -> Self;
    fn push_arg(&mut self, arg: T);
}

impl<T> ArgList<T> for Vec<T> {
    fn with_room(count: usize) -> Self {
        Vec::with_capacity(count)
    }
    fn push_arg(&mut self, arg: T) {
        self.push(arg);
    }
}

impl<A: smallvec::Array> ArgList<A::Item> for smallvec::SmallVec<A> {
    fn with_room(count: usize) -> Self {
        smallvec::SmallVec::with_capacity(count)
    }
    fn push_arg(&mut self, arg: A::Item) {
        self.push(arg);
    }
}

/// Input that is not, and can never become, a valid RESP message.
///
/// Messages follow Redis' `Protocol error: ...` wording so a gateway can send
/// [`RespError::to_reply`] to a client before closing its connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RespError {
    /// An array header did not hold a decimal integer.
    #[error(
        "Protocol error: invalid multibulk length; send '*<count>\\r\\n' with a decimal count"
    )]
    InvalidMultibulkLength,
    /// An array declared more elements than [`MAX_ARRAY_ELEMENTS`].
    #[error("Protocol error: array of {count} elements exceeds the limit of {MAX_ARRAY_ELEMENTS}; split the request")]
    TooManyElements {
        /// The declared element count.
        count: i64,
    },
    /// A bulk header did not hold a decimal length in `0..=MAX_BULK_BYTES`.
    #[error("Protocol error: invalid bulk length; send '$<length>\\r\\n' with a length of at most {MAX_BULK_BYTES} bytes")]
    InvalidBulkLength,
    /// A command array element was not a bulk string.
    #[error("Protocol error: expected '$', got '{}'; command arguments must be bulk strings", char::from(*found))]
    ExpectedBulk {
        /// The byte found instead of `$`.
        found: u8,
    },
    /// A line or bulk payload was not terminated by `\r\n`.
    #[error("Protocol error: expected '\\r\\n' after a line or bulk payload")]
    MissingCrlf,
    /// A header or reply line grew past its limit without a line end.
    #[error("Protocol error: line longer than {limit} bytes without '\\r\\n'")]
    LineTooLong {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// An inline command grew past [`MAX_INLINE_BYTES`] without a newline.
    #[error("Protocol error: too big inline request; inline commands are limited to {MAX_INLINE_BYTES} bytes, use RESP arrays for more")]
    InlineTooLong,
    /// An inline command had an unterminated quote, or a closing quote not followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An integer reply did not hold a decimal i64.
    #[error("Protocol error: invalid integer reply; expected ':<i64>\\r\\n'")]
    InvalidInteger,
    /// A reply started with a byte that is not a RESP2 type marker.
    #[error("Protocol error: unexpected reply type byte 0x{found:02x}; only RESP2 replies (and the RESP3 null) are understood")]
    UnexpectedReplyType {
        /// The unexpected first byte.
        found: u8,
    },
    /// Reply arrays nested deeper than [`MAX_REPLY_DEPTH`].
    #[error("Protocol error: reply arrays nested deeper than {MAX_REPLY_DEPTH}")]
    TooDeep,
    /// A buffer that should hold exactly one command ended before the command did.
    #[error("Protocol error: incomplete command; a log entry must hold one whole RESP command")]
    Incomplete,
    /// A buffer that should hold exactly one command had bytes after it.
    #[error("Protocol error: {extra} unexpected bytes after the command; a log entry must hold exactly one RESP command")]
    TrailingBytes {
        /// How many bytes followed the command.
        extra: usize,
    },
}

impl RespError {
    /// The error reply a Redis client expects for this protocol error.
    pub fn to_reply(&self) -> Value {
        Value::Error(format!("ERR {self}"))
    }
}

/// A RESP2 value: what a command replies, and what a reply parser returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a short status line. Must not contain `\r` or `\n` (replaced on encode).
    Simple(String),
    /// `-ERR ...`: an error line, its first word the error code. Same rule as `Simple`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo` or the null bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` or the null array `*-1`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Self {
        Value::Simple("OK".to_owned())
    }

    /// The null bulk string, Redis' "no such key".
    pub fn null() -> Self {
        Value::Bulk(None)
    }

    /// A bulk string holding `bytes`.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Self {
        Value::Bulk(Some(bytes.into()))
    }

    /// An error reply; `message` starts with the error code, e.g. `ERR syntax error`.
    pub fn error(message: impl Into<String>) -> Self {
        Value::Error(message.into())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Appends the RESP2 encoding of this value to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Simple(line) => encode_line(out, b'+', line.as_bytes()),
            Value::Error(line) => encode_line(out, b'-', line.as_bytes()),
            Value::Integer(number) => {
                out.push(b':');
                push_decimal(out, *number);
                out.extend_from_slice(b"\r\n");
            }
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(bytes)) => encode_bulk(out, bytes),
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                encode_header(out, b'*', items.len());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// The RESP2 encoding of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Room for the common replies at once (a status, a short bulk, a pipeline's array
        // of statuses) instead of growing from nothing through several reallocations.
        let capacity_hint = match self {
            Value::Array(Some(items)) => 16 + items.len() * 16,
            Value::Bulk(Some(bytes)) => bytes.len() + 16,
            _ => 32,
        };
        let mut out = Vec::with_capacity(capacity_hint);
        self.encode(&mut out);
        out
    }
}

/// Encodes `argv` as a RESP command array, as a Redis client sends it.
pub fn encode_command<A: AsRef<[u8]>>(argv: &[A]) -> Vec<u8> {
    let payload_bytes: usize = argv.iter().map(|arg| arg.as_ref().len() + 16).sum();
    let mut out = Vec::with_capacity(payload_bytes + 16);
    encode_command_into(argv, &mut out);
    out
}

/// Appends `argv` as a RESP command array to `out`.
pub fn encode_command_into<A: AsRef<[u8]>>(argv: &[A], out: &mut Vec<u8>) {
    encode_header(out, b'*', argv.len());
    for arg in argv {
        encode_bulk(out, arg.as_ref());
    }
}

fn encode_header(out: &mut Vec<u8>, marker: u8, len: usize) {
    out.push(marker);
    push_decimal(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

fn encode_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Writes a status or error line; CR and LF would end the line early and desynchronise
/// the client, so they become spaces (as Redis does for error strings).
fn encode_line(out: &mut Vec<u8>, marker: u8, line: &[u8]) {
    out.push(marker);
    out.extend(
        line.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal form of `number` without going through `fmt` (itoa: digits on the
/// stack, no allocation).
pub(crate) fn push_decimal(out: &mut Vec<u8>, number: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

/// Parses a decimal i64 the way Redis' `string2ll` does: optional `-`, digits, no `+`, no
/// spaces, no leading zeros (except `0` itself), no `-0`.
pub fn parse_i64_strict(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut magnitude: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(byte - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses one command from the front of `buf`: a RESP array of bulk strings, or an inline
/// command line (`SET k v\r\n`, as telnet and redis-cli's interactive mode send).
///
/// Returns the arguments and the bytes consumed, or `None` when `buf` holds only part of a
/// command. An empty argument list (blank inline line, `*0`) is a no-op the caller skips.
pub fn parse_command(buf: &[u8]) -> Result<Option<(Argv, usize)>, RespError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

/// Parses a buffer that must hold exactly one command (a log entry).
pub fn parse_whole_command(buf: &[u8]) -> Result<Argv, RespError> {
    match parse_command(buf)? {
        None => Err(RespError::Incomplete),
        Some((argv, consumed)) if consumed == buf.len() => Ok(argv),
        Some((_, consumed)) => Err(RespError::TrailingBytes {
            extra: buf.len() - consumed,
        }),
    }
}

/// Finds the `\r\n` ending the line that starts at `start`; returns the index of its `\r`.
fn find_line_end(buf: &[u8], start: usize, limit: usize) -> Result<Option<usize>, RespError> {
    let window_end = buf.len().min(start.saturating_add(limit).saturating_add(2));
    let window = buf.get(start..window_end).unwrap_or_default();
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) if newline > 0 && window[newline - 1] == b'\r' => {
            Ok(Some(start + newline - 1))
        }
        Some(_) => Err(RespError::MissingCrlf),
        None if window.len() >= limit + 2 => Err(RespError::LineTooLong { limit }),
        None => Ok(None),
    }
}

/// Parses a buffer that must hold exactly one RESP array command into slices of `buf`:
/// no copy of any argument (a log entry's arguments that the state machine does not keep,
/// such as a `STATOR.EXEC`'s argument counts, are never allocated). Inline commands are
/// not accepted here (a log entry is always an array): they answer `None`, as does any
/// malformed, partial or trailing input; [`parse_whole_command`] gives its error.
///
/// The slices are kept on the stack up to [`BORROWED_INLINE_ARGS`] of them: a pipelined
/// batch's `STATOR.EXEC` entry is parsed on every replica, and its slice list (16 bytes
/// per argument) would otherwise be a heap block of over a KiB, past glibc's per-thread
/// cache, per entry.
pub fn parse_whole_array_borrowed(buf: &[u8]) -> Option<BorrowedArgs<'_>> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    match parse_multibulk_with(buf, |arg| arg) {
        Ok(Some((argv, consumed))) if consumed == buf.len() => Some(argv),
        _ => None,
    }
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<(Argv, usize)>, RespError> {
    parse_multibulk_with(buf, <[u8]>::to_vec)
}

/// The array parser, each argument made into a `T` by `argument` (a copy, or the slice).
fn parse_multibulk_with<'a, T, L: ArgList<T>>(
    buf: &'a [u8],
    argument: impl Fn(&'a [u8]) -> T,
) -> Result<Option<(L, usize)>, RespError> {
    let Some(header_end) = find_line_end(buf, 1, MAX_HEADER_LINE_BYTES)? else {
        return Ok(None);
    };
    let count = parse_i64_strict(&buf[1..header_end]).ok_or(RespError::InvalidMultibulkLength)?;
    let mut position = header_end + 2;
    if count <= 0 {
        return Ok(Some((L::with_room(0), position)));
    }
    if count > MAX_ARRAY_ELEMENTS as i64 {
        return Err(RespError::TooManyElements { count });
    }
    let count = count as usize;
    let buffered_elements = (buf.len() - position) / MIN_BULK_ENCODED_BYTES;
    let mut argv = L::with_room(count.min(buffered_elements));
    for _ in 0..count {
        let Some(&marker) = buf.get(position) else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(RespError::ExpectedBulk { found: marker });
        }
        let Some(bulk) = parse_bulk_body(buf, position + 1)? else {
            return Ok(None);
        };
        let (data_start, data_end) = bulk.ok_or(RespError::InvalidBulkLength)?;
        argv.push_arg(argument(&buf[data_start..data_end]));
        position = data_end + 2;
    }
    Ok(Some((argv, position)))
}

/// Parses `<len>\r\n<data>\r\n` starting after a `$`. Returns `Some(None)` for the null
/// bulk `-1`, `Some(Some((data_start, data_end)))` for data, `None` when incomplete.
#[allow(
    clippy::type_complexity,
    reason = "private helper; the nesting mirrors incomplete / null / data"
)]
fn parse_bulk_body(buf: &[u8], start: usize) -> Result<Option<Option<(usize, usize)>>, RespError> {
    let Some(header_end) = find_line_end(buf, start, MAX_HEADER_LINE_BYTES)? else {
        return Ok(None);
    };
    let length = parse_i64_strict(&buf[start..header_end]).ok_or(RespError::InvalidBulkLength)?;
    if length == -1 {
        return Ok(Some(None));
    }
    if !(0..=MAX_BULK_BYTES as i64).contains(&length) {
        return Err(RespError::InvalidBulkLength);
    }
    let data_start = header_end + 2;
    let data_end = data_start + length as usize;
    if buf.len() < data_end + 2 {
        return Ok(None);
    }
    if &buf[data_end..data_end + 2] != b"\r\n" {
        return Err(RespError::MissingCrlf);
    }
    Ok(Some(Some((data_start, data_end))))
}

fn parse_inline(buf: &[u8]) -> Result<Option<(Argv, usize)>, RespError> {
    let window = &buf[..buf.len().min(MAX_INLINE_BYTES)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_INLINE_BYTES {
            Err(RespError::InlineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    Ok(Some((split_inline_args(line)?, newline + 1)))
}

/// Splits an inline command line like Redis' `sdssplitargs`: words separated by spaces,
/// `"double quotes"` with `\n \r \t \b \a \\ \" \xHH` escapes, `'single quotes'` with `\'`.
fn split_inline_args(line: &[u8]) -> Result<Argv, RespError> {
    let mut args = Vec::new();
    let mut position = 0;
    loop {
        while line
            .get(position)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == 0x0b)
        {
            position += 1;
        }
        if position >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let mut in_double_quotes = false;
        let mut in_single_quotes = false;
        loop {
            let byte = line.get(position).copied();
            if in_double_quotes {
                let byte = byte.ok_or(RespError::UnbalancedQuotes)?;
                match (byte, line.get(position + 1).copied()) {
                    (b'\\', Some(b'x'))
                        if line.get(position + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(position + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        current.push(
                            hex_value(line[position + 2]) << 4 | hex_value(line[position + 3]),
                        );
                        position += 3;
                    }
                    (b'\\', Some(escaped)) => {
                        current.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        position += 1;
                    }
                    (b'"', next) => {
                        if next.is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        position += 1;
                        break;
                    }
                    (other, _) => current.push(other),
                }
            } else if in_single_quotes {
                let byte = byte.ok_or(RespError::UnbalancedQuotes)?;
                match (byte, line.get(position + 1).copied()) {
                    (b'\\', Some(b'\'')) => {
                        current.push(b'\'');
                        position += 1;
                    }
                    (b'\'', next) => {
                        if next.is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(RespError::UnbalancedQuotes);
                        }
                        position += 1;
                        break;
                    }
                    (other, _) => current.push(other),
                }
            } else {
                match byte {
                    // Every delimiter here is skipped as whitespace above, so each word
                    // advances `position`; NUL is an ordinary byte (binary-safe).
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_double_quotes = true,
                    Some(b'\'') => in_single_quotes = true,
                    Some(other) => current.push(other),
                }
            }
            position += 1;
        }
        args.push(current);
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => unreachable!("caller checked {digit:#x} is a hex digit"),
    }
}

/// Parses one reply from the front of `buf`; returns it and the bytes consumed, or `None`
/// when `buf` holds only part of it. Understands RESP2 and the RESP3 null `_`.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    parse_reply_at(buf, 0, 0)
}

fn parse_reply_at(
    buf: &[u8],
    start: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, RespError> {
    if depth > MAX_REPLY_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&marker) = buf.get(start) else {
        return Ok(None);
    };
    let body = start + 1;
    match marker {
        b'+' | b'-' => {
            let Some(line_end) = find_line_end(buf, body, MAX_INLINE_BYTES)? else {
                return Ok(None);
            };
            let line = String::from_utf8_lossy(&buf[body..line_end]).into_owned();
            let value = if marker == b'+' {
                Value::Simple(line)
            } else {
                Value::Error(line)
            };
            Ok(Some((value, line_end + 2)))
        }
        b':' => {
            let Some(line_end) = find_line_end(buf, body, MAX_HEADER_LINE_BYTES)? else {
                return Ok(None);
            };
            let number = parse_i64_strict(&buf[body..line_end]).ok_or(RespError::InvalidInteger)?;
            Ok(Some((Value::Integer(number), line_end + 2)))
        }
        b'$' => Ok(parse_bulk_body(buf, body)?.map(|bulk| match bulk {
            None => (Value::Bulk(None), find_line_end_unchecked(buf, body) + 2),
            Some((data_start, data_end)) => (
                Value::Bulk(Some(buf[data_start..data_end].to_vec())),
                data_end + 2,
            ),
        })),
        b'_' => {
            let Some(line_end) = find_line_end(buf, body, 0)? else {
                return Ok(None);
            };
            Ok(Some((Value::Bulk(None), line_end + 2)))
        }
        b'*' => {
            let Some(header_end) = find_line_end(buf, body, MAX_HEADER_LINE_BYTES)? else {
                return Ok(None);
            };
            let count = parse_i64_strict(&buf[body..header_end])
                .ok_or(RespError::InvalidMultibulkLength)?;
            let mut position = header_end + 2;
            if count == -1 {
                return Ok(Some((Value::Array(None), position)));
            }
            if count < 0 {
                return Err(RespError::InvalidMultibulkLength);
            }
            if count > MAX_ARRAY_ELEMENTS as i64 {
                return Err(RespError::TooManyElements { count });
            }
            let count = count as usize;
            let buffered_elements = (buf.len() - position) / MIN_REPLY_ENCODED_BYTES;
            let mut items = Vec::with_capacity(count.min(buffered_elements));
            for _ in 0..count {
                let Some((item, next)) = parse_reply_at(buf, position, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                position = next;
            }
            Ok(Some((Value::Array(Some(items)), position)))
        }
        other => Err(RespError::UnexpectedReplyType { found: other }),
    }
}

/// The length of the one reply at the front of `buf`, or `None` when `buf` holds only
/// part of it: what [`parse_reply`] consumes, with the same checks and limits, but
/// building no value (no allocation), for callers that only cut a reply out of a larger
/// one (a pipeline batch's `STATOR.EXEC` array split back into its commands' replies).
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    skip_reply_at(buf, 0, 0)
}

/// [`parse_reply_at`] without the values: where the reply starting at `start` ends.
fn skip_reply_at(buf: &[u8], start: usize, depth: usize) -> Result<Option<usize>, RespError> {
    if depth > MAX_REPLY_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&marker) = buf.get(start) else {
        return Ok(None);
    };
    let body = start + 1;
    match marker {
        b'+' | b'-' => Ok(find_line_end(buf, body, MAX_INLINE_BYTES)?.map(|end| end + 2)),
        b':' => {
            let Some(line_end) = find_line_end(buf, body, MAX_HEADER_LINE_BYTES)? else {
                return Ok(None);
            };
            parse_i64_strict(&buf[body..line_end]).ok_or(RespError::InvalidInteger)?;
            Ok(Some(line_end + 2))
        }
        b'$' => Ok(parse_bulk_body(buf, body)?.map(|bulk| match bulk {
            None => find_line_end_unchecked(buf, body) + 2,
            Some((_, data_end)) => data_end + 2,
        })),
        b'_' => Ok(find_line_end(buf, body, 0)?.map(|end| end + 2)),
        b'*' => {
            let Some(header_end) = find_line_end(buf, body, MAX_HEADER_LINE_BYTES)? else {
                return Ok(None);
            };
            let count = parse_i64_strict(&buf[body..header_end])
                .ok_or(RespError::InvalidMultibulkLength)?;
            let mut position = header_end + 2;
            if count == -1 {
                return Ok(Some(position));
            }
            if count < 0 {
                return Err(RespError::InvalidMultibulkLength);
            }
            if count > MAX_ARRAY_ELEMENTS as i64 {
                return Err(RespError::TooManyElements { count });
            }
            for _ in 0..count {
                let Some(next) = skip_reply_at(buf, position, depth + 1)? else {
                    return Ok(None);
                };
                position = next;
            }
            Ok(Some(position))
        }
        other => Err(RespError::UnexpectedReplyType { found: other }),
    }
}

/// The `\r` of a header line already validated by [`find_line_end`].
fn find_line_end_unchecked(buf: &[u8], start: usize) -> usize {
    start
        + buf[start..]
            .iter()
            .position(|&b| b == b'\r')
            .expect("header line was validated to end in CRLF")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_a_multibulk_command_and_reports_bytes_used() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n";
        let (args, used) = parse_command(buf).unwrap().unwrap();
        assert_eq!(args, argv(&["SET", "k", "hello"]));
        assert_eq!(&buf[used..], b"*1\r\n");
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let buf = encode_command(&["SET", "key", "a value with spaces"]);
        for cut in 0..buf.len() {
            assert_eq!(parse_command(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse_command(&buf).unwrap().is_some());
    }

    #[test]
    fn binary_safe_bulk_strings() {
        let value = b"a\r\nb\0c".to_vec();
        let buf = encode_command(&[b"SET".to_vec(), b"k".to_vec(), value.clone()]);
        let (args, _) = parse_command(&buf).unwrap().unwrap();
        assert_eq!(args[2], value);
    }

    #[test]
    fn empty_and_null_arrays_are_no_ops() {
        assert_eq!(parse_command(b"*0\r\n").unwrap(), Some((vec![], 4)));
        assert_eq!(parse_command(b"*-1\r\n").unwrap(), Some((vec![], 5)));
        assert_eq!(parse_command(b"\r\n").unwrap(), Some((vec![], 2)));
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let buf = b"set  k \"a b\\x41\\n\" 'it\\'s'\r\nGET";
        let (args, used) = parse_command(buf).unwrap().unwrap();
        assert_eq!(
            args,
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert_eq!(&buf[used..], b"GET");
        assert_eq!(
            parse_command(b"PING\n").unwrap(),
            Some((argv(&["PING"]), 5))
        );
        assert_eq!(parse_command(b"PING").unwrap(), None);
        assert_eq!(
            parse_command(b"set \"a\n"),
            Err(RespError::UnbalancedQuotes)
        );
        assert_eq!(
            parse_command(b"set \"a\"b\n"),
            Err(RespError::UnbalancedQuotes)
        );
        assert_eq!(parse_command(b"set 'a\n"), Err(RespError::UnbalancedQuotes));
        // Found by the fuzzer: a NUL once made the splitter loop forever.
        assert_eq!(
            parse_command(b"a\0b \0\n").unwrap(),
            Some((vec![b"a\0b".to_vec(), b"\0".to_vec()], 6))
        );
    }

    #[test]
    fn oversized_and_garbled_input_is_an_error() {
        assert_eq!(
            parse_command(b"*x\r\n"),
            Err(RespError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_command(b"*01\r\n"),
            Err(RespError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_command(b"*99999999\r\n"),
            Err(RespError::TooManyElements { count: 99_999_999 })
        );
        assert_eq!(
            parse_command(b"*1\r\n+OK\r\n"),
            Err(RespError::ExpectedBulk { found: b'+' })
        );
        assert_eq!(
            parse_command(b"*1\r\n$-1\r\n"),
            Err(RespError::InvalidBulkLength)
        );
        assert_eq!(
            parse_command(b"*1\r\n$536870913\r\n"),
            Err(RespError::InvalidBulkLength)
        );
        assert_eq!(
            parse_command(b"*1\r\n$1\r\nab\r\n"),
            Err(RespError::MissingCrlf)
        );
        assert_eq!(parse_command(b"*1\n"), Err(RespError::MissingCrlf));
        let long_header = [b"*".as_slice(), &[b'1'; 40]].concat();
        assert_eq!(
            parse_command(&long_header),
            Err(RespError::LineTooLong {
                limit: MAX_HEADER_LINE_BYTES
            })
        );
        assert_eq!(
            parse_command(&vec![b'a'; MAX_INLINE_BYTES]),
            Err(RespError::InlineTooLong)
        );
        // A huge declared bulk with few bytes buffered waits without allocating it.
        assert_eq!(parse_command(b"*1\r\n$536870912\r\nabc").unwrap(), None);
    }

    #[test]
    fn whole_command_rejects_partial_and_trailing_bytes() {
        assert_eq!(
            parse_whole_command(b"*1\r\n$4\r\nPING\r\n").unwrap(),
            argv(&["PING"])
        );
        assert_eq!(
            parse_whole_command(b"*1\r\n$4\r\nPI"),
            Err(RespError::Incomplete)
        );
        assert_eq!(
            parse_whole_command(b"*1\r\n$4\r\nPING\r\nx"),
            Err(RespError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn replies_round_trip() {
        let values = vec![
            Value::ok(),
            Value::error("ERR syntax error"),
            Value::Integer(0),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::null(),
            Value::bulk(""),
            Value::bulk(b"x\r\ny".to_vec()),
            Value::Array(None),
            Value::Array(Some(vec![])),
            Value::Array(Some(vec![
                Value::bulk("a"),
                Value::null(),
                Value::Array(Some(vec![Value::Integer(-3)])),
            ])),
        ];
        for value in values {
            let bytes = value.to_bytes();
            assert_eq!(
                parse_reply(&bytes).unwrap(),
                Some((value.clone(), bytes.len())),
                "{value:?}"
            );
            assert_eq!(reply_len(&bytes).unwrap(), Some(bytes.len()), "{value:?}");
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_reply(&bytes[..cut]).unwrap(),
                    None,
                    "{value:?} cut at {cut}"
                );
                assert_eq!(
                    reply_len(&bytes[..cut]).unwrap(),
                    None,
                    "{value:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn reply_encoding_matches_redis_bytes() {
        assert_eq!(Value::ok().to_bytes(), b"+OK\r\n");
        assert_eq!(Value::null().to_bytes(), b"$-1\r\n");
        assert_eq!(Value::Integer(-12).to_bytes(), b":-12\r\n");
        assert_eq!(Value::error("ERR a\r\nb").to_bytes(), b"-ERR a  b\r\n");
        assert_eq!(
            encode_command(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn reply_parser_limits() {
        assert_eq!(parse_reply(b"_\r\n").unwrap(), Some((Value::null(), 3)));
        assert_eq!(
            parse_reply(b"%1\r\n"),
            Err(RespError::UnexpectedReplyType { found: b'%' })
        );
        assert_eq!(parse_reply(b":1x\r\n"), Err(RespError::InvalidInteger));
        let deep = b"*1\r\n".repeat(MAX_REPLY_DEPTH + 2);
        assert_eq!(parse_reply(&deep), Err(RespError::TooDeep));
        assert_eq!(reply_len(b"_\r\n").unwrap(), Some(3));
        assert_eq!(
            reply_len(b"%1\r\n"),
            Err(RespError::UnexpectedReplyType { found: b'%' })
        );
        assert_eq!(reply_len(b":1x\r\n"), Err(RespError::InvalidInteger));
        assert_eq!(reply_len(&deep), Err(RespError::TooDeep));
    }

    #[test]
    fn strict_integers_follow_string2ll() {
        assert_eq!(parse_i64_strict(b"0"), Some(0));
        assert_eq!(parse_i64_strict(b"-12"), Some(-12));
        assert_eq!(parse_i64_strict(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64_strict(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1.0",
        ] {
            assert_eq!(
                parse_i64_strict(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
