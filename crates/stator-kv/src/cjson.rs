//! The `cjson` and `bit` libraries of Redis' Lua (lua-cjson 2.1.0 and Lua BitOp 1.0.2 as
//! Redis 7.0 bundles them), written over mlua: the same JSON text (`%.14g` numbers, `\/`
//! escapes, `{}` for an empty table, sparse-array rules), the same error texts, and the
//! same configuration functions. Pure functions of their arguments, so every replica
//! encodes alike.

use mlua::{LightUserData, Lua, MultiValue, Table, Value as LuaValue};
use std::cell::Cell;
use std::rc::Rc;

/// Longest JSON text one `cjson.encode` may build. The text is Rust memory, outside the
/// Lua allocator's limit, and a table that holds the same subtable many times over can
/// describe an exponentially long text; the script's own memory cap bounds it instead.
pub const MAX_JSON_TEXT_BYTES: usize = crate::scripting::MAX_SCRIPT_MEMORY_BYTES;

/// lua-cjson's defaults (what a fresh `cjson` table starts with in Redis).
const DEFAULT_NUMBER_PRECISION: i64 = 14;
const DEFAULT_MAX_DEPTH: i64 = 1000;
const DEFAULT_SPARSE_RATIO: i64 = 2;
const DEFAULT_SPARSE_SAFE: i64 = 10;

/// lua-cjson's `luaL_error`: the message prefixed with the calling script's position
/// (`user_script:1: `), so the script error reply names the line as Redis' does.
pub(crate) fn raise(lua: &Lua, message: String) -> mlua::Error {
    let position = lua
        .inspect_stack(1)
        .and_then(|frame| {
            let line = frame.curr_line();
            let source = frame.source().short_src?.into_owned();
            (line > 0).then(|| format!("{source}:{line}: "))
        })
        .unwrap_or_default();
    mlua::Error::runtime(format!("{position}{message}"))
}

/// How invalid numbers (NaN, inf) encode: lua-cjson's `encode_invalid_numbers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvalidNumbers {
    Refuse,
    Allow,
    AsNull,
}

/// One `cjson` table's settings (`cjson.new()` makes another with the defaults).
#[derive(Debug, Clone, Copy)]
struct Config {
    number_precision: i64,
    encode_max_depth: i64,
    decode_max_depth: i64,
    sparse_convert: bool,
    sparse_ratio: i64,
    sparse_safe: i64,
    encode_invalid_numbers: InvalidNumbers,
    decode_invalid_numbers: bool,
    keep_buffer: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            number_precision: DEFAULT_NUMBER_PRECISION,
            encode_max_depth: DEFAULT_MAX_DEPTH,
            decode_max_depth: DEFAULT_MAX_DEPTH,
            sparse_convert: false,
            sparse_ratio: DEFAULT_SPARSE_RATIO,
            sparse_safe: DEFAULT_SPARSE_SAFE,
            encode_invalid_numbers: InvalidNumbers::Refuse,
            decode_invalid_numbers: true,
            keep_buffer: true,
        }
    }
}

/// `cjson.null`: the light userdata NULL, as lua-cjson pushes it.
fn null() -> LuaValue {
    LuaValue::LightUserData(LightUserData(std::ptr::null_mut()))
}

/// Installs the `cjson` and `bit` globals.
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("cjson", cjson_library(lua)?)?;
    globals.raw_set("bit", bit_library(lua)?)?;
    Ok(())
}

fn cjson_library(lua: &Lua) -> mlua::Result<Table> {
    let config = Rc::new(Cell::new(Config::default()));
    let cjson = lua.create_table()?;
    let settings = Rc::clone(&config);
    let encode = lua.create_function(move |lua, value: LuaValue| {
        let mut encoder = Encoder {
            config: settings.get(),
            text: Vec::new(),
            max_text_bytes: MAX_JSON_TEXT_BYTES,
        };
        match encoder.encode(&value) {
            Ok(()) => lua.create_string(encoder.text),
            Err(message) => Err(raise(lua, message)),
        }
    })?;
    cjson.raw_set("encode", encode)?;
    let settings = Rc::clone(&config);
    let decode = lua.create_function(move |lua, text: LuaValue| {
        // `luaL_checklstring`: numbers are read as their text.
        let text = match text {
            LuaValue::String(text) => text,
            number @ (LuaValue::Integer(_) | LuaValue::Number(_)) => {
                lua.coerce_string(number)?.expect("a number has a text")
            }
            other => {
                return Err(raise(
                    lua,
                    format!(
                        "bad argument #1 to 'decode' (string expected, got {})",
                        type_name(&other)
                    ),
                ))
            }
        };
        let bytes = text.as_bytes();
        let mut decoder = Decoder {
            lua,
            config: settings.get(),
            bytes: &bytes,
            position: 0,
        };
        decoder.document().map_err(|message| raise(lua, message))
    })?;
    cjson.raw_set("decode", decode)?;
    install_settings(lua, &cjson, &config)?;
    cjson.raw_set(
        "new",
        lua.create_function(|lua, _: MultiValue| cjson_library(lua))?,
    )?;
    cjson.raw_set("null", null())?;
    cjson.raw_set("_NAME", "cjson")?;
    cjson.raw_set("_VERSION", "2.1.0")?;
    Ok(cjson)
}

