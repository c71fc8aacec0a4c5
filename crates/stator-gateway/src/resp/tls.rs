//! TLS on the RESP endpoint (`expose.tls`): the acceptor built from the spec's PEM files.
//!
//! Server authentication only (rustls, TLS 1.2 and 1.3, ring provider), as `redis-cli
//! --tls --cacert ca.pem` and redis-py's `ssl=True` expect; clients prove who they are
//! with `AUTH` inside the encrypted stream. The files are read when a listener starts,
//! on the machine it runs on; a new certificate takes effect when the spec names new
//! files (`stator apply`) or the process restarts.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use stator_api::spec::RespTlsSpec;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its TLS handshake before the connection is dropped,
/// so a client that connects and says nothing does not hold a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for `spec`, or an error that names the file and what to fix.
pub fn acceptor(spec: &RespTlsSpec) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "expose.tls.cert_file {:?}: cannot read a PEM certificate chain on this host ({e}); every gateway and agent host needs the file",
                spec.cert_file
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "expose.tls.cert_file {:?} holds no PEM certificate",
            spec.cert_file
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key_file).map_err(|e| {
        format!(
            "expose.tls.key_file {:?}: cannot read a PEM private key on this host ({e}); every gateway and agent host needs the file",
            spec.key_file
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "expose.tls: the key in {:?} does not fit the certificate in {:?} ({e})",
                spec.key_file, spec.cert_file
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
