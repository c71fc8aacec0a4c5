//! Who may talk to a service's data: the password and ACL users of `expose.auth`, `AUTH`,
//! `HELLO ... AUTH`, `ACL`, and Redis's protected mode when no password is set.
//!
//! Users live in the service spec (passwords in files it names), so every gateway serves
//! the same users; `ACL SETUSER` and `ACL DELUSER` answer that the spec is where users
//! change. Errors are Redis 7.0's, word for word, so clients recognise them.

use super::glob::glob_match;
use super::local::{is_known, ConnectionState, Dispatch};
use crate::map::ServiceRoutes;
use ring::digest;
use stator_api::spec::{AclUserSpec, AuthSpec};
use stator_kv::script_acl::RuleSelector;
use stator_kv::{
    command_keys, command_kind, encode_script_rights, is_script_command, CommandKind,
    CommandRights, Value,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a loaded password file is trusted before it is read again, so a rotated
/// password takes effect without restarting gateways.
pub const PASSWORD_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Largest password file read; a password is a line, not a document.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Redis's reply to any command but AUTH, HELLO and QUIT before authenticating.
pub(crate) const NOAUTH: &str = "NOAUTH Authentication required.";

/// Redis's reply to a wrong user or password.
pub(crate) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

const AUTH_WITHOUT_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";

const NOPERM_KEYS: &str =
    "NOPERM this user has no permissions to access one of the keys used as arguments";

const ACL_IN_SPEC: &str = "ERR ACL users are defined in the service spec (expose.auth.users), so every gateway serves the same users; edit the spec and run `stator apply`";

/// Sent, then the connection closed, to a client from another host when the service has no
/// password and protected mode is on. Redis's text, with stator's ways out.
pub(crate) const DENIED: &str = "DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Redis you may adopt one of the following solutions: 1) Set a password: expose.auth = { password_file = \"/path/to/file\" } in the service spec. 2) Disable protected mode with expose.protected_mode = false in the service spec, however MAKE SURE the address is not publicly accessible from internet if you do so. Then run `stator apply`. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.";

/// ACL categories the gateway knows, for `ACL CAT` and rule validation: the kv machine's
/// list, so scripts (which the machine checks) and direct commands agree.
const CATEGORIES: &[&str] = stator_kv::script_acl::ACL_CATEGORIES;

/// Commands with subcommands: ACL rules name them whole (`+acl`), errors as `acl|whoami`.
const CONTAINER_COMMANDS: &[&str] = &["acl", "client", "config", "command", "object", "pubsub"];

/// Commands Redis runs without authentication (its `no-auth` flag), also past ACL rules.
const NO_AUTH_COMMANDS: &[&str] = &["auth", "hello", "quit"];

fn in_category(category: &str, name: &str, kind: CommandKind) -> bool {
    stator_kv::command_in_category(category, name, kind)
}

/// What one ACL command rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Category(String),
    Command(String),
}

/// One user, loaded: the password's SHA-256 (as Redis keeps it) and its rights.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) name: String,
    password_sha256: [u8; 32],
    /// (allow, selector) in order; the last rule that matches a command decides.
    rules: Vec<(bool, Selector)>,
    /// Key glob patterns; `*` among them means every key.
    keys: Vec<Vec<u8>>,
    /// Every command and every key: no check needed.
    unrestricted: bool,
}

