//! The gateway's TLS identity: the operator's certificate, or a self-signed one made on
//! first start and kept in `<data>/tls/` so clients can pin it across restarts.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;

use crate::auth::publish_file;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate chain and its key, and where the certificate file is.
pub struct Identity {
    pub cert_path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Loads `cert`/`key` when given; otherwise `<data>/tls/cert.pem` and `key.pem`, created on first start.
pub fn load_identity(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let dir = data_dir.join("tls");
            let paths = (dir.join("cert.pem"), dir.join("key.pem"));
            if !paths.0.exists() {
                generate_self_signed(&dir, &paths.0, &paths.1)?;
            }
            paths
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            reason: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Identity {
        cert_path,
        certs,
        key,
    })
}

fn generate_self_signed(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)?;
    // The certificate goes last: once it exists, its key does too. A key left by a start
    // that died in between is replaced.
    match std::fs::remove_file(key_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(key_path)(e)),
        _ => {}
    }
    let key_pem = generated.key_pair.serialize_pem();
    publish_file(key_path, key_pem.as_bytes(), 0o600).map_err(io(key_path))?;
    publish_file(cert_path, generated.cert.pem().as_bytes(), 0o644).map_err(io(cert_path))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate for localhost");
    Ok(())
}