/// The configuration functions: each answers the setting, after changing it when given
/// an argument (lua-cjson's `json_cfg_*`).
fn install_settings(lua: &Lua, cjson: &Table, config: &Rc<Cell<Config>>) -> mlua::Result<()> {
    install_integer_settings(lua, cjson, config)?;
    install_flag_settings(lua, cjson, config)?;
    install_encode_invalid_numbers(lua, cjson, config)?;
    install_encode_sparse_array(lua, cjson, config)
}

/// `encode_number_precision`, `encode_max_depth`, `decode_max_depth`: integers in a range.
fn install_integer_settings(
    lua: &Lua,
    cjson: &Table,
    config: &Rc<Cell<Config>>,
) -> mlua::Result<()> {
    let integer_setting = |name: &'static str,
                           min: i64,
                           max: i64,
                           get: fn(&Config) -> i64,
                           set: fn(&mut Config, i64)|
     -> mlua::Result<()> {
        let config = Rc::clone(config);
        let function = lua.create_function(move |_, value: Option<f64>| {
            let mut current = config.get();
            if let Some(value) = value {
                let value = value as i64;
                if !(min..=max).contains(&value) {
                    return Err(mlua::Error::runtime(format!(
                        "bad argument #1 to '{name}' (expected integer between {min} and {max})"
                    )));
                }
                set(&mut current, value);
                config.set(current);
            }
            Ok(get(&current))
        })?;
        cjson.raw_set(name, function)
    };
    integer_setting(
        "encode_number_precision",
        1,
        14,
        |c| c.number_precision,
        |c, v| c.number_precision = v,
    )?;
    integer_setting(
        "encode_max_depth",
        1,
        i64::from(i32::MAX),
        |c| c.encode_max_depth,
        |c, v| c.encode_max_depth = v,
    )?;
    integer_setting(
        "decode_max_depth",
        1,
        i64::from(i32::MAX),
        |c| c.decode_max_depth,
        |c, v| c.decode_max_depth = v,
    )?;
    Ok(())
}

/// `encode_keep_buffer`, `decode_invalid_numbers`: flags read back as set.
fn install_flag_settings(lua: &Lua, cjson: &Table, config: &Rc<Cell<Config>>) -> mlua::Result<()> {
    let flag_setting = |name: &'static str,
                        get: fn(&Config) -> bool,
                        set: fn(&mut Config, bool)|
     -> mlua::Result<()> {
        let config = Rc::clone(config);
        let function = lua.create_function(move |_, value: Option<bool>| {
            let mut current = config.get();
            if let Some(value) = value {
                set(&mut current, value);
                config.set(current);
            }
            Ok(get(&current))
        })?;
        cjson.raw_set(name, function)
    };
    // The buffer is Rust memory dropped after each call either way; the setting is
    // kept only so scripts that set it read it back.
    flag_setting(
        "encode_keep_buffer",
        |c| c.keep_buffer,
        |c, v| c.keep_buffer = v,
    )?;
    flag_setting(
        "decode_invalid_numbers",
        |c| c.decode_invalid_numbers,
        |c, v| c.decode_invalid_numbers = v,
    )
}

/// `encode_invalid_numbers`: true, false or "null" (NaN and infinities as `null`).
fn install_encode_invalid_numbers(
    lua: &Lua,
    cjson: &Table,
    config: &Rc<Cell<Config>>,
) -> mlua::Result<()> {
    let settings = Rc::clone(config);
    cjson.raw_set(
        "encode_invalid_numbers",
        lua.create_function(move |lua, value: LuaValue| {
            let mut current = settings.get();
            match &value {
                LuaValue::Nil => {}
                LuaValue::Boolean(true) => current.encode_invalid_numbers = InvalidNumbers::Allow,
                LuaValue::Boolean(false) => current.encode_invalid_numbers = InvalidNumbers::Refuse,
                LuaValue::String(text) if text.as_bytes().as_ref() == b"null" => {
                    current.encode_invalid_numbers = InvalidNumbers::AsNull
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "bad argument #1 to 'encode_invalid_numbers' (invalid option)",
                    ))
                }
            }
            settings.set(current);
            Ok(match current.encode_invalid_numbers {
                InvalidNumbers::Refuse => LuaValue::Boolean(false),
                InvalidNumbers::Allow => LuaValue::Boolean(true),
                InvalidNumbers::AsNull => LuaValue::String(lua.create_string("null")?),
            })
        })?,
    )
}

