//! The `cmsgpack` (lua-cmsgpack 0.4.0) and `struct` (Roberto Ierusalimschy's lua-struct)
//! libraries of Redis' Lua, written over mlua: the same bytes for every value, the same
//! numbers back (Lua 5.1 numbers are doubles, so 64-bit integers round as they do in
//! Redis), the same error texts and the same limits (Lua's 8,000-slot C stack bounds how
//! many values one `unpack` returns and how deep a packed value may nest). Pure functions
//! of their arguments: every replica packs and unpacks alike.
//!
//! Where the C code converts doubles to integers outside their range, the result is what
//! Redis' x86-64 build computes (the `cvttsd2si` "indefinite" value), checked against
//! redis-server 7.0.

use crate::cjson::{raise, type_name};
use mlua::{Lua, MultiValue, Table, Value as LuaValue};

/// Lua 5.1's `LUAI_MAXCSTACK`: most stack slots a C function may use. `luaL_checkstack`
/// fails past it, which is what stops a huge `cmsgpack.unpack` or `struct.unpack`.
const LUA_MAX_C_STACK: usize = 8000;

/// Most values one `cmsgpack.unpack` or `struct.unpack` returns. Redis' C functions may
/// return up to 7,999 (Lua's C stack); mlua's callback wrapper keeps some of those slots
/// for itself and fails near 7,975, so stator stops a little earlier, with Redis' own
/// "too many" error (a documented difference; use `unpack_one` / `unpack_limit`).
const MAX_RETURNED_VALUES: usize = 7_970;

/// lua-cmsgpack's `LUACMSGPACK_MAX_NESTING`: tables nested deeper pack as nil.
const MSGPACK_MAX_NESTING: usize = 16;

/// lua-struct's `MAXINTSIZE`: the largest `i`/`I` size in bytes.
const STRUCT_MAX_INT_SIZE: usize = 32;

/// lua-struct's `MAXALIGN` on x86-64 (`!` without a number).
const STRUCT_MAX_ALIGN: usize = 8;

/// Installs the `cmsgpack` and `struct` globals.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("cmsgpack", cmsgpack_library(lua)?)?;
    globals.raw_set("struct", struct_library(lua)?)?;
    Ok(())
}

/// C's `(long)d` on x86-64: toward zero, and `i64::MIN` for NaN and out-of-range values.
fn c_long(number: f64) -> i64 {
    if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&number) {
        number.trunc() as i64
    } else {
        i64::MIN
    }
}

/// C's `(unsigned long)d` as gcc compiles it for x86-64: below 2^63 (or NaN) the signed
/// conversion, otherwise the signed conversion of `d - 2^63` with the top bit flipped.
fn c_unsigned_long(number: f64) -> u64 {
    const TWO_63: f64 = 9.223_372_036_854_776e18;
    if number >= TWO_63 {
        (c_long(number - TWO_63) as u64) ^ (1 << 63)
    } else {
        c_long(number) as u64
    }
}

/// `luaL_checklstring`: a string, or a number as its text.
fn check_string(
    lua: &Lua,
    args: &[LuaValue],
    index: usize,
    function: &str,
) -> mlua::Result<mlua::String> {
    match args.get(index - 1) {
        Some(LuaValue::String(text)) => Ok(text.clone()),
        Some(number @ (LuaValue::Integer(_) | LuaValue::Number(_))) => Ok(lua
            .coerce_string(number.clone())?
            .expect("a number has a text")),
        other => Err(bad_type(lua, index, function, "string", other)),
    }
}

/// `luaL_checknumber`: a number, or a string that reads as one.
fn check_number(lua: &Lua, args: &[LuaValue], index: usize, function: &str) -> mlua::Result<f64> {
    let value = args.get(index - 1);
    match value {
        Some(LuaValue::Number(number)) => Ok(*number),
        Some(LuaValue::Integer(number)) => Ok(*number as f64),
        Some(LuaValue::String(_)) => lua
            .coerce_number(value.cloned().unwrap_or(LuaValue::Nil))?
            .ok_or_else(|| bad_type(lua, index, function, "number", value)),
        other => Err(bad_type(lua, index, function, "number", other)),
    }
}

