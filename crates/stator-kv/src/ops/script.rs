//! Scripting commands: EVAL, EVALSHA (and their `_RO` forms), SCRIPT, FUNCTION, FCALL and
//! FCALL_RO, over the script cache and function libraries the machine keeps (and snapshots).

use crate::command::{lookup, Command, CommandKind, CommandSpec};
use crate::machine::{attempt, KvMachine, NOT_AN_INTEGER, SYNTAX_ERROR};
use crate::ops::glob_match;
use crate::resp::{parse_i64_strict, Value};
use crate::script_acl::{AclKeysLayout, CommandRights, SCRIPT_COMMAND_DENIED, SCRIPT_KEY_DENIED};
use crate::scripting::{self, sha1_hex, valid_name, Program, RegisteredFunction};
use crate::types::EntryRng;
use stator_api::slot::key_slot;
use std::collections::BTreeMap;

/// Most scripts the cache holds. Past it EVAL still runs new scripts but does not cache
/// them, and SCRIPT LOAD is refused, so a client generating scripts cannot grow a
/// partition's state (and its snapshots) without bound.
pub const MAX_CACHED_SCRIPTS: usize = 10_000;

/// Most function libraries a partition holds, for the same reason.
pub const MAX_FUNCTION_LIBRARIES: usize = 1_000;

/// What Redis answers EVALSHA for a script this partition has not seen.
const NO_SCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";
/// What `*_RO` answers for a script that may write.
const WRITE_FLAG_IN_READ_ONLY: &str =
    "ERR Can not execute a script with write flag using *_ro command.";

/// Scripts and functions: part of the machine's state, in snapshots.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Scripts {
    /// EVAL script bodies by lowercase SHA1 hex.
    pub(crate) bodies: BTreeMap<String, Vec<u8>>,
    /// Function libraries by name.
    pub(crate) libraries: BTreeMap<String, Library>,
}

/// A library loaded with FUNCTION LOAD.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Library {
    /// The code as loaded, shebang line included (what WITHCODE and snapshots return).
    pub(crate) code: Vec<u8>,
    pub(crate) functions: Vec<RegisteredFunction>,
}

impl Scripts {
    /// Adds the body of a script that compiled (no-op past [`MAX_CACHED_SCRIPTS`]).
    pub(crate) fn cache(&mut self, sha: String, body: Vec<u8>) -> bool {
        if self.bodies.contains_key(&sha) {
            return true;
        }
        if self.bodies.len() >= MAX_CACHED_SCRIPTS {
            return false;
        }
        self.bodies.insert(sha, body);
        true
    }

    fn function(&self, name: &str) -> Option<(&Library, &RegisteredFunction)> {
        self.libraries.values().find_map(|library| {
            library
                .functions
                .iter()
                .find(|function| function.name == name)
                .map(|function| (library, function))
        })
    }

    /// Loads library `code` (with its `#!lua name=...` line), as FUNCTION LOAD does.
    pub(crate) fn load_library(&mut self, code: Vec<u8>, replace: bool) -> Result<String, Value> {
        let (name, lua_code) = parse_library_header(&code)?;
        if self.libraries.contains_key(&name) && !replace {
            return Err(Value::error(format!("ERR Library '{name}' already exists")));
        }
        if !self.libraries.contains_key(&name) && self.libraries.len() >= MAX_FUNCTION_LIBRARIES {
            return Err(Value::error(format!(
                "ERR this partition already holds {MAX_FUNCTION_LIBRARIES} function libraries; FUNCTION DELETE one first"
            )));
        }
        let functions = scripting::load_library(lua_code)?;
        for function in &functions {
            let taken = self.libraries.iter().any(|(other, library)| {
                *other != name && library.functions.iter().any(|f| f.name == function.name)
            });
            if taken {
                return Err(Value::error(format!(
                    "ERR Function {} already exists",
                    function.name
                )));
            }
        }
        self.libraries
            .insert(name.clone(), Library { code, functions });
        Ok(name)
    }
}

