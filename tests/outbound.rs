//! Outbound HTTP in a cluster: an issuer served over TLS by a private CA (as the Kubernetes API
//! server is, at `https://kubernetes.default.svc`), which serves its keys only to callers with a
//! bearer token, which goes nowhere else; and the proxy variables (`HTTPS_PROXY`, `NO_PROXY`)
//! for the token exchange, which loopback never goes through.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flowgate::authn::HttpFetcher;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A CA and a certificate it signed for `localhost`, as PEM.
struct PrivateCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn private_ca() -> PrivateCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "idp.test".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    PrivateCa { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// An HTTPS server on 127.0.0.1 (certificate for `localhost`) that answers `GET <path>` with
/// the document set for it, but only with `Authorization: Bearer <token>` when a token is
/// required (401 otherwise, like the Kubernetes API server without anonymous discovery).
#[derive(Clone)]
struct TlsIdp {
    base: String,
    documents: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    required_token: Arc<Mutex<Option<String>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl TlsIdp {
    async fn start(ca: &PrivateCa) -> TlsIdp {
        let certs = rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut ca.key_pem.as_bytes()).unwrap().unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = TlsIdp {
            base: format!("https://localhost:{}", listener.local_addr().unwrap().port()),
            documents: Arc::default(),
            required_token: Arc::default(),
            authorizations: Arc::default(),
            fetches: Arc::default(),
        };
        let served = idp.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (acceptor, served) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let served = served.clone();
                        async move { Ok::<_, std::convert::Infallible>(served.answer(&request)) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        idp
    }

    fn answer(&self, request: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let authorization =
            request.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        self.authorizations.lock().unwrap().push(authorization.clone());
        let respond = |status: u16, body: String| {
            http::Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap()
        };
        if let Some(token) = self.required_token.lock().unwrap().as_deref()
            && authorization != format!("Bearer {token}")
        {
            return respond(401, r#"{"kind":"Status","code":401}"#.into());
        }
        match self.documents.lock().unwrap().get(request.uri().path()) {
            Some(document) => respond(200, document.to_string()),
            None => respond(404, "not found".into()),
        }
    }

    fn serve(&self, path: &str, document: serde_json::Value) {
        self.documents.lock().unwrap().insert(path.to_owned(), document);
    }

    fn require_token(&self, token: &str) {
        *self.required_token.lock().unwrap() = Some(token.to_owned());
    }

    fn last_authorization(&self) -> String {
        self.authorizations.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn keys_behind_a_private_ca_are_fetched_with_that_ca_and_the_rotating_token() {
    let ca = private_ca();
    let idp = TlsIdp::start(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.crt", &ca.ca_pem);
    let token_file = write(dir.path(), "token", "first-token\n");
    idp.serve("/openid/v1/jwks", serde_json::json!({"keys": []}));
    idp.require_token("first-token");
    let url = format!("{}/openid/v1/jwks", idp.base);

    // The system roots alone do not know the cluster's CA: refused, and the reason says why.
    let error = HttpFetcher::new().unwrap().get_json(&url).await.unwrap_err().to_string();
    assert!(error.starts_with(&format!("cannot reach `{url}`: ")), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "the reason names the certificate: {error}");
    assert_eq!(error.matches(&url).count(), 1, "the URL is said once: {error}");

    // With the CA but no token: the server's 401, as a status.
    let no_token = HttpFetcher::for_issuer(Some(&ca_file), None, &[]).unwrap();
    assert_eq!(no_token.get_json(&url).await.unwrap_err().to_string(), format!("`{url}` answered HTTP 401"));

    // With both: fetched, with the token the file holds now, trimmed.
    let fetcher = HttpFetcher::for_issuer(Some(&ca_file), Some(&token_file), &[&idp.base]).unwrap();
    assert_eq!(fetcher.get_json(&url).await.unwrap(), serde_json::json!({"keys": []}));
    assert_eq!(idp.last_authorization(), "Bearer first-token");

    // The kubelet rotates the projected token: the next fetch reads the new one.
    std::fs::write(&token_file, "second-token").unwrap();
    idp.require_token("second-token");
    fetcher.get_json(&url).await.unwrap();
    assert_eq!(idp.last_authorization(), "Bearer second-token");

    // A token file that is gone is a clear fetch error, not a request without a token.
    std::fs::remove_file(&token_file).unwrap();
    let before = idp.fetches.load(Ordering::SeqCst);
    let error = fetcher.get_json(&url).await.unwrap_err().to_string();
    assert!(error.contains("cannot read `fetch_token_file`"), "{error}");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), before, "nothing was sent");
}

#[tokio::test]
async fn the_fetch_token_goes_to_the_issuers_own_https_origin_only() {
    let ca = private_ca();
    let (issuer, elsewhere) = (TlsIdp::start(&ca).await, TlsIdp::start(&ca).await);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.crt", &ca.ca_pem);
    let token_file = write(dir.path(), "token", "pod-token");
    // The issuer's discovery names keys on another server (a bucket, a CDN, an attacker).
    issuer.serve(
        "/.well-known/openid-configuration",
        serde_json::json!({"issuer": issuer.base, "jwks_uri": format!("{}/keys", elsewhere.base)}),
    );
    elsewhere.serve("/keys", serde_json::json!({"keys": [SigningKey::es256("k").jwk]}));
    let fetcher = HttpFetcher::for_issuer(Some(&ca_file), Some(&token_file), &[&issuer.base]).unwrap();
    let store = flowgate::authn::KeyStore::new(
        "k8s",
        &issuer.base,
        flowgate::authn::presets::KeySource::Discovery,
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(60),
        fetcher,
        Arc::new(flowgate::telemetry::Metrics::new()),
    );
    assert!(!store.refresh().await, "the keys elsewhere are not fetched with the token");
    assert_eq!(issuer.last_authorization(), "Bearer pod-token", "the issuer itself got it");
    assert_eq!(elsewhere.fetches.load(Ordering::SeqCst), 0, "the other server saw no request at all");
    let error = store.key("k").await.err().expect("no key").to_string();
    assert!(error.contains("is sent only to the issuer's own origin"), "{error}");

    // A discovered `jwks_uri` over plain http is refused, token or not.
    issuer.serve(
        "/.well-known/openid-configuration",
        serde_json::json!({"issuer": issuer.base, "jwks_uri": "http://keys.example/jwks"}),
    );
    let store = flowgate::authn::KeyStore::new(
        "plain",
        &issuer.base,
        flowgate::authn::presets::KeySource::Discovery,
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(60),
        HttpFetcher::for_issuer(Some(&ca_file), None, &[]).unwrap(),
        Arc::new(flowgate::telemetry::Metrics::new()),
    );
    assert!(!store.refresh().await);
    let error = store.key("k").await.err().expect("no key").to_string();
    assert!(error.contains("`jwks_uri` `http://keys.example/jwks` is not https://"), "{error}");

    // Nor is a token ever configured for a plain-http issuer.
    let refused = HttpFetcher::for_issuer(None, Some(&token_file), &["http://127.0.0.1:8080"]).err().unwrap();
    assert_eq!(refused.to_string(), "`fetch_token_file` needs https://, and `http://127.0.0.1:8080` is not");
}

#[tokio::test]
async fn an_issuer_with_its_own_ca_and_fetch_token_authenticates_callers() {
    let ca = private_ca();
    let idp = TlsIdp::start(&ca).await;
    let key = SigningKey::es256("cluster-key");
    idp.serve("/openid/v1/jwks", serde_json::json!({"keys": [key.jwk.clone()]}));
    idp.require_token("pod-token");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.crt", &ca.ca_pem);
    let token_file = write(dir.path(), "token", "pod-token");

    // Gateway::start waits on `fetches` of the Jwks it is given: share the TLS server's counter.
    let jwks = Jwks {
        url: format!("{}/openid/v1/jwks", idp.base),
        document: Arc::default(),
        fetches: idp.fetches.clone(),
        down: Arc::default(),
    };
    let upstream = Upstream::start().await;
    let mut setup = Setup::new(&upstream);
    setup.issuer_extra = format!("ca = \"{}\"\nfetch_token_file = \"{}\"", ca_file.display(), token_file.display());
    let gateway = Gateway::start(&jwks, setup).await;
    let mut client = Client::connect(gateway.addr).await;
    let token = key.sign(&claims("alice", &["deployers"]));
    let start = start_request("payments", "deploy-1", "DeployWorkflow", "deploys");
    let reply = client.unary("StartWorkflowExecution", Some(&token), &start).await;
    assert_eq!(reply.code(), "0", "{reply:?}");
    assert_eq!(idp.last_authorization(), "Bearer pod-token");
    assert_eq!(upstream.calls().len(), 1);
    gateway.stop().await.unwrap();
}

#[test]
fn an_issuer_ca_that_cannot_be_read_is_refused_at_load_naming_the_issuer_and_file() {
    let upstream_free = "http://127.0.0.1:1";
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema()).unwrap();
    std::fs::write(policies.join("none.cedar"), "").unwrap();
    let config = write(
        dir.path(),
        "flowgate.toml",
        &format!(
            r#"
            [listen]
            address = "127.0.0.1:0"
            [upstream]
            address = "{upstream_free}"
            [policy]
            dir = "policies"
            [audit]
            path = "-"
            [[issuers]]
            name = "k8s"
            preset = "kubernetes"
            issuer = "https://kubernetes.default.svc.cluster.local"
            audiences = ["flowgate"]
            ca = "missing-ca.crt"
            "#
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let missing = dir.path().join("missing-ca.crt");
    assert!(
        stderr.contains(&format!("invalid value for `issuers.k8s.ca`: cannot read `{}`: ", missing.display())),
        "relative to the config file, naming the setting: {stderr}"
    );
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "the reason once: {stderr}");
}

/// A forward proxy that only speaks CONNECT, and counts the tunnels it opened.
async fn connect_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = Arc::new(AtomicUsize::new(0));
    let counted = tunnels.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(stream);
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                let target = line.strip_prefix("CONNECT ").and_then(|rest| rest.split(' ').next()).unwrap().to_owned();
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                // The test's hosts live on 127.0.0.1: resolve them as the proxy would.
                let (_, port) = target.rsplit_once(':').unwrap();
                let mut server =
                    tokio::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                client.get_mut().write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(client.get_mut(), &mut server).await;
            });
        }
    });
    (url, tunnels)
}