impl User {
    fn load(spec: &AclUserSpec, field: &str) -> Result<User, String> {
        let mut rules = Vec::new();
        for rule in &spec.commands {
            match rule.as_str() {
                "allcommands" => rules.push((true, Selector::Category("all".into()))),
                "nocommands" => rules.push((false, Selector::Category("all".into()))),
                _ => {
                    let allow = rule.starts_with('+');
                    let body = rule[1..].to_ascii_lowercase();
                    let selector = match body.strip_prefix('@') {
                        Some(category) if CATEGORIES.contains(&category) => {
                            Selector::Category(category.to_string())
                        }
                        Some(category) => {
                            return Err(format!(
                                "{field}.commands: category @{category} is not known to the stator gateway; use one of @{}",
                                CATEGORIES.join(", @")
                            ))
                        }
                        None => Selector::Command(body),
                    };
                    rules.push((allow, selector));
                }
            }
        }
        let password = read_password(&spec.password_file, &format!("{field}.password_file"))?;
        let all_commands = rules.last() == Some(&(true, Selector::Category("all".into())));
        let all_keys = spec.keys.iter().any(|k| k == "*");
        Ok(User {
            name: spec.name.clone(),
            password_sha256: sha256(&password),
            rules,
            keys: spec.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            unrestricted: all_commands && all_keys,
        })
    }

    fn default_user(password: &[u8]) -> User {
        User {
            name: "default".into(),
            password_sha256: sha256(password),
            rules: vec![(true, Selector::Category("all".into()))],
            keys: vec![b"*".to_vec()],
            unrestricted: true,
        }
    }

    /// `Err(reply)` when the user may not run `argv`.
    pub(crate) fn check(&self, argv: &[Vec<u8>]) -> Result<(), String> {
        if self.unrestricted {
            return Ok(());
        }
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
        if NO_AUTH_COMMANDS.contains(&name.as_str()) {
            return Ok(());
        }
        let kind = command_kind(argv);
        // The internal commands the gateway builds (`STATOR.EXEC`, `STATOR.VERSION`,
        // `STATOR.ACLKEYS`) carry other commands or rights: sent by a restricted user they
        // would run what that user's rules refuse, so only unrestricted users may send them.
        let internal = name.starts_with("stator.");
        let allowed = !internal
            && self
                .rules
                .iter()
                .rev()
                .find(|(_, selector)| match selector {
                    Selector::Category(category) => in_category(category, &name, kind),
                    Selector::Command(command) => *command == name,
                })
                .is_some_and(|(allow, _)| *allow);
        if !allowed {
            let shown = match argv.get(1) {
                Some(sub) if CONTAINER_COMMANDS.contains(&name.as_str()) => {
                    format!(
                        "{name}|{}",
                        String::from_utf8_lossy(sub).to_ascii_lowercase()
                    )
                }
                _ => name,
            };
            return Err(format!(
                "NOPERM this user has no permissions to run the '{shown}' command"
            ));
        }
        let all_keys = self.keys.iter().any(|k| k == b"*");
        if !all_keys {
            let keys_ok = command_keys(argv)
                .into_iter()
                .all(|key| self.keys.iter().any(|pattern| glob_match(pattern, key)));
            if !keys_ok {
                return Err(NOPERM_KEYS.into());
            }
        }
        Ok(())
    }

    /// `argv` as the kv machine must run it for this user: a script command of a user
    /// limited to some key patterns or some commands is wrapped in `STATOR.ACLKEYS` with
    /// those patterns and command rules, so every `redis.call` inside is checked as Redis
    /// checks it (the script command itself and its declared KEYS were checked by
    /// [`User::check`]). `None`: send `argv` as it is.
    pub(crate) fn scope_script(&self, argv: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
        if self.unrestricted || !is_script_command(argv) {
            return None;
        }
        let all_keys = self.keys.iter().any(|k| k == b"*");
        let rights = self.command_rights();
        let rights = (!rights.allows_everything()).then_some(rights);
        if all_keys && rights.is_none() {
            return None;
        }
        Some(encode_script_rights(&self.keys, rights.as_ref(), argv))
    }

    /// The user's command rules as the kv machine reads them.
    fn command_rights(&self) -> CommandRights {
        CommandRights {
            rules: self
                .rules
                .iter()
                .map(|(allow, selector)| {
                    let selector = match selector {
                        Selector::Category(category) => RuleSelector::Category(category.clone()),
                        Selector::Command(command) => RuleSelector::Command(command.clone()),
                    };
                    (*allow, selector)
                })
                .collect(),
        }
    }