/// The library name and the Lua code of FUNCTION LOAD's argument. The shebang line is
/// blanked, not removed, so error lines count from the top of what the user sent.
fn parse_library_header(code: &[u8]) -> Result<(String, &[u8]), Value> {
    if !code.starts_with(b"#!") {
        return Err(Value::error("ERR Missing library metadata"));
    }
    let line_end = code.iter().position(|&b| b == b'\n').unwrap_or(code.len());
    let header = String::from_utf8_lossy(&code[2..line_end]).into_owned();
    let mut parts = header.split(' ').filter(|part| !part.is_empty());
    let engine = parts.next().unwrap_or("");
    let mut name = None;
    for part in parts {
        match part.strip_prefix("name=") {
            Some(value) => name = Some(value.to_owned()),
            None => {
                return Err(Value::error(format!(
                    "ERR Invalid metadata value given: {part}"
                )))
            }
        }
    }
    let Some(name) = name else {
        return Err(Value::error("ERR Library name was not given"));
    };
    if !engine.eq_ignore_ascii_case("lua") {
        return Err(Value::error(format!("ERR Engine '{engine}' not found")));
    }
    if !valid_name(&name) {
        return Err(Value::error(
            "ERR Library names can only contain letters, numbers, or underscores(_) and must be at least one character long",
        ));
    }
    Ok((name, &code[line_end..]))
}

/// An EVAL body's `#!lua flags=...` line, if any: whether it declares `no-writes`, and the
/// code with the line blanked.
fn parse_script_header(body: &[u8]) -> Result<(bool, &[u8]), Value> {
    if !body.starts_with(b"#!") {
        return Ok((false, body));
    }
    let line_end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let header = String::from_utf8_lossy(&body[2..line_end]).into_owned();
    let mut parts = header.split(' ').filter(|part| !part.is_empty());
    let engine = parts.next().unwrap_or("");
    if !engine.eq_ignore_ascii_case("lua") {
        return Err(Value::error(format!(
            "ERR Could not find engine '{engine}'"
        )));
    }
    let mut no_writes = false;
    for part in parts {
        let Some(flags) = part.strip_prefix("flags=") else {
            return Err(Value::error(format!(
                "ERR Unknown lua shebang option: {part}"
            )));
        };
        for flag in flags.split(',').filter(|flag| !flag.is_empty()) {
            match flag {
                "no-writes" => no_writes = true,
                "allow-oom" | "allow-stale" | "no-cluster" | "allow-cross-slot-keys" => {}
                other => {
                    return Err(Value::error(format!(
                        "ERR Unexpected flag in script shebang: {other}"
                    )))
                }
            }
        }
    }
    Ok((no_writes, &body[line_end..]))
}

/// One command argument.
type Arg = Vec<u8>;

