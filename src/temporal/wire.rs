//! A minimal protobuf wire-format reader.
//!
//! flowgate reads a handful of string fields from requests whose full schemas it does not carry.
//! Reading them by field number, without generated code, keeps inspection fast (no allocation
//! until a value is kept) and lets unknown fields pass untouched. Two protobuf rules matter for
//! security and are followed here exactly as the Go server follows them:
//!
//! * a singular field that occurs more than once takes its **last** value, and an embedded
//!   message that occurs more than once is the **merge** of its occurrences;
//! * an occurrence with a different wire type than the schema's is an unknown field, not a value.

/// The ways a message can fail to be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("malformed varint in protobuf message")]
    BadVarint,
    #[error("invalid protobuf wire type `{0}`")]
    BadWireType(u8),
    #[error("protobuf field number 0")]
    FieldZero,
    #[error("string field is not valid UTF-8")]
    NotUtf8,
    #[error("protobuf groups nest deeper than {0}")]
    TooDeep(usize),
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// One field of a message: its number and, for length-delimited fields, the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates over the top-level fields of one message.
pub struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, failed: false }
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or(WireError::Truncated)?;
        *buf = rest;
        if i == 9 && byte > 1 {
            return Err(WireError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::BadVarint)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// How deeply (deprecated) groups may nest. proto3 messages, Temporal's included, never contain
/// groups, so any group is an unknown field; Go's protobuf refuses nesting past 10 000, and a
/// legitimate request needs none. A small cap keeps the skip stack on the stack.
pub const MAX_GROUP_DEPTH: usize = 64;

/// Skips a group up to its matching end tag, iteratively: a message of nested START_GROUP tags
/// must not become a recursion as deep as the message is long (300 000 tags overflowed a
/// worker's stack when this recursed). Nesting past [`MAX_GROUP_DEPTH`] is an error.
fn skip_group(buf: &mut &[u8], field: u32) -> Result<(), WireError> {
    let mut open = [0u32; MAX_GROUP_DEPTH];
    open[0] = field;
    let mut depth = 1;
    while depth > 0 {
        let key = read_varint(buf)?;
        let wire_type = (key & 7) as u8;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::BadVarint)?;
        match wire_type {
            START_GROUP => {
                if depth == MAX_GROUP_DEPTH {
                    return Err(WireError::TooDeep(MAX_GROUP_DEPTH));
                }
                open[depth] = number;
                depth += 1;
            }
            END_GROUP => {
                if open[depth - 1] != number {
                    return Err(WireError::BadWireType(END_GROUP));
                }
                depth -= 1;
            }
            other => skip_scalar(buf, other)?,
        }
    }
    Ok(())
}

/// Skips one value that is not a group.
fn skip_scalar(buf: &mut &[u8], wire_type: u8) -> Result<(), WireError> {
    match wire_type {
        VARINT => read_varint(buf).map(drop),
        FIXED64 => take(buf, 8).map(drop),
        LEN => {
            let len = usize::try_from(read_varint(buf)?).map_err(|_| WireError::Truncated)?;
            take(buf, len).map(drop)
        }
        FIXED32 => take(buf, 4).map(drop),
        other => Err(WireError::BadWireType(other)),
    }
}

fn skip_value(buf: &mut &[u8], wire_type: u8, number: u32) -> Result<(), WireError> {
    match wire_type {
        START_GROUP => skip_group(buf, number),
        other => skip_scalar(buf, other),
    }
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = read_varint(&mut self.buf)?;
        let wire_type = (key & 7) as u8;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::BadVarint)?;
        if number == 0 {
            return Err(WireError::FieldZero);
        }
        let value = match wire_type {
            VARINT => Value::Varint(read_varint(&mut self.buf)?),
            LEN => {
                let len = usize::try_from(read_varint(&mut self.buf)?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(take(&mut self.buf, len)?)
            }
            other => {
                skip_value(&mut self.buf, other, number)?;
                Value::Other
            }
        };
        Ok(Some((number, value)))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_field() {
            Ok(Some(field)) => Some(Ok(field)),
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// One top-level field with the bytes it occupies on the wire, tag included: what a rewriter
/// needs to copy every field it leaves alone byte for byte, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawField<'a> {
    pub number: u32,
    pub value: Value<'a>,
    /// Where the field (tag, length prefix and value) lies in the message.
    pub span: std::ops::Range<usize>,
}

/// Iterates over the top-level fields of one message, each with its byte span.
pub struct RawFields<'a> {
    inner: Fields<'a>,
    len: usize,
}

pub fn raw_fields(buf: &[u8]) -> RawFields<'_> {
    RawFields { inner: fields(buf), len: buf.len() }
}

impl<'a> Iterator for RawFields<'a> {
    type Item = Result<RawField<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        // `Fields` consumes its buffer from the front: what is left tells where a field ends.
        let start = self.len - self.inner.buf.len();
        let field = self.inner.next()?;
        let end = self.len - self.inner.buf.len();
        Some(field.map(|(number, value)| RawField { number, value, span: start..end }))
    }
}

