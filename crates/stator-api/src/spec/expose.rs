//! Where the gateway exposes a service: [`ExposeSpec`], RESP TLS, and `expose.auth` (password and ACL users).

use super::*;

/// Where the gateway exposes a service. Addresses are `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeSpec {
    /// A RESP (Redis protocol) listener, for built-in kv services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<String>,
    /// An HTTP listener: the stator-sm/1 call route, or the round-robin proxy of a
    /// stateless service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Whether the RESP endpoint also speaks the Redis Cluster protocol (`CLUSTER SLOTS`
    /// and friends, with every agent serving its leaders' slots itself and answering
    /// `MOVED` for the rest). On unless set to `false`; needs `resp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
    /// Who may talk to the data: a password for the RESP endpoint (`AUTH`) and the HTTP
    /// routes (`Authorization: Bearer`), and ACL users. None: anyone who can connect,
    /// subject to [`ExposeSpec::protected_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Redis's protected mode: with no `auth`, clients from addresses other than loopback
    /// are refused (`DENIED`). On unless set to `false`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub protected_mode: bool,
    /// TLS on the RESP endpoint (the gateway's and, in cluster mode, every agent's):
    /// clients connect with `redis-cli --tls --cacert ...`. None: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RespTlsSpec>,
}

/// `expose.tls`: the certificate the RESP endpoint presents. Like passwords, the files
/// are read where the endpoint runs: on every gateway host and, in cluster mode, every
/// agent hosting a replica, so the certificate must name every address clients dial
/// (the gateway's and each agent's `--advertise-host`) as a subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespTlsSpec {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl Default for ExposeSpec {
    fn default() -> Self {
        Self {
            resp: None,
            http: None,
            cluster: None,
            auth: None,
            protected_mode: true,
            tls: None,
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn is_true(value: &bool) -> bool {
    *value
}

/// Longest ACL user name, as a bound on hostile specs.
pub const MAX_ACL_USER_NAME_BYTES: usize = 64;

/// Most ACL users one service may define.
pub const MAX_ACL_USERS: usize = 64;

/// `expose.auth`: the service's password and ACL users. Secrets stay out of the spec:
/// each is a path to a file holding it (one line; a trailing newline is ignored) that
/// must be readable on every host running a gateway and, where cluster mode is on
/// (`expose.cluster`), on every agent hosting a replica of the service: each agent's
/// cluster listener asks for the same credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// The `default` user's password (`AUTH <password>`), also the HTTP bearer token.
    pub password_file: String,
    /// More users (`AUTH <user> <password>`) with narrower rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<AclUserSpec>,
}

/// One ACL user of `expose.auth.users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclUserSpec {
    /// The user name (`AUTH <name> <password>`); not `default`.
    pub name: String,
    /// File holding the user's password.
    pub password_file: String,
    /// Redis ACL command rules applied in order: `+@all`, `-@all`, `+@read`, `+@write`,
    /// `+get`, `-flushall`, `allcommands`, `nocommands`. Empty: no command.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Key glob patterns the user may touch (`user:*`); `*` for every key. Empty: none.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl AuthSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if self.password_file.trim().is_empty() {
            return Err(SpecError::invalid(
                "expose.auth.password_file",
                "must be the path of a file holding the password",
            ));
        }
        if self.users.len() > MAX_ACL_USERS {
            return Err(SpecError::invalid(
                "expose.auth.users",
                format!("at most {MAX_ACL_USERS} users, got {}", self.users.len()),
            ));
        }
        for (index, user) in self.users.iter().enumerate() {
            let field = format!("expose.auth.users[{index}]");
            let name_ok = !user.name.is_empty()
                && user.name.len() <= MAX_ACL_USER_NAME_BYTES
                && user.name.bytes().all(|b| b.is_ascii_graphic());
            if !name_ok {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    format!("must be 1 to {MAX_ACL_USER_NAME_BYTES} printable characters without spaces, got {:?}", user.name),
                ));
            }
            if user.name == "default" {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    "`default` is the user of expose.auth.password_file; pick another name",
                ));
            }
            if self.users[..index].iter().any(|u| u.name == user.name) {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    format!("user {:?} is defined twice", user.name),
                ));
            }
            if user.password_file.trim().is_empty() {
                return Err(SpecError::invalid(
                    format!("{field}.password_file"),
                    "must be the path of a file holding the user's password",
                ));
            }
            for rule in &user.commands {
                let known = matches!(rule.as_str(), "allcommands" | "nocommands")
                    || ((rule.starts_with('+') || rule.starts_with('-')) && rule.len() > 1);
                if !known {
                    return Err(SpecError::invalid(
                        format!("{field}.commands"),
                        format!("rule {rule:?} is not understood; use +<command>, -<command>, +@<category>, -@<category>, allcommands or nocommands"),
                    ));
                }
            }
            if let Some(empty) = user.keys.iter().find(|k| k.is_empty()) {
                return Err(SpecError::invalid(
                    format!("{field}.keys"),
                    format!("pattern {empty:?} is empty; use \"*\" for every key"),
                ));
            }
        }
        Ok(())
    }
}

impl ExposeSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(tls) = &self.tls {
            if self.resp.is_none() {
                return Err(SpecError::invalid(
                    "expose.tls",
                    "encrypts the RESP endpoint: set expose.resp too, or remove tls",
                ));
            }
            for (field, path) in [
                ("expose.tls.cert_file", &tls.cert_file),
                ("expose.tls.key_file", &tls.key_file),
            ] {
                if path.trim().is_empty() {
                    return Err(SpecError::invalid(
                        field,
                        "must be the path of a PEM file on every gateway and agent host",
                    ));
                }
            }
        }
        for (field, value) in [("expose.resp", &self.resp), ("expose.http", &self.http)] {
            if let Some(addr) = value {
                if addr.parse::<SocketAddr>().is_err() {
                    return Err(SpecError::invalid(
                        field,
                        format!(
                            "must be an IP address and port like \"127.0.0.1:6380\", got {addr:?}"
                        ),
                    ));
                }
            }
        }
        if self.cluster.is_some() && self.resp.is_none() {
            return Err(SpecError::invalid(
                "expose.cluster",
                "switches the Redis Cluster protocol of the RESP endpoint: set expose.resp too, or remove cluster",
            ));
        }
        if self.resp.is_some() && self.resp == self.http {
            return Err(SpecError::invalid(
                "expose.http",
                "must differ from expose.resp: one port serves one protocol",
            ));
        }
        Ok(())
    }

    /// Whether the RESP endpoint serves the Redis Cluster protocol: it exists and the spec
    /// did not turn cluster mode off.
    pub fn cluster_enabled(&self) -> bool {
        self.resp.is_some() && self.cluster != Some(false)
    }

    /// The RESP address, parsed (validation guarantees it parses).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_deref().and_then(|addr| addr.parse().ok())
    }

    /// The HTTP address, parsed (validation guarantees it parses).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_deref().and_then(|addr| addr.parse().ok())
    }
}
