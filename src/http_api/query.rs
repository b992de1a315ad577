//! The query string and the path variables: how a `body: ""` binding (every GET and DELETE)
//! fills its request message from `?key=value` pairs, and how every binding writes its path
//! variables last, over whatever the body or the query set. This follows grpc-gateway's
//! `runtime/query.go` (`DefaultQueryParser`, `PopulateFieldFromPath`), with flowgate's
//! deviations where grpc-gateway's result depends on Go's random map order:
//!
//! * a key is a proto or JSON field name, dotted through singular message fields
//!   (`execution.runId`); unknown keys are ignored, as are `pretty` and `noPayloadShorthand`;
//! * a key repeated fills a repeated field in order; `key[k]=v` sets a map entry;
//! * values: enums by exact name or known number, integers in base 10, bools as Go's
//!   `ParseBool`, bytes as base64 (standard, else URL-safe), `Timestamp` in RFC 3339, `Duration`
//!   in Go's `time.ParseDuration` syntax (`90s`, `1h30m`), the wrappers, `FieldMask` (comma
//!   separated), `Struct`/`Value` as JSON;
//! * a key reaching a path-bound field, or a field inside one, is dropped (the filter);
//! * **deviation:** two different keys naming one field (`?pageSize=1&page_size=2`), two members
//!   of one oneof, or several values for a singular field → 400 (Temporal resolves the first
//!   two in random order); `k[x]=v` on a field that is not a map → 400 (grpc-gateway would
//!   treat `x` as one more value); a `;` separator or a bad escape → 400, as Go's `ParseQuery`.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage as _, Value};

use super::errors::HttpError;
use super::json_in;
use super::routes::{Binding, FieldPath};

/// Query keys Temporal takes for formatting, never as fields.
const FORMAT_FLAGS: [&str; 2] = ["pretty", "noPayloadShorthand"];

/// Decodes `application/x-www-form-urlencoded` text as Go's `url.ParseQuery` does: `&`
/// separates pairs, a `;` is an error, `+` is a space, `%XX` must be valid; both sides must be
/// UTF-8. Empty pairs are skipped.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, HttpError> {
    let mut pairs = Vec::new();
    for part in query.split('&') {
        if part.is_empty() {
            continue;
        }
        if part.contains(';') {
            return Err(HttpError::invalid("invalid semicolon separator in query"));
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((unescape(key)?, unescape(value)?));
    }
    Ok(pairs)
}

fn unescape(text: &str) -> Result<String, HttpError> {
    super::routes::percent_decode(&text.replace('+', " ")).ok_or_else(|| {
        HttpError::invalid(format!(
            "invalid escape or non-UTF-8 text in the query: `{}`",
            crate::error::truncated(text, 100)
        ))
    })
}

/// Whether the query has the key (any value, as Temporal checks `?pretty`).
pub fn has_flag(pairs: &[(String, String)], flag: &str) -> bool {
    pairs.iter().any(|(key, _)| key == flag)
}

/// One resolved query key.
struct Target {
    /// The key as written (without a `[k]` suffix), for messages.
    key: String,
    path: Vec<FieldDescriptor>,
    map_key: Option<String>,
    values: Vec<String>,
}

/// grpc-gateway's `normalizeFieldPath` + lookup: the fields a dotted key names (proto name
/// first, then JSON name), or `None` for a key naming no field (ignored).
fn resolve(descriptor: &MessageDescriptor, key: &str) -> Result<Option<Vec<FieldDescriptor>>, HttpError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut current = descriptor.clone();
    let mut path = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let Some(field) = current.get_field_by_name(part).or_else(|| current.get_field_by_json_name(part)) else {
            return Ok(None);
        };
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                _ => return Err(HttpError::invalid(format!("invalid path: `{part}` is not a message"))),
            }
        }
        path.push(field);
    }
    Ok(Some(path))
}

