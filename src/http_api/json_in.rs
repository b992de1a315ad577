//! JSON → protobuf: a request body read into a [`DynamicMessage`] guided by its descriptor, the
//! way Temporal's protojson fork (`A/internal/protojson/json_unmarshal.go`) reads it, except
//! where flowgate is stricter on purpose:
//!
//! * a field named twice, by one spelling or by its JSON and proto names together
//!   (`workflowId` + `workflow_id`), is refused, as Temporal refuses it; so are two members of
//!   one oneof, a duplicate map key, and (flowgate only) a duplicate key anywhere else, payload
//!   data included;
//! * unknown fields are refused;
//! * enums are read by exact value name, by number, or by Temporal's alias
//!   `ToScreamingSnake(EnumName + "_" + s)` (`"AllowDuplicate"`);
//! * 64-bit integers as strings or numbers; numbers such as `1.0` or `1e2` count as integers;
//! * bytes as standard or URL-safe base64, padded or not;
//! * the well-known types in their proto3 JSON forms (`Any`, `Duration`, `Timestamp`,
//!   `FieldMask`, `Struct`, `Value`, `ListValue`, the wrappers, `Empty`);
//! * payloads in shorthand (`payload.rs`) unless the request turned it off;
//! * data after the JSON value is refused (Go's stream decoder would ignore it).
//!
//! Nesting is bounded by the JSON reader ([`json::MAX_DEPTH`]); every walk here follows the
//! parsed tree, so none recurses deeper.

use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

use super::errors::HttpError;
use super::json::{self, Json};
use super::payload::{self, PAYLOAD, PAYLOADS};
use super::strcase;

/// Decodes a request body. An empty body (or only white space) is the empty message.
pub fn decode_body(descriptor: &MessageDescriptor, body: &[u8], shorthand: bool) -> Result<DynamicMessage, HttpError> {
    if body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Ok(DynamicMessage::new(descriptor.clone()));
    }
    let value = json::parse(body).map_err(|error| HttpError::invalid(error.to_string()))?;
    Decoder { shorthand }.message(descriptor, &value)
}

struct Decoder {
    shorthand: bool,
}

fn invalid(message: String) -> HttpError {
    HttpError::invalid(message)
}

/// Client text shown in a message, cut short.
fn shown(text: &str) -> &str {
    crate::error::truncated(text, 100)
}

fn describe(value: &Json) -> String {
    match value {
        Json::String(s) => format!("`{}`", shown(s)),
        Json::Number(n) => format!("`{}`", shown(n)),
        Json::Bool(b) => format!("`{b}`"),
        other => format!("a JSON {}", other.kind()),
    }
}

impl Decoder {
    fn message(&self, descriptor: &MessageDescriptor, value: &Json) -> Result<DynamicMessage, HttpError> {
        let name = descriptor.full_name();
        if self.shorthand {
            if name == PAYLOAD {
                return payload::payload_from_json(descriptor, value);
            }
            if name == PAYLOADS {
                match value {
                    Json::Null => return Ok(DynamicMessage::new(descriptor.clone())),
                    Json::Array(items) => return self.payloads(descriptor, items),
                    _ => {}
                }
            }
        }
        if name.starts_with("google.protobuf.")
            && let Some(message) = self.well_known(descriptor, value)?
        {
            return Ok(message);
        }
        let Json::Object(members) = value else {
            return Err(invalid(format!("expected a JSON object for `{name}`, found {}", describe(value))));
        };
        let mut message = DynamicMessage::new(descriptor.clone());
        let mut seen: Vec<u32> = Vec::new();
        let mut oneofs_seen: Vec<String> = Vec::new();
        for (key, item) in members {
            let field = descriptor
                .get_field_by_json_name(key)
                .or_else(|| descriptor.get_field_by_name(key))
                .ok_or_else(|| invalid(format!("unknown field `{}` in `{name}`", shown(key))))?;
            if seen.contains(&field.number()) {
                return Err(invalid(format!("duplicate field `{}` in `{name}`", shown(key))));
            }
            seen.push(field.number());
            if *item == Json::Null && !accepts_null(&field) {
                continue;
            }
            let value = if field.is_map() {
                self.map(&field, item)?
            } else if field.is_list() {
                let Json::Array(items) = item else {
                    return Err(invalid(format!(
                        "field `{}` expects a JSON array, found {}",
                        field.name(),
                        describe(item)
                    )));
                };
                Value::List(items.iter().map(|item| self.singular(&field, item)).collect::<Result<_, _>>()?)
            } else {
                if let Some(oneof) = field.containing_oneof() {
                    let oneof = oneof.full_name().to_owned();
                    if oneofs_seen.contains(&oneof) {
                        return Err(invalid(format!(
                            "field `{}`: another member of oneof `{oneof}` is already set",
                            shown(key)
                        )));
                    }
                    oneofs_seen.push(oneof);
                }
                self.singular(&field, item)?
            };
            message
                .try_set_field(&field, value)
                .map_err(|_| HttpError::internal(format!("cannot set field `{}`", field.full_name())))?;
        }
        Ok(message)
    }

