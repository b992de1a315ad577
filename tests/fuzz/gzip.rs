//! Target: gzip inflation with its cap.
//!
//! Streams of one to four gzip members (random bytes, long runs that inflate far past their
//! size, protobuf-looking data), at random compression levels, sometimes damaged (truncated, a
//! byte flipped, garbage after the last member, an empty stream), inflated under caps around
//! their real size. Oracle: flate2's own uncapped multi-member inflation. Properties:
//!
//! * the result never holds more than the cap, and its buffer never grows past twice the cap
//!   (the cap is a memory budget, not only an output limit);
//! * an undamaged stream under the cap inflates to exactly its members' data, concatenated
//!   (grpc-go inflates every member, so a second member must not go unread);
//! * `Ok` only when the reference inflates the whole stream to the same bytes; `InflatedTooLarge`
//!   only when the reference gets past the cap; `BadGzip` only when the reference fails first.

use std::io::{Read, Write};

use flowgate::temporal::inspect::{self, Framed, InspectError};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::proto::Damage;

#[derive(Debug, Clone)]
struct Stream {
    members: Vec<Vec<u8>>,
    level: u32,
    damage: Damage,
    trailing: Vec<u8>,
    cap: usize,
}

impl Stream {
    fn plain(&self) -> Vec<u8> {
        self.members.concat()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for member in &self.members {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(self.level));
            encoder.write_all(member).expect("writing to a Vec");
            out.extend(encoder.finish().expect("writing to a Vec"));
        }
        self.damage.apply(&mut out);
        out.extend(&self.trailing);
        out
    }

    fn damaged(&self) -> bool {
        !matches!(self.damage, Damage::None) || !self.trailing.is_empty()
    }
}

fn member() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..64),
        2 => (any::<u8>(), 1..20_000usize).prop_map(|(byte, n)| vec![byte; n]),
        1 => (vec(any::<u8>(), 1..8), 1..2_000usize).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

fn stream() -> impl Strategy<Value = Stream> {
    let trailing = prop_oneof![6 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..12), 1 => Just(vec![0x1f, 0x8b])];
    (vec(member(), 1..5), 0..10u32, crate::proto::damage(), trailing, any::<u16>(), 0..4u8).prop_map(
        |(members, level, damage, trailing, random, shape)| {
            let total: usize = members.iter().map(Vec::len).sum();
            // Caps at, just under and just over the real size, tiny ones, and generous ones.
            let cap = match shape {
                0 => total.saturating_sub(1),
                1 => total + usize::from(random % 2),
                2 => usize::from(random % 64),
                _ => usize::from(random),
            };
            Stream { members, level, damage, trailing, cap }
        },
    )
}

/// flate2's uncapped inflation: how many bytes come out before the end or the first error.
fn reference(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

pub fn check(bytes: &[u8], cap: usize, plain: Option<&[u8]>) -> Result<(), String> {
    let framed = Framed { compressed: true, message: bytes };
    let result = inspect::decompress(&framed, Some("gzip"), cap);
    let (full, complete) = reference(bytes);
    if let Some(plain) = plain
        && plain.len() <= cap
        && !matches!(&result, Ok(inflated) if **inflated == *plain)
    {
        return Err(format!(
            "{} bytes under the {cap}-byte cap did not inflate to themselves: {:?}",
            plain.len(),
            result.map(|r| r.len())
        ));
    }
    match result {
        Ok(inflated) => {
            if inflated.len() > cap {
                return Err(format!("{} bytes inflated past the {cap}-byte cap", inflated.len()));
            }
            if let std::borrow::Cow::Owned(buffer) = &inflated
                && buffer.capacity() > 2 * (cap + 1) + 64
            {
                return Err(format!("a {}-byte buffer for a {cap}-byte cap", buffer.capacity()));
            }
            if !complete || *inflated != *full {
                return Err(format!(
                    "inflated {} bytes where flate2 gets {} (complete: {complete})",
                    inflated.len(),
                    full.len()
                ));
            }
        }
        Err(InspectError::InflatedTooLarge { limit }) if limit == cap && full.len() > cap => {}
        Err(InspectError::BadGzip) if !complete && full.len() <= cap => {}
        Err(error) => return Err(format!("{error} where flate2 gets {} bytes (complete: {complete})", full.len())),
    }
    Ok(())
}

#[test]
fn gzip_corpus() {
    let mut replayed = 0;
    for (name, bytes) in crate::corpus("gzip") {
        for cap in [0, 1, 64, 65_536, 4 << 20] {
            check(&bytes, cap, None).unwrap_or_else(|e| panic!("corpus {name} (cap {cap}): {e}"));
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no gzip corpus");
}

#[test]
fn gzip_inflation_with_caps() {
    crate::run("gzip", crate::cases(1_500), stream(), |stream| {
        let bytes = stream.bytes();
        let plain = stream.plain();
        check(&bytes, stream.cap, (!stream.damaged()).then_some(&plain[..]))
    });
}

#[test]
fn encodings_other_than_gzip() {
    let message = [0x0a, 0x01, b'x'];
    let compressed = Framed { compressed: true, message: &message };
    assert_eq!(inspect::decompress(&compressed, None, 64).err(), Some(InspectError::CompressedWithoutEncoding));
    assert_eq!(
        inspect::decompress(&compressed, Some("identity"), 64).err(),
        Some(InspectError::CompressedWithoutEncoding)
    );
    assert_eq!(
        inspect::decompress(&compressed, Some("deflate"), 64).err(),
        Some(InspectError::UnsupportedEncoding("deflate".into()))
    );
    // An uncompressed message is the same bytes, not a copy, whatever the encoding header says.
    let plain = Framed { compressed: false, message: &message };
    let read = inspect::decompress(&plain, Some("gzip"), 1).unwrap();
    assert!(matches!(read, std::borrow::Cow::Borrowed(b) if b.as_ptr() == message.as_ptr()));
}
