//! TLS material from files: PEM certificates and private keys, read once when a listener or a
//! client is built.
//!
//! Every TLS-speaking part of flowgate reads its files here (the listener's certificate, key
//! and client CA, the upstream's CA and client certificate, an issuer's CA), so a missing or
//! unreadable file reads the same everywhere: the path and the one reason. The caller says
//! which setting the file was for (`listen.tls`, `upstream`, an issuer), because only it knows.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used. Its message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read `{}`: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{}` is not PEM: {reason}", .path.display())]
    NotPem { path: PathBuf, reason: String },
    #[error("`{}` holds no certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("`{}` holds no private key", .path.display())]
    NoKey { path: PathBuf },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read { path: path.to_owned(), source })
}

/// Every certificate of a PEM bundle; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let data = read(path)?;
    let certs = rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::NotPem { path: path.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let data = read(path)?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| PemError::NotPem { path: path.to_owned(), reason: e.to_string() })?
        .ok_or_else(|| PemError::NoKey { path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_problem_names_the_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let message = read_certs(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("cannot read `{}`: ", missing.display())), "{message}");
        assert_eq!(message.matches("missing.pem").count(), 1, "{message}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(read_certs(&empty).unwrap_err().to_string(), format!("`{}` holds no certificate", empty.display()));
        assert_eq!(read_key(&empty).unwrap_err().to_string(), format!("`{}` holds no private key", empty.display()));
    }
}