    fn payloads(&self, descriptor: &MessageDescriptor, items: &[Json]) -> Result<DynamicMessage, HttpError> {
        let field = descriptor
            .get_field_by_name("payloads")
            .ok_or_else(|| HttpError::internal("`Payloads` has no field `payloads`"))?;
        let Kind::Message(element) = field.kind() else {
            return Err(HttpError::internal("`Payloads.payloads` is not a message field"));
        };
        let list = items
            .iter()
            .map(|item| payload::payload_from_json(&element, item).map(Value::Message))
            .collect::<Result<Vec<_>, _>>()?;
        let mut message = DynamicMessage::new(descriptor.clone());
        if !list.is_empty() {
            message
                .try_set_field(&field, Value::List(list))
                .map_err(|_| HttpError::internal("cannot set `Payloads.payloads`"))?;
        }
        Ok(message)
    }

    fn map(&self, field: &FieldDescriptor, value: &Json) -> Result<Value, HttpError> {
        let Json::Object(members) = value else {
            return Err(invalid(format!("field `{}` expects a JSON object, found {}", field.name(), describe(value))));
        };
        let Kind::Message(entry) = field.kind() else {
            return Err(HttpError::internal(format!("map field `{}` has no entry message", field.full_name())));
        };
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        let mut map = std::collections::HashMap::new();
        for (key, item) in members {
            let map_key = map_key(&key_field, key)
                .ok_or_else(|| invalid(format!("invalid key `{}` for map field `{}`", shown(key), field.name())))?;
            if map.contains_key(&map_key) {
                return Err(invalid(format!("duplicate map key `{}` in field `{}`", shown(key), field.name())));
            }
            let value = self.singular(&value_field, item)?;
            map.insert(map_key, value);
        }
        Ok(Value::Map(map))
    }

    /// One value of a field's type (a singular field, a list element or a map value).
    fn singular(&self, field: &FieldDescriptor, value: &Json) -> Result<Value, HttpError> {
        match field.kind() {
            Kind::Message(descriptor) => Ok(Value::Message(self.message(&descriptor, value)?)),
            kind => scalar(&kind, value).ok_or_else(|| {
                invalid(format!("invalid value for {} field `{}`: {}", kind_name(&kind), field.name(), describe(value)))
            }),
        }
    }