/// Fills `message` from the query pairs of a `body: ""` binding.
pub fn fill_from_query(
    message: &mut DynamicMessage,
    binding: &Binding,
    pairs: &[(String, String)],
) -> Result<(), HttpError> {
    let descriptor = message.descriptor();
    let bound: Vec<&FieldPath> = binding.variables().collect();
    let mut targets: Vec<Target> = Vec::new();
    for (raw_key, value) in pairs {
        if FORMAT_FLAGS.contains(&raw_key.as_str()) {
            continue;
        }
        // `key[k]=v`: a map entry (grpc-gateway's `^(.*)\[(.*)\]$`).
        let (key, map_key) = match raw_key.strip_suffix(']').and_then(|k| k.rsplit_once('[')) {
            Some((key, inner)) => (key.to_owned(), Some(inner.to_owned())),
            None => (raw_key.clone(), None),
        };
        let Some(path) = resolve(&descriptor, &key)? else { continue };
        if bound.iter().any(|variable| variable.covers(&path)) {
            continue; // the path wins; grpc-gateway's filter drops the key
        }
        if let Some(existing) = targets.iter_mut().find(|t| t.key == key && t.map_key == map_key) {
            existing.values.push(value.clone());
            continue;
        }
        if let Some(other) =
            targets.iter().find(|t| t.path == path && (t.key != key || t.map_key.is_none() != map_key.is_none()))
        {
            return Err(HttpError::invalid(format!(
                "the query names the field `{}` twice (`{}` and `{key}`)",
                field_text(&path),
                other.key
            )));
        }
        targets.push(Target { key, path, map_key, values: vec![value.clone()] });
    }
    check_oneofs(&targets)?;
    for target in &targets {
        apply(message, target)?;
    }
    Ok(())
}

fn field_text(path: &[FieldDescriptor]) -> String {
    path.iter().map(|f| f.name()).collect::<Vec<_>>().join(".")
}

/// Two keys reaching two members of one oneof (at the same place) are refused.
fn check_oneofs(targets: &[Target]) -> Result<(), HttpError> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            let common = a.path.iter().zip(&b.path).take_while(|(x, y)| x == y).count();
            let (Some(x), Some(y)) = (a.path.get(common), b.path.get(common)) else { continue };
            if let (Some(one), Some(other)) = (x.containing_oneof(), y.containing_oneof())
                && one == other
            {
                return Err(HttpError::invalid(format!(
                    "the query sets two members of oneof `{}` (`{}` and `{}`)",
                    one.name(),
                    a.key,
                    b.key
                )));
            }
        }
    }
    Ok(())
}

fn apply(message: &mut DynamicMessage, target: &Target) -> Result<(), HttpError> {
    let Some((leaf, parents)) = target.path.split_last() else { return Ok(()) };
    let mut current = message;
    for field in parents {
        current = match current.get_field_mut(field) {
            Value::Message(inner) => inner,
            _ => return Err(HttpError::internal(format!("field `{}` is not a message", field.full_name()))),
        };
    }
    let parse_error = |value: &str, error: String| {
        HttpError::invalid(format!(
            "parsing field `{}`: `{}`: {error}",
            leaf.name(),
            crate::error::truncated(value, 100)
        ))
    };
    let value = if leaf.is_map() {
        let Some(key_text) = &target.map_key else {
            return Err(HttpError::invalid(format!(
                "the map field `{}` takes `{}[key]=value`",
                leaf.name(),
                target.key
            )));
        };
        let [value] = target.values.as_slice() else {
            return Err(HttpError::invalid(format!(
                "more than one value for key `{key_text}` in map `{}`",
                leaf.name()
            )));
        };
        let Kind::Message(entry) = leaf.kind() else { return Err(HttpError::internal("a map without an entry")) };
        let key =
            match parse_value(&entry.map_entry_key_field().kind(), key_text).map_err(|e| parse_error(key_text, e))? {
                Value::String(s) => MapKey::String(s),
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                _ => return Err(HttpError::invalid(format!("invalid key type for map `{}`", leaf.name()))),
            };
        let parsed = parse_value(&entry.map_entry_value_field().kind(), value).map_err(|e| parse_error(value, e))?;
        let mut map = match current.get_field(leaf).into_owned() {
            Value::Map(map) => map,
            _ => Default::default(),
        };
        map.insert(key, parsed);
        Value::Map(map)
    } else if target.map_key.is_some() {
        return Err(HttpError::invalid(format!("`{}` is not a map field", target.key)));
    } else if leaf.is_list() {
        let mut items = Vec::new();
        for value in &target.values {
            items.push(parse_value(&leaf.kind(), value).map_err(|e| parse_error(value, e))?);
        }
        Value::List(items)
    } else {
        let [value] = target.values.as_slice() else {
            return Err(HttpError::invalid(format!("too many values for field `{}`", leaf.name())));
        };
        parse_value(&leaf.kind(), value).map_err(|e| parse_error(value, e))?
    };
    current.try_set_field(leaf, value).map_err(|_| HttpError::internal(format!("cannot set `{}`", leaf.full_name())))
}

/// Writes the path variables (decoded, in template order) over the message.
pub fn fill_from_path(message: &mut DynamicMessage, binding: &Binding, values: &[String]) -> Result<(), HttpError> {
    for (variable, text) in binding.variables().zip(values) {
        let Some(leaf) = variable.fields.last() else { continue };
        let value = parse_value(&leaf.kind(), text).map_err(|error| {
            HttpError::invalid(format!(
                "parsing path variable `{}`: `{}`: {error}",
                variable.text,
                crate::error::truncated(text, 100)
            ))
        })?;
        variable.set(message, value)?;
    }
    Ok(())
}

