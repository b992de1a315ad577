//! Protobuf → JSON: a response message written as Temporal's HTTP API writes it
//! (`A/internal/protojson/json_marshal.go` with Temporal's options): fields in declaration order
//! under their JSON names, unset and default fields left out, 64-bit integers as strings, floats
//! in Go's format, enums by name (by number when unknown), bytes as standard base64, the
//! well-known types in their JSON forms, map keys sorted, payloads in shorthand unless turned
//! off, and optionally indented by two spaces (`?pretty`).

use std::collections::BTreeMap;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage as _, Value};

use super::errors::HttpError;
use super::json::{self, Writer};
use super::json_in::{MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS};
use super::payload::{self, PAYLOAD, PAYLOADS};
use super::strcase;

/// How a response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    /// Payloads in shorthand (Temporal's default; off with `?noPayloadShorthand` or
    /// `Accept: application/json+no-payload-shorthand`).
    pub shorthand: bool,
    /// Indented by two spaces (`?pretty`).
    pub pretty: bool,
}

impl Default for OutputOptions {
    fn default() -> OutputOptions {
        OutputOptions { shorthand: true, pretty: false }
    }
}

/// Writes `message` as JSON. Fails (500) only where Temporal's marshaler fails too: an `Any` of
/// a type not in the pool, a `Duration` or `Timestamp` out of range, a `Value` with no kind.
pub fn to_json(message: &DynamicMessage, options: OutputOptions) -> Result<Vec<u8>, HttpError> {
    to_json_held(message, options, &mut |_| Ok(()))
}

/// [`to_json`], asking `hold` for the memory a payload's trees take while it is written (and
/// failing with its error when it refuses).
pub fn to_json_held(
    message: &DynamicMessage,
    options: OutputOptions,
    hold: &mut dyn FnMut(usize) -> Result<(), HttpError>,
) -> Result<Vec<u8>, HttpError> {
    let mut cx = Cx { w: Writer::new(options.pretty), options, anys: 0, hold };
    write_message(&mut cx, message, None)?;
    Ok(cx.w.out.into_bytes())
}

/// `Any`s inside `Any`s deeper than this fail: each is decoded on its own, with a fresh recursion
/// limit, so this bounds the writer's recursion where the decoder's limit does not.
const MAX_ANY_DEPTH: usize = 16;

/// One response being written: the output, its options, and how deep in `Any`s it is.
struct Cx<'h> {
    w: Writer,
    options: OutputOptions,
    anys: usize,
    /// Asked to hold this many bytes more (`0`: none more) while a payload is written in
    /// shorthand: the parsed tree can be far larger than the payload (see `json`'s docs).
    hold: &'h mut dyn FnMut(usize) -> Result<(), HttpError>,
}

fn fail(message: String) -> HttpError {
    HttpError::internal(message)
}

/// The fields a message has set, with their values, in declaration order (the order Go's
/// marshaler writes them in; prost-reflect keeps them by number). Only the set ones are looked
/// at: a history event declares ~60 fields and sets ~6.
fn set_fields(message: &DynamicMessage) -> Vec<(FieldDescriptor, &Value)> {
    let descriptor = message.descriptor();
    let declared = &descriptor.descriptor_proto().field;
    let mut set: Vec<_> = message
        .fields()
        .map(|(field, value)| {
            let number = i32::try_from(field.number()).unwrap_or(i32::MAX);
            (declared.iter().position(|d| d.number() == number).unwrap_or(usize::MAX), field, value)
        })
        .collect();
    set.sort_by_key(|(position, ..)| *position);
    set.into_iter().map(|(_, field, value)| (field, value)).collect()
}

fn write_message(cx: &mut Cx<'_>, message: &DynamicMessage, type_url: Option<&str>) -> Result<(), HttpError> {
    let name = message.descriptor().full_name().to_owned();
    if name.starts_with("google.protobuf.") && write_well_known(cx, message, type_url)? {
        return Ok(());
    }
    if cx.options.shorthand && type_url.is_none() && write_shorthand(cx, message, &name)? {
        return Ok(());
    }
    cx.w.open('{');
    if let Some(url) = type_url {
        cx.w.name("@type");
        cx.w.string(url);
    }
    for (field, value) in set_fields(message) {
        cx.w.name(field.json_name());
        write_value(cx, &field, value)?;
    }
    cx.w.close('}');
    Ok(())
}