    /// The well-known types with their own JSON forms; `None` for other `google.protobuf`
    /// messages (read as ordinary messages).
    fn well_known(&self, descriptor: &MessageDescriptor, value: &Json) -> Result<Option<DynamicMessage>, HttpError> {
        let name = descriptor.full_name();
        let mut message = DynamicMessage::new(descriptor.clone());
        let bad = |what: &str| invalid(format!("invalid {what} value: {}", describe(value)));
        let set = |message: &mut DynamicMessage, field: &str, v: Value| {
            message
                .try_set_field_by_name(field, v)
                .map_err(|_| HttpError::internal(format!("cannot set `{name}.{field}`")))
        };
        match name {
            "google.protobuf.Duration" => {
                let Json::String(text) = value else { return Err(bad(name)) };
                let (seconds, nanos) = parse_duration(text).ok_or_else(|| bad(name))?;
                set(&mut message, "seconds", Value::I64(seconds))?;
                set(&mut message, "nanos", Value::I32(nanos))?;
            }
            "google.protobuf.Timestamp" => {
                let Json::String(text) = value else { return Err(bad(name)) };
                let (seconds, nanos) = parse_timestamp(text).ok_or_else(|| bad(name))?;
                set(&mut message, "seconds", Value::I64(seconds))?;
                set(&mut message, "nanos", Value::I32(nanos))?;
            }
            "google.protobuf.FieldMask" => {
                let Json::String(text) = value else { return Err(bad(name)) };
                let text = text.trim();
                let mut paths = Vec::new();
                if !text.is_empty() {
                    for path in text.split(',') {
                        let snake = strcase::json_snake_case(path);
                        if path.contains('_') || !is_full_name(&snake) {
                            return Err(invalid(format!("invalid field mask path `{}`", shown(path))));
                        }
                        paths.push(Value::String(snake));
                    }
                }
                set(&mut message, "paths", Value::List(paths))?;
            }
            "google.protobuf.Empty" => {
                let Json::Object(members) = value else { return Err(bad(name)) };
                if let Some((key, _)) = members.first() {
                    return Err(invalid(format!("unknown field `{}` in `{name}`", shown(key))));
                }
            }
            "google.protobuf.Struct" => {
                let field = descriptor.get_field_by_name("fields").ok_or_else(|| bad(name))?;
                if !matches!(value, Json::Object(_)) {
                    return Err(bad(name));
                }
                let map = self.map(&field, value)?;
                set(&mut message, "fields", map)?;
            }
            "google.protobuf.ListValue" => {
                let Json::Array(items) = value else { return Err(bad(name)) };
                let field = descriptor.get_field_by_name("values").ok_or_else(|| bad(name))?;
                let list = items.iter().map(|item| self.singular(&field, item)).collect::<Result<_, _>>()?;
                set(&mut message, "values", Value::List(list))?;
            }
            "google.protobuf.Value" => {
                let pool = descriptor.parent_pool();
                let nested = |message_name: &str| {
                    pool.get_message_by_name(message_name)
                        .ok_or_else(|| HttpError::internal(format!("no `{message_name}`")))
                };
                match value {
                    Json::Null => set(&mut message, "null_value", Value::EnumNumber(0))?,
                    Json::Bool(b) => set(&mut message, "bool_value", Value::Bool(*b))?,
                    Json::Number(text) => {
                        let number: f64 = text.parse().map_err(|_| bad(name))?;
                        if !number.is_finite() {
                            return Err(bad(name));
                        }
                        set(&mut message, "number_value", Value::F64(number))?;
                    }
                    Json::String(s) => set(&mut message, "string_value", Value::String(s.clone()))?,
                    Json::Array(_) => {
                        let list = self.message(&nested("google.protobuf.ListValue")?, value)?;
                        set(&mut message, "list_value", Value::Message(list))?;
                    }
                    Json::Object(_) => {
                        let inner = self.message(&nested("google.protobuf.Struct")?, value)?;
                        set(&mut message, "struct_value", Value::Message(inner))?;
                    }
                }
            }
            "google.protobuf.Any" => return self.any(descriptor, value).map(Some),
            "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue" => {
                let field = descriptor.get_field_by_name("value").ok_or_else(|| bad(name))?;
                let inner = self.singular(&field, value)?;
                set(&mut message, "value", inner)?;
            }
            _ => return Ok(None),
        }
        Ok(Some(message))
    }

