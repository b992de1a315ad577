//! Signing keys: a directory of P-256 keys, which one signs, which ones are published.
//!
//! Each key is a PKCS#8 PEM file in `mint.key_dir`. Files that flowgate generates are named
//! after the moment they were made (`20261123T120000Z.pem`), which is also the start of their
//! publication; other `*.pem` files (an operator's own keys) count as made long ago. The `kid`
//! is the key's RFC 7638 thumbprint, so it never depends on the file name.
//!
//! Rotation without downtime follows from two rules, applied at every moment `now`:
//!
//! * a key signs once it has been published for `key_publish_ahead` (verifiers such as
//!   Temporal re-read a JWKS only every so often, so they must have seen a key before its first
//!   token reaches them); the newest such key signs. A fresh install with a single key signs
//!   with it at once, since nothing can have cached an older JWKS;
//! * a key stays published until the key after it has been signing for longer than a
//!   credential lives (plus a minute of clock skew): by then every token it signed has expired.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, ParsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Clock skew allowed between flowgate and whoever verifies its credentials.
const SKEW: Duration = Duration::from_secs(60);

/// Why the key directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key directory `{dir}`: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot write key `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("key file `{path}` is not a PKCS#8 P-256 private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// One signing key.
pub struct SigningKey {
    pub kid: String,
    /// When it was made (and first published).
    pub created: SystemTime,
    pub path: PathBuf,
    pub encoding: EncodingKey,
    /// The public half, parsed once: what a worker credential presented back is checked with.
    pub verifying: ParsedPublicKey,
    /// Its public JWK, as published.
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("path", &self.path).finish()
    }
}

/// The keys of a directory, oldest first, with the schedule that says which one signs.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<SigningKey>>,
    publish_ahead: Duration,
    credential_lifetime: Duration,
}

const STAMP_FORMAT_LEN: usize = "20261123T120000Z".len();

/// `20261123T120000Z` for a moment.
fn stamp(at: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string(); // 2026-11-23T12:00:00Z
    rfc3339.replace(['-', ':'], "")
}

fn parse_stamp(name: &str) -> Option<SystemTime> {
    if name.len() != STAMP_FORMAT_LEN {
        return None;
    }
    let b = name.as_bytes();
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &name[0..4],
        &name[4..6],
        &name[6..8],
        &name[9..11],
        &name[11..13],
        &name[13..15]
    );
    if b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    humantime::parse_rfc3339(&rfc3339).ok()
}