/// Appends `value` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a varint field (`number`, wire type 0).
pub fn put_varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    put_varint(out, u64::from(number) << 3 | u64::from(VARINT));
    put_varint(out, value);
}

/// Appends a length-delimited field (`number`, wire type 2): bytes, a string or a message.
pub fn put_bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_varint(out, u64::from(number) << 3 | u64::from(LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// How many bytes [`put_bytes_field`] appends for a value of `len` bytes.
pub fn bytes_field_len(number: u32, len: usize) -> usize {
    varint_len(u64::from(number) << 3) + varint_len(len as u64) + len
}

/// Checks that a whole message is well-formed at the top level.
pub fn validate(buf: &[u8]) -> Result<(), WireError> {
    fields(buf).try_for_each(|field| field.map(drop))
}

/// The bytes of the length-delimited field at `path` (field numbers, outermost first), with
/// protobuf's merge semantics: later occurrences of a singular field override earlier ones,
/// including occurrences inside separate copies of an embedded message.
pub fn last_bytes<'a>(buf: &'a [u8], path: &[u32]) -> Result<Option<&'a [u8]>, WireError> {
    let Some((&first, rest)) = path.split_first() else {
        return Ok(Some(buf));
    };
    let mut found = None;
    for field in fields(buf) {
        if let (number, Value::Bytes(bytes)) = field?
            && number == first
        {
            let inner = if rest.is_empty() { Some(bytes) } else { last_bytes(bytes, rest)? };
            if inner.is_some() {
                found = inner;
            }
        }
    }
    Ok(found)
}

/// The string at `path`, or `None` when it is absent or empty (proto3 cannot tell the two apart).
pub fn last_string<'a>(buf: &'a [u8], path: &[u32]) -> Result<Option<&'a str>, WireError> {
    match last_bytes(buf, path)? {
        Some(bytes) if !bytes.is_empty() => std::str::from_utf8(bytes).map(Some).map_err(|_| WireError::NotUtf8),
        _ => Ok(None),
    }
}

/// The varint at `path` (the last occurrence), e.g. an enum.
pub fn last_varint(buf: &[u8], path: &[u32]) -> Result<Option<u64>, WireError> {
    let Some((&last, parents)) = path.split_last() else {
        return Ok(None);
    };
    let mut found = None;
    let scan = |message: &[u8], found: &mut Option<u64>| -> Result<(), WireError> {
        for field in fields(message) {
            if let (number, Value::Varint(v)) = field?
                && number == last
            {
                *found = Some(v);
            }
        }
        Ok(())
    };
    if parents.is_empty() {
        scan(buf, &mut found)?;
        return Ok(found);
    }
    // Every copy of the parent message contributes, in order.
    visit_all(buf, parents, &mut |message| scan(message, &mut found))?;
    Ok(found)
}