/// grpc-gateway's `parseField`: one query or path value of `kind`.
pub fn parse_value(kind: &Kind, text: &str) -> Result<Value, String> {
    let number = |what: &str| format!("invalid syntax for {what}");
    Ok(match kind {
        Kind::Bool => Value::Bool(match text {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return Err("invalid syntax for bool".to_owned()),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| number("int32"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| number("int64"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| number("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| number("uint64"))?),
        Kind::Float => Value::F32(parse_float(text).ok_or_else(|| number("float"))? as f32),
        Kind::Double => Value::F64(parse_float(text).ok_or_else(|| number("double"))?),
        Kind::String => Value::String(text.to_owned()),
        Kind::Bytes => Value::Bytes(query_bytes(text).ok_or_else(|| "invalid base64".to_owned())?.into()),
        Kind::Enum(descriptor) => {
            let found = descriptor.get_value_by_name(text).or_else(|| {
                // Go's strconv.Atoi, then a known number only.
                text.parse::<i32>().ok().and_then(|number| descriptor.get_value(number))
            });
            Value::EnumNumber(found.ok_or_else(|| "not a valid value".to_owned())?.number())
        }
        Kind::Message(descriptor) => Value::Message(parse_message(descriptor, text)?),
    })
}

/// A float as Go's `ParseFloat` reads a query value (decimal, with `inf`/`nan` spellings
/// refused here: they cannot be meant).
fn parse_float(text: &str) -> Option<f64> {
    let value: f64 = text.parse().ok()?;
    (value.is_finite() && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
        .then_some(value)
}

/// grpc-gateway's `runtime.Bytes`: standard base64 (padded), else URL-safe (padded).
fn query_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .ok()
}

fn parse_message(descriptor: &MessageDescriptor, text: &str) -> Result<DynamicMessage, String> {
    let name = descriptor.full_name();
    let mut message = DynamicMessage::new(descriptor.clone());
    let set = |message: &mut DynamicMessage, field: &str, value: Value| {
        message.try_set_field_by_name(field, value).map_err(|_| format!("cannot set `{name}.{field}`"))
    };
    match name {
        "google.protobuf.Timestamp" => {
            let (seconds, nanos) = json_in::parse_timestamp(text).ok_or("invalid RFC 3339 timestamp")?;
            set(&mut message, "seconds", Value::I64(seconds))?;
            set(&mut message, "nanos", Value::I32(nanos))?;
        }
        "google.protobuf.Duration" => {
            let nanos = go_parse_duration(text).ok_or("invalid duration")?;
            set(&mut message, "seconds", Value::I64(nanos / 1_000_000_000))?;
            set(&mut message, "nanos", Value::I32(i32::try_from(nanos % 1_000_000_000).unwrap_or_default()))?;
        }
        "google.protobuf.FieldMask" => {
            let paths = text.split(',').map(|p| Value::String(p.to_owned())).collect();
            set(&mut message, "paths", Value::List(paths))?;
        }
        "google.protobuf.Value" | "google.protobuf.Struct" => {
            return json_in::decode_body(descriptor, text.as_bytes(), false).map_err(|e| e.message);
        }
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => {
            let field = descriptor.get_field_by_name("value").ok_or("no value field")?;
            let value = parse_value(&field.kind(), text)?;
            set(&mut message, "value", value)?;
        }
        _ => return Err(format!("unsupported message type `{name}`")),
    }
    Ok(message)
}

/// Go's `time.ParseDuration`, in nanoseconds: `[-+]?(digits[.digits]unit)+` with units `ns`,
/// `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`, or `0`; `None` on bad syntax or int64 overflow.
pub fn go_parse_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after) = rest.strip_prefix('.') {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after[..frac_len];
            rest = &after[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let int_value: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
        total = total.checked_add(int_value.checked_mul(unit)?)?;
        if !frac_part.is_empty() {
            // Go scales the fraction to the unit, truncating below a nanosecond.
            let digits = &frac_part[..frac_part.len().min(18)];
            let scale = 10u128.checked_pow(u32::try_from(digits.len()).ok()?)?;
            let frac: u128 = digits.parse().ok()?;
            total = total.checked_add(frac.checked_mul(unit)? / scale)?;
        }
        if total > (1u128 << 63) {
            return None;
        }
    }
    if negative {
        let total = i128::try_from(total).ok()?;
        i64::try_from(-total).ok()
    } else {
        i64::try_from(total).ok()
    }
}
