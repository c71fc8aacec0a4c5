//! The Lua 5.1 sandbox behind EVAL and FCALL: one fresh VM per run, Redis' Lua <-> RESP
//! conversions, the `redis` library, and the limits that keep a script from stalling a
//! partition.
//!
//! Every replica runs every script, so a run must depend only on the script, its
//! arguments, the machine's state and the entry: the VM has no `os`, `io`, `loadfile`,
//! `dofile`, `print` or `package`; `math.random` draws from a generator seeded by the
//! entry; globals cannot be created or read when missing (as in Redis 7); and a fresh VM
//! per run means nothing a script leaves behind can reach the next one (so a replica that
//! restored a snapshot runs scripts exactly as one that applied every entry).

use crate::ops::format_double;
use crate::resp::Value;
use crate::types::EntryRng;
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value as LuaValue, VmState,
};
use sha1::{Digest, Sha1};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Most Lua VM instructions one run (a script, a function call or a library load) may
/// execute before it is stopped with [`INSTRUCTION_LIMIT_ERROR`]. Counted, not timed, so
/// every replica stops a runaway script at the same instruction; 20 million is a few
/// hundred milliseconds of Lua, far more than a game rule needs and short enough that the
/// partition keeps answering (Redis' own `lua-time-limit` is 5 s, after which it answers
/// `BUSY` to everyone).
pub const MAX_SCRIPT_INSTRUCTIONS: u64 = 20_000_000;

/// How many instructions run between two counts: the hook's overhead against how far past
/// the limit a script may run (at most this many instructions).
const INSTRUCTION_HOOK_INTERVAL: u32 = 10_000;

/// Most memory one run's Lua VM may allocate; past it allocations fail with Lua's
/// `not enough memory`. Keeps `string.rep('x', 1e10)` from taking the node down.
pub const MAX_SCRIPT_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Deepest table nesting converted to and from replies: a self-referencing table returned
/// by a script would otherwise recurse forever.
const MAX_REPLY_DEPTH: usize = 64;

/// Stack frames searched for the script's own line when reporting an error.
const MAX_STACK_WALK: usize = 64;

/// The error a script gets when it passes [`MAX_SCRIPT_INSTRUCTIONS`]. Writes it made before
/// stay applied (as a Redis script's writes do when it fails), on every replica alike.
pub const INSTRUCTION_LIMIT_ERROR: &str = "BUSY script exceeded the limit of 20000000 Lua instructions and was stopped (writes it made before stay applied); split the work into smaller scripts";

/// Chunk name of EVAL scripts, as Redis 7 names them in errors (`@user_script:1`).
const SCRIPT_SOURCE: &str = "@user_script";
/// Chunk name of function libraries (`@user_function:2`).
const FUNCTION_SOURCE: &str = "@user_function";

/// What to run.
pub(crate) enum Program<'a> {
    /// An EVAL script body; errors name it by its SHA1.
    Script { body: &'a [u8], sha: &'a str },
    /// Function `name` registered by the library whose (shebang-free) code is `code`.
    Function { code: &'a [u8], name: &'a str },
}

/// A function a library registered with `redis.register_function`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegisteredFunction {
    pub(crate) name: String,
    pub(crate) description: Option<Vec<u8>>,
    pub(crate) flags: Vec<String>,
}

/// Flags `redis.register_function` accepts (Redis 7.0's set).
const FUNCTION_FLAGS: &[&str] = &[
    "no-writes",
    "allow-oom",
    "allow-stale",
    "no-cluster",
    "allow-cross-slot-keys",
];

/// Lowercase hex SHA1 of `bytes`: the name EVALSHA and `redis.sha1hex` use.
pub fn sha1_hex(bytes: &[u8]) -> String {
    let digest = Sha1::digest(bytes);
    let mut hex = String::with_capacity(40);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Whether `body` compiles as Lua (SCRIPT LOAD refuses what would not run), or Redis'
/// compile error reply.
pub(crate) fn check_compiles(body: &[u8]) -> Result<(), Value> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default())
        .expect("an empty Lua state can be created");
    compile(&lua, body, SCRIPT_SOURCE).map(|_| ())
}

fn compile(lua: &Lua, body: &[u8], source: &str) -> Result<Function, Value> {
    lua.load(body)
        .set_name(source)
        .into_function()
        .map_err(|error| {
            let message = match error {
                mlua::Error::SyntaxError { message, .. } => message,
                other => other.to_string(),
            };
            Value::error(format!(
                "ERR Error compiling script (new function): {message}"
            ))
        })
}

/// Runs `program` with `keys` and `args`; each `redis.call` goes to `execute`, which answers
/// as the machine would (policy such as refusing writes in read-only scripts is its job).
/// `seed` seeds `math.random`.
pub(crate) fn run(
    program: Program<'_>,
    keys: &[Vec<u8>],
    args: &[Vec<u8>],
    seed: u64,
    execute: &mut dyn FnMut(Vec<Vec<u8>>) -> Value,
) -> Value {
    let sandbox = match Sandbox::new(seed) {
        Ok(sandbox) => sandbox,
        Err(error) => return Value::error(format!("ERR could not start Lua: {error}")),
    };
    sandbox.run(program, keys, args, execute)
}