/// `numkeys key... arg...` at `argv[2..]`: the keys and the arguments.
/// Redis looks FCALL's function up before its key count, which it words differently.
fn split_keys<'a>(
    spec: &CommandSpec,
    argv: &'a [Vec<u8>],
) -> Result<(&'a [Arg], &'a [Arg]), Value> {
    let Some(count) = parse_i64_strict(&argv[2]) else {
        return Err(Value::error(match spec.command {
            Command::FCall | Command::FCallRo => "ERR Bad number of keys provided",
            _ => NOT_AN_INTEGER,
        }));
    };
    if count < 0 {
        return Err(Value::error("ERR Number of keys can't be negative"));
    }
    let rest = &argv[3..];
    if count as u64 > rest.len() as u64 {
        return Err(Value::error(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    Ok(rest.split_at(count as usize))
}

/// What a script may do through `redis.call`.
struct CallPolicy {
    read_only: bool,
    /// The caller's ACL key patterns (`STATOR.ACLKEYS`): every key a call names must match
    /// one. `None`: the caller may touch every key.
    key_patterns: Option<Vec<Vec<u8>>>,
    /// The caller's command rules (`STATOR.ACLKEYS ... RIGHTS`): every command a call runs
    /// must be allowed by them. `None`: the caller may run every command.
    rights: Option<CommandRights>,
    /// Slots of the declared KEYS; when any were declared, every key a script names must
    /// hash to one of them, so it lives in the partition the gateway routed the script to.
    declared_slots: Vec<u16>,
}

impl CallPolicy {
    fn new(
        read_only: bool,
        keys: &[Vec<u8>],
        key_patterns: Option<Vec<Vec<u8>>>,
        rights: Option<CommandRights>,
    ) -> Self {
        let mut declared_slots: Vec<u16> = keys.iter().map(|key| key_slot(key)).collect();
        declared_slots.sort_unstable();
        declared_slots.dedup();
        CallPolicy {
            read_only,
            // `*` lets every key through: no glob per call.
            key_patterns: key_patterns.filter(|patterns| !patterns.iter().any(|p| p == b"*")),
            rights: rights.filter(|rights| !rights.allows_everything()),
            declared_slots,
        }
    }

    /// The command's table row, or the error Redis gives a script for it.
    fn check(&self, argv: &[Vec<u8>]) -> Result<&'static CommandSpec, Value> {
        let Some(spec) = lookup(&argv[0]) else {
            return Err(Value::error("ERR Unknown Redis command called from script"));
        };
        if !spec.arity_ok(argv.len()) {
            return Err(Value::error(
                "ERR Wrong number of args calling Redis command from script",
            ));
        }
        if matches!(
            spec.command,
            Command::Eval
                | Command::EvalSha
                | Command::EvalRo
                | Command::EvalShaRo
                | Command::FCall
                | Command::FCallRo
                | Command::Script
                | Command::Function
                | Command::StatorExec
                | Command::StatorAclKeys
        ) {
            return Err(Value::error(
                "ERR This Redis command is not allowed from script",
            ));
        }
        // Redis checks ACLs after refusing script-only commands and before write rights:
        // the command first, then its keys.
        if let Some(rights) = &self.rights {
            let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
            if !rights.allows(&name, spec.kind) {
                return Err(Value::error(SCRIPT_COMMAND_DENIED));
            }
        }
        if let Some(patterns) = &self.key_patterns {
            let allowed = spec.key_indexes(argv).into_iter().all(|index| {
                patterns
                    .iter()
                    .any(|pattern| glob_match(pattern, &argv[index]))
            });
            if !allowed {
                return Err(Value::error(SCRIPT_KEY_DENIED));
            }
        }
        if self.read_only && spec.kind == CommandKind::Write {
            return Err(Value::error(
                "ERR Write commands are not allowed from read-only scripts.",
            ));
        }
        if let Some(error) = spec.subcommand_error(argv) {
            return Err(Value::error(error));
        }
        if !self.declared_slots.is_empty() {
            for index in spec.key_indexes(argv) {
                if self
                    .declared_slots
                    .binary_search(&key_slot(&argv[index]))
                    .is_err()
                {
                    return Err(Value::error(format!(
                        "ERR Script attempted to access key '{}' whose slot is not the slot of any of its KEYS; pass every key the script uses in KEYS",
                        String::from_utf8_lossy(&argv[index])
                    )));
                }
            }
        }
        Ok(spec)
    }
}

/// Which script a command names, resolved against the cache.
enum Target<'a> {
    Script {
        body: &'a [u8],
        sha: String,
    },
    Function {
        library: &'a Library,
        function: &'a RegisteredFunction,
    },
}

impl KvMachine {
    /// EVAL, EVALSHA, FCALL (and the `_RO` forms when applied through the log), SCRIPT and
    /// FUNCTION.
    pub(crate) fn script_write(&mut self, spec: &CommandSpec, argv: Vec<Vec<u8>>) -> Value {
        match spec.command {
            Command::Script => self.script_command(argv),
            Command::Function => self.function_command(argv),
            _ => self.run_script(spec, &argv),
        }
    }

    /// EVAL_RO, EVALSHA_RO and FCALL_RO answered without the log.
    pub(crate) fn script_read(&self, now_ms: u64, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        self.script_read_scoped(now_ms, spec, argv, None, None)
    }

    /// [`KvMachine::script_read`] for a caller limited to `key_patterns` (`STATOR.ACLKEYS`).
    pub(crate) fn script_read_scoped(
        &self,
        now_ms: u64,
        spec: &CommandSpec,
        argv: &[Vec<u8>],
        key_patterns: Option<&[Vec<u8>]>,
        rights: Option<CommandRights>,
    ) -> Value {
        if spec.command != Command::FCallRo {
            attempt!(split_keys(spec, argv));
        }
        let target = attempt!(resolve_target(&self.scripts, spec, argv));
        let (keys, args) = attempt!(split_keys(spec, argv));
        let (program, read_only) = attempt!(program_of(&target, true));
        debug_assert!(read_only);
        let policy = CallPolicy::new(true, keys, key_patterns.map(<[_]>::to_vec), rights);
        let mut execute = |call: Vec<Vec<u8>>| match policy.check(&call) {
            Ok(spec) => self.read(now_ms, spec, &call),
            Err(reply) => reply,
        };
        let seed = EntryRng::new(now_ms).next_u64();
        scripting::run(program, keys, args, seed, &mut execute)
    }

    fn run_script(&mut self, spec: &CommandSpec, argv: &[Vec<u8>]) -> Value {
        if matches!(spec.command, Command::FCall | Command::FCallRo) {
            attempt!(resolve_target(&self.scripts, spec, argv).map(|_| ()));
        }
        let (keys, args) = attempt!(split_keys(spec, argv));
        let forced_read_only = matches!(
            spec.command,
            Command::EvalRo | Command::EvalShaRo | Command::FCallRo
        );
        let scripts = std::mem::take(&mut self.scripts);
        let reply = {
            let target = match resolve_target(&scripts, spec, argv) {
                Ok(target) => target,
                Err(reply) => {
                    self.scripts = scripts;
                    return reply;
                }
            };
            match program_of(&target, forced_read_only) {
                Err(reply) => reply,
                Ok((program, read_only)) => {
                    let policy = CallPolicy::new(
                        read_only,
                        keys,
                        self.script_key_patterns.take(),
                        self.script_rights.take(),
                    );
                    let seed = self.rng.next_u64();
                    let was_in_transaction = self.in_transaction;
                    // Blocking commands never block inside a script, as in Redis.
                    self.in_transaction = true;
                    let mut execute = |call: Vec<Vec<u8>>| match policy.check(&call) {
                        Ok(_) => self.execute(call),
                        Err(reply) => reply,
                    };
                    let reply = scripting::run(program, keys, args, seed, &mut execute);
                    self.in_transaction = was_in_transaction;
                    reply
                }
            }
        };
        self.scripts = scripts;
        if matches!(spec.command, Command::Eval | Command::EvalRo) && !is_compile_error(&reply) {
            self.scripts.cache(sha1_hex(&argv[1]), argv[1].clone());
        }
        reply
    }

    /// `STATOR.ACLKEYS <count> <pattern>... [RIGHTS <count> <rule>...] <script command>`:
    /// runs the script command with its `redis.call`s limited to the commands the rules
    /// allow and the keys matching the patterns.
    pub(crate) fn script_with_acl(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let layout = attempt!(AclKeysLayout::parse(&argv));
        let rights = match layout.rights.map(CommandRights::parse) {
            None => None,
            Some(Ok(rights)) => Some(rights),
            Some(Err(message)) => return crate::machine::malformed_rights(&message),
        };
        let patterns = layout.patterns.to_vec();
        let inner = argv[layout.inner_start..].to_vec();
        self.script_key_patterns = Some(patterns);
        self.script_rights = rights;
        let reply = self.execute(inner);
        self.script_key_patterns = None;
        self.script_rights = None;
        reply
    }

    /// `SCRIPT LOAD | EXISTS | FLUSH | KILL | HELP`.
    fn script_command(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let sub = argv[1].to_ascii_uppercase();
        match sub.as_slice() {
            b"LOAD" => {
                attempt!(parse_script_header(&argv[2]).and_then(|(_, code)| scripting::check_compiles(code)));
                let sha = sha1_hex(&argv[2]);
                if !self.scripts.cache(sha.clone(), argv[2].clone()) {
                    return Value::error(format!(
                        "ERR the script cache is full ({MAX_CACHED_SCRIPTS} scripts); run SCRIPT FLUSH or use EVAL"
                    ));
                }
                Value::bulk(sha)
            }
            b"EXISTS" => Value::Array(Some(
                argv[2..]
                    .iter()
                    .map(|sha| {
                        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                        Value::Integer(i64::from(self.scripts.bodies.contains_key(&sha)))
                    })
                    .collect(),
            )),
            b"FLUSH" => {
                attempt!(flush_mode(&argv[2..], "SCRIPT FLUSH only support"));
                self.scripts.bodies.clear();
                Value::ok()
            }
            b"KILL" => Value::error("NOTBUSY No scripts in execution right now."),
            b"HELP" => help(&[
                "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "EXISTS <sha1> [<sha1> ...]",
                "    Return information about the existence of the scripts in the script cache.",
                "FLUSH [ASYNC|SYNC]",
                "    Flush the Lua scripts cache. Very dangerous on replicas.",
                "    When called without the optional mode argument, the behavior is determined by the",
                "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
                "    * ASYNC: Asynchronously flush the scripts cache.",
                "    * SYNC: Synchronously flush the scripts cache.",
                "KILL",
                "    Kill the currently executing Lua script.",
                "LOAD <script>",
                "    Load a script into the scripts cache without executing it.",
                "HELP",
                "    Print this help.",
            ]),
            _ => Value::error(
                "ERR SCRIPT DEBUG is not supported: scripts run inside the replicated state machine",
            ),
        }
    }

    /// `FUNCTION LOAD | LIST | DELETE | FLUSH | KILL | STATS | DUMP | RESTORE | HELP`.
    fn function_command(&mut self, argv: Vec<Vec<u8>>) -> Value {
        let sub = argv[1].to_ascii_uppercase();
        match sub.as_slice() {
            b"LOAD" => {
                let (replace, code) = match argv.len() {
                    3 => (false, &argv[2]),
                    4 if argv[2].eq_ignore_ascii_case(b"REPLACE") => (true, &argv[3]),
                    4 => {
                        return Value::error(format!(
                            "ERR Unknown option given: {}",
                            String::from_utf8_lossy(&argv[2])
                        ))
                    }
                    _ => return Value::error(SYNTAX_ERROR),
                };
                match self.scripts.load_library(code.clone(), replace) {
                    Ok(name) => Value::bulk(name),
                    Err(reply) => reply,
                }
            }
            b"LIST" => self.function_list(&argv[2..]),
            b"DELETE" => {
                let name = String::from_utf8_lossy(&argv[2]).into_owned();
                match self.scripts.libraries.remove(&name) {
                    Some(_) => Value::ok(),
                    None => Value::error("ERR Library not found"),
                }
            }
            b"FLUSH" => {
                attempt!(flush_mode(&argv[2..], "FUNCTION FLUSH only supports"));
                self.scripts.libraries.clear();
                Value::ok()
            }
            b"KILL" => Value::error("NOTBUSY No scripts in execution right now."),
            b"STATS" => Value::Array(Some(vec![
                Value::bulk("running_script"),
                Value::null(),
                Value::bulk("engines"),
                Value::Array(Some(vec![
                    Value::bulk("LUA"),
                    Value::Array(Some(vec![
                        Value::bulk("libraries_count"),
                        Value::Integer(self.scripts.libraries.len() as i64),
                        Value::bulk("functions_count"),
                        Value::Integer(
                            self.scripts
                                .libraries
                                .values()
                                .map(|library| library.functions.len() as i64)
                                .sum(),
                        ),
                    ])),
                ])),
            ])),
            b"HELP" => help(&[
                "FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "LOAD [REPLACE] <FUNCTION CODE>",
                "DELETE <LIBRARY NAME>",
                "LIST [LIBRARYNAME PATTERN] [WITHCODE]",
                "FLUSH [ASYNC|SYNC]",
                "STATS",
                "KILL",
                "HELP",
            ]),
            _ => Value::error(
                "ERR FUNCTION DUMP and RESTORE are not supported: copy libraries with FUNCTION LIST WITHCODE and FUNCTION LOAD",
            ),
        }
    }

    /// `FUNCTION LIST [LIBRARYNAME pattern] [WITHCODE]`, in Redis 7.0's RESP2 shape.
    fn function_list(&self, options: &[Vec<u8>]) -> Value {
        let mut pattern: Option<&[u8]> = None;
        let mut with_code = false;
        let mut index = 0;
        while index < options.len() {
            let option = options[index].to_ascii_uppercase();
            match option.as_slice() {
                b"WITHCODE" if !with_code => with_code = true,
                b"LIBRARYNAME" if pattern.is_none() => {
                    let Some(value) = options.get(index + 1) else {
                        return Value::error("ERR library name argument was not given");
                    };
                    pattern = Some(value);
                    index += 1;
                }
                _ => {
                    return Value::error(format!(
                        "ERR Unknown argument {}",
                        String::from_utf8_lossy(&options[index])
                    ))
                }
            }
            index += 1;
        }
        let libraries = self
            .scripts
            .libraries
            .iter()
            .filter(|(name, _)| pattern.is_none_or(|pattern| glob_match(pattern, name.as_bytes())))
            .map(|(name, library)| {
                let functions = library
                    .functions
                    .iter()
                    .map(|function| {
                        Value::Array(Some(vec![
                            Value::bulk("name"),
                            Value::bulk(function.name.clone()),
                            Value::bulk("description"),
                            Value::Bulk(function.description.clone()),
                            Value::bulk("flags"),
                            Value::Array(Some(
                                function
                                    .flags
                                    .iter()
                                    .map(|flag| Value::Simple(flag.clone()))
                                    .collect(),
                            )),
                        ]))
                    })
                    .collect();
                let mut fields = vec![
                    Value::bulk("library_name"),
                    Value::bulk(name.clone()),
                    Value::bulk("engine"),
                    Value::bulk("LUA"),
                    Value::bulk("functions"),
                    Value::Array(Some(functions)),
                ];
                if with_code {
                    fields.push(Value::bulk("library_code"));
                    fields.push(Value::bulk(library.code.clone()));
                }
                Value::Array(Some(fields))
            })
            .collect();
        Value::Array(Some(libraries))
    }
}

/// The script or function a command names. For EVALSHA and FCALL the cache is passed in,
/// not the machine: it is moved out while a script runs (its `redis.call`s borrow the
/// machine mutably).
fn resolve_target<'a>(
    scripts: &'a Scripts,
    spec: &CommandSpec,
    argv: &'a [Vec<u8>],
) -> Result<Target<'a>, Value> {
    match spec.command {
        Command::Eval | Command::EvalRo => Ok(Target::Script {
            body: &argv[1],
            sha: sha1_hex(&argv[1]),
        }),
        Command::EvalSha | Command::EvalShaRo => {
            let sha = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
            match scripts.bodies.get(&sha) {
                Some(body) => Ok(Target::Script { body, sha }),
                None => Err(Value::error(NO_SCRIPT)),
            }
        }
        _ => {
            let name = String::from_utf8_lossy(&argv[1]);
            match scripts.function(&name) {
                Some((library, function)) => Ok(Target::Function { library, function }),
                None => Err(Value::error("ERR Function not found")),
            }
        }
    }
}