/// `encode_sparse_array(convert, ratio, safe)`: when a sparse Lua array becomes an object.
fn install_encode_sparse_array(
    lua: &Lua,
    cjson: &Table,
    config: &Rc<Cell<Config>>,
) -> mlua::Result<()> {
    let settings = Rc::clone(config);
    cjson.raw_set(
        "encode_sparse_array",
        lua.create_function(
            move |_, (convert, ratio, safe): (Option<bool>, Option<f64>, Option<f64>)| {
                let mut current = settings.get();
                if let Some(convert) = convert {
                    current.sparse_convert = convert;
                }
                if let Some(ratio) = ratio {
                    current.sparse_ratio = (ratio as i64).max(0);
                }
                if let Some(safe) = safe {
                    current.sparse_safe = (safe as i64).max(0);
                }
                settings.set(current);
                Ok((
                    current.sparse_convert,
                    current.sparse_ratio,
                    current.sparse_safe,
                ))
            },
        )?,
    )
}

/// C's `%.<precision>g`, as lua-cjson prints numbers (`1e+20`, `0.1`, `-0`).
pub(crate) fn format_general(number: f64, precision: usize) -> String {
    if number.is_nan() {
        return "nan".into();
    }
    if number.is_infinite() {
        return if number > 0.0 { "inf" } else { "-inf" }.into();
    }
    if number == 0.0 {
        return if number.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let precision = precision.max(1);
    let scientific = format!("{number:.*e}", precision - 1);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} output has an exponent");
    let exponent: i64 = exponent.parse().expect("{:e} exponent is an integer");
    if exponent < -4 || exponent >= precision as i64 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim_fraction(mantissa),
            exponent.unsigned_abs()
        )
    } else {
        let decimals = (precision as i64 - 1 - exponent) as usize;
        trim_fraction(&format!("{number:.decimals$}")).to_owned()
    }
}

fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// Lua's type name of a value, as lua-cjson's errors name it.
pub(crate) fn type_name(value: &LuaValue) -> &'static str {
    match value {
        LuaValue::Nil => "nil",
        LuaValue::Boolean(_) => "boolean",
        LuaValue::Integer(_) | LuaValue::Number(_) => "number",
        LuaValue::String(_) => "string",
        LuaValue::Table(_) => "table",
        LuaValue::Function(_) => "function",
        LuaValue::Thread(_) => "thread",
        _ => "userdata",
    }
}

struct Encoder {
    config: Config,
    text: Vec<u8>,
    /// [`MAX_JSON_TEXT_BYTES`] (smaller in tests).
    max_text_bytes: usize,
}

/// A table being written: iterative, so a deeply nested table cannot overflow the
/// thread's stack (the depth limit is the script's setting, up to `i32::MAX`).
enum OpenTable {
    Array {
        table: Table,
        next: i64,
        length: i64,
    },
    Object {
        entries: std::vec::IntoIter<(LuaValue, LuaValue)>,
        first: bool,
    },
}

impl Encoder {
    fn encode(&mut self, root: &LuaValue) -> Result<(), String> {
        let mut open: Vec<OpenTable> = Vec::new();
        let mut pending = Some(root.clone());
        loop {
            if let Some(value) = pending.take() {
                match value {
                    LuaValue::Table(table) => {
                        let depth = open.len() as i64 + 1;
                        open.push(self.open_table(table, depth)?);
                    }
                    scalar => self.scalar(&scalar)?,
                }
                if self.text.len() > self.max_text_bytes {
                    return Err(format!(
                        "Cannot serialise table: the JSON text passes {} bytes; encode smaller parts",
                        self.max_text_bytes
                    ));
                }
            }
            let Some(top) = open.last_mut() else {
                return Ok(());
            };
            match top {
                OpenTable::Array {
                    table,
                    next,
                    length,
                } => {
                    if *next > *length {
                        self.text.push(b']');
                        open.pop();
                    } else {
                        if *next > 1 {
                            self.text.push(b',');
                        }
                        pending = Some(table.raw_get(*next).map_err(|e| e.to_string())?);
                        *next += 1;
                    }
                }
                OpenTable::Object { entries, first } => match entries.next() {
                    None => {
                        self.text.push(b'}');
                        open.pop();
                    }
                    Some((key, value)) => {
                        if !*first {
                            self.text.push(b',');
                        }
                        *first = false;
                        self.key(&key)?;
                        self.text.push(b':');
                        pending = Some(value);
                    }
                },
            }
        }
    }