    /// `{"@type": "type.googleapis.com/pkg.Msg", …fields}`, or `{"@type": …, "value": …}` for a
    /// well-known type; the type must be in the pool.
    fn any(&self, descriptor: &MessageDescriptor, value: &Json) -> Result<DynamicMessage, HttpError> {
        let Json::Object(members) = value else {
            return Err(invalid(format!("invalid google.protobuf.Any value: {}", describe(value))));
        };
        let mut any = DynamicMessage::new(descriptor.clone());
        if members.is_empty() {
            return Ok(any);
        }
        let types: Vec<&Json> = members.iter().filter(|(k, _)| k == "@type").map(|(_, v)| v).collect();
        let type_url = match types.as_slice() {
            [] => return Err(invalid("missing `@type` field in google.protobuf.Any".to_owned())),
            [Json::String(url)] if !url.is_empty() => url.clone(),
            [_] => return Err(invalid("the `@type` field must be a non-empty string".to_owned())),
            _ => return Err(invalid("duplicate `@type` field".to_owned())),
        };
        let type_name = type_url.rsplit('/').next().unwrap_or_default();
        let inner_descriptor = descriptor
            .parent_pool()
            .get_message_by_name(type_name)
            .ok_or_else(|| invalid(format!("unable to resolve `{}`: unknown message type", shown(&type_url))))?;
        let rest: Vec<(String, Json)> = members.iter().filter(|(k, _)| k != "@type").cloned().collect();
        let inner = if is_well_known_with_own_form(inner_descriptor.full_name()) {
            match rest.as_slice() {
                [(key, inner)] if key == "value" => self.message(&inner_descriptor, inner)?,
                [] => return Err(invalid("missing `value` field in google.protobuf.Any".to_owned())),
                _ => {
                    return Err(invalid(
                        "google.protobuf.Any of a well-known type takes only `@type` and `value`".to_owned(),
                    ));
                }
            }
        } else {
            self.message(&inner_descriptor, &Json::Object(rest))?
        };
        any.try_set_field_by_name("type_url", Value::String(type_url))
            .and_then(|()| any.try_set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into())))
            .map_err(|_| HttpError::internal("cannot set google.protobuf.Any"))?;
        Ok(any)
    }
}

/// The well-known types whose JSON is not an object of their fields.
pub fn is_well_known_with_own_form(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.Any"
            | "google.protobuf.Duration"
            | "google.protobuf.Timestamp"
            | "google.protobuf.FieldMask"
            | "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Empty"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// `null` means "unset" except for `google.protobuf.Value` and `NullValue` fields.
fn accepts_null(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(message) => message.full_name() == "google.protobuf.Value",
        Kind::Enum(e) => e.full_name() == "google.protobuf.NullValue",
        _ => false,
    }
}

pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

/// The text of a JSON number, from a number or from a string holding exactly one (no spaces).
fn number_text(value: &Json) -> Option<&str> {
    match value {
        Json::Number(text) => Some(text),
        Json::String(text) => match json::parse(text.as_bytes()) {
            Ok(Json::Number(_)) if text.trim() == text => Some(text),
            _ => None,
        },
        _ => None,
    }
}

fn integer<T: std::str::FromStr>(value: &Json) -> Option<T> {
    json::integer_text(number_text(value)?)?.parse().ok()
}

