//! Low-s ECDSA: one valid signature per signed message, not two.
//!
//! An ECDSA signature `(r, s)` has a twin `(r, n - s)` (`n` the curve order) that verifies
//! just as well, and anybody holding one can compute the other without the key. Whatever is
//! keyed on a token's text (the verified-token cache, and once the single-use check of tokens
//! without `jti`) sees two different tokens where the signer made one. The convention that
//! removes the twin (Bitcoin's BIP 62, libsecp256k1, Go's `crypto/ecdsa` does *not* follow it)
//! is to accept only the low form, `s ≤ n/2`, and to sign only that.
//!
//! JWS ECDSA signatures (RFC 7518 §3.4) are `r || s`, each the curve order's fixed width,
//! big-endian, so `s` is compared with `n - s` byte by byte, no big-number library needed.
//! Replay is keyed on the signed part anyway (see [`crate::mint::replay`]); refusing the twin
//! keeps every other token-keyed structure to one entry per signature too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

/// The order of P-256 (FIPS 186-4 D.1.2.3), big-endian.
const P256_ORDER: [u8; 32] = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
/// The order of P-384 (FIPS 186-4 D.1.2.4), big-endian.
const P384_ORDER: [u8; 48] =
    hex("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973");

const fn hex<const N: usize>(text: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len() == 2 * N, "hex of the wrong length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

/// The curve of an ECDSA JWS algorithm; `None` for every other algorithm.
fn order(algorithm: Algorithm) -> Option<&'static [u8]> {
    match algorithm {
        Algorithm::ES256 => Some(&P256_ORDER),
        Algorithm::ES384 => Some(&P384_ORDER),
        _ => None,
    }
}

/// What the `s` half of a signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S {
    /// `0 < s ≤ n/2`: the one form flowgate accepts by default.
    Low,
    /// `n/2 < s < n`: verifies, but is the twin of a low-s signature.
    High,
    /// Not a signature of this algorithm at all (wrong length, `s = 0`, `s ≥ n`).
    Invalid,
}

/// `n - s`, or `None` when `s` is not in `1..n`.
fn order_minus(order: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    if s.len() != order.len() || s.iter().all(|&b| b == 0) || s >= order {
        return None;
    }
    let mut out = vec![0u8; order.len()];
    let mut borrow = 0u16;
    for i in (0..order.len()).rev() {
        let subtrahend = u16::from(s[i]) + borrow;
        let minuend = u16::from(order[i]);
        if minuend >= subtrahend {
            out[i] = (minuend - subtrahend) as u8;
            borrow = 0;
        } else {
            out[i] = (minuend + 256 - subtrahend) as u8;
            borrow = 1;
        }
    }
    debug_assert_eq!(borrow, 0, "s < n");
    Some(out)
}

/// Classifies the raw (`r || s`) signature of `algorithm`; `None` if it is not ECDSA.
pub fn classify(algorithm: Algorithm, signature: &[u8]) -> Option<S> {
    let order = order(algorithm)?;
    if signature.len() != 2 * order.len() {
        return Some(S::Invalid);
    }
    let s = &signature[order.len()..];
    // Equal-width big-endian byte strings compare like the numbers they are; n is odd, so
    // `s > n - s` is exactly `s > n/2`.
    Some(match order_minus(order, s) {
        None => S::Invalid,
        Some(twin) if s > &twin[..] => S::High,
        Some(_) => S::Low,
    })
}

/// Classifies the signature of a compact JWS (`header.payload.signature`).
pub fn classify_token(algorithm: Algorithm, token: &str) -> Option<S> {
    order(algorithm)?;
    let signature = token.rsplit_once('.').map_or("", |(_, signature)| signature);
    match URL_SAFE_NO_PAD.decode(signature) {
        Ok(signature) => classify(algorithm, &signature),
        Err(_) => Some(S::Invalid),
    }
}

/// Rewrites a high-s signature to its low-s twin in place; a low-s or invalid one is left as
/// it is. Returns whether it changed.
pub fn normalize(algorithm: Algorithm, signature: &mut [u8]) -> bool {
    let Some(order) = order(algorithm) else { return false };
    if classify(algorithm, signature) != Some(S::High) {
        return false;
    }
    let twin = order_minus(order, &signature[order.len()..]).expect("a high s is below the order");
    signature[order.len()..].copy_from_slice(&twin);
    true
}