    /// Writes `[` or `{` for a table at `depth` and answers how to go on with it.
    fn open_table(&mut self, table: Table, depth: i64) -> Result<OpenTable, String> {
        if depth > self.config.encode_max_depth {
            return Err(format!("Cannot serialise, excessive nesting ({depth})"));
        }
        let mut entries = Vec::new();
        table
            .for_each(|key: LuaValue, value: LuaValue| {
                entries.push((key, value));
                Ok(())
            })
            .map_err(|error| error.to_string())?;
        Ok(match self.array_length(&entries)? {
            Some(length) if length > 0 => {
                self.text.push(b'[');
                OpenTable::Array {
                    table,
                    next: 1,
                    length,
                }
            }
            _ => {
                self.text.push(b'{');
                OpenTable::Object {
                    entries: entries.into_iter(),
                    first: true,
                }
            }
        })
    }

    fn scalar(&mut self, value: &LuaValue) -> Result<(), String> {
        match value {
            LuaValue::Nil => self.text.extend_from_slice(b"null"),
            LuaValue::LightUserData(pointer) if pointer.0.is_null() => {
                self.text.extend_from_slice(b"null")
            }
            LuaValue::Boolean(flag) => {
                self.text
                    .extend_from_slice(if *flag { b"true" } else { b"false" })
            }
            LuaValue::Integer(number) => self.number(*number as f64)?,
            LuaValue::Number(number) => self.number(*number)?,
            LuaValue::String(text) => self.string(&text.as_bytes()),
            other => {
                return Err(format!(
                    "Cannot serialise {}: type not supported",
                    type_name(other)
                ))
            }
        }
        Ok(())
    }

    /// An object key: strings as they are, numbers as their text in quotes.
    fn key(&mut self, key: &LuaValue) -> Result<(), String> {
        let number = match key {
            LuaValue::String(text) => {
                self.string(&text.as_bytes());
                return Ok(());
            }
            LuaValue::Integer(number) => *number as f64,
            LuaValue::Number(number) => *number,
            other => {
                return Err(format!(
                    "Cannot serialise {}: table key must be a number or string",
                    type_name(other)
                ))
            }
        };
        self.text.push(b'"');
        self.number(number)?;
        self.text.push(b'"');
        Ok(())
    }

    fn number(&mut self, number: f64) -> Result<(), String> {
        if !number.is_finite() {
            match self.config.encode_invalid_numbers {
                InvalidNumbers::Refuse => {
                    return Err("Cannot serialise number: must not be NaN or Inf".into())
                }
                InvalidNumbers::AsNull => {
                    self.text.extend_from_slice(b"null");
                    return Ok(());
                }
                InvalidNumbers::Allow => {}
            }
        }
        let text = format_general(number, self.config.number_precision as usize);
        self.text.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// lua-cjson's escapes: `"`, `\`, `/`, the C escapes, `\u00XX` for other control
    /// bytes and DEL; bytes >= 0x80 pass through untouched.
    fn string(&mut self, bytes: &[u8]) {
        self.text.push(b'"');
        for &byte in bytes {
            match byte {
                b'"' => self.text.extend_from_slice(b"\\\""),
                b'\\' => self.text.extend_from_slice(b"\\\\"),
                b'/' => self.text.extend_from_slice(b"\\/"),
                b'\x08' => self.text.extend_from_slice(b"\\b"),
                b'\x0c' => self.text.extend_from_slice(b"\\f"),
                b'\n' => self.text.extend_from_slice(b"\\n"),
                b'\r' => self.text.extend_from_slice(b"\\r"),
                b'\t' => self.text.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => self
                    .text
                    .extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
                other => self.text.push(other),
            }
        }
        self.text.push(b'"');
    }

    /// lua-cjson's `lua_array_length`: `Some(max index)` when every key is a positive
    /// integer and the table is not too sparse, `None` for an object.
    fn array_length(&self, entries: &[(LuaValue, LuaValue)]) -> Result<Option<i64>, String> {
        let mut max = 0i64;
        for (key, _) in entries {
            let index = match key {
                LuaValue::Integer(number) => *number as f64,
                LuaValue::Number(number) => *number,
                _ => return Ok(None),
            };
            if index.floor() != index || index < 1.0 {
                return Ok(None);
            }
            max = max.max(index as i64);
        }
        let items = entries.len() as i64;
        let config = &self.config;
        if config.sparse_ratio > 0 && max > items * config.sparse_ratio && max > config.sparse_safe
        {
            if !config.sparse_convert {
                return Err("Cannot serialise table: excessively sparse array".into());
            }
            return Ok(None);
        }
        Ok(Some(max))
    }
}

/// A JSON token, named as lua-cjson names them in errors.
#[derive(Debug)]
enum Token {
    ObjectBegin,
    ObjectEnd,
    ArrayBegin,
    ArrayEnd,
    String(Vec<u8>),
    Number(f64),
    Boolean(bool),
    Null,
    Colon,
    Comma,
    End,
    /// A lexing error: its message and where it was found.
    Error(&'static str),
}

impl Token {
    fn name(&self) -> &'static str {
        match self {
            Token::ObjectBegin => "T_OBJ_BEGIN",
            Token::ObjectEnd => "T_OBJ_END",
            Token::ArrayBegin => "T_ARR_BEGIN",
            Token::ArrayEnd => "T_ARR_END",
            Token::String(_) => "T_STRING",
            Token::Number(_) => "T_NUMBER",
            Token::Boolean(_) => "T_BOOLEAN",
            Token::Null => "T_NULL",
            Token::Colon => "T_COLON",
            Token::Comma => "T_COMMA",
            Token::End => "T_END",
            Token::Error(message) => message,
        }
    }
}

struct Decoder<'a> {
    lua: &'a Lua,
    config: Config,
    bytes: &'a [u8],
    position: usize,
}