/// A scalar of `kind` from JSON, as protojson reads it; `None` if the value does not fit.
pub fn scalar(kind: &Kind, value: &Json) -> Option<Value> {
    Some(match kind {
        Kind::Bool => match value {
            Json::Bool(b) => Value::Bool(*b),
            _ => return None,
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(integer(value)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(integer(value)?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(integer(value)?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(integer(value)?),
        Kind::Float | Kind::Double => {
            let single = matches!(kind, Kind::Float);
            let special = match value {
                Json::String(s) if s == "NaN" => Some(f64::NAN),
                Json::String(s) if s == "Infinity" => Some(f64::INFINITY),
                Json::String(s) if s == "-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            };
            let number = match special {
                Some(number) => number,
                None => {
                    let text = number_text(value)?;
                    let number =
                        if single { f64::from(text.parse::<f32>().ok()?) } else { text.parse::<f64>().ok()? };
                    if !number.is_finite() {
                        return None; // Go's ParseFloat: out of range
                    }
                    number
                }
            };
            if single { Value::F32(number as f32) } else { Value::F64(number) }
        }
        Kind::String => match value {
            Json::String(s) => Value::String(s.clone()),
            _ => return None,
        },
        Kind::Bytes => match value {
            Json::String(s) => Value::Bytes(payload::decode_base64(s)?.into()),
            _ => return None,
        },
        Kind::Enum(descriptor) => match value {
            Json::String(s) => {
                let found = descriptor.get_value_by_name(s).or_else(|| {
                    descriptor.get_value_by_name(&strcase::to_screaming_snake(&format!("{}_{s}", descriptor.name())))
                })?;
                Value::EnumNumber(found.number())
            }
            Json::Number(_) => Value::EnumNumber(integer(value)?),
            Json::Null if descriptor.full_name() == "google.protobuf.NullValue" => Value::EnumNumber(0),
            _ => return None,
        },
        Kind::Message(_) => return None,
    })
}

/// A map key from its JSON name (`true`/`false`, base-10 integers, strings).
fn map_key(field: &FieldDescriptor, key: &str) -> Option<MapKey> {
    Some(match field.kind() {
        Kind::String => MapKey::String(key.to_owned()),
        Kind::Bool => match key {
            "true" => MapKey::Bool(true),
            "false" => MapKey::Bool(false),
            _ => return None,
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(key.parse().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(key.parse().ok()?),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(key.parse().ok()?),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(key.parse().ok()?),
        _ => return None,
    })
}

/// A dotted protobuf name: identifiers of ASCII letters, digits and `_`, not starting with a digit.
fn is_full_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The largest Duration protojson accepts: 10 000 years.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// protojson's `parseDuration`: `[-+]?digits?(.digits{0,9})?s`, within ±10 000 years.
pub fn parse_duration(input: &str) -> Option<(i64, i32)> {
    let body = input.strip_suffix('s')?;
    let (negative, body) = match body.as_bytes().first()? {
        b'-' => (true, &body[1..]),
        b'+' => (false, &body[1..]),
        _ => (false, body),
    };
    if body.is_empty() {
        return None;
    }
    let (int_part, frac_part) = match body.split_once('.') {
        Some((int_part, frac_part)) => (int_part, Some(frac_part)),
        None => (body, None),
    };
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || (int_part.len() > 1 && int_part.starts_with('0')) {
        return None;
    }
    let seconds: i64 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
    let mut nanos: i64 = 0;
    if let Some(frac) = frac_part {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{frac:0<9}");
        nanos = padded.parse().ok()?;
    }
    if seconds > MAX_DURATION_SECONDS {
        return None;
    }
    let nanos = i32::try_from(nanos).ok()?;
    Some(if negative { (-seconds, -nanos) } else { (seconds, nanos) })
}

fn digits(s: &str, at: usize, len: usize) -> Option<u32> {
    let part = s.get(at..at + len)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// RFC 3339 as Go's `time.Parse(time.RFC3339Nano, s)` takes it (`T`, `Z` or `±hh:mm`, at most
/// nine fraction digits), within years 1 to 9999.
pub fn parse_timestamp(s: &str) -> Option<(i64, i32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        let count = end - start;
        if count == 0 || count > 9 {
            return None;
        }
        nanos = format!("{:0<9}", &s[start..end]).parse().ok()?;
        at = end;
    }
    let offset_minutes: i64 = match &s[at..] {
        "Z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) && zone.as_bytes()[3] == b':' => {
            let hours = digits(zone, 1, 2)?;
            let minutes = digits(zone, 4, 2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let total = i64::from(hours * 60 + minutes);
            if zone.starts_with('-') { -total } else { total }
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let timestamp = prost_types::Timestamp::date_time_nanos(
        i64::from(year),
        u8::try_from(month).ok()?,
        u8::try_from(day).ok()?,
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
        nanos,
    )
    .ok()?;
    let seconds = timestamp.seconds.checked_sub(offset_minutes * 60)?;
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
        return None;
    }
    Some((seconds, timestamp.nanos))
}
