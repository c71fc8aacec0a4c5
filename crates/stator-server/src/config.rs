//! Server configuration, and the token files in the data directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rand::RngCore;
use stator_store::Store;

use crate::error::{Result, ServerError};

/// Where the API listens unless told otherwise: loopback, so a fresh server is not
/// reachable from the network until the operator says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Heartbeat grace before a node is lost: a few heartbeats, far below Kubernetes' 40 s.
pub const DEFAULT_NODE_GRACE_MS: u64 = 3_000;
/// How often agents heartbeat: several per grace, so one late packet is not a loss.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Random bytes in a generated token (256 bits: not guessable).
pub const TOKEN_BYTES: usize = 32;
/// File in the data directory holding the API bearer token.
pub const API_TOKEN_FILE: &str = "api-token";
/// File in the data directory holding the agents' join token.
pub const JOIN_TOKEN_FILE: &str = "join-token";

/// Which store backs the control plane.
#[derive(Clone)]
pub enum StoreConfig {
    /// The embedded single-file store in this directory.
    Embedded(PathBuf),
    /// A store the caller opened (tests, or an in-process cluster sharing one).
    Shared(Arc<dyn Store>),
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            StoreConfig::Shared(_) => f.write_str("shared"),
        }
    }
}

impl FromStr for StoreConfig {
    type Err = String;

    /// Reads `embedded:DIR`. `etcd://...` is recognised but not built yet.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(dir) = text.strip_prefix("embedded:") {
            if dir.is_empty() {
                return Err(
                    "--store embedded: needs a directory, e.g. embedded:./stator-data/store".into(),
                );
            }
            return Ok(StoreConfig::Embedded(PathBuf::from(dir)));
        }
        if text.starts_with("etcd://") {
            return Err("the etcd store backend is not built yet; use --store embedded:DIR".into());
        }
        Err(format!(
            "unknown store {text:?}; use embedded:DIR (or etcd://HOST:PORT once available)"
        ))
    }
}

/// Everything [`crate::run`] and [`crate::start`] need.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The control-plane store.
    pub store: StoreConfig,
    /// Address of the HTTP API (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where token files live.
    pub data_dir: PathBuf,
    /// The API bearer token; read from (or generated into) `data_dir/api-token` when None.
    pub api_token: Option<String>,
    /// The agents' join token; read from (or generated into) `data_dir/join-token` when None.
    pub join_token: Option<String>,
    /// Heartbeat grace before a node is lost.
    pub node_grace_ms: u64,
    /// Heartbeat interval told to agents.
    pub heartbeat_interval_ms: u64,
}

impl ServerConfig {
    /// Defaults: embedded store in `data_dir/store`, loopback listen address, tokens in
    /// `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        ServerConfig {
            store: StoreConfig::Embedded(data_dir.join("store")),
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir,
            api_token: None,
            join_token: None,
            node_grace_ms: DEFAULT_NODE_GRACE_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
        }
    }
}

/// A fresh random token, hex encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token in `dir/file`, generating and writing one (mode 0600) if the file does not
/// exist yet.
pub fn load_or_create_token(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    let io_error = |source| ServerError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error)),
    }
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let token = generate_token();
    write_private(&path, &token).map_err(io_error)?;
    Ok(token)
}

/// Writes `text` to `path` readable by the owner only: tokens grant full control.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Compares a presented token with the expected one in constant time, so response
/// timing does not reveal how many leading characters were right.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_token(dir.path(), API_TOKEN_FILE).unwrap();
        assert_eq!(first.len(), TOKEN_BYTES * 2);
        let again = load_or_create_token(dir.path(), API_TOKEN_FILE).unwrap();
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(API_TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn token_comparison_needs_the_exact_token() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn store_urls_parse() {
        assert!(matches!(
            "embedded:/tmp/x".parse::<StoreConfig>(),
            Ok(StoreConfig::Embedded(_))
        ));
        assert!("etcd://h:1".parse::<StoreConfig>().is_err());
        assert!("nope".parse::<StoreConfig>().is_err());
    }
}