/// A container being read (iterative, like the encoder).
enum OpenContainer {
    Array { table: Table, next: i64 },
    Object { table: Table, key: mlua::String },
}

impl Decoder<'_> {
    fn document(&mut self) -> Result<LuaValue, String> {
        // lua-cjson's guess at a UTF-16 or UTF-32 text: a NUL among its first two bytes.
        if self.bytes.len() >= 2 && (self.bytes[0] == 0 || self.bytes[1] == 0) {
            return Err("JSON parser does not support UTF-16 or UTF-32".into());
        }
        let lua_error = |error: mlua::Error| error.to_string();
        let mut open: Vec<OpenContainer> = Vec::new();
        let (mut token, mut at) = self.next_token();
        loop {
            let mut value = match token {
                Token::String(bytes) => {
                    LuaValue::String(self.lua.create_string(bytes).map_err(lua_error)?)
                }
                Token::Number(number) => LuaValue::Number(number),
                Token::Boolean(flag) => LuaValue::Boolean(flag),
                Token::Null => null(),
                Token::ObjectBegin | Token::ArrayBegin => {
                    let is_array = matches!(token, Token::ArrayBegin);
                    self.descend(open.len() as i64 + 1)?;
                    let table = self.lua.create_table().map_err(lua_error)?;
                    let (next, next_at) = self.next_token();
                    match (is_array, next) {
                        (true, Token::ArrayEnd) | (false, Token::ObjectEnd) => {
                            LuaValue::Table(table)
                        }
                        (true, next) => {
                            open.push(OpenContainer::Array { table, next: 1 });
                            (token, at) = (next, next_at);
                            continue;
                        }
                        (false, next) => {
                            let key = self.object_key(next, next_at)?;
                            open.push(OpenContainer::Object { table, key });
                            (token, at) = self.next_token();
                            continue;
                        }
                    }
                }
                other => return Err(expected("value", &other, at)),
            };
            // Store the value in its container; close containers that end after it.
            loop {
                let Some(container) = open.last_mut() else {
                    let (end, end_at) = self.next_token();
                    if !matches!(end, Token::End) {
                        return Err(expected("the end", &end, end_at));
                    }
                    return Ok(value);
                };
                let (next, next_at) = self.next_token();
                let closed = match container {
                    OpenContainer::Array { table, next: index } => {
                        table.raw_set(*index, value).map_err(lua_error)?;
                        *index += 1;
                        match next {
                            Token::ArrayEnd => true,
                            Token::Comma => false,
                            other => return Err(expected("comma or array end", &other, next_at)),
                        }
                    }
                    OpenContainer::Object { table, key } => {
                        table.raw_set(key.clone(), value).map_err(lua_error)?;
                        match next {
                            Token::ObjectEnd => true,
                            Token::Comma => {
                                let (key_token, key_at) = self.next_token();
                                *key = self.object_key(key_token, key_at)?;
                                false
                            }
                            other => return Err(expected("comma or object end", &other, next_at)),
                        }
                    }
                };
                if !closed {
                    break;
                }
                value = match open.pop() {
                    Some(
                        OpenContainer::Array { table, .. } | OpenContainer::Object { table, .. },
                    ) => LuaValue::Table(table),
                    None => unreachable!("a container was open"),
                };
            }
            (token, at) = self.next_token();
        }
    }

    /// An object's key and the colon after it.
    fn object_key(&mut self, token: Token, at: usize) -> Result<mlua::String, String> {
        let Token::String(key) = token else {
            return Err(expected("object key string", &token, at));
        };
        let (colon, colon_at) = self.next_token();
        if !matches!(colon, Token::Colon) {
            return Err(expected("colon", &colon, colon_at));
        }
        self.lua.create_string(key).map_err(|e| e.to_string())
    }

    fn descend(&mut self, depth: i64) -> Result<(), String> {
        if depth > self.config.decode_max_depth {
            return Err(format!(
                "Found too many nested data structures ({depth}) at character {}",
                self.position
            ));
        }
        Ok(())
    }

    /// The next token and the index it starts at (a lexing error: where it was found).
    fn next_token(&mut self) -> (Token, usize) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.position) {
            self.position += 1;
        }
        let start = self.position;
        let Some(&byte) = self.bytes.get(start) else {
            return (Token::End, start);
        };
        let single = |token| (token, start);
        match byte {
            b'{' => {
                self.position += 1;
                single(Token::ObjectBegin)
            }
            b'}' => {
                self.position += 1;
                single(Token::ObjectEnd)
            }
            b'[' => {
                self.position += 1;
                single(Token::ArrayBegin)
            }
            b']' => {
                self.position += 1;
                single(Token::ArrayEnd)
            }
            b':' => {
                self.position += 1;
                single(Token::Colon)
            }
            b',' => {
                self.position += 1;
                single(Token::Comma)
            }
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            _ => {
                let rest = &self.bytes[start..];
                for (word, token) in [
                    (&b"true"[..], Token::Boolean(true)),
                    (b"false", Token::Boolean(false)),
                    (b"null", Token::Null),
                ] {
                    if rest.starts_with(word) {
                        self.position += word.len();
                        return (token, start);
                    }
                }
                if self.config.decode_invalid_numbers && is_invalid_number(rest) {
                    return self.number();
                }
                (Token::Error("invalid token"), start)
            }
        }
    }

    /// A number as lua-cjson reads one: with `decode_invalid_numbers` off, refusing what
    /// JSON forbids (`+`, hex, leading zeros, inf, nan); then C's `strtod`.
    fn number(&mut self) -> (Token, usize) {
        let start = self.position;
        let rest = &self.bytes[start..];
        if !self.config.decode_invalid_numbers && is_invalid_number(rest) {
            return (Token::Error("invalid number"), start);
        }
        match strtod(rest) {
            Some((number, used)) => {
                self.position += used;
                (Token::Number(number), start)
            }
            None => (Token::Error("invalid number"), start),
        }
    }

    /// A string token; escapes decoded, `\u` (with surrogate pairs) as UTF-8.
    fn string(&mut self) -> (Token, usize) {
        let start = self.position;
        self.position += 1;
        let mut text = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.position) else {
                return (Token::Error("unexpected end of string"), self.position);
            };
            match byte {
                b'"' => {
                    self.position += 1;
                    return (Token::String(text), start);
                }
                b'\\' => {
                    let escape_at = self.position;
                    let decoded = match self.bytes.get(self.position + 1) {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => b'\x08',
                        Some(b'f') => b'\x0c',
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'u') => match self.unicode_escape(&mut text) {
                            Some(()) => continue,
                            None => {
                                return (Token::Error("invalid unicode escape code"), escape_at)
                            }
                        },
                        _ => return (Token::Error("invalid escape code"), escape_at),
                    };
                    text.push(decoded);
                    self.position += 2;
                }
                other => {
                    text.push(other);
                    self.position += 1;
                }
            }
        }
    }

    /// Decodes `\uXXXX` (and a following low surrogate) at the position into `text`.
    fn unicode_escape(&mut self, text: &mut Vec<u8>) -> Option<()> {
        let hex = |at: usize| -> Option<u32> {
            let digits = self.bytes.get(at..at + 4)?;
            u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
        };
        let mut code = hex(self.position + 2)?;
        let mut used = 6;
        if (0xd800..0xdc00).contains(&code) {
            if self.bytes.get(self.position + 6..self.position + 8) != Some(b"\\u") {
                return None;
            }
            let low = hex(self.position + 8)?;
            if !(0xdc00..0xe000).contains(&low) {
                return None;
            }
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
            used = 12;
        } else if (0xdc00..0xe000).contains(&code) {
            return None;
        }
        let character = char::from_u32(code)?;
        let mut buffer = [0u8; 4];
        text.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
        self.position += used;
        Some(())
    }
}