/// A `Payload` in shorthand, or `Payloads` if every payload has one; `false` when not.
fn write_shorthand(cx: &mut Cx<'_>, message: &DynamicMessage, name: &str) -> Result<bool, HttpError> {
    if name == PAYLOAD {
        return write_payload_shorthand(cx, message);
    }
    if name != PAYLOADS {
        return Ok(false);
    }
    let field = message.get_field_by_name("payloads");
    let items: &[Value] = match field.as_deref() {
        Some(Value::List(items)) => items,
        _ => &[],
    };
    let mark = cx.w.mark();
    cx.w.open('[');
    for item in items {
        let written = match item.as_message() {
            Some(payload) => write_payload_shorthand(cx, payload)?,
            None => false,
        };
        if !written {
            cx.w.rewind(mark);
            return Ok(false);
        }
    }
    cx.w.close(']');
    Ok(true)
}

/// What a payload's JSON tree may take per value of its data, both trees (the parsed one and
/// Go's `any` form) alive at once; `tests/http_api_memory.rs` measures it.
pub const TREE_BYTES_PER_VALUE: usize = 256;

/// One payload in shorthand, if it has one. Its trees are held from the budget while it is
/// written, one payload at a time.
fn write_payload_shorthand(cx: &mut Cx<'_>, payload: &DynamicMessage) -> Result<bool, HttpError> {
    let data = payload.get_field_by_name("data");
    let data: &[u8] = data.as_deref().and_then(Value::as_bytes).map(|b| b.as_ref()).unwrap_or_default();
    let tree = json::count_values(data).min(json::MAX_VALUES) * TREE_BYTES_PER_VALUE + 2 * data.len();
    (cx.hold)(tree)?;
    let written = match payload::payload_shorthand(payload) {
        Some(value) => {
            value.write(&mut cx.w);
            true
        }
        None => false,
    };
    (cx.hold)(0)?;
    Ok(written)
}

fn write_value(cx: &mut Cx<'_>, field: &FieldDescriptor, value: &Value) -> Result<(), HttpError> {
    match value {
        Value::List(items) => {
            cx.w.open('[');
            for item in items {
                write_singular(cx, &field.kind(), item)?;
            }
            cx.w.close(']');
        }
        Value::Map(map) => {
            let Kind::Message(entry) = field.kind() else {
                return Err(fail(format!("map field `{}` has no entry message", field.full_name())));
            };
            let value_kind = entry.map_entry_value_field().kind();
            let sorted: BTreeMap<&MapKey, &Value> = map.iter().collect();
            cx.w.open('{');
            for (key, item) in sorted {
                cx.w.name(&map_key_text(key));
                write_singular(cx, &value_kind, item)?;
            }
            cx.w.close('}');
        }
        single => write_singular(cx, &field.kind(), single)?,
    }
    Ok(())
}

fn map_key_text(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn write_singular(cx: &mut Cx<'_>, kind: &Kind, value: &Value) -> Result<(), HttpError> {
    match value {
        Value::Bool(b) => cx.w.raw(if *b { "true" } else { "false" }),
        Value::I32(n) => cx.w.raw(&n.to_string()),
        Value::U32(n) => cx.w.raw(&n.to_string()),
        Value::I64(n) => cx.w.string(&n.to_string()),
        Value::U64(n) => cx.w.string(&n.to_string()),
        Value::F32(n) => cx.w.float(f64::from(*n), true),
        Value::F64(n) => cx.w.float(*n, false),
        Value::String(s) => cx.w.string(s),
        Value::Bytes(bytes) => cx.w.string(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) if descriptor.full_name() == "google.protobuf.NullValue" => cx.w.raw("null"),
            Kind::Enum(descriptor) => match descriptor.get_value(*number) {
                Some(known) => cx.w.string(known.name()),
                None => cx.w.raw(&number.to_string()),
            },
            _ => cx.w.raw(&number.to_string()),
        },
        Value::Message(message) => write_message(cx, message, None)?,
        Value::List(_) | Value::Map(_) => return Err(fail("a list or map inside a list or map".to_owned())),
    }
    Ok(())
}

