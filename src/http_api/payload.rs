//! Temporal's payload shorthand, both ways: what api-go's `common/v1/payload_json.go` does for
//! `temporal.api.common.v1.Payload` and `Payloads` when the marshaler's metadata enables it
//! (Temporal's HTTP API does unless told `no-payload-shorthand`).
//!
//! **Input** (`fromJSONMaybeShorthand`, `unmarshalPayload`): a `Payloads` may be a bare array,
//! one payload per element; a `Payload` may be any JSON value:
//! * `null` → `binary/null`;
//! * an object of exactly `metadata` (base64 values, with an `encoding`) and `data` (base64)
//!   → that payload as it is; `{"metadata":{"encoding":"YmluYXJ5L251bGw="}}` alone → `binary/null`;
//! * an object with `_protoMessageType` → `json/protobuf` with `messageType`, the key removed;
//! * anything else → `json/plain`.
//!
//! The data of a shorthand payload is the value re-serialized as Go's `encoding/json` writes it
//! ([`go_marshal`]): compact, object keys sorted, `<` `>` `&` U+2028 U+2029 escaped, integers that
//! fit int64 kept, other numbers as float64. A workflow thus sees the same bytes whether its
//! client went through flowgate or through Temporal's own HTTP port.
//!
//! **Output** (`toJSONShorthand`): `json/plain` with no other metadata → the data's JSON (through
//! Go's `any`: every number a float64, keys sorted, an empty array `null`); `json/protobuf` with
//! only `messageType` → the object plus `_protoMessageType`; `binary/null` →
//! `{"metadata":{"encoding":"YmluYXJ5L251bGw="}}`. A `Payloads` is shorthand only if every element
//! is. Where Temporal would fail the whole response (data that is not JSON), flowgate writes the
//! full form instead.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, MapKey, MessageDescriptor, Value};

use super::errors::HttpError;
use super::json::{self, Escaping, GoNumber, Json};

pub const PAYLOAD: &str = "temporal.api.common.v1.Payload";
pub const PAYLOADS: &str = "temporal.api.common.v1.Payloads";

const MESSAGE_TYPE_KEY: &str = "_protoMessageType";
const BINARY_NULL_BASE64: &str = "YmluYXJ5L251bGw=";

/// Go's `encoding/json.Marshal` of the value Temporal's decoder made of `value` (int64 or
/// float64 numbers, maps with the last of duplicate keys): the data bytes of a shorthand payload.
pub fn go_marshal(value: &Json) -> Result<String, HttpError> {
    let mut out = String::new();
    write_go(&mut out, value)?;
    Ok(out)
}

fn write_go(out: &mut String, value: &Json) -> Result<(), HttpError> {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(text) => match GoNumber::from_text(text) {
            Some(GoNumber::Int(int)) => out.push_str(&int.to_string()),
            Some(GoNumber::Float(float)) => json::write_float(out, float, false),
            None => return Err(HttpError::invalid(format!("unable to parse number `{}`", short(text)))),
        },
        Json::String(s) => json::write_string(out, s, Escaping::GoEncodingJson),
        // Go's decoder leaves an empty array a nil slice, which encoding/json writes as `null`.
        Json::Array(items) if items.is_empty() => out.push_str("null"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go(out, item)?;
            }
            out.push(']');
        }
        Json::Object(members) => {
            // A Go map, written in sorted (byte) order. Go keeps the last of duplicate keys;
            // flowgate refuses them, as everywhere else in a request.
            let mut map: BTreeMap<&str, &Json> = BTreeMap::new();
            for (key, item) in members {
                if map.insert(key.as_str(), item).is_some() {
                    return Err(HttpError::invalid(format!("duplicate key `{}` in payload data", short(key))));
                }
            }
            out.push('{');
            for (i, (key, item)) in map.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json::write_string(out, key, Escaping::GoEncodingJson);
                out.push(':');
                write_go(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn short(text: &str) -> &str {
    crate::error::truncated(text, 64)
}

/// Go's `unmarshalBytes` for payloads (and protojson's for `bytes` fields): standard base64,
/// or URL-safe when the text has `-` or `_`; padded when the length is a multiple of 4, else
/// unpadded; trailing bits need not be zero, and `\r`/`\n` are skipped, as Go's decoder does.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let url = text.contains(['-', '_']);
    let padded = text.len().is_multiple_of(4);
    let config = base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(if padded {
            base64::engine::DecodePaddingMode::RequireCanonical
        } else {
            base64::engine::DecodePaddingMode::RequireNone
        });
    let alphabet = if url { &base64::alphabet::URL_SAFE } else { &base64::alphabet::STANDARD };
    let engine = base64::engine::GeneralPurpose::new(alphabet, config);
    let cleaned: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    engine.decode(cleaned).ok()
}

/// A payload with these metadata entries and data.
fn payload(descriptor: &MessageDescriptor, metadata: Vec<(String, Vec<u8>)>, data: Vec<u8>) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    let map = metadata.into_iter().map(|(k, v)| (MapKey::String(k), Value::Bytes(v.into()))).collect();
    // The field types are those of the Payload descriptor, so these cannot fail; a descriptor
    // without them (not Temporal's) is left empty.
    let _ = message.try_set_field_by_name("metadata", Value::Map(map));
    if !data.is_empty() {
        let _ = message.try_set_field_by_name("data", Value::Bytes(data.into()));
    }
    message
}