/// lua-cjson's `json_is_invalid_number`: numbers JSON forbids (and that `strtod` reads).
fn is_invalid_number(text: &[u8]) -> bool {
    if text.first() == Some(&b'+') {
        return true;
    }
    let text = text.strip_prefix(b"-").unwrap_or(text);
    match text.first() {
        Some(b'0') => matches!(text.get(1), Some(b'x' | b'X' | b'0'..=b'9')),
        Some(byte) if *byte <= b'9' => false,
        _ => starts_with_ignore_case(text, b"inf") || starts_with_ignore_case(text, b"nan"),
    }
}

/// C's `strtod`: the number at the start of `text` and how many bytes it took, or `None`
/// when no number starts there. Decimal, hexadecimal (`0x1.8p3`), `inf`, `infinity`,
/// `nan`; out-of-range values become inf or 0 as `strtod` returns them.
fn strtod(text: &[u8]) -> Option<(f64, usize)> {
    let sign_bytes = usize::from(matches!(text.first(), Some(b'+' | b'-')));
    let negative = text.first() == Some(&b'-');
    let body = &text[sign_bytes..];
    let signed = |magnitude: f64| if negative { -magnitude } else { magnitude };
    for (word, magnitude) in [
        (&b"infinity"[..], f64::INFINITY),
        (b"inf", f64::INFINITY),
        (b"nan", f64::NAN),
    ] {
        if starts_with_ignore_case(body, word) {
            return Some((signed(magnitude), sign_bytes + word.len()));
        }
    }
    let count = |from: usize, accept: fn(&u8) -> bool| {
        body.get(from..)
            .map_or(0, |tail| tail.iter().take_while(|b| accept(b)).count())
    };
    if body.len() > 2 && body[0] == b'0' && (body[1] | 0x20) == b'x' {
        let integer = count(2, u8::is_ascii_hexdigit);
        let mut length = 2 + integer;
        let mut fraction = 0;
        if body.get(length) == Some(&b'.') {
            fraction = count(length + 1, u8::is_ascii_hexdigit);
            length += 1 + fraction;
        }
        if integer + fraction > 0 {
            let mut mantissa = 0f64;
            for byte in body[2..length].iter().filter(|b| **b != b'.') {
                let digit = (*byte as char).to_digit(16).expect("counted hex digits");
                mantissa = mantissa * 16.0 + f64::from(digit);
            }
            let mut exponent = -4 * fraction as i64;
            if let Some(b'p' | b'P') = body.get(length) {
                let exponent_sign = usize::from(matches!(body.get(length + 1), Some(b'+' | b'-')));
                let digits = count(length + 1 + exponent_sign, u8::is_ascii_digit);
                if digits > 0 {
                    let end = length + 1 + exponent_sign + digits;
                    let written: i64 = std::str::from_utf8(&body[length + 1..end])
                        .expect("signs and digits are ASCII")
                        .parse()
                        .unwrap_or(i64::MAX / 2);
                    exponent += written.clamp(-100_000, 100_000);
                    length = end;
                }
            }
            let magnitude = mantissa * 2f64.powi(exponent.clamp(-2000, 2000) as i32);
            return Some((signed(magnitude), sign_bytes + length));
        }
        // "0x" without hex digits: strtod reads the "0".
        return Some((signed(0.0), sign_bytes + 1));
    }
    let integer = count(0, u8::is_ascii_digit);
    let mut length = integer;
    let mut fraction = 0;
    if body.get(length) == Some(&b'.') {
        fraction = count(length + 1, u8::is_ascii_digit);
        length += 1 + fraction;
    }
    if integer + fraction == 0 {
        return None;
    }
    if let Some(b'e' | b'E') = body.get(length) {
        let exponent_sign = usize::from(matches!(body.get(length + 1), Some(b'+' | b'-')));
        let digits = count(length + 1 + exponent_sign, u8::is_ascii_digit);
        if digits > 0 {
            length += 1 + exponent_sign + digits;
        }
    }
    let number: f64 = std::str::from_utf8(&body[..length])
        .expect("digits, dots and exponents are ASCII")
        .parse()
        .ok()?;
    Some((signed(number), sign_bytes + length))
}