/// `luaL_optinteger`: `default` when the argument is absent or nil, otherwise
/// `luaL_checkinteger` (the number converted as C's `(long)`).
fn opt_integer(
    lua: &Lua,
    args: &[LuaValue],
    index: usize,
    function: &str,
    default: i64,
) -> mlua::Result<i64> {
    match args.get(index - 1) {
        None | Some(LuaValue::Nil) => Ok(default),
        Some(_) => Ok(c_long(check_number(lua, args, index, function)?)),
    }
}

/// `luaL_typerror`'s message, positioned as `luaL_argerror` raises it.
fn bad_type(
    lua: &Lua,
    index: usize,
    function: &str,
    expected: &str,
    got: Option<&LuaValue>,
) -> mlua::Error {
    let got = got.map_or("no value", type_name);
    bad_argument(
        lua,
        index,
        function,
        &format!("{expected} expected, got {got}"),
    )
}

/// `luaL_argerror`.
fn bad_argument(lua: &Lua, index: usize, function: &str, message: &str) -> mlua::Error {
    raise(
        lua,
        format!("bad argument #{index} to '{function}' ({message})"),
    )
}

// ---------------------------------------------------------------------------------------
// cmsgpack
// ---------------------------------------------------------------------------------------

fn cmsgpack_library(lua: &Lua) -> mlua::Result<Table> {
    let cmsgpack = lua.create_table()?;
    cmsgpack.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            if args.is_empty() {
                return Err(bad_argument(
                    lua,
                    0,
                    "pack",
                    "MessagePack pack needs input.",
                ));
            }
            let mut bytes = Vec::new();
            for value in args.iter() {
                pack_value(&mut bytes, value, 0)?;
            }
            lua.create_string(bytes)
        })?,
    )?;
    cmsgpack.raw_set(
        "unpack",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            unpack_full(lua, &args, "unpack", 0, 0)
        })?,
    )?;
    cmsgpack.raw_set(
        "unpack_one",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            let offset = opt_integer(lua, &args, 2, "unpack_one", 0)?;
            unpack_full(lua, &args, "unpack_one", 1, offset)
        })?,
    )?;
    cmsgpack.raw_set(
        "unpack_limit",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            let limit = c_long(check_number(lua, &args, 2, "unpack_limit")?);
            let offset = opt_integer(lua, &args, 3, "unpack_limit", 0)?;
            unpack_full(lua, &args, "unpack_limit", limit, offset)
        })?,
    )?;
    cmsgpack.raw_set("_NAME", "cmsgpack")?;
    cmsgpack.raw_set("_VERSION", "lua-cmsgpack 0.4.0")?;
    cmsgpack.raw_set("_COPYRIGHT", "Copyright (C) 2012, Salvatore Sanfilippo")?;
    cmsgpack.raw_set("_DESCRIPTION", "MessagePack C implementation for Lua")?;
    Ok(cmsgpack)
}

/// `mp_encode_lua_type`: `value` at nesting `level` appended to `out`.
fn pack_value(out: &mut Vec<u8>, value: &LuaValue, level: usize) -> mlua::Result<()> {
    match value {
        LuaValue::String(text) => pack_bytes(out, &text.as_bytes()),
        LuaValue::Boolean(flag) => out.push(if *flag { 0xc3 } else { 0xc2 }),
        LuaValue::Integer(number) => pack_number(out, *number as f64),
        LuaValue::Number(number) => pack_number(out, *number),
        LuaValue::Table(table) if level < MSGPACK_MAX_NESTING => pack_table(out, table, level)?,
        _ => out.push(0xc0),
    }
    Ok(())
}

fn pack_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

/// `mp_encode_lua_number`: an integer when the double is one (as `int64_t`), else a float
/// when `float` holds it exactly, else a double.
fn pack_number(out: &mut Vec<u8>, number: f64) {
    if !number.is_infinite() && c_long(number) as f64 == number {
        pack_integer(out, c_long(number));
    } else if f64::from(number as f32) == number {
        out.push(0xca);
        out.extend_from_slice(&(number as f32).to_be_bytes());
    } else {
        out.push(0xcb);
        out.extend_from_slice(&number.to_be_bytes());
    }
}

