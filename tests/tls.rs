//! The listener over TLS (ALPN h2) and with client certificates (mTLS).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: rustls::pki_types::CertificateDer<'static>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["worker".into()]).unwrap().signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.der().clone(),
        client_key: rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
        ca_der: ca.der().clone(),
    }
}

/// A gateway whose listener serves TLS with the test PKI (and requires client certificates
/// signed by its CA when `mtls`).
async fn start_tls_gateway(pki: &Pki, mtls: bool, jwks: &Jwks, upstream: &Upstream) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, ca) =
        (write("server.pem", &pki.server_cert), write("server.key", &pki.server_key), write("ca.pem", &pki.ca_pem));
    let client_ca = if mtls { format!(", client_ca = \"{ca}\"") } else { String::new() };
    let mut setup = Setup::new(upstream);
    setup.listen_extra = format!("tls = {{ cert = \"{cert}\", key = \"{key}\"{client_ca} }}");
    (Gateway::start(jwks, setup).await, dir)
}

async fn tls_call(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client_cert: bool,
    token: &str,
) -> Result<Option<String>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_cert {
        builder.with_client_auth_cert(vec![pki.client_cert.clone()], pki.client_key.clone_key()).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN negotiated h2");
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("https://localhost{WS}/StartWorkflowExecution"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(frame(&start_request("payments", "deploy-1", "DeployWorkflow", "deploys"), false))))
        .unwrap();
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    let status = parts.headers.get("grpc-status").or_else(|| collected.trailers().and_then(|t| t.get("grpc-status")));
    Ok(status.map(|s| s.to_str().unwrap().to_owned()))
}

#[tokio::test]
async fn tls_listener_serves_h2_and_mtls_requires_a_client_certificate() {
    let key = SigningKey::es256("key-1");
    let jwks = Jwks::start(&[&key]).await;
    let upstream = Upstream::start().await;
    let pki = pki();
    let token = key.sign(&claims("alice", &["deployers"]));

    let (gateway, _pem) = start_tls_gateway(&pki, false, &jwks, &upstream).await;
    assert_eq!(tls_call(gateway.addr, &pki, false, &token).await.unwrap().as_deref(), Some("0"));
    let (mtls, _mtls_pem) = start_tls_gateway(&pki, true, &jwks, &upstream).await;
    assert_eq!(tls_call(mtls.addr, &pki, true, &token).await.unwrap().as_deref(), Some("0"));
    assert!(tls_call(mtls.addr, &pki, false, &token).await.is_err(), "no client certificate, no call");
    assert_eq!(upstream.calls().len(), 2);
    gateway.stop().await.unwrap();
    mtls.stop().await.unwrap();
}