fn starts_with_ignore_case(bytes: &[u8], word: &[u8]) -> bool {
    bytes.len() >= word.len() && bytes[..word.len()].eq_ignore_ascii_case(word)
}

/// lua-cjson's parse error.
fn expected(what: &str, found: &Token, at: usize) -> String {
    format!(
        "Expected {what} but found {} at character {}",
        found.name(),
        at + 1
    )
}

/// Lua BitOp's argument conversion: the number rounded (ties to even, as adding 2^52+2^51
/// does) and wrapped to 32 bits.
fn to_bits(number: f64) -> u32 {
    let rounded = number.round_ties_even();
    if rounded.is_finite() && rounded.abs() < 9.2e18 {
        (rounded as i64) as u32
    } else {
        0
    }
}

/// The `bit` library (Lua BitOp 1.0.2): 32-bit operations answering signed numbers.
fn bit_library(lua: &Lua) -> mlua::Result<Table> {
    let bit = lua.create_table()?;
    let signed = |bits: u32| f64::from(bits as i32);
    bit.raw_set(
        "tobit",
        lua.create_function(move |_, x: f64| Ok(signed(to_bits(x))))?,
    )?;
    bit.raw_set(
        "bnot",
        lua.create_function(move |_, x: f64| Ok(signed(!to_bits(x))))?,
    )?;
    bit.raw_set(
        "bswap",
        lua.create_function(move |_, x: f64| Ok(signed(to_bits(x).swap_bytes())))?,
    )?;
    let fold = |name: &'static str, operation: fn(u32, u32) -> u32| -> mlua::Result<()> {
        bit.raw_set(
            name,
            lua.create_function(move |_, (first, rest): (f64, mlua::Variadic<f64>)| {
                Ok(signed(rest.iter().fold(to_bits(first), |acc, x| {
                    operation(acc, to_bits(*x))
                })))
            })?,
        )
    };
    fold("band", |a, b| a & b)?;
    fold("bor", |a, b| a | b)?;
    fold("bxor", |a, b| a ^ b)?;
    let shift = |name: &'static str, operation: fn(u32, u32) -> u32| -> mlua::Result<()> {
        bit.raw_set(
            name,
            lua.create_function(move |_, (x, n): (f64, f64)| {
                Ok(signed(operation(to_bits(x), to_bits(n) & 31)))
            })?,
        )
    };
    shift("lshift", |x, n| x << n)?;
    shift("rshift", |x, n| x >> n)?;
    shift("arshift", |x, n| ((x as i32) >> n) as u32)?;
    shift("rol", |x, n| x.rotate_left(n))?;
    shift("ror", |x, n| x.rotate_right(n))?;
    bit.raw_set(
        "tohex",
        lua.create_function(|_, (x, n): (f64, Option<f64>)| {
            let mut digits = n.map_or(8, |n| to_bits(n) as i32);
            let upper = digits < 0;
            digits = digits.unsigned_abs().min(8) as i32;
            let value = u64::from(to_bits(x)) & ((1u64 << (4 * digits)) - 1);
            let width = digits as usize;
            Ok(if upper {
                format!("{value:0width$X}")
            } else {
                format!("{value:0width$x}")
            })
        })?,
    )?;
    Ok(bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_c_percent_14g() {
        for (number, text) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e20, "1e+20"),
            (123456789012345678.0, "1.2345678901235e+17"),
            (-0.0, "-0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (99999999999999.0, "99999999999999"),
            (999999999999999.0, "1e+15"),
            (1.23456, "1.23456"),
        ] {
            assert_eq!(format_general(number, 14), text, "{number}");
        }
        assert_eq!(format_general(1.23456, 3), "1.23");
    }

    #[test]
    fn json_text_is_bounded() {
        let lua = Lua::new();
        let wide: LuaValue = lua
            .load("local t = {} for i = 1, 40 do t = {t, t} end return t")
            .eval()
            .unwrap();
        let mut encoder = Encoder {
            config: Config::default(),
            text: Vec::new(),
            max_text_bytes: 4096,
        };
        let error = encoder.encode(&wide).unwrap_err();
        assert_eq!(
            error,
            "Cannot serialise table: the JSON text passes 4096 bytes; encode smaller parts"
        );
    }

    #[test]
    fn strtod_reads_what_c_reads() {
        assert_eq!(strtod(b"01"), Some((1.0, 2)));
        assert_eq!(strtod(b"+1.5e3x"), Some((1500.0, 6)));
        assert_eq!(strtod(b"-.5"), Some((-0.5, 3)));
        assert_eq!(strtod(b"1e"), Some((1.0, 1)));
        assert_eq!(strtod(b"0x1A"), Some((26.0, 4)));
        assert_eq!(strtod(b"0x1.8p1"), Some((3.0, 7)));
        assert_eq!(strtod(b"0xg"), Some((0.0, 1)));
        assert_eq!(strtod(b"-Infinity"), Some((f64::NEG_INFINITY, 9)));
        assert_eq!(strtod(b"1e400"), Some((f64::INFINITY, 5)));
        assert_eq!(strtod(b"."), None);
        assert_eq!(strtod(b"-"), None);
        assert!(is_invalid_number(b"01") && is_invalid_number(b"+1") && is_invalid_number(b"-0x1"));
        assert!(!is_invalid_number(b"0.5") && !is_invalid_number(b"-1"));
    }

    #[test]
    fn bits_wrap_and_round_as_bitop() {
        assert_eq!(to_bits(1.5), 2);
        assert_eq!(to_bits(2.5), 2);
        assert_eq!(to_bits(-1.0), u32::MAX);
        assert_eq!(to_bits(4294967296.0 + 7.0), 7);
    }
}
