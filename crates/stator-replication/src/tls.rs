//! Mutual TLS for the replica transport (optional; the cluster-secret handshake alone is
//! the default).
//!
//! With TLS configured, every transport connection is TLS 1.3 (rustls, ring provider):
//! the listener requires a client certificate and the dialer checks the listener's, both
//! against the configured CA, and the cluster-secret handshake then runs inside the
//! encrypted stream. A dialer checks the listener's certificate against the host part of
//! the address it dials, so each node's certificate must name that address (an IP or DNS
//! subject alternative name). Clients (gateways, benchmarks) present a certificate too.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where a node's TLS material lives, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain, leaf first.
    pub cert_pem_path: PathBuf,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_pem_path: PathBuf,
    /// The CA certificate(s) every peer's certificate must chain to.
    pub ca_pem_path: PathBuf,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("cannot load the {what} from {path}: {reason}; pass a readable PEM file")]
    Pem {
        /// Which item: certificate chain, private key or CA certificates.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the certificate, a CA that
    /// is not a certificate).
    #[error("TLS setup refused: {0}; check that the key belongs to the certificate and the CA file holds the CA")]
    Setup(String),
}

/// Loaded TLS settings of one transport endpoint: it both dials and accepts.
#[derive(Clone)]
pub struct TransportTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for TransportTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportTls(TLS 1.3, mutual)")
    }
}

fn pem_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no CERTIFICATE section found"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TransportTls {
    /// Reads the PEM files and builds the TLS 1.3 server and client settings.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let chain = load_certs("certificate chain", &config.cert_pem_path)?;
        let key = PrivateKeyDer::from_pem_file(&config.key_pem_path)
            .map_err(|e| pem_error("private key", &config.key_pem_path, e))?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs("CA certificates", &config.ca_pem_path)? {
            roots
                .add(ca)
                .map_err(|e| pem_error("CA certificates", &config.ca_pem_path, e))?;
        }
        let roots = Arc::new(roots);
        let setup = |e: rustls::Error| TlsError::Setup(e.to_string());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(setup)?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(setup)?;
        Ok(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        }))
    }

    /// Runs the TLS handshake as the dialer of `addr` (`host:port`); the listener's
    /// certificate must name `host`.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(server_name(addr)?, tcp).await
    }

    /// Runs the TLS handshake as the listener; fails unless the dialer presents a
    /// certificate from the CA.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }
}

/// The name a listener's certificate must carry: the host part of `host:port`
/// (brackets of an IPv6 literal removed).
fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::other(format!(
            "cannot check a certificate for {addr}: {e}; dial a host name or IP address"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_host_part() {
        assert_eq!(
            server_name("127.0.0.1:7100").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7100").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("node-a.example:7100").unwrap(),
            ServerName::try_from("node-a.example").unwrap()
        );
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn missing_files_say_which_file() {
        let err = TransportTls::load(&TlsConfig {
            cert_pem_path: "/nonexistent/cert.pem".into(),
            key_pem_path: "/nonexistent/key.pem".into(),
            ca_pem_path: "/nonexistent/ca.pem".into(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
