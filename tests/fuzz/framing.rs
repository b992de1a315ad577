//! Target: gRPC framing, the first message of a request body.
//!
//! Bodies are a 5-byte prefix (compressed flag, big-endian length) and some bytes, with the
//! announced length around the limit and around what actually arrived. Properties, straight
//! from the framing arithmetic: fewer than 5 bytes ask for more; a flag other than 0 or 1 is
//! refused (grpc-go refuses it too, so the gateway must not read such a message as something);
//! a length over the limit is refused before the message arrives; the message returned is
//! exactly the announced bytes after the prefix, never a byte past them.

use flowgate::temporal::inspect::{self, InspectError};
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Body {
    bytes: Vec<u8>,
    limit: usize,
}

fn body() -> impl Strategy<Value = Body> {
    let flag = prop_oneof![6 => 0..2u8, 1 => any::<u8>()];
    let limit = prop_oneof![0..64usize, Just(4 << 20), Just(u32::MAX as usize)];
    (flag, limit, any::<u32>(), 0..3u8, 0..80usize, any::<u8>()).prop_flat_map(
        |(flag, limit, random, shape, arrived, fill)| {
            // The announced length: small, at or just past the limit, or anything.
            let announced = match shape {
                0 => (arrived as u32).saturating_sub(random % 4),
                1 => u32::try_from(limit).unwrap_or(u32::MAX).saturating_add(random % 2),
                _ => random,
            };
            let mut bytes = vec![flag];
            bytes.extend(announced.to_be_bytes());
            (Just(bytes), vec(Just(fill), arrived), Just(limit), 0..7usize).prop_map(|(mut bytes, rest, limit, cut)| {
                bytes.extend(rest);
                // Sometimes the prefix itself is incomplete.
                if cut < 5 && bytes.len() > 5 {
                    bytes.truncate(cut);
                }
                Body { bytes, limit }
            })
        },
    )
}

pub fn check(bytes: &[u8], limit: usize) -> Result<(), String> {
    let result = inspect::first_message(bytes, limit);
    if bytes.len() < 5 {
        return match result {
            Ok(None) => Ok(()),
            other => Err(format!("{} bytes of prefix: {:?}", bytes.len(), other.map(|f| f.map(|f| f.message.len())))),
        };
    }
    let flag = bytes[0];
    let announced = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    match result {
        Err(InspectError::BadCompressedFlag(f)) if flag > 1 && f == flag => Ok(()),
        _ if flag > 1 => Err(format!("compressed flag {flag} was not refused")),
        Err(InspectError::TooLarge { size, limit: l }) if announced > limit && size == announced && l == limit => {
            Ok(())
        }
        _ if announced > limit => Err(format!("{announced} bytes over the {limit}-byte limit were not refused")),
        Ok(None) if bytes.len() < 5 + announced => Ok(()),
        Ok(Some(framed)) if bytes.len() >= 5 + announced => {
            let expected = &bytes[5..5 + announced];
            if framed.compressed != (flag == 1) {
                return Err(format!("flag {flag} read as compressed = {}", framed.compressed));
            }
            if framed.message.as_ptr() != expected.as_ptr() || framed.message.len() != announced {
                return Err(format!("message is not the {announced} announced bytes after the prefix"));
            }
            Ok(())
        }
        other => Err(format!(
            "{} bytes announcing {announced} (limit {limit}): {:?}",
            bytes.len(),
            other.map(|f| f.map(|f| f.message.len()))
        )),
    }
}

#[test]
fn framing_corpus() {
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("framing") {
        for limit in [0, 5, 4 << 20] {
            check(&bytes, limit).unwrap_or_else(|e| panic!("corpus {name} (limit {limit}): {e}"));
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no framing corpus");
}

#[test]
fn framing_first_message() {
    crate::run("framing", crate::cases(10_000), body(), |body| check(&body.bytes, body.limit));
}