fn member<'a>(members: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
    members.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value)
}

/// `unmarshalPayload`: the payload an object spells out in full, if it does.
fn full_payload(descriptor: &MessageDescriptor, members: &[(String, Json)]) -> Option<DynamicMessage> {
    let Json::Object(metadata) = member(members, "metadata")? else { return None };
    let encoding = member(metadata, "encoding")?;
    let data = member(members, "data");
    if data.is_none() && encoding == &Json::String(BINARY_NULL_BASE64.to_owned()) {
        return Some(payload(descriptor, vec![("encoding".to_owned(), b"binary/null".to_vec())], Vec::new()));
    }
    let (Some(Json::String(data)), 2) = (data, members.len()) else { return None };
    let data = decode_base64(data)?;
    let mut entries = Vec::new();
    for (key, value) in metadata {
        let Json::String(text) = value else { return None };
        entries.push((key.clone(), decode_base64(text)?));
    }
    Some(payload(descriptor, entries, data))
}

/// One `Payload` from its JSON, shorthand or not.
pub fn payload_from_json(descriptor: &MessageDescriptor, value: &Json) -> Result<DynamicMessage, HttpError> {
    let plain = |value: &Json| -> Result<DynamicMessage, HttpError> {
        let data = go_marshal(value)?;
        Ok(payload(descriptor, vec![("encoding".to_owned(), b"json/plain".to_vec())], data.into_bytes()))
    };
    match value {
        Json::Null => Ok(payload(descriptor, vec![("encoding".to_owned(), b"binary/null".to_vec())], Vec::new())),
        Json::Object(members) => {
            if let Some(full) = full_payload(descriptor, members) {
                return Ok(full);
            }
            let Some(message_type) = member(members, MESSAGE_TYPE_KEY) else { return plain(value) };
            let Json::String(message_type) = message_type else {
                return Err(HttpError::invalid(format!(
                    "unable to unmarshal payload: internal key `{MESSAGE_TYPE_KEY}` should have type string, not {}",
                    message_type.kind()
                )));
            };
            let rest: Vec<(String, Json)> = members.iter().filter(|(k, _)| k != MESSAGE_TYPE_KEY).cloned().collect();
            let data = go_marshal(&Json::Object(rest))?;
            Ok(payload(
                descriptor,
                vec![
                    ("encoding".to_owned(), b"json/protobuf".to_vec()),
                    ("messageType".to_owned(), message_type.clone().into_bytes()),
                ],
                data.into_bytes(),
            ))
        }
        _ => plain(value),
    }
}

/// The value Go's `encoding/json.Unmarshal` into `any` makes of payload data, written back by
/// protojson's encoder: numbers are float64, objects are sorted maps, an empty array is `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum GoAny {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<GoAny>),
    Object(BTreeMap<String, GoAny>),
}

impl GoAny {
    /// `None` where Go's `Unmarshal` fails (a number out of float64's range).
    fn from_json(value: &Json) -> Option<GoAny> {
        Some(match value {
            Json::Null => GoAny::Null,
            Json::Bool(b) => GoAny::Bool(*b),
            Json::Number(text) => {
                let float: f64 = text.parse().ok()?;
                if !float.is_finite() {
                    return None;
                }
                GoAny::Number(float)
            }
            Json::String(s) => GoAny::String(s.clone()),
            Json::Array(items) => GoAny::Array(items.iter().map(GoAny::from_json).collect::<Option<_>>()?),
            Json::Object(members) => {
                let mut map = BTreeMap::new();
                for (key, item) in members {
                    map.insert(key.clone(), GoAny::from_json(item)?);
                }
                GoAny::Object(map)
            }
        })
    }

    /// Writes the value as payload_json.go's `marshalValue` does.
    pub fn write(&self, w: &mut json::Writer) {
        match self {
            GoAny::Null => w.raw("null"),
            GoAny::Bool(b) => w.raw(if *b { "true" } else { "false" }),
            GoAny::Number(n) => w.float(*n, false),
            GoAny::String(s) => w.string(s),
            GoAny::Array(items) if items.is_empty() => w.raw("null"),
            GoAny::Array(items) => {
                w.open('[');
                for item in items {
                    item.write(w);
                }
                w.close(']');
            }
            GoAny::Object(map) => {
                w.open('{');
                for (key, item) in map {
                    w.name(key);
                    item.write(w);
                }
                w.close('}');
            }
        }
    }
}