/// A compact JWS with its ECDSA signature in low-s form (other algorithms: unchanged).
pub fn normalize_token(algorithm: Algorithm, token: String) -> String {
    let Some((signed, signature)) = token.rsplit_once('.') else { return token };
    let Ok(mut raw) = URL_SAFE_NO_PAD.decode(signature) else { return token };
    if !normalize(algorithm, &mut raw) {
        return token;
    }
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
        ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm, KeyPair,
        UnparsedPublicKey,
    };

    use super::*;

    #[test]
    fn the_orders_are_the_curves() {
        // n is odd, and (n - 1) / 2 is the largest low s: its successor is the smallest high s.
        for (algorithm, order) in [(Algorithm::ES256, &P256_ORDER[..]), (Algorithm::ES384, &P384_ORDER[..])] {
            assert_eq!(order[order.len() - 1] & 1, 1);
            let mut half = order.to_vec(); // (n - 1) / 2: shift right by one bit
            let mut carry = 0;
            for byte in &mut half {
                let next = *byte & 1;
                *byte = (*byte >> 1) | (carry << 7);
                carry = next;
            }
            let signature = |s: &[u8]| [vec![1u8; order.len()], s.to_vec()].concat();
            assert_eq!(classify(algorithm, &signature(&half)), Some(S::Low));
            let mut above = half.clone();
            *above.last_mut().unwrap() += 1;
            assert_eq!(classify(algorithm, &signature(&above)), Some(S::High));
            assert_eq!(classify(algorithm, &signature(order)), Some(S::Invalid), "s = n");
            assert_eq!(classify(algorithm, &signature(&vec![0; order.len()])), Some(S::Invalid), "s = 0");
            assert_eq!(classify(algorithm, &signature(&vec![0xff; order.len()])), Some(S::Invalid), "s > n");
            assert_eq!(classify(algorithm, &[0; 10]), Some(S::Invalid), "wrong length");
        }
        assert_eq!(classify(Algorithm::RS256, &[0; 64]), None);
        assert_eq!(classify(Algorithm::EdDSA, &[0; 64]), None);
    }

    fn twins_verify_and_normalize(
        signing: &'static EcdsaSigningAlgorithm,
        verifying: &'static EcdsaVerificationAlgorithm,
        algorithm: Algorithm,
    ) {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
        let public = UnparsedPublicKey::new(verifying, pair.public_key().as_ref().to_vec());
        let mut seen_high = 0;
        for i in 0..64u32 {
            let message = i.to_be_bytes();
            let signature = pair.sign(&SystemRandom::new(), &message).unwrap().as_ref().to_vec();
            let mut twin = signature.clone();
            let width = twin.len() / 2;
            let flipped = order_minus(order(algorithm).unwrap(), &signature[width..]).unwrap();
            twin[width..].copy_from_slice(&flipped);
            public.verify(&message, &twin).expect("the twin verifies: that is the malleability");
            let kinds = (classify(algorithm, &signature).unwrap(), classify(algorithm, &twin).unwrap());
            assert!(matches!(kinds, (S::Low, S::High) | (S::High, S::Low)), "{kinds:?}");
            seen_high += usize::from(kinds.0 == S::High);
            let mut normalized = signature.clone();
            assert_eq!(normalize(algorithm, &mut normalized), kinds.0 == S::High);
            assert_eq!(classify(algorithm, &normalized), Some(S::Low));
            public.verify(&message, &normalized).unwrap();
        }
        assert!((8..=56).contains(&seen_high), "aws-lc-rs does not normalize: about half are high ({seen_high}/64)");
    }

    #[test]
    fn p256_twins_verify_and_normalize() {
        twins_verify_and_normalize(&ECDSA_P256_SHA256_FIXED_SIGNING, &ECDSA_P256_SHA256_FIXED, Algorithm::ES256);
    }

    #[test]
    fn p384_twins_verify_and_normalize() {
        twins_verify_and_normalize(&ECDSA_P384_SHA384_FIXED_SIGNING, &ECDSA_P384_SHA384_FIXED, Algorithm::ES384);
    }

    #[test]
    fn tokens_are_classified_by_their_signature_segment() {
        let high = [vec![1u8; 32], vec![0xf0; 32]].concat();
        let token = format!("h.p.{}", URL_SAFE_NO_PAD.encode(&high));
        assert_eq!(classify_token(Algorithm::ES256, &token), Some(S::High));
        let normalized = normalize_token(Algorithm::ES256, token.clone());
        assert!(normalized.starts_with("h.p.") && normalized != token);
        assert_eq!(classify_token(Algorithm::ES256, &normalized), Some(S::Low));
        assert_eq!(classify_token(Algorithm::ES256, "h.p.not base64!"), Some(S::Invalid));
        assert_eq!(classify_token(Algorithm::ES256, &format!("{token}=")), Some(S::Invalid), "no padding");
        assert_eq!(classify_token(Algorithm::RS256, &token), None);
        assert_eq!(normalize_token(Algorithm::RS256, token.clone()), token);
    }
}