fn pack_integer(out: &mut Vec<u8>, n: i64) {
    if n >= 0 {
        if n <= 127 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[0xcc, n as u8]);
        } else if n <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as i8 as u8);
    } else if n >= -128 {
        out.extend_from_slice(&[0xd0, n as i8 as u8]);
    } else if n >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if n >= -2_147_483_648 {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn pack_header(out: &mut Vec<u8>, len: usize, fixed: u8, wide16: u8) {
    if len <= 15 {
        out.push(fixed | len as u8);
    } else if len <= 0xffff {
        out.push(wide16);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(wide16 + 1);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// `mp_encode_lua_table`: an array when the keys are exactly `1..n` (each a positive
/// number that is an `int`), else a map in `lua_next` order.
fn pack_table(out: &mut Vec<u8>, table: &Table, level: usize) -> mlua::Result<()> {
    let mut entries = Vec::new();
    table.for_each(|key: LuaValue, value: LuaValue| {
        entries.push((key, value));
        Ok(())
    })?;
    let mut max = 0i64;
    let is_array = entries.iter().all(|(key, _)| {
        let number = match key {
            LuaValue::Number(number) => *number,
            LuaValue::Integer(number) => *number as f64,
            _ => return false,
        };
        // `IS_INT_EQUIVALENT`: `(int)n == n`, with x86's indefinite `int` out of range.
        let as_int = if (-2_147_483_648.0..2_147_483_648.0).contains(&number) {
            number.trunc() as i32
        } else {
            i32::MIN
        };
        if number <= 0.0 || number.is_infinite() || f64::from(as_int) != number {
            return false;
        }
        max = max.max(i64::from(as_int));
        true
    }) && max == entries.len() as i64;
    if is_array {
        let len = table.raw_len();
        pack_header(out, len, 0x90, 0xdc);
        for index in 1..=len {
            let value: LuaValue = table.raw_get(index)?;
            pack_value(out, &value, level + 1)?;
        }
    } else {
        pack_header(out, entries.len(), 0x80, 0xde);
        for (key, value) in &entries {
            pack_value(out, key, level + 1)?;
            pack_value(out, value, level + 1)?;
        }
    }
    Ok(())
}

/// Why decoding stopped: lua-cmsgpack's cursor errors, reported once the value ends.
enum Stop {
    /// `MP_CUR_ERROR_EOF`.
    MissingBytes,
    /// `MP_CUR_ERROR_BADFMT`.
    BadFormat,
    /// An error raised at once (stack overflow, a nil table index).
    Raised(mlua::Error),
}

impl From<mlua::Error> for Stop {
    fn from(error: mlua::Error) -> Self {
        Stop::Raised(error)
    }
}

/// `mp_unpack_full`: values from `args[0]` starting at `offset`, at most `limit` of them
/// (all when both are 0, and then without the next offset). Both are `lua_Integer`s, printed
/// in errors through `%d` (their low 32 bits), as the C code does.
fn unpack_full(
    lua: &Lua,
    args: &[LuaValue],
    function: &str,
    limit: i64,
    offset: i64,
) -> mlua::Result<MultiValue> {
    let text = check_string(lua, args, 1, function)?;
    let bytes = text.as_bytes();
    let len = bytes.len();
    let decode_all = limit == 0 && offset == 0;
    if offset < 0 || limit < 0 {
        return Err(raise(
            lua,
            format!(
                "Invalid request to unpack with offset of {} and limit of {}.",
                offset as i32, len as i32
            ),
        ));
    } else if offset as u64 > len as u64 {
        return Err(raise(
            lua,
            format!(
                "Start offset {} greater than input length {}.",
                offset as i32, len as i32
            ),
        ));
    }
    let limit = if decode_all { i64::MAX } else { limit };
    // `unpack` leaves all its arguments on the stack; the others keep only the input.
    let stack_base = if function == "unpack" { args.len() } else { 1 };
    let mut cursor = Cursor {
        bytes: &bytes[offset as usize..],
    };
    let mut values = Vec::new();
    while !cursor.bytes.is_empty() && (values.len() as i64) < limit {
        if values.len() + usize::from(!decode_all) >= MAX_RETURNED_VALUES {
            return Err(raise(lua, TOO_MANY_VALUES.into()));
        }
        match decode(lua, &mut cursor, stack_base + values.len()) {
            Ok(value) => values.push(value),
            Err(Stop::MissingBytes) => return Err(raise(lua, "Missing bytes in input.".into())),
            Err(Stop::BadFormat) => return Err(raise(lua, "Bad data format in input.".into())),
            Err(Stop::Raised(error)) => return Err(error),
        }
    }
    if !decode_all {
        let next = if cursor.bytes.is_empty() {
            -1
        } else {
            (len - cursor.bytes.len()) as i64
        };
        values.insert(0, LuaValue::Number(next as f64));
    }
    Ok(MultiValue::from_iter(values))
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn need(&self, len: usize) -> Result<(), Stop> {
        if self.bytes.len() < len {
            Err(Stop::MissingBytes)
        } else {
            Ok(())
        }
    }

    /// Takes `len` bytes after a `skip`-byte header (both checked first).
    fn take(&mut self, skip: usize, len: usize) -> Result<&'a [u8], Stop> {
        self.need(skip.saturating_add(len))?;
        let taken = &self.bytes[skip..skip + len];
        self.bytes = &self.bytes[skip + len..];
        Ok(taken)
    }

    /// The big-endian number in the `len` bytes after the type byte.
    fn be(&mut self, len: usize) -> Result<u64, Stop> {
        let bytes = self.take(1, len)?;
        Ok(bytes
            .iter()
            .fold(0u64, |acc, byte| acc << 8 | u64::from(*byte)))
    }
}

/// A table being filled while its elements are decoded.
enum Open {
    Array {
        table: Table,
        remaining: u64,
        index: u64,
    },
    Map {
        table: Table,
        remaining: u64,
        key: Option<LuaValue>,
    },
}

impl Open {
    /// Stack slots the C decoder holds for this table while decoding its next element:
    /// the table and the index (arrays) or the table and, for a value, its key (maps).
    fn slots(&self) -> usize {
        match self {
            Open::Array { .. } => 2,
            Open::Map { key, .. } => 1 + usize::from(key.is_some()),
        }
    }
}

const TOO_MANY_VALUES: &str =
    "stack overflow (too many return values at once; use unpack_one or unpack_limit instead.)";

/// `mp_decode_to_lua_type`, without recursion (a value may nest thousands of levels):
/// one value from `cursor`, decoded with `base` stack slots in use.
fn decode(lua: &Lua, cursor: &mut Cursor<'_>, base: usize) -> Result<LuaValue, Stop> {
    let mut open: Vec<Open> = Vec::new();
    loop {
        let slots = base + open.iter().map(Open::slots).sum::<usize>();
        if slots + 1 > LUA_MAX_C_STACK {
            return Err(Stop::Raised(raise(lua, TOO_MANY_VALUES.into())));
        }
        let mut value = match decode_one(lua, cursor)? {
            Item::Value(value) => value,
            Item::Array(len) => {
                let table = lua.create_table()?;
                if slots + 2 > LUA_MAX_C_STACK {
                    return Err(Stop::Raised(raise(
                        lua,
                        "stack overflow (in function mp_decode_to_lua_array)".into(),
                    )));
                }
                if len > 0 {
                    open.push(Open::Array {
                        table,
                        remaining: len,
                        index: 1,
                    });
                    continue;
                }
                LuaValue::Table(table)
            }
            Item::Map(len) => {
                let table = lua.create_table()?;
                if len > 0 {
                    open.push(Open::Map {
                        table,
                        remaining: len,
                        key: None,
                    });
                    continue;
                }
                LuaValue::Table(table)
            }
        };
        // Hand the finished value to the tables waiting for it.
        loop {
            let Some(top) = open.last_mut() else {
                return Ok(value);
            };
            let done = match top {
                Open::Array {
                    table,
                    remaining,
                    index,
                } => {
                    table.raw_set(*index as f64, value)?;
                    *index += 1;
                    *remaining -= 1;
                    *remaining == 0
                }
                Open::Map {
                    table,
                    remaining,
                    key,
                } => match key.take() {
                    None => {
                        *key = Some(value);
                        break;
                    }
                    Some(key) => {
                        match &key {
                            LuaValue::Nil => {
                                return Err(Stop::Raised(mlua::Error::runtime(
                                    "table index is nil",
                                )))
                            }
                            LuaValue::Number(number) if number.is_nan() => {
                                return Err(Stop::Raised(mlua::Error::runtime(
                                    "table index is NaN",
                                )))
                            }
                            _ => table.raw_set(key, value)?,
                        }
                        *remaining -= 1;
                        *remaining == 0
                    }
                },
            };
            if !done {
                break;
            }
            value = match open.pop() {
                Some(Open::Array { table, .. } | Open::Map { table, .. }) => LuaValue::Table(table),
                None => unreachable!("a table was open"),
            };
        }
    }
}

/// What one type byte starts.
enum Item {
    Value(LuaValue),
    Array(u64),
    Map(u64),
}

/// One scalar, or the header of an array or map.
fn decode_one(lua: &Lua, cursor: &mut Cursor<'_>) -> Result<Item, Stop> {
    cursor.need(1)?;
    let number = |n: f64| -> Result<Item, Stop> { Ok(Item::Value(LuaValue::Number(n))) };
    let string = |bytes: &[u8]| -> Result<Item, Stop> {
        Ok(Item::Value(LuaValue::String(lua.create_string(bytes)?)))
    };
    let first = cursor.bytes[0];
    match first {
        0xcc => number(cursor.be(1)? as f64),
        0xd0 => number(f64::from(cursor.be(1)? as u8 as i8)),
        0xcd => number(cursor.be(2)? as f64),
        0xd1 => number(f64::from(cursor.be(2)? as u16 as i16)),
        0xce => number(cursor.be(4)? as f64),
        0xd2 => number(f64::from(cursor.be(4)? as u32 as i32)),
        // `lua_pushunsigned` is `lua_pushinteger` in Lua 5.1: past 2^63 it wraps.
        0xcf => number(cursor.be(8)? as i64 as f64),
        0xd3 => number(cursor.be(8)? as i64 as f64),
        0xc0 => {
            cursor.bytes = &cursor.bytes[1..];
            Ok(Item::Value(LuaValue::Nil))
        }
        0xc3 | 0xc2 => {
            cursor.bytes = &cursor.bytes[1..];
            Ok(Item::Value(LuaValue::Boolean(first == 0xc3)))
        }
        0xca => number(f64::from(f32::from_bits(cursor.be(4)? as u32))),
        0xcb => number(f64::from_bits(cursor.be(8)?)),
        0xd9 => {
            cursor.need(2)?;
            let len = usize::from(cursor.bytes[1]);
            string(cursor.take(2, len)?)
        }
        0xda => {
            cursor.need(3)?;
            let len = usize::from(u16::from_be_bytes([cursor.bytes[1], cursor.bytes[2]]));
            string(cursor.take(3, len)?)
        }
        0xdb => {
            let len = cursor.be(4)? as usize;
            string(cursor.take(0, len)?)
        }
        0xdc => Ok(Item::Array(cursor.be(2)?)),
        0xdd => Ok(Item::Array(cursor.be(4)?)),
        0xde => Ok(Item::Map(cursor.be(2)?)),
        0xdf => Ok(Item::Map(cursor.be(4)?)),
        _ if first & 0x80 == 0 => {
            cursor.bytes = &cursor.bytes[1..];
            number(f64::from(first))
        }
        _ if first & 0xe0 == 0xe0 => {
            cursor.bytes = &cursor.bytes[1..];
            number(f64::from(first as i8))
        }
        _ if first & 0xe0 == 0xa0 => string(cursor.take(1, usize::from(first & 0x1f))?),
        _ if first & 0xf0 == 0x90 => {
            cursor.bytes = &cursor.bytes[1..];
            Ok(Item::Array(u64::from(first & 0xf)))
        }
        _ if first & 0xf0 == 0x80 => {
            cursor.bytes = &cursor.bytes[1..];
            Ok(Item::Map(u64::from(first & 0xf)))
        }
        _ => Err(Stop::BadFormat),
    }
}

// ---------------------------------------------------------------------------------------
// struct
// ---------------------------------------------------------------------------------------

fn struct_library(lua: &Lua) -> mlua::Result<Table> {
    let library = lua.create_table()?;
    library.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            struct_pack(lua, &args).and_then(|bytes| lua.create_string(bytes))
        })?,
    )?;
    library.raw_set(
        "unpack",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            struct_unpack(lua, &args)
        })?,
    )?;
    library.raw_set(
        "size",
        lua.create_function(|lua, args: MultiValue| {
            let args: Vec<LuaValue> = args.into_iter().collect();
            struct_size(lua, &args)
        })?,
    )?;
    Ok(library)
}