/// Runs library `code` (shebang removed) in a VM where only `redis.register_function` and
/// the pure helpers work, and returns the functions it registered, or the error reply.
pub(crate) fn load_library(code: &[u8]) -> Result<Vec<RegisteredFunction>, Value> {
    let sandbox = Sandbox::new(0)
        .map_err(|error| Value::error(format!("ERR could not start Lua: {error}")))?;
    let (functions, _) = sandbox.load_library(code)?;
    if functions.is_empty() {
        return Err(Value::error("ERR No functions registered"));
    }
    Ok(functions)
}

/// One VM with the sandbox set up, and whether it passed the instruction limit.
struct Sandbox {
    lua: Lua,
    limit_hit: Rc<Cell<bool>>,
    /// `(raw_call_slot, run)` from the prelude: where `redis.call` finds the machine, and
    /// the helper that runs a function under `xpcall` with the error handler.
    run_protected: Function,
    set_raw_call: Function,
    seal_globals: Function,
    /// `error_handler(source, name)`: the `xpcall` handler for one run.
    error_handler: Function,
}

/// Sets up `redis`, the protected `pcall`, and the helpers the Rust side drives. Runs
/// before any user code, with globals still writable.
const PRELUDE: &str = r#"
local limit_hit, limit_message, MAX_STACK_WALK, call_error_text, rust_error_text = ...
-- Only the handler below keeps the debug library; scripts never see it.
local getinfo = debug.getinfo
debug = nil
local error, type, select, setmetatable, tostring = error, type, select, setmetatable, tostring
local raw_pcall, raw_xpcall = pcall, xpcall

-- A script must not catch the instruction limit and keep running; and an error table
-- (a failed `redis.call`, or `error({err=...})`) caught by pcall reads as its message
-- string, as Redis 7.0's pcall gives it.
local function checked(ok, ...)
  if limit_hit() then error(limit_message, 0) end
  if not ok then
    local caught = ...
    local text = call_error_text(caught)
    if text then return false, text end
    if type(caught) == 'table' and type(caught.err) == 'string' then return false, caught.err end
  end
  return ok, ...
end
pcall = function(...) return checked(raw_pcall(...)) end
xpcall = function(...) return checked(raw_xpcall(...)) end

-- `redis.call` and `redis.pcall` are Rust functions, set per run: being C functions they
-- stay on the stack even when tail-called, so errors can name the script's line.
local function set_raw_call(call, protected_call)
  redis.call = call
  redis.pcall = protected_call
end

local function run_protected(f, handler, a, b)
  return raw_xpcall(function() return f(a, b) end, handler)
end

-- The xpcall handler: Redis 7's message (`<error> script: <name>, on @user_script:<line>.`),
-- built where the error was raised, while the stack still shows the script's line.
local function error_handler(source, name)
  return function(err)
    if limit_hit() then return {stator_reply = limit_message} end
    local message
    local call_error = call_error_text(err)
    if call_error then
      message = call_error
    elseif type(err) == 'userdata' then
      message = 'ERR ' .. rust_error_text(err)
    elseif type(err) == 'table' then
      message = err.err
      if type(message) ~= 'string' then
        message = "ERR script raised a table without an 'err' field"
      end
    else
      message = 'ERR ' .. tostring(err)
    end
    for level = 2, MAX_STACK_WALK do
      local info = getinfo(level, 'Sl')
      if not info then break end
      if info.source == source then
        return {stator_reply = message .. ' script: ' .. name .. ', on ' .. source .. ':' .. info.currentline .. '.'}
      end
    end
    return {stator_reply = message .. ' script: ' .. name}
  end
end

local function seal_globals()
  setmetatable(_G, {
    __index = function(_, name)
      error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", 2)
    end,
    __newindex = function() error('Attempt to modify a readonly table', 2) end,
    __metatable = false,
  })
end

return run_protected, set_raw_call, seal_globals, error_handler
"#;

