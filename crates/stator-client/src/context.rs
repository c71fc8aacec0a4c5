//! Where the CLI finds the API: the context file rules of DESIGN section 8.
//!
//! `--server URL` with `--token-file FILE` win; otherwise `--context FILE`, then the
//! `STATOR_CONTEXT` variable, then the current context that `stator up` recorded in
//! `~/.stator/current-context`, then `./stator-data/context`.

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A context file: where the API is and the token to use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Context {
    /// API base URL.
    pub server: String,
    /// Bearer token.
    pub token: String,
    /// The RESP/HTTP gateway, if one runs with this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_http: Option<String>,
}

/// The file naming the current context.
pub fn current_pointer() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".stator").join("current-context"))
}

/// Writes `ctx` to `path` (mode 0600: it holds a token) and makes it current.
pub fn write(path: &Path, ctx: &Context) -> anyhow::Result<()> {
    write_secret(path, serde_json::to_string_pretty(ctx)?.as_bytes())?;
    if let Some(pointer) = current_pointer() {
        if let Some(dir) = pointer.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let absolute = std::fs::canonicalize(path)?;
        std::fs::write(&pointer, absolute.to_string_lossy().as_bytes())?;
    }
    Ok(())
}

/// Writes a file only its owner can read.
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// Reads a token file (whitespace trimmed).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    Ok(token.trim().to_string())
}

/// Resolves the API endpoint from flags, environment and files.
pub fn resolve(
    server: Option<&str>,
    token_file: Option<&Path>,
    context: Option<&Path>,
) -> anyhow::Result<Context> {
    if let Some(server) = server {
        let Some(token_file) = token_file else {
            bail!("--server needs --token-file FILE with the API token")
        };
        return Ok(Context {
            server: server.to_string(),
            token: read_token(token_file)?,
            gateway_http: None,
        });
    }
    let path = match context {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("STATOR_CONTEXT") {
            Some(p) => PathBuf::from(p),
            None => match current_pointer().and_then(|p| std::fs::read_to_string(p).ok()) {
                Some(p) if Path::new(p.trim()).exists() => PathBuf::from(p.trim()),
                _ => PathBuf::from("stator-data/context"),
            },
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no context at {}: run `stator up` first, or pass --server URL --token-file FILE",
            path.display()
        )
    })?;
    let mut ctx: Context = serde_json::from_str(&text)
        .with_context(|| format!("malformed context file {}", path.display()))?;
    if let Some(token_file) = token_file {
        ctx.token = read_token(token_file)?;
    }
    Ok(ctx)
}