/// A format string being read: C stops at its first NUL byte.
struct Format {
    bytes: Vec<u8>,
    at: usize,
    /// Little endian (x86's native order) unless `>`.
    little: bool,
    align: usize,
}

impl Format {
    fn new(text: &[u8]) -> Format {
        let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
        Format {
            bytes: text[..end].to_vec(),
            at: 0,
            little: true,
            align: 1,
        }
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.bytes.get(self.at).copied();
        self.at += usize::from(byte.is_some());
        byte
    }

    /// `getnum`: the digits at the cursor, or `default`.
    fn number(&mut self, lua: &Lua, default: usize) -> mlua::Result<usize> {
        if !self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            return Ok(default);
        }
        let mut a: i32 = 0;
        while let Some(digit) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            let digit = i32::from(digit - b'0');
            if a > i32::MAX / 10 || a * 10 > i32::MAX - digit {
                return Err(raise(lua, "integral size overflow".into()));
            }
            a = a * 10 + digit;
            self.at += 1;
        }
        Ok(a as usize)
    }

    /// `optsize`.
    fn size(&mut self, lua: &Lua, option: u8) -> mlua::Result<usize> {
        Ok(match option {
            b'B' | b'b' | b'x' => 1,
            b'H' | b'h' => 2,
            b'L' | b'l' | b'T' | b'd' => 8,
            b'f' => 4,
            b'c' => self.number(lua, 1)?,
            b'i' | b'I' => {
                let size = self.number(lua, 4)?;
                if size > STRUCT_MAX_INT_SIZE {
                    return Err(raise(
                        lua,
                        format!(
                            "integral size {size} is larger than limit of {STRUCT_MAX_INT_SIZE}"
                        ),
                    ));
                }
                size
            }
            _ => 0,
        })
    }

    /// `gettoalign`: padding before an item of `size` at `len`.
    fn padding(&self, len: usize, option: u8, size: usize) -> usize {
        if size == 0 || option == b'c' {
            return 0;
        }
        let size = size.min(self.align);
        (size.wrapping_sub(len & size.wrapping_sub(1))) & size.wrapping_sub(1)
    }

    /// `controloptions`.
    fn control(&mut self, lua: &Lua, option: u8, function: &str) -> mlua::Result<()> {
        match option {
            b' ' => {}
            b'>' => self.little = false,
            b'<' => self.little = true,
            b'!' => {
                let align = self.number(lua, STRUCT_MAX_ALIGN)?;
                if !align.is_power_of_two() {
                    return Err(raise(lua, format!("alignment {align} is not a power of 2")));
                }
                self.align = align;
            }
            other => {
                return Err(bad_argument(
                    lua,
                    1,
                    function,
                    &format!("invalid format option '{}'", char::from(other)),
                ))
            }
        }
        Ok(())
    }

    /// `bytes` in this format's order (they are given little endian).
    fn ordered(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        if !self.little {
            bytes.reverse();
        }
        bytes
    }
}