impl Sandbox {
    fn new(seed: u64) -> mlua::Result<Sandbox> {
        // SAFETY: `debug` is the only unsafe library loaded. The prelude keeps
        // `debug.getinfo` for its error handler (Redis' own handler uses it too) and removes
        // the `debug` global before any user code runs, so scripts cannot reach it.
        let lua = unsafe {
            Lua::unsafe_new_with(
                StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::DEBUG,
                LuaOptions::default(),
            )
        };
        lua.set_memory_limit(MAX_SCRIPT_MEMORY_BYTES)?;
        let limit_hit = Rc::new(Cell::new(false));
        let instructions = Cell::new(0u64);
        let hit = Rc::clone(&limit_hit);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(INSTRUCTION_HOOK_INTERVAL),
            move |_, _| {
                let counted = instructions.get() + u64::from(INSTRUCTION_HOOK_INTERVAL);
                instructions.set(counted);
                if counted > MAX_SCRIPT_INSTRUCTIONS {
                    hit.set(true);
                    return Err(mlua::Error::runtime(INSTRUCTION_LIMIT_ERROR));
                }
                Ok(VmState::Continue)
            },
        );
        let globals = lua.globals();
        // `coroutine` goes too: mlua's instruction hook does not follow a script into a
        // coroutine, so a loop there could not be stopped.
        for name in ["loadfile", "dofile", "print", "coroutine"] {
            globals.raw_set(name, LuaValue::Nil)?;
        }
        install_random(&lua, seed)?;
        crate::cjson::install(&lua)?;
        crate::binlibs::install(&lua)?;
        globals.raw_set("redis", redis_library(&lua)?)?;
        let hit = Rc::clone(&limit_hit);
        let limit_probe = lua.create_function(move |_, ()| Ok(hit.get()))?;
        let call_error_text = lua.create_function(|_, error: LuaValue| {
            Ok(match error {
                LuaValue::Error(error) => call_error_message(&error),
                _ => None,
            })
        })?;
        let rust_error_text = lua.create_function(|_, error: LuaValue| {
            Ok(match error {
                LuaValue::Error(error) => root_message(&error),
                other => format!("{other:?}"),
            })
        })?;
        let (run_protected, set_raw_call, seal_globals, error_handler) =
            lua.load(PRELUDE).set_name("=stator").call((
                limit_probe,
                INSTRUCTION_LIMIT_ERROR,
                MAX_STACK_WALK,
                call_error_text,
                rust_error_text,
            ))?;
        Ok(Sandbox {
            lua,
            limit_hit,
            run_protected,
            set_raw_call,
            seal_globals,
            error_handler,
        })
    }

    fn run(
        &self,
        program: Program<'_>,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
        execute: &mut dyn FnMut(Vec<Vec<u8>>) -> Value,
    ) -> Value {
        let lua = &self.lua;
        let execute = RefCell::new(execute);
        let call_machine = |arguments: MultiValue| match command_arguments(arguments) {
            Ok(argv) => (execute.borrow_mut())(argv),
            Err(message) => Value::error(message),
        };
        let outcome = lua.scope(|scope| {
            let call = scope.create_function(|lua, arguments: MultiValue| {
                match call_machine(arguments) {
                    Value::Error(message) => Err(mlua::Error::external(CallError(message))),
                    reply => reply_to_lua(lua, &reply, 0),
                }
            })?;
            let protected_call = scope.create_function(|lua, arguments: MultiValue| {
                reply_to_lua(lua, &call_machine(arguments), 0)
            })?;
            self.set_raw_call.call::<()>((call, protected_call))?;
            let keys_table = lua.create_sequence_from(
                keys.iter()
                    .map(|k| lua.create_string(k))
                    .collect::<mlua::Result<Vec<_>>>()?,
            )?;
            let args_table = lua.create_sequence_from(
                args.iter()
                    .map(|a| lua.create_string(a))
                    .collect::<mlua::Result<Vec<_>>>()?,
            )?;
            let (function, source, name, call_args) = match program {
                Program::Script { body, sha } => {
                    let globals = lua.globals();
                    globals.raw_set("KEYS", keys_table)?;
                    globals.raw_set("ARGV", args_table)?;
                    let function = match compile(lua, body, SCRIPT_SOURCE) {
                        Ok(function) => function,
                        Err(reply) => return Ok(Err(reply)),
                    };
                    (function, SCRIPT_SOURCE, sha.to_owned(), None)
                }
                Program::Function { code, name } => {
                    let (_, callbacks) = match self.load_library(code) {
                        Ok(loaded) => loaded,
                        Err(reply) => return Ok(Err(reply)),
                    };
                    let function: Option<Function> = callbacks.raw_get(name)?;
                    let Some(function) = function else {
                        return Ok(Err(Value::error("ERR Function not found")));
                    };
                    (
                        function,
                        FUNCTION_SOURCE,
                        name.to_owned(),
                        Some((keys_table, args_table)),
                    )
                }
            };
            (self.seal_globals).call::<()>(())?;
            let handler: Function = self.error_handler.call((source, name))?;
            let (a, b) = match call_args {
                Some((keys, args)) => (LuaValue::Table(keys), LuaValue::Table(args)),
                None => (LuaValue::Nil, LuaValue::Nil),
            };
            let results: MultiValue = self.run_protected.call((function, handler, a, b))?;
            let mut results = results.into_iter();
            let succeeded = matches!(results.next(), Some(LuaValue::Boolean(true)));
            let value = results.next().unwrap_or(LuaValue::Nil);
            if succeeded {
                return Ok(Ok(lua_to_reply(&value, 0)));
            }
            Ok(Err(self.failure_reply(value)))
        });
        match outcome {
            Ok(Ok(reply)) | Ok(Err(reply)) => reply,
            Err(error) => Value::error(self.internal_error_message(&error)),
        }
    }

    /// The reply for a failed run: what the error handler built, or (when Lua skipped the
    /// handler, as it does for out-of-memory) the bare error.
    fn failure_reply(&self, value: LuaValue) -> Value {
        if self.limit_hit.get() {
            return Value::error(INSTRUCTION_LIMIT_ERROR);
        }
        match value {
            LuaValue::Table(table) => match table.raw_get::<Option<mlua::String>>("stator_reply") {
                Ok(Some(message)) => {
                    Value::error(String::from_utf8_lossy(&message.as_bytes()).into_owned())
                }
                _ => Value::error("ERR script failed"),
            },
            LuaValue::String(text) => {
                Value::error(format!("ERR {}", String::from_utf8_lossy(&text.as_bytes())))
            }
            LuaValue::Error(error) => Value::error(self.internal_error_message(&error)),
            other => Value::error(format!("ERR {other:?}")),
        }
    }

    fn internal_error_message(&self, error: &mlua::Error) -> String {
        if self.limit_hit.get() {
            return INSTRUCTION_LIMIT_ERROR.to_owned();
        }
        match error {
            mlua::Error::MemoryError(_) => format!(
                "ERR script used more than {MAX_SCRIPT_MEMORY_BYTES} bytes of Lua memory and was stopped"
            ),
            other => format!("ERR {other}"),
        }
    }

    /// Runs library `code` with `redis.register_function` (and no `redis.call`), returning
    /// what it registered and a table of the callbacks by name.
    fn load_library(&self, code: &[u8]) -> Result<(Vec<RegisteredFunction>, Table), Value> {
        let lua = &self.lua;
        let internal = |error: mlua::Error| Value::error(self.internal_error_message(&error));
        let registered: Rc<RefCell<Vec<RegisteredFunction>>> = Rc::default();
        let callbacks = lua.create_table().map_err(internal)?;
        let redis: Table = lua.globals().raw_get("redis").map_err(internal)?;
        let sink = Rc::clone(&registered);
        let callbacks_sink = callbacks.clone();
        let register = lua
            .create_function(move |_, arguments: MultiValue| {
                let (function, callback) = match parse_registration(arguments) {
                    Ok(parsed) => parsed,
                    Err(message) => return Err(mlua::Error::runtime(message)),
                };
                if sink.borrow().iter().any(|f| f.name == function.name) {
                    return Err(mlua::Error::runtime(format!(
                        "Function {} already exists",
                        function.name
                    )));
                }
                callbacks_sink.raw_set(function.name.as_str(), callback)?;
                sink.borrow_mut().push(function);
                Ok(())
            })
            .map_err(internal)?;
        redis
            .raw_set("register_function", register)
            .map_err(internal)?;
        let function = compile(lua, code, FUNCTION_SOURCE)?;
        let loaded: mlua::Result<()> = function.call(());
        redis
            .raw_set("register_function", LuaValue::Nil)
            .map_err(internal)?;
        if let Err(error) = loaded {
            if self.limit_hit.get() {
                return Err(Value::error(INSTRUCTION_LIMIT_ERROR));
            }
            let message = match error {
                mlua::Error::CallbackError { cause, .. } => match cause.as_ref() {
                    mlua::Error::RuntimeError(text) => text.clone(),
                    other => other.to_string(),
                },
                mlua::Error::RuntimeError(text) => text,
                other => other.to_string(),
            };
            return Err(Value::error(format!(
                "ERR Error registering functions: {message}"
            )));
        }
        let functions = registered.borrow().clone();
        Ok((functions, callbacks))
    }
}