/// The program to run for `target`, and whether its `redis.call`s are read-only.
fn program_of<'a>(
    target: &'a Target<'a>,
    forced_read_only: bool,
) -> Result<(Program<'a>, bool), Value> {
    match target {
        Target::Script { body, sha } => {
            let (no_writes, code) = parse_script_header(body)?;
            if forced_read_only && body.starts_with(b"#!") && !no_writes {
                return Err(Value::error(WRITE_FLAG_IN_READ_ONLY));
            }
            Ok((
                Program::Script { body: code, sha },
                forced_read_only || no_writes,
            ))
        }
        Target::Function { library, function } => {
            let no_writes = function.flags.iter().any(|flag| flag == "no-writes");
            if forced_read_only && !no_writes {
                return Err(Value::error(WRITE_FLAG_IN_READ_ONLY));
            }
            let (_, code) = parse_library_header(&library.code)?;
            Ok((
                Program::Function {
                    code,
                    name: &function.name,
                },
                no_writes,
            ))
        }
    }
}

fn is_compile_error(reply: &Value) -> bool {
    matches!(reply, Value::Error(message) if message.starts_with("ERR Error compiling script"))
        || matches!(reply, Value::Error(message) if message.starts_with("ERR Could not find engine") || message.starts_with("ERR Unknown lua shebang") || message.starts_with("ERR Unexpected flag"))
}

/// `[ASYNC | SYNC]` of SCRIPT FLUSH and FUNCTION FLUSH (both flush at once here); Redis
/// words the error slightly differently for each (`what`).
fn flush_mode(options: &[Vec<u8>], what: &str) -> Result<(), Value> {
    match options {
        [] => Ok(()),
        [mode] if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") => {
            Ok(())
        }
        _ => Err(Value::error(format!("ERR {what} SYNC|ASYNC option"))),
    }
}

fn help(lines: &[&str]) -> Value {
    Value::Array(Some(
        lines
            .iter()
            .map(|line| Value::Simple((*line).to_owned()))
            .collect(),
    ))
}