#[tokio::test]
async fn the_token_exchange_goes_through_https_proxy_except_to_no_proxy_hosts_and_loopback() {
    let ca = private_ca();
    let idp = TlsIdp::start(&ca).await;
    // `idp.test` resolves nowhere but at the proxy (which sends it to 127.0.0.1): a request that
    // skips the proxy cannot reach it. `localhost` is loopback, which never goes through one.
    let remote = idp.base.replace("localhost", "idp.test");
    for base in [&remote, &idp.base] {
        idp.serve(
            "/.well-known/openid-configuration",
            serde_json::json!({"issuer": base, "token_endpoint": format!("{base}/oauth2/token")}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.crt", &ca.ca_pem);
    let (proxy, tunnels) = connect_proxy().await;
    let exchange = |gateway: &str, no_proxy: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowgate"));
        command
            .args(["token", "exchange", "--gateway", gateway, "--ca"])
            .arg(&ca_file)
            .args(["--subject-token-env", "SUBJECT", "--scope", "namespace:payments role:read"])
            .env("SUBJECT", "a.b.c")
            .env("HTTPS_PROXY", &proxy)
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env_remove("no_proxy")
            .env("NO_PROXY", no_proxy);
        command.output()
    };

    // Through the proxy: discovery, then the token request (not served: 404).
    let output = exchange(&remote, "").await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oauth2/token` answered HTTP 404"), "both requests through the proxy: {stderr}");
    assert!(tunnels.load(Ordering::SeqCst) >= 1, "the proxy opened the tunnel");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    let (tunnels_before, fetched) = (tunnels.load(Ordering::SeqCst), idp.fetches.load(Ordering::SeqCst));

    // NO_PROXY names the host: straight there, which cannot resolve it.
    let output = exchange(&remote, "idp.test").await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot reach `{remote}/.well-known/openid-configuration`")), "{stderr}");
    assert_eq!(tunnels.load(Ordering::SeqCst), tunnels_before, "NO_PROXY: not through the proxy");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetched);

    // Loopback, with the proxy set and no NO_PROXY: straight to the server.
    let output = exchange(&idp.base, "").await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oauth2/token` answered HTTP 404"), "{stderr}");
    assert_eq!(tunnels.load(Ordering::SeqCst), tunnels_before, "loopback never goes through a proxy");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetched + 2);
}