impl SigningKey {
    fn from_pkcs8(der: &[u8], path: PathBuf, created: SystemTime) -> Result<SigningKey, KeyError> {
        let bad = |reason: String| KeyError::BadKey { path: path.clone(), reason };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| bad(e.to_string()))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(bad("unexpected public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638: the required members, sorted, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let verifying = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).map_err(|e| bad(e.to_string()))?;
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
        Ok(SigningKey { kid, created, path, encoding: EncodingKey::from_ec_der(der), verifying, jwk })
    }

    /// Reads one PEM file.
    pub fn read(path: &Path) -> Result<SigningKey, KeyError> {
        let bad = |reason: String| KeyError::BadKey { path: path.to_owned(), reason };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let der = match rustls_pemfile::private_key(&mut text.as_slice()) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => der.secret_pkcs8_der().to_vec(),
            Ok(Some(_)) => return Err(bad("not PKCS#8 (convert with `openssl pkcs8 -topk8 -nocrypt`)".into())),
            Ok(None) => return Err(bad("no private key in the file".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let created = path.file_stem().and_then(|s| s.to_str()).and_then(parse_stamp).unwrap_or(UNIX_EPOCH);
        SigningKey::from_pkcs8(&der, path.to_owned(), created)
    }
}

/// Generates a key into `dir`, named after `now`. Returns its path and kid.
pub fn generate(dir: &Path, now: SystemTime) -> Result<(PathBuf, String), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write { path: dir.to_owned(), source })?;
    let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let der = document.as_ref();
    let mut path = dir.join(format!("{}.pem", stamp(now)));
    let mut second = 0;
    while path.exists() {
        second += 1;
        path = dir.join(format!("{}.pem", stamp(now + Duration::from_secs(second))));
    }
    let key = SigningKey::from_pkcs8(der, path.clone(), now)?;
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    write_private(&path, pem.as_bytes()).map_err(|source| KeyError::Write { path: path.clone(), source })?;
    Ok((path, key.kid))
}

/// Writes a file only its owner can read, atomically (temporary file, then rename).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("pem.tmp");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

impl KeySet {
    /// Reads every `*.pem` of `dir`; generates the first key when there is none.
    pub fn load(dir: &Path, publish_ahead: Duration, credential_lifetime: Duration) -> Result<KeySet, KeyError> {
        let read_dir = |source| KeyError::ReadDir { dir: dir.to_owned(), source };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(read_dir)?;
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "pem") && path.is_file())
            .collect();
        if paths.is_empty() {
            let (path, kid) = generate(dir, SystemTime::now())?;
            tracing::info!(path = %path.display(), %kid, "generated the first signing key");
            paths.push(path);
        }
        let mut keys = paths.iter().map(|p| SigningKey::read(p).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.kid.cmp(&b.kid)));
        keys.dedup_by(|a, b| a.kid == b.kid);
        Ok(KeySet { keys, publish_ahead, credential_lifetime })
    }

    /// When key `index` starts signing.
    fn signs_from(&self, index: usize) -> SystemTime {
        if index == 0 { self.keys[0].created } else { self.keys[index].created + self.publish_ahead }
    }

    /// The key that signs at `now`: the newest one published long enough.
    pub fn signing_key(&self, now: SystemTime) -> &Arc<SigningKey> {
        let index = (0..self.keys.len()).rev().find(|&i| self.signs_from(i) <= now).unwrap_or(0);
        &self.keys[index]
    }

    /// The keys to publish (and accept) at `now`: every key from the one before the signing key
    /// on, as long as its successor has not been signing longer than a credential lives.
    pub fn published(&self, now: SystemTime) -> impl Iterator<Item = &Arc<SigningKey>> {
        (0..self.keys.len())
            .filter(move |&i| match self.keys.get(i + 1) {
                None => true,
                Some(_) => now < self.signs_from(i + 1) + self.credential_lifetime + SKEW,
            })
            .map(|i| &self.keys[i])
    }

    /// A published key by `kid`.
    pub fn verifying_key(&self, kid: &str, now: SystemTime) -> Option<&Arc<SigningKey>> {
        self.published(now).find(|key| key.kid == kid)
    }

    /// The JWKS document.
    pub fn jwks(&self, now: SystemTime) -> Value {
        json!({"keys": self.published(now).map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn stamps_round_trip() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(parse_stamp(&stamp(at)), Some(at));
        assert_eq!(parse_stamp("my-own-key"), None);
    }

    #[test]
    fn the_first_key_is_generated_and_signs_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let set = KeySet::load(dir.path(), 15 * MINUTE, 10 * MINUTE).unwrap();
        let now = SystemTime::now();
        assert_eq!(set.published(now).count(), 1);
        let signing = set.signing_key(now);
        assert_eq!(set.jwks(now)["keys"][0]["kid"], signing.kid.as_str());
        let mode = std::fs::metadata(&signing.path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        // Reloading reads the same key back.
        let again = KeySet::load(dir.path(), 15 * MINUTE, 10 * MINUTE).unwrap();
        assert_eq!(again.signing_key(now).kid, signing.kid);
    }

    #[test]
    fn a_new_key_is_published_before_it_signs_and_the_old_one_stays_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let (_, old) = generate(dir.path(), t0).unwrap();
        let t1 = t0 + 60 * MINUTE;
        let (_, new) = generate(dir.path(), t1).unwrap();
        let set = KeySet::load(dir.path(), 15 * MINUTE, 10 * MINUTE).unwrap();
        let kids = |now| set.published(now).map(|k| k.kid.clone()).collect::<Vec<_>>();

        // Published at once, not signing yet.
        assert_eq!(kids(t1), [old.clone(), new.clone()]);
        assert_eq!(set.signing_key(t1 + 14 * MINUTE).kid, old);
        // Signs after `publish_ahead`.
        assert_eq!(set.signing_key(t1 + 15 * MINUTE).kid, new);
        // The old key stays while tokens it signed last may live (10 min + 1 min skew) ...
        assert_eq!(kids(t1 + 15 * MINUTE + 10 * MINUTE), [old.clone(), new.clone()]);
        assert!(set.verifying_key(&old, t1 + 25 * MINUTE + Duration::from_secs(59)).is_some());
        // ... and goes after.
        assert_eq!(kids(t1 + 15 * MINUTE + 11 * MINUTE), [new]);
        assert!(set.verifying_key(&old, t1 + 27 * MINUTE).is_none());
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let err = KeySet::load(dir.path(), MINUTE, MINUTE).unwrap_err();
        assert!(err.to_string().contains("broken.pem"), "{err}");
    }
}
