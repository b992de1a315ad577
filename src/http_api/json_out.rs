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
use super::json::Writer;
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
    let mut w = Writer::new(options.pretty);
    write_message(&mut w, message, options, None)?;
    Ok(w.out.into_bytes())
}

fn fail(message: String) -> HttpError {
    HttpError::internal(message)
}

/// The fields of a message in declaration order.
fn declared_fields(message: &DynamicMessage) -> Vec<FieldDescriptor> {
    let descriptor = message.descriptor();
    descriptor
        .descriptor_proto()
        .field
        .iter()
        .filter_map(|field| descriptor.get_field(u32::try_from(field.number()).ok()?))
        .collect()
}

fn write_message(
    w: &mut Writer,
    message: &DynamicMessage,
    options: OutputOptions,
    type_url: Option<&str>,
) -> Result<(), HttpError> {
    let name = message.descriptor().full_name().to_owned();
    if name.starts_with("google.protobuf.") && write_well_known(w, message, options, type_url)? {
        return Ok(());
    }
    if options.shorthand && type_url.is_none() && write_shorthand(w, message, &name) {
        return Ok(());
    }
    w.open('{');
    if let Some(url) = type_url {
        w.name("@type");
        w.string(url);
    }
    for field in declared_fields(message) {
        if !message.has_field(&field) {
            continue;
        }
        w.name(field.json_name());
        write_value(w, &field, &message.get_field(&field), options)?;
    }
    w.close('}');
    Ok(())
}

/// A `Payload` or `Payloads` in shorthand, if it has one.
fn write_shorthand(w: &mut Writer, message: &DynamicMessage, name: &str) -> bool {
    if name == PAYLOAD {
        if let Some(value) = payload::payload_shorthand(message) {
            value.write(w);
            return true;
        }
    } else if name == PAYLOADS {
        let items = match message.get_field_by_name("payloads").as_deref() {
            Some(Value::List(items)) => items.clone(),
            _ => Vec::new(),
        };
        let values: Option<Vec<_>> =
            items.iter().map(|item| item.as_message().and_then(payload::payload_shorthand)).collect();
        if let Some(values) = values {
            w.open('[');
            for value in values {
                value.write(w);
            }
            w.close(']');
            return true;
        }
    }
    false
}

fn write_value(
    w: &mut Writer,
    field: &FieldDescriptor,
    value: &Value,
    options: OutputOptions,
) -> Result<(), HttpError> {
    match value {
        Value::List(items) => {
            w.open('[');
            for item in items {
                write_singular(w, &field.kind(), item, options)?;
            }
            w.close(']');
        }
        Value::Map(map) => {
            let Kind::Message(entry) = field.kind() else {
                return Err(fail(format!("map field `{}` has no entry message", field.full_name())));
            };
            let value_kind = entry.map_entry_value_field().kind();
            let sorted: BTreeMap<&MapKey, &Value> = map.iter().collect();
            w.open('{');
            for (key, item) in sorted {
                w.name(&map_key_text(key));
                write_singular(w, &value_kind, item, options)?;
            }
            w.close('}');
        }
        single => write_singular(w, &field.kind(), single, options)?,
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

fn write_singular(w: &mut Writer, kind: &Kind, value: &Value, options: OutputOptions) -> Result<(), HttpError> {
    match value {
        Value::Bool(b) => w.raw(if *b { "true" } else { "false" }),
        Value::I32(n) => w.raw(&n.to_string()),
        Value::U32(n) => w.raw(&n.to_string()),
        Value::I64(n) => w.string(&n.to_string()),
        Value::U64(n) => w.string(&n.to_string()),
        Value::F32(n) => w.float(f64::from(*n), true),
        Value::F64(n) => w.float(*n, false),
        Value::String(s) => w.string(s),
        Value::Bytes(bytes) => w.string(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) if descriptor.full_name() == "google.protobuf.NullValue" => w.raw("null"),
            Kind::Enum(descriptor) => match descriptor.get_value(*number) {
                Some(known) => w.string(known.name()),
                None => w.raw(&number.to_string()),
            },
            _ => w.raw(&number.to_string()),
        },
        Value::Message(message) => write_message(w, message, options, None)?,
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
fn write_well_known(
    w: &mut Writer,
    message: &DynamicMessage,
    options: OutputOptions,
    type_url: Option<&str>,
) -> Result<bool, HttpError> {
    let name = message.descriptor().full_name().to_owned();
    if name == "google.protobuf.Any" {
        write_any(w, message, options)?;
        return Ok(true);
    }
    if !super::json_in::is_well_known_with_own_form(&name) {
        return Ok(false);
    }
    // Inside an Any: `{"@type": …, "value": <the form>}`.
    if let Some(url) = type_url {
        w.open('{');
        w.name("@type");
        w.string(url);
        w.name("value");
        write_well_known(w, message, options, None)?;
        w.close('}');
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
            w.string(&duration.to_string());
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
            w.string(&timestamp.to_string());
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
            w.string(&paths.join(","));
        }
        "google.protobuf.Empty" => {
            w.open('{');
            w.close('}');
        }
        "google.protobuf.Struct" => {
            let field =
                message.descriptor().get_field_by_name("fields").ok_or_else(|| fail("no Struct.fields".into()))?;
            write_value(w, &field, &message.get_field(&field), options)?;
        }
        "google.protobuf.ListValue" => {
            let field =
                message.descriptor().get_field_by_name("values").ok_or_else(|| fail("no ListValue.values".into()))?;
            write_value(w, &field, &message.get_field(&field), options)?;
        }
        "google.protobuf.Value" => {
            let set = declared_fields(message).into_iter().find(|field| message.has_field(field));
            let Some(field) = set else {
                return Err(fail("google.protobuf.Value: none of the oneof fields is set".to_owned()));
            };
            let value = message.get_field(&field);
            if let Value::F64(n) = value.as_ref()
                && !n.is_finite()
            {
                return Err(fail(format!("google.protobuf.Value: invalid number {n}")));
            }
            write_value(w, &field, &value, options)?;
        }
        _ => {
            // The wrappers: the value alone (a default value is still written).
            let field =
                message.descriptor().get_field_by_name("value").ok_or_else(|| fail(format!("no {name}.value")))?;
            write_singular(w, &field.kind(), &message.get_field(&field), options)?;
        }
    }
    Ok(true)
}

fn write_any(w: &mut Writer, any: &DynamicMessage, options: OutputOptions) -> Result<(), HttpError> {
    let type_url = any.get_field_by_name("type_url").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let bytes = any.get_field_by_name("value").and_then(|v| v.as_bytes().cloned()).unwrap_or_default();
    if type_url.is_empty() {
        if bytes.is_empty() {
            w.open('{');
            w.close('}');
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
    let inner = DynamicMessage::decode(descriptor, bytes)
        .map_err(|error| fail(format!("google.protobuf.Any: unable to unmarshal `{type_url}`: {error}")))?;
    write_message(w, &inner, options, Some(&type_url))
}
