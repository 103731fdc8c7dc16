//! HTTPS: the `[server] tls_cert` and `tls_key` PEM files loaded into a rustls acceptor
//! that offers HTTP/2 and HTTP/1.1 by ALPN, on the `ring` crypto provider the workspace
//! builds (named here rather than installed as the process default, so loading it changes
//! nothing for the rest of the process).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

/// The acceptor for `server`'s certificate and key, or `None` when TLS is not configured.
///
/// # Errors
/// A message naming the key at fault (`server.tls_cert …` or `server.tls_key …`): a file
/// that cannot be read, holds no certificate or key, or a key that does not match the
/// certificate.
pub fn acceptor(server: &ServerConfig) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert_path), Some(key_path)) = (&server.tls_cert, &server.tls_key) else {
        return Ok(None);
    };
    let cert_error =
        |e: &dyn std::fmt::Display| format!("server.tls_cert {}: {e}", cert_path.display());
    let key_error =
        |e: &dyn std::fmt::Display| format!("server.tls_key {}: {e}", key_path.display());
    let chain =
        CertificateDer::pem_slice_iter(&std::fs::read(cert_path).map_err(|e| cert_error(&e))?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(&e))?;
    if chain.is_empty() {
        return Err(cert_error(&"no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(key_path).map_err(|e| key_error(&e))?)
        .map_err(|e| key_error(&format!("no private key in the file ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(&e))?
        .with_no_client_auth()
        // Also checks that the key belongs to the certificate, and that ring can use it.
        .with_single_cert(chain, key)
        .map_err(|e| key_error(&e))?;
    config.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn server(cert: &Path, key: &Path) -> ServerConfig {
        ServerConfig {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn no_tls_configured_is_plain_http() {
        assert!(acceptor(&ServerConfig::default()).unwrap().is_none());
    }

    #[test]
    fn unreadable_or_empty_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a PEM file\n").unwrap();
        let error = acceptor(&server(&missing, &empty)).err().unwrap();
        assert!(error.starts_with("server.tls_cert "), "{error}");
        assert!(error.contains("missing.pem"), "{error}");
        let error = acceptor(&server(&empty, &empty)).err().unwrap();
        assert!(error.starts_with("server.tls_cert "), "{error}");
        assert!(error.contains("no CERTIFICATE"), "{error}");
    }
}