/// The error reply a `redis.call` raised, carried through Lua as an mlua error.
#[derive(Debug)]
struct CallError(String);

impl std::fmt::Display for CallError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

/// The reply text of a [`CallError`] inside `error`, if that is what it is.
fn call_error_message(error: &mlua::Error) -> Option<String> {
    match error {
        mlua::Error::CallbackError { cause, .. } => call_error_message(cause),
        mlua::Error::ExternalError(inner) => inner
            .downcast_ref::<CallError>()
            .map(|call_error| call_error.0.clone()),
        _ => None,
    }
}

/// The innermost message of an mlua error, without the traceback mlua adds to callback
/// errors (`bad argument #1 to 'sha1hex' ...`).
fn root_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { cause, .. } => root_message(cause),
        mlua::Error::RuntimeError(text) => text.clone(),
        mlua::Error::BadArgument { cause, .. } => root_message(cause),
        other => other.to_string(),
    }
}

/// `redis.register_function('name', f)` or `redis.register_function{function_name=...,
/// callback=..., flags={...}, description=...}`.
fn parse_registration(arguments: MultiValue) -> Result<(RegisteredFunction, Function), String> {
    let arguments: Vec<LuaValue> = arguments.into_iter().collect();
    let (name, callback, flags, description) = match arguments.as_slice() {
        [LuaValue::String(name), LuaValue::Function(callback)] => (
            name.to_str()
                .map_err(|_| "function name must be text")?
                .to_string(),
            callback.clone(),
            Vec::new(),
            None,
        ),
        [LuaValue::Table(table)] => {
            let name: Option<mlua::String> = table.raw_get("function_name").map_err(|_| {
                "function_name argument given to redis.register_function must be a string"
            })?;
            let Some(name) = name else {
                return Err("redis.register_function must get a function name argument".to_owned());
            };
            let callback: Option<Function> = table.raw_get("callback").map_err(|_| {
                "callback argument given to redis.register_function must be a function"
            })?;
            let Some(callback) = callback else {
                return Err("redis.register_function must get a callback argument".to_owned());
            };
            let flags_table: Option<Table> = table
                .raw_get("flags")
                .map_err(|_| "flags argument to redis.register_function must be a table representing function flags")?;
            let mut flags = Vec::new();
            if let Some(flags_table) = flags_table {
                for flag in flags_table.sequence_values::<mlua::String>() {
                    let flag = flag.map_err(|_| "unknown flag given")?;
                    let flag = flag.to_str().map_err(|_| "unknown flag given")?.to_string();
                    if !FUNCTION_FLAGS.contains(&flag.as_str()) {
                        return Err("unknown flag given".to_owned());
                    }
                    flags.push(flag);
                }
            }
            let description: Option<mlua::String> = table.raw_get("description").map_err(|_| {
                "description argument given to redis.register_function must be a string"
            })?;
            (
                name.to_str()
                    .map_err(|_| "function name must be text")?
                    .to_string(),
                callback,
                flags,
                description.map(|d| d.as_bytes().to_vec()),
            )
        }
        _ => return Err("wrong number of arguments to redis.register_function".to_owned()),
    };
    if !valid_name(&name) {
        return Err(
            "Function names can only contain letters, numbers, or underscores(_) and must be at least one character long"
                .to_owned(),
        );
    }
    Ok((
        RegisteredFunction {
            name,
            description,
            flags,
        },
        callback,
    ))
}