fn metadata_of(payload: &DynamicMessage) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(Value::Map(map)) = payload.get_field_by_name("metadata").as_deref() {
        for (key, value) in map {
            if let (MapKey::String(key), Value::Bytes(bytes)) = (key, value) {
                out.insert(key.clone(), bytes.to_vec());
            }
        }
    }
    out
}

/// `toJSONShorthand`: the shorthand value of one payload, or `None` when it must be written in
/// full (another encoding, extra metadata, or data that is not the JSON it claims).
pub fn payload_shorthand(payload: &DynamicMessage) -> Option<GoAny> {
    let metadata = metadata_of(payload);
    let data = payload.get_field_by_name("data");
    let data: &[u8] = data.as_deref().and_then(Value::as_bytes).map(|b| b.as_ref()).unwrap_or_default();
    match metadata.get("encoding").map(Vec::as_slice) {
        Some(b"binary/null") => {
            let encoding =
                GoAny::Object(BTreeMap::from([("encoding".to_owned(), GoAny::String(BINARY_NULL_BASE64.to_owned()))]));
            Some(GoAny::Object(BTreeMap::from([("metadata".to_owned(), encoding)])))
        }
        Some(b"json/plain") if metadata.len() == 1 => GoAny::from_json(&json::parse(data).ok()?),
        Some(b"json/protobuf") => {
            let message_type = String::from_utf8(metadata.get("messageType")?.clone()).ok()?;
            if message_type.is_empty() || metadata.len() != 2 {
                return None;
            }
            match GoAny::from_json(&json::parse(data).ok()?)? {
                // A nil map: written as `{}`, without the message type.
                GoAny::Null => Some(GoAny::Object(BTreeMap::new())),
                GoAny::Object(mut map) => {
                    map.insert(MESSAGE_TYPE_KEY.to_owned(), GoAny::String(message_type));
                    Some(GoAny::Object(map))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marshal(text: &str) -> String {
        go_marshal(&json::parse(text.as_bytes()).unwrap()).unwrap()
    }

    /// Expected bytes: what Temporal itself stores. A Go program (go1.26, api-go v1.63.5)
    /// unmarshalled `{"input":[X]}` into a `StartWorkflowExecutionRequest` with
    /// `temporalproto.CustomJSONUnmarshalOptions{Metadata: {EnablePayloadShorthandMetadataKey:
    /// true}}` (what Temporal's HTTP API uses) and printed `Input.Payloads[0].Data` for each X.
    #[test]
    fn shorthand_data_is_what_go_writes() {
        let cases = [
            (r#""card-123""#, r#""card-123""#),
            (r#"{"amount":42}"#, r#"{"amount":42}"#),
            (r#"{ "b" : 1, "a" : [ 1.0, 1e2, -0, 1.5, 1e21, 1e-7 ] }"#, r#"{"a":[1,100,0,1.5,1e+21,1e-7],"b":1}"#),
            (r#""<a href='x'>&</a>""#, r#""\u003ca href='x'\u003e\u0026\u003c/a\u003e""#),
            ("\"\\u2028\\u2029\\u0001\\b\\f\\n\\t\\r\\\"\\\\\\/\"", r#""\u2028\u2029\u0001\b\f\n\t\r\"\\/""#),
            ("9223372036854775807", "9223372036854775807"),
            ("9223372036854775808", "9223372036854776000"),
            ("12345678901234567890", "12345678901234567000"),
            ("100000000000000000000000", "1e+23"),
            ("0.1", "0.1"),
            ("123456789.123456789", "123456789.12345679"),
            ("1.5e300", "1.5e+300"),
            ("1e-320", "1e-320"),
            ("-1.25e-7", "-1.25e-7"),
            (r#"{"é":"ü","Z":null,"a":true,"":{}}"#, r#"{"":{},"Z":null,"a":true,"é":"ü"}"#),
            ("[]", "null"),
            (r#"{"a":[]}"#, r#"{"a":null}"#),
            ("{}", "{}"),
            ("[1,[2,[3,{}]]]", "[1,[2,[3,{}]]]"),
        ];
        for (input, expected) in cases {
            assert_eq!(marshal(input), expected, "{input}");
        }
        // Go: "unable to unmarshal payload: unable to parse number from number".
        assert!(go_marshal(&json::parse(b"1e400").unwrap()).is_err());
    }

    #[test]
    fn base64_is_read_as_go_reads_it() {
        assert_eq!(decode_base64("anNvbi9wbGFpbg==").unwrap(), b"json/plain");
        assert_eq!(decode_base64("anNvbi9wbGFpbg").unwrap(), b"json/plain");
        assert_eq!(decode_base64("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_base64("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("anNvbi9wbGFpbg=").is_none(), "padding on a length that is not a multiple of 4");
        assert!(decode_base64("-/8=").is_none(), "mixed alphabets");
        assert!(decode_base64("a").is_none());
    }
}