    /// The user as `ACL LIST` prints it.
    fn describe(&self) -> String {
        format!(
            "user {} on #{} {} {}",
            self.name,
            hex(&self.password_sha256),
            self.key_rules(),
            if self.name == "default" {
                "&* +@all".to_string()
            } else {
                format!("resetchannels {}", self.command_rules())
            }
        )
    }

    fn key_rules(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("~{}", String::from_utf8_lossy(k)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command_rules(&self) -> String {
        if self.name == "default" {
            return "+@all".into();
        }
        let mut text = String::from("-@all");
        for (allow, selector) in &self.rules {
            text.push(' ');
            text.push(if *allow { '+' } else { '-' });
            match selector {
                Selector::Category(category) => {
                    text.push('@');
                    text.push_str(category);
                }
                Selector::Command(command) => text.push_str(command),
            }
        }
        text
    }
}

/// Who may talk to one service, loaded from its spec.
#[derive(Debug)]
pub(crate) enum Access {
    /// No password: everyone may; with protected mode, from loopback only.
    Open { protected_mode: bool },
    /// Password-protected: the `default` user first, then the spec's users.
    Users(Vec<Arc<User>>),
    /// A password file cannot be read: nobody gets in (fail closed), and AUTH says why.
    Unreadable(String),
}

impl Access {
    /// Loads `auth`, reading its password files.
    pub(crate) fn load(auth: Option<&AuthSpec>, protected_mode: bool) -> Access {
        let Some(auth) = auth else {
            return Access::Open { protected_mode };
        };
        let load = || -> Result<Vec<Arc<User>>, String> {
            let password = read_password(&auth.password_file, "expose.auth.password_file")?;
            let mut users = vec![Arc::new(User::default_user(&password))];
            for (index, spec) in auth.users.iter().enumerate() {
                users.push(Arc::new(User::load(
                    spec,
                    &format!("expose.auth.users[{index}]"),
                )?));
            }
            Ok(users)
        };
        match load() {
            Ok(users) => Access::Users(users),
            Err(message) => {
                tracing::error!(%message, "RESP and HTTP access refused until the password files are readable");
                Access::Unreadable(message)
            }
        }
    }

    /// Whether a client at `peer` may connect at all (protected mode).
    pub(crate) fn admits(&self, peer: IpAddr) -> bool {
        match self {
            Access::Open {
                protected_mode: true,
            } => is_loopback(peer),
            _ => true,
        }
    }

    /// Whether commands need an authenticated user.
    pub(crate) fn requires_auth(&self) -> bool {
        !matches!(self, Access::Open { .. })
    }

    fn user(&self, name: &str) -> Option<&Arc<User>> {
        match self {
            Access::Users(users) => users.iter().find(|u| u.name == name),
            _ => None,
        }
    }

    /// The user `name` (default: `default`) if `password` is theirs.
    fn authenticate(&self, name: Option<&[u8]>, password: &[u8]) -> Result<Arc<User>, String> {
        match self {
            Access::Open { .. } if name.is_none() => Err(AUTH_WITHOUT_PASSWORD.into()),
            // With no password the default user takes any (Redis's `nopass`).
            Access::Open { .. } if name == Some(b"default".as_slice()) => {
                Ok(Arc::new(User::default_user(b"")))
            }
            Access::Open { .. } => Err(WRONGPASS.into()),
            Access::Unreadable(message) => Err(format!(
                "ERR the gateway cannot check passwords now: {message}"
            )),
            Access::Users(_) => {
                let name = String::from_utf8_lossy(name.unwrap_or(b"default"));
                let hashed = sha256(password);
                match self.user(&name) {
                    Some(user) if constant_time_eq(&user.password_sha256, &hashed) => {
                        Ok(user.clone())
                    }
                    _ => Err(WRONGPASS.into()),
                }
            }
        }
    }

    /// Checks an HTTP `Authorization` header: `Bearer <the default user's password>`.
    pub(crate) fn check_bearer(&self, header: Option<&[u8]>) -> Result<(), String> {
        match self {
            Access::Open { .. } => Ok(()),
            Access::Unreadable(message) => {
                Err(format!("the gateway cannot check tokens now: {message}"))
            }
            Access::Users(users) => {
                let token = header.and_then(|h| h.strip_prefix(b"Bearer ".as_slice()));
                match token {
                    Some(token) if constant_time_eq(&users[0].password_sha256, &sha256(token)) => Ok(()),
                    Some(_) => Err("wrong bearer token; send `Authorization: Bearer <the password in expose.auth.password_file>`".into()),
                    None => Err("this service requires `Authorization: Bearer <the password in expose.auth.password_file>`".into()),
                }
            }
        }
    }

    /// After the access of a service changed: the connection's user as loaded now
    /// (`None` when removed, so the client must authenticate again).
    pub(crate) fn refresh_user(&self, user: &Option<Arc<User>>) -> Option<Arc<User>> {
        user.as_ref().and_then(|u| self.user(&u.name).cloned())
    }
}

/// Handles what authentication decides before a command is dispatched: AUTH, the AUTH of
/// HELLO, ACL, NOAUTH and NOPERM. `None`: dispatch the command as usual.
pub(crate) fn intercept(
    argv: &[Vec<u8>],
    state: &mut ConnectionState,
    access: &Access,
) -> Option<Dispatch> {
    let name = argv[0].as_slice();
    if name.eq_ignore_ascii_case(b"auth") {
        let (user, password) = match argv {
            [_, password] => (None, password),
            [_, user, password] => (Some(user.as_slice()), password),
            _ => return Some(error("ERR wrong number of arguments for 'auth' command")),
        };
        return Some(match access.authenticate(user, password) {
            Ok(user) => {
                state.user = Some(user);
                reply(Value::ok())
            }
            Err(message) => error(message),
        });
    }
    if name.eq_ignore_ascii_case(b"hello") {
        if let Some(at) = argv.iter().position(|a| a.eq_ignore_ascii_case(b"auth")) {
            let (Some(user), Some(password)) = (argv.get(at + 1), argv.get(at + 2)) else {
                return Some(error("ERR Syntax error in HELLO option 'auth'"));
            };
            match access.authenticate(Some(user), password) {
                Ok(user) => state.user = Some(user),
                Err(message) => return Some(error(message)),
            }
            return None;
        }
        if access.requires_auth() && state.user.is_none() {
            return Some(error(HELLO_NOAUTH));
        }
        return None;
    }
    if access.requires_auth() {
        let Some(user) = &state.user else {
            // QUIT runs unauthenticated; unknown commands get Redis's "unknown command",
            // which Redis answers before checking authentication.
            if name.eq_ignore_ascii_case(b"quit") || !is_known(argv) {
                return None;
            }
            return Some(error(NOAUTH));
        };
        if let Err(message) = user.check(argv) {
            return Some(error(message));
        }
    }
    if name.eq_ignore_ascii_case(b"acl") {
        return Some(acl(argv, state, access));
    }
    None
}

/// The command to dispatch once [`intercept`] let `argv` through: a restricted user's
/// script command carries the user's key patterns (see [`User::scope_script`]). `None`:
/// dispatch `argv` unchanged.
pub(crate) fn scope_script(argv: &[Vec<u8>], state: &ConnectionState) -> Option<Vec<Vec<u8>>> {
    state.user.as_ref()?.scope_script(argv)
}

fn acl(argv: &[Vec<u8>], state: &ConnectionState, access: &Access) -> Dispatch {
    let sub = argv.get(1).map(|s| s.to_ascii_uppercase());
    let users: Vec<&Arc<User>> = match access {
        Access::Users(users) => {
            let mut sorted: Vec<&Arc<User>> = users.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            sorted
        }
        _ => Vec::new(),
    };
    match (sub.as_deref(), argv.len()) {
        (Some(b"WHOAMI"), 2) => reply(Value::bulk(
            state.user.as_ref().map_or("default", |u| u.name.as_str()),
        )),
        (Some(b"USERS"), 2) if users.is_empty() => {
            reply(Value::Array(Some(vec![Value::bulk("default")])))
        }
        (Some(b"USERS"), 2) => reply(Value::Array(Some(
            users.iter().map(|u| Value::bulk(u.name.as_str())).collect(),
        ))),
        (Some(b"LIST"), 2) if users.is_empty() => reply(Value::Array(Some(vec![Value::bulk(
            "user default on nopass ~* &* +@all",
        )]))),
        (Some(b"LIST"), 2) => reply(Value::Array(Some(
            users.iter().map(|u| Value::bulk(u.describe())).collect(),
        ))),
        (Some(b"GETUSER"), 3) => {
            let name = String::from_utf8_lossy(&argv[2]);
            let found = users.iter().find(|u| u.name == name);
            match (found, users.is_empty() && name == "default") {
                (Some(user), _) => reply(Value::Array(Some(vec![
                    Value::bulk("flags"),
                    Value::Array(Some(vec![Value::bulk("on")])),
                    Value::bulk("passwords"),
                    Value::Array(Some(vec![Value::bulk(hex(&user.password_sha256))])),
                    Value::bulk("commands"),
                    Value::bulk(user.command_rules()),
                    Value::bulk("keys"),
                    Value::bulk(user.key_rules()),
                    Value::bulk("channels"),
                    Value::bulk(if user.name == "default" { "&*" } else { "" }),
                    Value::bulk("selectors"),
                    Value::Array(Some(Vec::new())),
                ]))),
                (None, true) => reply(Value::Array(Some(vec![
                    Value::bulk("flags"),
                    Value::Array(Some(vec![Value::bulk("on"), Value::bulk("nopass")])),
                    Value::bulk("passwords"),
                    Value::Array(Some(Vec::new())),
                    Value::bulk("commands"),
                    Value::bulk("+@all"),
                    Value::bulk("keys"),
                    Value::bulk("~*"),
                    Value::bulk("channels"),
                    Value::bulk("&*"),
                    Value::bulk("selectors"),
                    Value::Array(Some(Vec::new())),
                ]))),
                (None, false) => reply(Value::Bulk(None)),
            }
        }
        (Some(b"CAT"), 2) => reply(Value::Array(Some(
            CATEGORIES.iter().map(|c| Value::bulk(*c)).collect(),
        ))),
        (Some(b"SETUSER" | b"DELUSER"), _) => error(ACL_IN_SPEC),
        _ => error(format!(
            "ERR unknown subcommand or wrong number of arguments for 'acl|{}'; the stator gateway supports ACL WHOAMI, USERS, LIST, GETUSER, CAT",
            String::from_utf8_lossy(argv.get(1).map(Vec::as_slice).unwrap_or_default()).to_lowercase()
        )),
    }
}

/// Loaded [`Access`] per service, shared by every listener and the HTTP routes; reloads
/// when the spec's `expose.auth` changes or [`PASSWORD_RELOAD_INTERVAL`] has passed.
#[derive(Default)]
pub(crate) struct AccessCache {
    // A std mutex: nothing awaits while it is held (file reads are small and bounded).
    loaded: Mutex<HashMap<String, Loaded>>,
}

struct Loaded {
    auth: Option<AuthSpec>,
    protected_mode: bool,
    at: Instant,
    access: Arc<Access>,
}

impl AccessCache {
    /// The access of `service` as its spec says now.
    pub(crate) fn get(&self, service: &ServiceRoutes) -> Arc<Access> {
        let mut loaded = self.loaded.lock().expect("access cache lock poisoned");
        if let Some(entry) = loaded.get(&service.name) {
            let fresh = entry.auth == service.auth
                && entry.protected_mode == service.protected_mode
                && (entry.auth.is_none() || entry.at.elapsed() < PASSWORD_RELOAD_INTERVAL);
            if fresh {
                return entry.access.clone();
            }
        }
        let access = Arc::new(Access::load(service.auth.as_ref(), service.protected_mode));
        loaded.insert(
            service.name.clone(),
            Loaded {
                auth: service.auth.clone(),
                protected_mode: service.protected_mode,
                at: Instant::now(),
                access: access.clone(),
            },
        );
        access
    }
}

fn read_password(path: &str, field: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("{field}: cannot open {path:?} on this host ({e}); every host running a gateway, and in cluster mode every agent, needs the file"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{field}: cannot read {path:?} ({e})"))?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "{field}: {path:?} is larger than {MAX_PASSWORD_FILE_BYTES} bytes; it must hold one line, the password"
        ));
    }
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!(
            "{field}: {path:?} is empty; write the password in it"
        ));
    }
    Ok(bytes)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Compares digests without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn reply(value: Value) -> Dispatch {
    Dispatch::Reply(value.to_bytes())
}