/// Library and function names: letters, digits and `_`, at least one.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `redis` table: everything but `call`/`pcall` (set per run by the prelude).
fn redis_library(lua: &Lua) -> mlua::Result<Table> {
    let redis = lua.create_table()?;
    redis.raw_set(
        "error_reply",
        lua.create_function(|lua, message: LuaValue| {
            let LuaValue::String(message) = message else {
                return Err(mlua::Error::runtime("wrong number or type of arguments"));
            };
            let bytes = message.as_bytes();
            let trimmed = bytes.strip_prefix(b"-").unwrap_or(&bytes);
            let table = lua.create_table()?;
            table.raw_set("err", lua.create_string(trimmed)?)?;
            Ok(table)
        })?,
    )?;
    redis.raw_set(
        "status_reply",
        lua.create_function(|lua, message: LuaValue| {
            let LuaValue::String(message) = message else {
                return Err(mlua::Error::runtime("wrong number or type of arguments"));
            };
            let table = lua.create_table()?;
            table.raw_set("ok", message)?;
            Ok(table)
        })?,
    )?;
    redis.raw_set(
        "sha1hex",
        // Lua's `tostring` rules: strings and numbers hash as text, anything else as "".
        lua.create_function(|lua, value: LuaValue| {
            let text = lua.coerce_string(value)?;
            Ok(sha1_hex(
                &text.map(|t| t.as_bytes().to_vec()).unwrap_or_default(),
            ))
        })?,
    )?;
    // Logging is a no-op: replicas would log every line once each, and a game's script
    // has nowhere useful to write from inside the state machine.
    redis.raw_set("log", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    for (name, level) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
    ] {
        redis.raw_set(name, level)?;
    }
    for (name, flag) in [
        ("REPL_NONE", 0),
        ("REPL_AOF", 1),
        ("REPL_SLAVE", 2),
        ("REPL_REPLICA", 2),
        ("REPL_ALL", 3),
    ] {
        redis.raw_set(name, flag)?;
    }
    // Scripts are replicated as their log entry; the replication knobs change nothing.
    redis.raw_set("set_repl", lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    redis.raw_set(
        "replicate_commands",
        lua.create_function(|_, _: MultiValue| Ok(true))?,
    )?;
    redis.raw_set(
        "setresp",
        lua.create_function(|_, version: i64| match version {
            2 | 3 => Ok(()),
            _ => Err(mlua::Error::runtime("RESP version must be 2 or 3.")),
        })?,
    )?;
    Ok(redis)
}

/// `math.random` and `math.randomseed` over the entry-seeded generator (Lua 5.1's
/// contract: no argument gives [0, 1), `m` gives [1, m], `m, n` gives [m, n]).
fn install_random(lua: &Lua, seed: u64) -> mlua::Result<()> {
    let generator = Rc::new(RefCell::new(EntryRng::new(seed)));
    let math: Table = lua.globals().raw_get("math")?;
    let draw = Rc::clone(&generator);
    math.raw_set(
        "random",
        lua.create_function(move |_, bounds: MultiValue| {
            let unit = (draw.borrow_mut().next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let bounds: Vec<LuaValue> = bounds.into_iter().collect();
            let number = |value: &LuaValue| match value {
                LuaValue::Number(n) => Ok(n.floor()),
                LuaValue::Integer(n) => Ok(*n as f64),
                _ => Err(mlua::Error::runtime(
                    "bad argument to 'random' (number expected)",
                )),
            };
            let (low, high) = match bounds.as_slice() {
                [] => return Ok(unit),
                [high] => (1.0, number(high)?),
                [low, high] => (number(low)?, number(high)?),
                _ => return Err(mlua::Error::runtime("wrong number of arguments")),
            };
            if low > high {
                return Err(mlua::Error::runtime(
                    "bad argument to 'random' (interval is empty)",
                ));
            }
            Ok((unit * (high - low + 1.0)).floor() + low)
        })?,
    )?;
    math.raw_set(
        "randomseed",
        lua.create_function(move |_, seed: f64| {
            *generator.borrow_mut() = EntryRng::new(seed.to_bits());
            Ok(())
        })?,
    )?;
    Ok(())
}

/// The arguments of `redis.call`: strings, and numbers in `%.17g` form, as Redis takes them.
fn command_arguments(arguments: MultiValue) -> Result<Vec<Vec<u8>>, &'static str> {
    if arguments.is_empty() {
        return Err("ERR Please specify at least one argument for this redis lib call");
    }
    arguments
        .into_iter()
        .map(|argument| match argument {
            LuaValue::String(text) => Ok(text.as_bytes().to_vec()),
            LuaValue::Number(number) => Ok(format_double(number)),
            LuaValue::Integer(number) => Ok(number.to_string().into_bytes()),
            _ => Err("ERR Lua redis lib command arguments must be strings or integers"),
        })
        .collect()
}

/// A reply as Redis hands it to Lua: integers as numbers, bulk strings as strings, nil
/// bulk and nil array as `false`, arrays as tables, status as `{ok=...}`, errors as
/// `{err=...}`.
fn reply_to_lua(lua: &Lua, reply: &Value, depth: usize) -> mlua::Result<LuaValue> {
    if depth > MAX_REPLY_DEPTH {
        return Err(mlua::Error::runtime("reached lua stack limit"));
    }
    Ok(match reply {
        Value::Integer(number) => LuaValue::Number(*number as f64),
        Value::Bulk(Some(bytes)) => LuaValue::String(lua.create_string(bytes)?),
        Value::Bulk(None) | Value::Array(None) => LuaValue::Boolean(false),
        Value::Array(Some(items)) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (index, item) in items.iter().enumerate() {
                table.raw_set(index + 1, reply_to_lua(lua, item, depth + 1)?)?;
            }
            LuaValue::Table(table)
        }
        Value::Simple(status) => {
            let table = lua.create_table()?;
            table.raw_set("ok", status.as_str())?;
            LuaValue::Table(table)
        }
        Value::Error(message) => {
            let table = lua.create_table()?;
            table.raw_set("err", message.as_str())?;
            LuaValue::Table(table)
        }
    })
}

