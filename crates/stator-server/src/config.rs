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
    /// A store the caller opened (tests, or an in-process cluster sharing one). Servers
    /// on a shared store elect one controller holder, as on etcd.
    Shared(Arc<dyn Store>),
    /// An etcd cluster at these endpoints (`host:port`): any number of servers may share
    /// it; one at a time runs the controller.
    #[cfg(feature = "etcd")]
    Etcd(Vec<String>),
}

impl StoreConfig {
    /// True when several servers may share this store, so they must elect the one that
    /// runs the controller. The embedded file belongs to one server, which always leads.
    pub fn is_shared(&self) -> bool {
        !matches!(self, StoreConfig::Embedded(_))
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            StoreConfig::Shared(_) => f.write_str("shared"),
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd(endpoints) => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

impl FromStr for StoreConfig {
    type Err = String;

    /// Reads `embedded:DIR` or `etcd://HOST:PORT[,HOST:PORT...]` (the latter only in a
    /// build with the `etcd` feature).
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(dir) = text.strip_prefix("embedded:") {
            if dir.is_empty() {
                return Err(
                    "--store embedded: needs a directory, e.g. embedded:./stator-data/store".into(),
                );
            }
            return Ok(StoreConfig::Embedded(PathBuf::from(dir)));
        }
        if let Some(hosts) = text.strip_prefix("etcd://") {
            return parse_etcd(hosts);
        }
        Err(format!(
            "unknown store {text:?}; use embedded:DIR or etcd://HOST:PORT[,HOST:PORT...]"
        ))
    }
}

#[cfg(feature = "etcd")]
fn parse_etcd(hosts: &str) -> Result<StoreConfig, String> {
    let endpoints: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err("etcd:// needs at least one HOST:PORT, e.g. etcd://127.0.0.1:2379".into());
    }
    if let Some(bad) = endpoints
        .iter()
        .find(|h| !h.contains(':') || h.contains('/'))
    {
        return Err(format!(
            "etcd endpoint {bad:?} is not HOST:PORT; write etcd://HOST:PORT[,HOST:PORT...]"
        ));
    }
    Ok(StoreConfig::Etcd(endpoints))
}

#[cfg(not(feature = "etcd"))]
fn parse_etcd(_hosts: &str) -> Result<StoreConfig, String> {
    Err(
        "this stator was built without the etcd store; rebuild with `--features etcd` \
         (cargo build -p stator --features etcd, needs protoc) or use --store embedded:DIR"
            .into(),
    )
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
    /// The URL other servers forward calls to while this one runs the controller; when
    /// None, `http://` + the bound listen address (right unless that is a wildcard
    /// address or behind NAT).
    pub advertise_url: Option<String>,
    /// TTL of the controller lease on a shared store: a crashed holder is replaced about
    /// this long after it died.
    pub leader_lease_ttl_ms: u64,
    /// Node pools and the provider the autoscaler grows and shrinks them with; None: no
    /// autoscaling (the nodes are what registers).
    pub autoscale: Option<crate::controller::Autoscaler>,
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
            advertise_url: None,
            leader_lease_ttl_ms: crate::leader::LEADER_LEASE_TTL_MS,
            autoscale: None,
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

/// Keys under which servers sharing a store keep the cluster's tokens.
pub const API_TOKEN_KEY: &str = "/stator/meta/api-token";
/// See [`API_TOKEN_KEY`].
pub const JOIN_TOKEN_KEY: &str = "/stator/meta/join-token";

/// The cluster's token for servers sharing a store. The first server to start stores its
/// own (given, read from `dir/file`, or generated); later ones adopt the stored one, and
/// every server writes it to `dir/file` (mode 0600) so operators and agents find it there.
/// A token given explicitly that differs from the stored one is an error.
pub async fn shared_token(
    store: &dyn Store,
    given: Option<&str>,
    dir: &Path,
    file: &str,
    key: &str,
    which: &'static str,
) -> Result<String> {
    let path = dir.join(file);
    let from_file = std::fs::read_to_string(&path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty());
    let candidate = given
        .map(str::to_string)
        .or_else(|| from_file.clone())
        .unwrap_or_else(generate_token);
    let outcome = store
        .compare_and_swap(
            key,
            stator_store::Expected::Absent,
            Some(bytes::Bytes::from(candidate.clone())),
        )
        .await?;
    let token = match outcome {
        stator_store::CasOutcome::Swapped { .. } => candidate,
        stator_store::CasOutcome::Mismatch { current } => {
            let stored = current
                .map(|v| String::from_utf8_lossy(&v.value).into_owned())
                .unwrap_or_default();
            if given.is_some_and(|given| given != stored) {
                return Err(ServerError::TokenMismatch { which });
            }
            stored
        }
    };
    if from_file.as_deref() != Some(token.as_str()) {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        write_private(&path, &token).map_err(|source| ServerError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
    }
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
        assert!("nope".parse::<StoreConfig>().is_err());
        assert!("etcd://".parse::<StoreConfig>().is_err());
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_urls_parse() {
        match "etcd://127.0.0.1:2379, 127.0.0.1:2380".parse::<StoreConfig>() {
            Ok(StoreConfig::Etcd(endpoints)) => {
                assert_eq!(endpoints, ["127.0.0.1:2379", "127.0.0.1:2380"])
            }
            other => panic!("expected etcd endpoints, got {other:?}"),
        }
        assert!("etcd://nohost".parse::<StoreConfig>().is_err());
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_urls_name_the_feature_when_not_built() {
        let error = "etcd://h:1".parse::<StoreConfig>().unwrap_err();
        assert!(error.contains("--features etcd"), "{error}");
    }

    #[tokio::test]
    async fn servers_on_one_store_share_its_tokens() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = stator_store::EmbeddedStore::open(store_dir.path()).unwrap();
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = shared_token(
            &store,
            None,
            first.path(),
            API_TOKEN_FILE,
            API_TOKEN_KEY,
            "API",
        )
        .await
        .unwrap();
        let b = shared_token(
            &store,
            None,
            second.path(),
            API_TOKEN_FILE,
            API_TOKEN_KEY,
            "API",
        )
        .await
        .unwrap();
        assert_eq!(a, b, "the second server adopts the first one's token");
        let on_disk = std::fs::read_to_string(second.path().join(API_TOKEN_FILE)).unwrap();
        assert_eq!(on_disk.trim(), a);
        assert!(matches!(
            shared_token(
                &store,
                Some("other"),
                second.path(),
                API_TOKEN_FILE,
                API_TOKEN_KEY,
                "API"
            )
            .await,
            Err(ServerError::TokenMismatch { .. })
        ));
    }
}
