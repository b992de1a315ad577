//! A throwaway OIDC issuer for the flowgate target: a key made at start (ES256, or RS256 with
//! [`Issuer::start_with`]: what GitHub Actions, GitLab and Okta sign with), its JWKS (and a
//! discovery document) served over HTTP/1 on 127.0.0.1, and a token for the bench principal
//! signed with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const KID: &str = "bench-key-1";
pub const AUDIENCE: &str = "flowgate-bench";
pub const SUBJECT: &str = "loadgen";

pub struct Issuer {
    pub url: String,
    pub jwks_uri: String,
    pub algorithm: jsonwebtoken::Algorithm,
    key: Key,
}

enum Key {
    /// The P-256 key, PEM.
    Es256(String),
    Rs256(aws_lc_rs::rsa::KeyPair),
}

impl Issuer {
    /// An ES256 issuer.
    pub async fn start() -> anyhow::Result<Issuer> {
        Issuer::start_with(jsonwebtoken::Algorithm::ES256).await
    }

    /// Binds an ephemeral port and serves `/jwks` and the discovery document from a task.
    /// `algorithm`: ES256 or RS256 (2048-bit).
    pub async fn start_with(algorithm: jsonwebtoken::Algorithm) -> anyhow::Result<Issuer> {
        let (key, jwk) = match algorithm {
            jsonwebtoken::Algorithm::ES256 => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let point = key.public_key_raw(); // 0x04 || x || y
                anyhow::ensure!(point.len() == 65 && point[0] == 4, "unexpected P-256 public key encoding");
                let jwk = serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                });
                (Key::Es256(key.serialize_pem()), jwk)
            }
            jsonwebtoken::Algorithm::RS256 => {
                use aws_lc_rs::signature::KeyPair;
                let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| anyhow::anyhow!("cannot generate an RSA key"))?;
                let (n, e) = (key.public_key().modulus(), key.public_key().exponent());
                let jwk = serde_json::json!({
                    "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                    "n": URL_SAFE_NO_PAD.encode(n.big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(e.big_endian_without_leading_zero()),
                });
                (Key::Rs256(key), jwk)
            }
            other => anyhow::bail!("the bench issuer signs ES256 or RS256, not {other:?}"),
        };
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let jwks_uri = format!("{url}/jwks");
        let discovery = serde_json::json!({
            "issuer": url, "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": [format!("{algorithm:?}")],
        })
        .to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (jwks, discovery) = (jwks.clone(), discovery.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = match req.uri().path() {
                            "/jwks" => Some(jwks.clone()),
                            "/.well-known/openid-configuration" => Some(discovery.clone()),
                            _ => None,
                        };
                        async move {
                            let resp = match body {
                                Some(b) => Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(b))),
                                None => Response::builder().status(404).body(Full::new(Bytes::new())),
                            };
                            Ok::<_, Infallible>(resp.expect("response"))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Issuer { url, jwks_uri, algorithm, key })
    }

    /// A one-hour bearer token for `bench:loadgen`.
    /// The `[[issuers]]` table of a flowgate config that trusts this issuer's tokens, the bench
    /// principal a `Temporal::Service` (`bench:loadgen`).
    pub fn config_table(&self) -> String {
        format!(
            "[[issuers]]\nname = \"bench\"\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{AUDIENCE}\"]\nprincipal = \"Service\"\nalgorithms = [\"{:?}\"]\n",
            self.url, self.jwks_uri, self.algorithm
        )
    }

    pub fn token(&self) -> anyhow::Result<String> {
        self.token_with_jti(None)
    }

    /// The same, with a `jti` (token exchange takes each one once).
    pub fn token_with_jti(&self, jti: Option<&str>) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = serde_json::json!({
            "iss": self.url, "sub": SUBJECT, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 3600,
        });
        if let Some(jti) = jti {
            claims["jti"] = jti.into();
        }
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.kid = Some(KID.into());
        match &self.key {
            Key::Es256(pem) => {
                let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?;
                let token = jsonwebtoken::encode(&header, &claims, &key)?;
                // flowgate refuses high-s ES256 signatures by default, and half of these are high-s.
                Ok(flowgate::ecdsa::normalize_token(jsonwebtoken::Algorithm::ES256, token))
            }
            Key::Rs256(key) => {
                let signing_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
                );
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
            }
        }
    }
}