fn struct_pack(lua: &Lua, args: &[LuaValue]) -> mlua::Result<Vec<u8>> {
    let mut format = Format::new(&check_string(lua, args, 1, "pack")?.as_bytes());
    // `b_pack` pushes a nil after its arguments: a missing argument right after the last
    // one reads as `nil`, the next ones as `no value`.
    let mut args = args.to_vec();
    args.push(LuaValue::Nil);
    let args = &args[..];
    let mut arg = 2;
    let mut out = Vec::new();
    while let Some(option) = format.next() {
        let mut size = format.size(lua, option)?;
        let padding = format.padding(out.len(), option, size);
        out.resize(out.len() + padding, 0);
        match option {
            b'b' | b'B' | b'h' | b'H' | b'l' | b'L' | b'T' | b'i' | b'I' => {
                let number = check_number(lua, args, arg, "pack")?;
                arg += 1;
                let mut value = if number < 0.0 {
                    c_long(number) as u64
                } else {
                    c_unsigned_long(number)
                };
                let mut bytes = Vec::with_capacity(size);
                for _ in 0..size {
                    bytes.push((value & 0xff) as u8);
                    value >>= 8;
                }
                out.extend(format.ordered(bytes));
            }
            b'x' => out.push(0),
            b'f' => {
                let number = check_number(lua, args, arg, "pack")? as f32;
                arg += 1;
                out.extend(format.ordered(number.to_le_bytes().to_vec()));
            }
            b'd' => {
                let number = check_number(lua, args, arg, "pack")?;
                arg += 1;
                out.extend(format.ordered(number.to_le_bytes().to_vec()));
            }
            b'c' | b's' => {
                let text = check_string(lua, args, arg, "pack")?;
                arg += 1;
                let text = text.as_bytes();
                if size == 0 {
                    size = text.len();
                }
                if text.len() < size {
                    return Err(bad_argument(lua, arg, "pack", "string too short"));
                }
                out.extend_from_slice(&text[..size]);
                if option == b's' {
                    out.push(0);
                }
            }
            other => format.control(lua, other, "pack")?,
        }
    }
    Ok(out)
}