/// Calls `visit` on every occurrence of the embedded message at `path`, in wire order.
pub fn visit_all<'a>(
    buf: &'a [u8],
    path: &[u32],
    visit: &mut dyn FnMut(&'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let Some((&first, rest)) = path.split_first() else {
        return visit(buf);
    };
    for field in fields(buf) {
        if let (number, Value::Bytes(bytes)) = field?
            && number == first
        {
            visit_all(bytes, rest, visit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(number: u32, wire_type: u8) -> Vec<u8> {
        varint(u64::from(number) << 3 | u64::from(wire_type))
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = key(number, LEN);
        out.extend(varint(value.len() as u64));
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn last_occurrence_of_a_singular_field_wins() {
        let msg = [bytes_field(1, b"payments"), bytes_field(1, b"prod")].concat();
        assert_eq!(last_string(&msg, &[1]).unwrap(), Some("prod"));
    }

    #[test]
    fn embedded_messages_merge_across_occurrences() {
        let first = bytes_field(3, &bytes_field(1, b"Deploy"));
        let second = bytes_field(3, &bytes_field(2, b"ignored-kind"));
        let third = bytes_field(3, &bytes_field(1, b"Drop"));
        let msg = [first.clone(), second.clone()].concat();
        assert_eq!(last_string(&msg, &[3, 1]).unwrap(), Some("Deploy"));
        let msg = [first, second, third].concat();
        assert_eq!(last_string(&msg, &[3, 1]).unwrap(), Some("Drop"));
    }

    #[test]
    fn a_field_with_another_wire_type_is_not_a_value() {
        let msg = [bytes_field(1, b"payments"), key(1, VARINT), varint(7)].concat();
        assert_eq!(last_string(&msg, &[1]).unwrap(), Some("payments"));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut msg = Vec::new();
        msg.extend(key(9, FIXED64));
        msg.extend([0; 8]);
        msg.extend(key(10, FIXED32));
        msg.extend([0; 4]);
        msg.extend(key(11, START_GROUP));
        msg.extend(bytes_field(1, b"in-group"));
        msg.extend(key(11, END_GROUP));
        msg.extend(bytes_field(1, b"ns"));
        assert_eq!(last_string(&msg, &[1]).unwrap(), Some("ns"));
        assert!(validate(&msg).is_ok());
    }

    #[test]
    fn empty_string_reads_as_absent() {
        let msg = bytes_field(1, b"");
        assert_eq!(last_string(&msg, &[1]).unwrap(), None);
    }

    #[test]
    fn corrupt_messages_are_errors_not_panics() {
        let truncated = [key(1, LEN), varint(10), b"short".to_vec()].concat();
        assert_eq!(last_string(&truncated, &[1]), Err(WireError::Truncated));
        assert_eq!(validate(&[0x80; 11]), Err(WireError::BadVarint));
        assert_eq!(validate(&key(1, 6)), Err(WireError::BadWireType(6)));
        assert_eq!(validate(&[0x00]), Err(WireError::FieldZero));
        let bad_utf8 = bytes_field(1, &[0xff, 0xfe]);
        assert_eq!(last_string(&bad_utf8, &[1]), Err(WireError::NotUtf8));
        let huge_len = [key(1, LEN), varint(u64::MAX >> 1)].concat();
        assert_eq!(validate(&huge_len), Err(WireError::Truncated));
    }

    #[test]
    fn deeply_nested_groups_are_an_error_not_a_stack_overflow() {
        // 300 000 nested START_GROUP tags: the message from the report that killed the gateway.
        let deep = key(7, START_GROUP).repeat(300_000);
        let msg = [bytes_field(1, b"ns"), deep].concat();
        assert_eq!(validate(&msg), Err(WireError::TooDeep(MAX_GROUP_DEPTH)));
        assert_eq!(last_string(&msg, &[1]), Err(WireError::TooDeep(MAX_GROUP_DEPTH)));
        // Nesting up to the cap is still read, and the fields after it too.
        let nested = |depth: usize| {
            let mut out = key(7, START_GROUP).repeat(depth);
            out.extend(bytes_field(1, b"inner"));
            out.extend(key(7, END_GROUP).repeat(depth));
            out
        };
        let msg = [nested(MAX_GROUP_DEPTH), bytes_field(1, b"ns")].concat();
        assert_eq!(last_string(&msg, &[1]).unwrap(), Some("ns"));
        assert_eq!(validate(&nested(MAX_GROUP_DEPTH + 1)), Err(WireError::TooDeep(MAX_GROUP_DEPTH)));
        // An end tag must close the group that is open.
        let crossed = [key(7, START_GROUP), key(8, START_GROUP), key(7, END_GROUP), key(8, END_GROUP)].concat();
        assert_eq!(validate(&crossed), Err(WireError::BadWireType(END_GROUP)));
        // An unterminated group is truncated.
        assert_eq!(validate(&key(7, START_GROUP).repeat(3)), Err(WireError::Truncated));
    }

    #[test]
    fn raw_fields_cover_the_message_exactly() {
        let msg = [
            bytes_field(1, b"token"),
            key(2, VARINT),
            varint(300),
            key(9, FIXED64),
            vec![0; 8],
            key(11, START_GROUP),
            key(11, END_GROUP),
            bytes_field(2000, b""),
        ]
        .concat();
        let fields: Vec<_> = raw_fields(&msg).collect::<Result<_, _>>().unwrap();
        let numbers: Vec<_> = fields.iter().map(|f| f.number).collect();
        assert_eq!(numbers, [1, 2, 9, 11, 2000]);
        assert_eq!(fields[0].value, Value::Bytes(b"token"));
        assert_eq!(fields[1].value, Value::Varint(300));
        // Consecutive, from the first byte to the last: copying the spans copies the message.
        let mut at = 0;
        for field in &fields {
            assert_eq!(field.span.start, at);
            at = field.span.end;
        }
        assert_eq!(at, msg.len());
        assert_eq!(&msg[fields[0].span.clone()], &bytes_field(1, b"token")[..]);
        let truncated = &msg[..3];
        assert_eq!(raw_fields(truncated).last(), Some(Err(WireError::Truncated)));
    }

    #[test]
    fn encoders_write_what_the_reader_reads() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, varint(value), "{value}");
            assert_eq!(varint_len(value), out.len(), "{value}");
        }
        let mut out = Vec::new();
        put_bytes_field(&mut out, 1, b"abc");
        put_varint_field(&mut out, 20, 7);
        put_bytes_field(&mut out, 3000, &[7; 200]);
        assert_eq!(out, [bytes_field(1, b"abc"), key(20, VARINT), varint(7), bytes_field(3000, &[7; 200])].concat());
        assert_eq!(bytes_field_len(3000, 200), bytes_field(3000, &[7; 200]).len());
        assert_eq!(last_bytes(&out, &[3000]).unwrap(), Some(&[7u8; 200][..]));
    }

    #[test]
    fn varints_follow_merge_rules_too() {
        let tq = |kind: u64| bytes_field(4, &[key(2, VARINT), varint(kind)].concat());
        let msg = [tq(1), tq(2)].concat();
        assert_eq!(last_varint(&msg, &[4, 2]).unwrap(), Some(2));
        assert_eq!(last_varint(&msg, &[5, 2]).unwrap(), None);
    }
}