/// A script's return value as Redis replies it: numbers truncate to integers, strings are
/// bulk, `true` is 1, `false` and `nil` the nil bulk, a table with a string `err` or `ok`
/// field an error or status, any other table an array up to its first nil.
fn lua_to_reply(value: &LuaValue, depth: usize) -> Value {
    match value {
        LuaValue::Nil => Value::null(),
        LuaValue::Boolean(true) => Value::Integer(1),
        LuaValue::Boolean(false) => Value::null(),
        LuaValue::Integer(number) => Value::Integer(*number),
        LuaValue::Number(number) => Value::Integer(truncate_number(*number)),
        LuaValue::String(text) => Value::bulk(text.as_bytes().to_vec()),
        LuaValue::Table(table) => {
            if let Ok(Some(err)) = table.raw_get::<Option<mlua::String>>("err") {
                return Value::error(String::from_utf8_lossy(&err.as_bytes()).into_owned());
            }
            if let Ok(Some(ok)) = table.raw_get::<Option<mlua::String>>("ok") {
                return Value::Simple(String::from_utf8_lossy(&ok.as_bytes()).into_owned());
            }
            if depth >= MAX_REPLY_DEPTH {
                return Value::error("ERR reached lua stack limit");
            }
            let mut items = Vec::new();
            for index in 1.. {
                match table.raw_get::<LuaValue>(index) {
                    Ok(LuaValue::Nil) | Err(_) => break,
                    Ok(item) => items.push(lua_to_reply(&item, depth + 1)),
                }
            }
            Value::Array(Some(items))
        }
        _ => Value::null(),
    }
}