/// `getinteger`: `bytes` as an unsigned or sign-extended integer, as C computes it for
/// sizes past 8 too (higher bytes shift out; the sign mask's shift wraps at 64).
fn struct_integer(bytes: &[u8], little: bool, signed: bool) -> f64 {
    let mut value: u64 = 0;
    let mut push = |byte: &u8| value = value.wrapping_shl(8) | u64::from(*byte);
    if little {
        bytes.iter().rev().for_each(&mut push);
    } else {
        bytes.iter().for_each(&mut push);
    }
    if !signed {
        return value as f64;
    }
    let mask = u64::MAX.wrapping_shl((bytes.len() * 8).wrapping_sub(1) as u32);
    if value & mask != 0 {
        value |= mask;
    }
    value as i64 as f64
}

fn struct_unpack(lua: &Lua, args: &[LuaValue]) -> mlua::Result<MultiValue> {
    let mut format = Format::new(&check_string(lua, args, 1, "unpack")?.as_bytes());
    let data = check_string(lua, args, 2, "unpack")?;
    let data = data.as_bytes();
    let start = opt_integer(lua, args, 3, "unpack", 1)?;
    if start == 0 {
        return Err(bad_argument(
            lua,
            3,
            "unpack",
            "offset must be 1 or greater",
        ));
    }
    let len = data.len();
    let mut pos = (start as usize).wrapping_sub(1);
    let mut results: Vec<LuaValue> = Vec::new();
    let too_short = || bad_argument(lua, 2, "unpack", "data string too short");
    while let Some(option) = format.next() {
        let mut size = format.size(lua, option)?;
        pos = pos.wrapping_add(format.padding(pos, option, size));
        if size > len || pos > len - size {
            return Err(too_short());
        }
        // The stack holds the format, the data and the results.
        if 2 + results.len() + 1 > LUA_MAX_C_STACK || results.len() + 1 >= MAX_RETURNED_VALUES {
            return Err(raise(lua, "stack overflow (too many results)".into()));
        }
        let item = &data[pos..pos + size];
        match option {
            b'b' | b'B' | b'h' | b'H' | b'l' | b'L' | b'T' | b'i' | b'I' => {
                let signed = option.is_ascii_lowercase();
                results.push(LuaValue::Number(struct_integer(
                    item,
                    format.little,
                    signed,
                )));
            }
            b'x' => {}
            b'f' => {
                let bytes = format.ordered(item.to_vec());
                let number = f32::from_le_bytes(bytes.try_into().expect("4 bytes"));
                results.push(LuaValue::Number(f64::from(number)));
            }
            b'd' => {
                let bytes = format.ordered(item.to_vec());
                let number = f64::from_le_bytes(bytes.try_into().expect("8 bytes"));
                results.push(LuaValue::Number(number));
            }
            b'c' => {
                if size == 0 {
                    let previous = match results.last() {
                        Some(value @ (LuaValue::Number(_) | LuaValue::String(_))) => {
                            lua.coerce_number(value.clone())?
                        }
                        _ => None,
                    };
                    let Some(previous) = previous else {
                        return Err(raise(lua, "format 'c0' needs a previous size".into()));
                    };
                    size = c_unsigned_long(previous) as usize;
                    results.pop();
                    if size > len || pos > len - size {
                        return Err(too_short());
                    }
                }
                results.push(LuaValue::String(lua.create_string(&data[pos..pos + size])?));
            }
            b's' => {
                let Some(end) = data[pos..].iter().position(|b| *b == 0) else {
                    return Err(raise(lua, "unfinished string in data".into()));
                };
                size = end + 1;
                results.push(LuaValue::String(lua.create_string(&data[pos..pos + end])?));
            }
            other => format.control(lua, other, "unpack")?,
        }
        pos = pos.wrapping_add(size);
    }
    results.push(LuaValue::Number(pos.wrapping_add(1) as i64 as f64));
    Ok(MultiValue::from_iter(results))
}