fn number_field(message: &DynamicMessage, name: &str) -> i64 {
    match message.get_field_by_name(name).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Writes the well-known types with their own JSON form; `false` for the others.
fn write_well_known(cx: &mut Cx<'_>, message: &DynamicMessage, type_url: Option<&str>) -> Result<bool, HttpError> {
    let name = message.descriptor().full_name().to_owned();
    if name == "google.protobuf.Any" {
        write_any(cx, message)?;
        return Ok(true);
    }
    if !super::json_in::is_well_known_with_own_form(&name) {
        return Ok(false);
    }
    // Inside an Any: `{"@type": …, "value": <the form>}`.
    if let Some(url) = type_url {
        cx.w.open('{');
        cx.w.name("@type");
        cx.w.string(url);
        cx.w.name("value");
        write_well_known(cx, message, None)?;
        cx.w.close('}');
        return Ok(true);
    }
    match name.as_str() {
        "google.protobuf.Duration" => {
            let seconds = number_field(message, "seconds");
            let nanos = number_field(message, "nanos");
            if seconds.abs() > 315_576_000_000
                || nanos.abs() >= 1_000_000_000
                || (seconds > 0 && nanos < 0)
                || (seconds < 0 && nanos > 0)
            {
                return Err(fail(format!("google.protobuf.Duration out of range: {seconds}s {nanos}ns")));
            }
            let duration = prost_types::Duration { seconds, nanos: i32::try_from(nanos).unwrap_or_default() };
            cx.w.string(&duration.to_string());
        }
        "google.protobuf.Timestamp" => {
            let seconds = number_field(message, "seconds");
            let nanos = number_field(message, "nanos");
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds)
                || !(0..1_000_000_000).contains(&nanos)
            {
                return Err(fail(format!("google.protobuf.Timestamp out of range: {seconds}s {nanos}ns")));
            }
            let timestamp = prost_types::Timestamp { seconds, nanos: i32::try_from(nanos).unwrap_or_default() };
            cx.w.string(&timestamp.to_string());
        }
        "google.protobuf.FieldMask" => {
            let mut paths = Vec::new();
            if let Some(Value::List(items)) = message.get_field_by_name("paths").as_deref() {
                for item in items {
                    let path = item.as_str().unwrap_or_default();
                    let camel = strcase::json_camel_case(path);
                    if strcase::json_snake_case(&camel) != path {
                        return Err(fail(format!("google.protobuf.FieldMask path `{path}` has no JSON form")));
                    }
                    paths.push(camel);
                }
            }
            cx.w.string(&paths.join(","));
        }
        "google.protobuf.Empty" => {
            cx.w.open('{');
            cx.w.close('}');
        }
        "google.protobuf.Struct" => {
            let field =
                message.descriptor().get_field_by_name("fields").ok_or_else(|| fail("no Struct.fields".into()))?;
            write_value(cx, &field, &message.get_field(&field))?;
        }
        "google.protobuf.ListValue" => {
            let field =
                message.descriptor().get_field_by_name("values").ok_or_else(|| fail("no ListValue.values".into()))?;
            write_value(cx, &field, &message.get_field(&field))?;
        }
        "google.protobuf.Value" => {
            let Some((field, value)) = set_fields(message).into_iter().next() else {
                return Err(fail("google.protobuf.Value: none of the oneof fields is set".to_owned()));
            };
            if let Value::F64(n) = value
                && !n.is_finite()
            {
                return Err(fail(format!("google.protobuf.Value: invalid number {n}")));
            }
            write_value(cx, &field, value)?;
        }
        _ => {
            // The wrappers: the value alone (a default value is still written).
            let field =
                message.descriptor().get_field_by_name("value").ok_or_else(|| fail(format!("no {name}.value")))?;
            write_singular(cx, &field.kind(), &message.get_field(&field))?;
        }
    }
    Ok(true)
}

fn write_any(cx: &mut Cx<'_>, any: &DynamicMessage) -> Result<(), HttpError> {
    let type_url = any.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let bytes = any.get_field_by_name("value").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    if type_url.is_empty() {
        if bytes.is_empty() {
            cx.w.open('{');
            cx.w.close('}');
            return Ok(());
        }
        return Err(fail("google.protobuf.Any: type_url is not set".to_owned()));
    }
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = any
        .descriptor()
        .parent_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| fail(format!("google.protobuf.Any: unable to resolve `{type_url}`")))?;
    if cx.anys >= MAX_ANY_DEPTH {
        return Err(fail(format!("google.protobuf.Any: nested more than {MAX_ANY_DEPTH} deep")));
    }
    let inner = DynamicMessage::decode(descriptor, bytes)
        .map_err(|error| fail(format!("google.protobuf.Any: unable to unmarshal `{type_url}`: {error}")))?;
    cx.anys += 1;
    let written = write_message(cx, &inner, Some(&type_url));
    cx.anys -= 1;
    written
}