/// C's `(long long)` cast as Redis' x86-64 build does it: toward zero, and the minimum
/// integer for NaN and anything out of range.
fn truncate_number(number: f64) -> i64 {
    if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&number) {
        number.trunc() as i64
    } else {
        i64::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(body: &str, keys: &[&str], args: &[&str]) -> Value {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let sha = sha1_hex(body.as_bytes());
        run(
            Program::Script {
                body: body.as_bytes(),
                sha: &sha,
            },
            &keys,
            &args,
            7,
            &mut |argv| Value::bulk(argv.concat()),
        )
    }

    #[test]
    fn conversions_follow_redis() {
        assert_eq!(eval("return 3.99", &[], &[]), Value::Integer(3));
        assert_eq!(eval("return -3.99", &[], &[]), Value::Integer(-3));
        assert_eq!(eval("return 0/0", &[], &[]), Value::Integer(i64::MIN));
        assert_eq!(eval("return nil", &[], &[]), Value::null());
        assert_eq!(eval("return false", &[], &[]), Value::null());
        assert_eq!(eval("return true", &[], &[]), Value::Integer(1));
        assert_eq!(
            eval("return {1, 'a', nil, 4}", &[], &[]),
            Value::Array(Some(vec![Value::Integer(1), Value::bulk("a")]))
        );
        assert_eq!(
            eval("return {ok='FINE'}", &[], &[]),
            Value::Simple("FINE".into())
        );
        assert_eq!(eval("return {err='X y'}", &[], &[]), Value::error("X y"));
        assert_eq!(
            eval("return redis.error_reply('-ERR x')", &[], &[]),
            Value::error("ERR x")
        );
        assert_eq!(
            eval("return {KEYS[1], ARGV[2]}", &["k"], &["a", "b"]),
            Value::Array(Some(vec![Value::bulk("k"), Value::bulk("b")]))
        );
        assert_eq!(
            eval("return redis.call('SET', 'k', 1.5, 3)", &[], &[]),
            Value::bulk("SETk1.53")
        );
        assert_eq!(
            eval("local t = {} t[1] = t return t", &[], &[]),
            eval("local t = {} t[1] = t return t", &[], &[]),
        );
    }

    #[test]
    fn errors_name_the_script_and_line() {
        let body = "local x = 1\nerror('boom')";
        let sha = sha1_hex(body.as_bytes());
        assert_eq!(
            eval(body, &[], &[]),
            Value::error(format!(
                "ERR user_script:2: boom script: {sha}, on @user_script:2."
            ))
        );
        assert_eq!(
            eval("return nope", &[], &[]),
            Value::error(format!(
                "ERR user_script:1: Script attempted to access nonexistent global variable 'nope' script: {}, on @user_script:1.",
                sha1_hex(b"return nope")
            ))
        );
        let reply = eval("retur", &[], &[]);
        assert_eq!(
            reply,
            Value::error(
                "ERR Error compiling script (new function): user_script:1: '=' expected near '<eof>'"
            )
        );
    }

    #[test]
    fn sandbox_has_no_io_and_deterministic_random() {
        for global in [
            "os",
            "io",
            "loadfile",
            "dofile",
            "print",
            "require",
            "coroutine",
        ] {
            let reply = eval(&format!("return type({global})"), &[], &[]);
            assert!(reply.is_error(), "{global}: {reply:?}");
        }
        let first = eval("return {math.random(1000), math.random(1000)}", &[], &[]);
        assert_eq!(
            first,
            eval("return {math.random(1000), math.random(1000)}", &[], &[])
        );
    }

    #[test]
    fn runaway_scripts_are_stopped_even_when_they_catch_errors() {
        for body in [
            "while true do end",
            "while true do pcall(function() while true do end end) end",
        ] {
            assert_eq!(
                eval(body, &[], &[]),
                Value::error(INSTRUCTION_LIMIT_ERROR),
                "{body}"
            );
        }
        let reply = eval("return string.rep('x', 1024 * 1024 * 1024)", &[], &[]);
        assert!(reply.is_error(), "{reply:?}");
    }

    /// Texts and errors as Redis 7.0's lua-cjson gives them (checked against redis-server).
    #[test]
    fn cjson_encodes_and_decodes_as_redis() {
        let text = |body: &str| match eval(body, &[], &[]) {
            Value::Bulk(Some(bytes)) => String::from_utf8(bytes).unwrap(),
            Value::Error(message) => message,
            other => format!("{other:?}"),
        };
        assert_eq!(
            text("return cjson.encode({1,2,'a/b',{x=1.5}, 0.1, 1e20, 123456789012345678, {}})"),
            r#"[1,2,"a\/b",{"x":1.5},0.1,1e+20,1.2345678901235e+17,{}]"#
        );
        assert_eq!(text("return cjson.encode({[1]=1,[3]=3})"), "[1,null,3]");
        assert_eq!(
            eval(
                "return cjson.encode(string.char(1,127,200,34,92,10))",
                &[],
                &[]
            ),
            Value::bulk(b"\"\\u0001\\u007f\xc8\\\"\\\\\\n\"".to_vec())
        );
        assert_eq!(
            text("return cjson.encode({a=cjson.null, [1.5]=2})"),
            r#"{"a":null,"1.5":2}"#
        );
        let sha = |body: &str| sha1_hex(body.as_bytes());
        let body = "return cjson.encode({[1]=1,[30]=3})";
        assert_eq!(
            text(body),
            format!("ERR user_script:1: Cannot serialise table: excessively sparse array script: {}, on @user_script:1.", sha(body))
        );
        let body = "return cjson.encode(0/0)";
        assert!(text(body).starts_with(
            "ERR user_script:1: Cannot serialise number: must not be NaN or Inf script:"
        ));
        let body = "return cjson.encode(function() end)";
        assert!(text(body).starts_with(
            "ERR user_script:1: Cannot serialise function: type not supported script:"
        ));
        let body = "return cjson.encode({[true]=1})";
        assert!(text(body).starts_with("ERR user_script:1: Cannot serialise boolean: table key must be a number or string script:"));
        assert_eq!(
            eval(
                r#"local t=cjson.decode('[1,2,null,{"a":[true,false]},"\\u00e9x"]'); return {type(t[3]), t[4].a[1] and 1 or 0, t[5], #t, tostring(t[3]==cjson.null)}"#,
                &[],
                &[]
            ),
            Value::Array(Some(vec![
                Value::bulk("userdata"),
                Value::Integer(1),
                Value::bulk("éx"),
                Value::Integer(5),
                Value::bulk("true"),
            ]))
        );
        for (json, error) in [
            ("[1,", "Expected value but found T_END at character 4"),
            (
                r#"{"a" 1}"#,
                "Expected colon but found T_NUMBER at character 6",
            ),
            ("  ", "Expected value but found T_END at character 3"),
            (
                "[1] x",
                "Expected the end but found invalid token at character 5",
            ),
            (
                r#""\q""#,
                "Expected value but found invalid escape code at character 2",
            ),
        ] {
            let reply = run(
                Program::Script {
                    body: b"return cjson.decode(ARGV[1])",
                    sha: "s",
                },
                &[],
                &[json.as_bytes().to_vec()],
                7,
                &mut |_| Value::null(),
            );
            assert_eq!(
                reply,
                Value::error(format!(
                    "ERR user_script:1: {error} script: s, on @user_script:1."
                )),
                "{json}"
            );
        }
        assert_eq!(
            eval("return cjson.decode('1.5') * 2", &[], &[]),
            Value::Integer(3)
        );
        assert_eq!(
            eval(
                "return {cjson.encode_keep_buffer(), cjson.encode_number_precision(), cjson.encode_max_depth(), cjson.decode_max_depth(), cjson.encode_invalid_numbers(), cjson.decode_invalid_numbers()}",
                &[],
                &[]
            ),
            Value::Array(Some(vec![
                Value::Integer(1),
                Value::Integer(14),
                Value::Integer(1000),
                Value::Integer(1000),
                Value::null(),
                Value::Integer(1),
            ]))
        );
        assert_eq!(
            text("cjson.encode_number_precision(3); return cjson.encode(3.14159)"),
            "3.14"
        );
        assert_eq!(text("return cjson._NAME .. cjson._VERSION"), "cjson2.1.0");
        let deep = "local t = {} local c = t for i = 1, 1100 do c[1] = {} c = c[1] end return cjson.encode(t)";
        assert!(text(deep).contains("Cannot serialise, excessive nesting (1001)"));
        assert!(text("return cjson.decode(string.rep('[', 1001))")
            .contains("Found too many nested data structures (1001) at character 1001"));
        assert_eq!(
            text(r#"return cjson.encode(cjson.decode('{"a":[1,{"b":null}],"c":"\\u00e9"}'))"#),
            r#"{"a":[1,{"b":null}],"c":"é"}"#
        );
    }

    #[test]
    fn bit_answers_as_lua_bitop() {
        assert_eq!(
            eval(
                "return {bit.band(7, 5), bit.tohex(-1), bit.tohex(255, -4), bit.bxor(1, 3, 7), bit.lshift(1, 35), bit.arshift(-256, 4), bit.rshift(-1, 28), bit.tobit(2^32 + 2.5), bit.bnot(0), bit.rol(1, 33), bit.bswap(1)}",
                &[],
                &[]
            ),
            Value::Array(Some(vec![
                Value::Integer(5),
                Value::bulk("ffffffff"),
                Value::bulk("00FF"),
                Value::Integer(5),
                Value::Integer(8),
                Value::Integer(-16),
                Value::Integer(15),
                Value::Integer(2),
                Value::Integer(-1),
                Value::Integer(2),
                Value::Integer(16777216),
            ]))
        );
    }
}