fn struct_size(lua: &Lua, args: &[LuaValue]) -> mlua::Result<f64> {
    let mut format = Format::new(&check_string(lua, args, 1, "size")?.as_bytes());
    let mut pos = 0usize;
    while let Some(option) = format.next() {
        let size = format.size(lua, option)?;
        pos = pos.wrapping_add(format.padding(pos, option, size));
        if option == b's' {
            return Err(bad_argument(lua, 1, "size", "option 's' has no fixed size"));
        } else if option == b'c' && size == 0 {
            return Err(bad_argument(
                lua,
                1,
                "size",
                "option 'c0' has no fixed size",
            ));
        }
        if !option.is_ascii_alphanumeric() {
            format.control(lua, option, "size")?;
        }
        pos = pos.wrapping_add(size);
    }
    Ok(pos as i64 as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_conversions_match_x86() {
        assert_eq!(c_long(f64::NAN), i64::MIN);
        assert_eq!(c_long(-3.9), -3);
        assert_eq!(c_unsigned_long(f64::NAN), 1 << 63);
        assert_eq!(c_unsigned_long(9.223_372_036_854_776e18), 1 << 63);
        assert_eq!(c_unsigned_long(1.8446744073709552e19), 0);
        assert_eq!(c_unsigned_long(f64::INFINITY), 0);
    }

    #[test]
    fn struct_integers_sign_extend_as_c() {
        assert_eq!(struct_integer(&[0xff; 9], false, true), -1.0);
        assert_eq!(
            struct_integer(&[1, 0, 0, 0, 0, 0, 0, 0, 0xff], false, true),
            -1.0
        );
        assert_eq!(struct_integer(&[], true, true), 0.0);
        assert_eq!(struct_integer(&[0xfe, 0xff], true, true), -2.0);
        assert_eq!(struct_integer(&[0xfe, 0xff], true, false), 65534.0);
    }
}
