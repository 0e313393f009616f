//! The QUIC client configuration: server certificate verified against a user-given
//! PEM file (there is deliberately no way to skip verification).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::ClientError;

/// The quinn client config [`Client`](crate::Client) uses by default: trusts only the
/// certificates in `ca_pem`, ALPN `chat/1`, keep-alives every 10 s, a gateway silent for
/// [`DEFAULT_IDLE_TIMEOUT`](crate::DEFAULT_IDLE_TIMEOUT) counts as gone. Public for tests
/// that speak raw QUIC.
pub fn quic_client_config(ca_pem: impl AsRef<Path>) -> Result<quinn::ClientConfig, ClientError> {
    client_config(ca_pem.as_ref(), crate::DEFAULT_IDLE_TIMEOUT)
}

/// As [`quic_client_config`], with keep-alives every third of `idle_timeout`.
pub(crate) fn client_config(
    ca_pem: &Path,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, ClientError> {
    let roots = load_roots(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Connect(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![chat_protocol::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Connect(format!("TLS setup: {e}")))?;

    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(idle_timeout / 3))
        .max_idle_timeout(Some(IdleTimeout::try_from(idle_timeout).map_err(|_| {
            ClientError::Connect(format!("idle timeout {idle_timeout:?} is too long"))
        })?))
        // The gateway opens exactly one push stream; the client opens the control stream.
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .max_concurrent_bidi_streams(VarInt::from_u32(0));
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    let pem = std::fs::read(path)
        .map_err(|e| ClientError::Connect(format!("reading CA file {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            ClientError::Connect(format!("parsing CA file {}: {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            ClientError::Connect(format!("bad certificate in {}: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::Connect(format!(
            "no certificate found in CA file {}",
            path.display()
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_file_is_a_connect_error() {
        let err = quic_client_config(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");

        let dir = std::env::temp_dir().join(format!("chat-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let err = quic_client_config(&empty).unwrap_err();
        assert!(matches!(err, ClientError::Connect(ref m) if m.contains("no certificate")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