fn error(message: impl Into<String>) -> Dispatch {
    reply(Value::error(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn text(d: Option<Dispatch>) -> String {
        match d {
            Some(Dispatch::Reply(b)) => String::from_utf8(b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn users() -> Access {
        let mut app = User::default_user(b"app-pass");
        app.name = "app".into();
        app.rules = vec![
            (false, Selector::Category("all".into())),
            (true, Selector::Category("read".into())),
            (true, Selector::Command("set".into())),
        ];
        app.keys = vec![b"user:*".to_vec()];
        app.unrestricted = false;
        Access::Users(vec![Arc::new(User::default_user(b"secret")), Arc::new(app)])
    }

    #[test]
    fn auth_errors_are_redis_s() {
        let access = users();
        let mut state = ConnectionState::default();
        assert_eq!(
            text(intercept(&argv(&["GET", "k"]), &mut state, &access)),
            "-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(
            text(intercept(&argv(&["PING"]), &mut state, &access)),
            "-NOAUTH Authentication required.\r\n"
        );
        assert!(text(intercept(&argv(&["HELLO", "3"]), &mut state, &access))
            .starts_with("-NOAUTH HELLO must be called"));
        assert_eq!(intercept(&argv(&["QUIT"]), &mut state, &access), None);
        assert_eq!(
            text(intercept(&argv(&["AUTH", "nope"]), &mut state, &access)),
            format!("-{WRONGPASS}\r\n")
        );
        assert_eq!(
            text(intercept(&argv(&["AUTH", "secret"]), &mut state, &access)),
            "+OK\r\n"
        );
        assert_eq!(intercept(&argv(&["FLUSHALL"]), &mut state, &access), None);
        assert_eq!(
            text(intercept(&argv(&["ACL", "WHOAMI"]), &mut state, &access)),
            "$7\r\ndefault\r\n"
        );
    }

    #[test]
    fn acl_users_get_their_commands_and_keys_only() {
        let access = users();
        let mut state = ConnectionState::default();
        assert_eq!(
            intercept(
                &argv(&["HELLO", "3", "AUTH", "app", "app-pass"]),
                &mut state,
                &access
            ),
            None,
            "HELLO goes on to the usual reply once AUTH passed"
        );
        assert_eq!(state.user.as_ref().unwrap().name, "app");
        assert_eq!(
            intercept(&argv(&["GET", "user:1"]), &mut state, &access),
            None
        );
        assert_eq!(
            intercept(&argv(&["SET", "user:1", "x"]), &mut state, &access),
            None
        );
        assert_eq!(
            text(intercept(&argv(&["GET", "other"]), &mut state, &access)),
            format!("-{NOPERM_KEYS}\r\n")
        );
        assert_eq!(
            text(intercept(&argv(&["DEL", "user:1"]), &mut state, &access)),
            "-NOPERM this user has no permissions to run the 'del' command\r\n"
        );
        assert_eq!(
            text(intercept(&argv(&["ACL", "WHOAMI"]), &mut state, &access)),
            "-NOPERM this user has no permissions to run the 'acl|whoami' command\r\n"
        );
    }

    #[test]
    fn restricted_users_scripts_carry_their_key_patterns() {
        let access = users();
        let mut state = ConnectionState::default();
        let eval = argv(&["EVAL", "return redis.call('get','other')", "0"]);
        assert_eq!(scope_script(&eval, &state), None, "nobody logged in yet");
        text(intercept(&argv(&["AUTH", "secret"]), &mut state, &access));
        assert_eq!(
            scope_script(&eval, &state),
            None,
            "default reaches every key"
        );
        text(intercept(
            &argv(&["AUTH", "app", "app-pass"]),
            &mut state,
            &access,
        ));
        assert_eq!(
            scope_script(&eval, &state),
            Some(argv(&[
                "STATOR.ACLKEYS",
                "1",
                "user:*",
                "RIGHTS",
                "3",
                "-@all",
                "+@read",
                "+set",
                "EVAL",
                "return redis.call('get','other')",
                "0"
            ]))
        );
        assert_eq!(scope_script(&argv(&["GET", "user:1"]), &state), None);
        // A hand-made wrapper or transaction cannot widen the rights of a user who may run
        // every command but not reach every key.
        let mut scripter = User::default_user(b"s");
        scripter.name = "scripter".into();
        scripter.keys = vec![b"user:*".to_vec()];
        scripter.unrestricted = false;
        let access = Access::Users(vec![Arc::new(scripter)]);
        text(intercept(
            &argv(&["AUTH", "scripter", "s"]),
            &mut state,
            &access,
        ));
        assert_eq!(state.user.as_ref().unwrap().name, "scripter");
        for internal in [
            argv(&[
                "STATOR.ACLKEYS",
                "1",
                "*",
                "EVAL",
                "return 1",
                "1",
                "user:1",
            ]),
            argv(&["STATOR.EXEC", "0", "3", "EVAL", "return 1", "0"]),
        ] {
            assert!(text(intercept(&internal, &mut state, &access))
                .starts_with("-NOPERM this user has no permissions to run the 'stator."));
        }
    }

    #[test]
    fn protected_mode_admits_loopback_only() {
        let open = Access::Open {
            protected_mode: true,
        };
        assert!(open.admits("127.0.0.1".parse().unwrap()));
        assert!(open.admits("::1".parse().unwrap()));
        assert!(open.admits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!open.admits("10.1.2.3".parse().unwrap()));
        assert!(Access::Open {
            protected_mode: false
        }
        .admits("10.1.2.3".parse().unwrap()));
        assert!(users().admits("10.1.2.3".parse().unwrap()));
        let mut state = ConnectionState::default();
        assert_eq!(
            text(intercept(&argv(&["AUTH", "x"]), &mut state, &open)),
            format!("-{AUTH_WITHOUT_PASSWORD}\r\n")
        );
    }

    #[test]
    fn bearer_tokens_are_the_default_password() {
        let access = users();
        assert!(access.check_bearer(Some(b"Bearer secret")).is_ok());
        assert!(access.check_bearer(Some(b"Bearer app-pass")).is_err());
        assert!(access.check_bearer(None).is_err());
        assert!(Access::Open {
            protected_mode: true
        }
        .check_bearer(None)
        .is_ok());
    }

    #[test]
    fn unreadable_password_files_refuse_everyone() {
        let spec = AuthSpec {
            password_file: "/nonexistent/stator/password".into(),
            users: Vec::new(),
        };
        let access = Access::load(Some(&spec), true);
        assert!(matches!(access, Access::Unreadable(_)));
        let mut state = ConnectionState::default();
        assert!(text(intercept(&argv(&["GET", "k"]), &mut state, &access)).starts_with("-NOAUTH"));
        assert!(text(intercept(&argv(&["AUTH", "x"]), &mut state, &access))
            .contains("expose.auth.password_file: cannot open"));
    }
}
