//! A small JSON reader and writer with the properties the transcoder needs and `serde_json`
//! does not give: the reader keeps members in order with duplicates visible, keeps each number's
//! text (Go decides "integer or float" from it), and refuses nesting deeper than [`MAX_DEPTH`];
//! the writer formats strings and numbers exactly as Go does (protojson's encoder, or
//! `encoding/json` for payload data).
//!
//! Every walk over a [`Json`] tree is bounded by the reader's depth limit, so nothing in this
//! module or its users recurses without bound. A tree takes far more memory than its text (a
//! value is a 32-byte enum, most with a heap allocation of their own, so `[0,0,…]` grows about
//! 40 times), so the reader also refuses more than [`MAX_VALUES`] values, and
//! [`count_values`] tells, without parsing, how many a text would make: the HTTP door holds
//! memory for them from its budget before it parses.

use std::fmt::Write as _;

/// Nesting deeper than this (arrays and objects) is refused. Temporal's requests nest far less:
/// a history event with a failure chain is about 15 levels.
pub const MAX_DEPTH: usize = 64;

/// More values than this in one text are refused (a request body), or not parsed (a payload
/// written in shorthand is then written in full). Temporal's requests hold a few dozen values
/// besides their payloads.
pub const MAX_VALUES: usize = 1 << 16;

/// A parsed JSON value. Objects keep their members in order, duplicates included; numbers keep
/// their text.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text as written (valid JSON number syntax).
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The kind as Go's messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "bool",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// Why a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("unexpected end of JSON input")]
    Eof,
    #[error("invalid JSON at byte {0}")]
    Invalid(usize),
    #[error("invalid UTF-8 in a JSON string at byte {0}")]
    Utf8(usize),
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("trailing data after the JSON value at byte {0}")]
    Trailing(usize),
    #[error("JSON with more than {MAX_VALUES} values")]
    TooMany,
}

/// At least as many as the values [`parse`] would make of `input` (arrays, objects and members
/// included), counted in one pass without allocating: one, plus one per `,`, `:`, `[` and `{`
/// outside strings.
pub fn count_values(input: &[u8]) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in input {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => count += 1,
                _ => {}
            }
        }
    }
    count
}

/// Parses one JSON value (surrounding whitespace allowed).
pub fn parse(input: &[u8]) -> Result<Json, SyntaxError> {
    let mut parser = Parser { input, at: 0, values: 0 };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.at != input.len() {
        return Err(SyntaxError::Trailing(parser.at));
    }
    Ok(value)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
    values: usize,
}

impl Parser<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Result<u8, SyntaxError> {
        self.input.get(self.at).copied().ok_or(SyntaxError::Eof)
    }

    fn literal(&mut self, word: &[u8], value: Json) -> Result<Json, SyntaxError> {
        let end = self.at + word.len();
        match self.input.get(self.at..end) {
            Some(found) if found == word => {
                self.at = end;
                Ok(value)
            }
            Some(_) => Err(SyntaxError::Invalid(self.at)),
            None => Err(SyntaxError::Eof),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, SyntaxError> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(SyntaxError::TooMany);
        }
        match self.peek()? {
            b'n' => self.literal(b"null", Json::Null),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'"' => self.string().map(Json::String),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(SyntaxError::TooDeep);
                }
                self.at += 1;
                let mut items = Vec::new();
                self.skip_whitespace();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.skip_whitespace();
                    items.push(self.value(depth + 1)?);
                    self.skip_whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(SyntaxError::Invalid(self.at)),
                    }
                }
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(SyntaxError::TooDeep);
                }
                self.at += 1;
                let mut members = Vec::new();
                self.skip_whitespace();
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.skip_whitespace();
                    if self.peek()? != b'"' {
                        return Err(SyntaxError::Invalid(self.at));
                    }
                    let name = self.string()?;
                    self.skip_whitespace();
                    if self.peek()? != b':' {
                        return Err(SyntaxError::Invalid(self.at));
                    }
                    self.at += 1;
                    self.skip_whitespace();
                    let value = self.value(depth + 1)?;
                    members.push((name, value));
                    self.skip_whitespace();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(SyntaxError::Invalid(self.at)),
                    }
                }
            }
            _ => Err(SyntaxError::Invalid(self.at)),
        }
    }

    fn number(&mut self) -> Result<Json, SyntaxError> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while let Some(b'0'..=b'9') = p.input.get(p.at) {
                p.at += 1;
            }
            p.at - from
        };
        if self.input.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.input.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            Some(_) => return Err(SyntaxError::Invalid(self.at)),
            None => return Err(SyntaxError::Eof),
        }
        if self.input.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(SyntaxError::Invalid(self.at));
            }
        }
        if let Some(b'e' | b'E') = self.input.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.input.get(self.at) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(SyntaxError::Invalid(self.at));
            }
        }
        // Only ASCII was consumed.
        let text = String::from_utf8_lossy(&self.input[start..self.at]).into_owned();
        Ok(Json::Number(text))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let Some(digits) = self.input.get(self.at..self.at + 4) else {
            return Err(SyntaxError::Eof);
        };
        let mut value = 0;
        for &digit in digits {
            let nibble = (digit as char).to_digit(16).ok_or(SyntaxError::Invalid(self.at))?;
            value = value * 16 + nibble;
        }
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.at += 1; // the opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let start = self.at;
            while let Some(&b) = self.input.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.extend_from_slice(&self.input[start..self.at]);
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    let at = self.at;
                    return String::from_utf8(out).map_err(|_| SyntaxError::Utf8(at));
                }
                b'\\' => {
                    self.at += 1;
                    let escape = self.peek()?;
                    self.at += 1;
                    let simple = match escape {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(SyntaxError::Invalid(self.at - 1)),
                    };
                    if let Some(byte) = simple {
                        out.push(byte);
                        continue;
                    }
                    let at = self.at;
                    let first = self.hex4()?;
                    let code = if (0xD800..0xDC00).contains(&first) {
                        // A high surrogate must be followed by an escaped low one.
                        if self.input.get(self.at..self.at + 2) != Some(b"\\u") {
                            return Err(SyntaxError::Invalid(at));
                        }
                        self.at += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&second) {
                            return Err(SyntaxError::Invalid(at));
                        }
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    } else if (0xDC00..0xE000).contains(&first) {
                        return Err(SyntaxError::Invalid(at));
                    } else {
                        first
                    };
                    let c = char::from_u32(code).ok_or(SyntaxError::Invalid(at))?;
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => return Err(SyntaxError::Invalid(self.at)), // a control character
            }
        }
    }
}

/// How strings are escaped on output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// protojson's encoder: `"`, `\` and control characters only.
    Protojson,
    /// Go's `encoding/json`: also `<`, `>`, `&`, U+2028 and U+2029 (HTML-safe).
    GoEncodingJson,
}

/// Appends `s` as a JSON string literal.
pub fn write_string(out: &mut String, s: &str, escaping: Escaping) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if escaping == Escaping::GoEncodingJson => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a float as Go writes it (`strconv.AppendFloat` with `'f'`, or `'e'` below 1e-6 and
/// from 1e21 on, shortest round-trip digits): `2`, `0.5`, `1e+21`, `1e-7`. protojson writes NaN
/// and the infinities as strings; `encoding/json` never meets them (JSON has no such numbers).
pub fn write_float(out: &mut String, value: f64, single: bool) {
    if value.is_nan() {
        out.push_str("\"NaN\"");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
        return;
    }
    let abs = value.abs();
    let exponent_form = if single {
        let abs = abs as f32;
        abs != 0.0 && !(1e-6..1e21).contains(&abs)
    } else {
        abs != 0.0 && !(1e-6..1e21).contains(&abs)
    };
    // Rust's shortest round-trip digits are Go's (`-1` precision) for the same bit size.
    let text = match (exponent_form, single) {
        (false, false) => format!("{value}"),
        (false, true) => format!("{}", value as f32),
        (true, false) => format!("{value:e}"),
        (true, true) => format!("{:e}", value as f32),
    };
    if !exponent_form {
        out.push_str(&text);
        return;
    }
    // Rust writes `1e21`/`1.5e-7`; Go writes `1e+21`/`1.5e-07`, then protojson and
    // encoding/json both shorten a one-digit negative exponent back to `e-7`.
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    out.push_str(mantissa);
    out.push('e');
    match exponent.strip_prefix('-') {
        Some(digits) => {
            out.push('-');
            out.push_str(digits);
        }
        None => {
            out.push('+');
            if exponent.len() < 2 {
                out.push('0');
            }
            out.push_str(exponent);
        }
    }
}

/// A JSON writer with protojson's layout: compact, or indented (`"name": value`, two spaces per
/// level, `{}` and `[]` for empty containers).
pub struct Writer {
    pub out: String,
    indent: Option<&'static str>,
    depth: usize,
    /// What the last token was, to place commas and newlines.
    last: Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Nothing,
    Open,
    Name,
    Value,
}

/// Where a [`Writer`] was, to go back to ([`Writer::rewind`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    len: usize,
    depth: usize,
    last: Last,
}

impl Writer {
    pub fn new(pretty: bool) -> Writer {
        Writer { out: String::new(), indent: pretty.then_some("  "), depth: 0, last: Last::Nothing }
    }

    pub fn mark(&self) -> Mark {
        Mark { len: self.out.len(), depth: self.depth, last: self.last }
    }

    /// Forgets everything written since `mark`.
    pub fn rewind(&mut self, mark: Mark) {
        self.out.truncate(mark.len);
        self.depth = mark.depth;
        self.last = mark.last;
    }

    fn newline(&mut self) {
        if let Some(indent) = self.indent {
            self.out.push('\n');
            for _ in 0..self.depth {
                self.out.push_str(indent);
            }
        }
    }

    /// Before a name or a value.
    fn before_item(&mut self) {
        match self.last {
            Last::Value => {
                self.out.push(',');
                self.newline();
            }
            Last::Open => {
                self.depth += 1;
                self.newline();
            }
            Last::Name if self.indent.is_some() => self.out.push(' '),
            Last::Name | Last::Nothing => {}
        }
    }

    pub fn open(&mut self, bracket: char) {
        self.before_item();
        self.out.push(bracket);
        self.last = Last::Open;
    }

    pub fn close(&mut self, bracket: char) {
        if self.last != Last::Open {
            self.depth = self.depth.saturating_sub(1);
            self.newline();
        }
        self.out.push(bracket);
        self.last = Last::Value;
    }

    pub fn name(&mut self, name: &str) {
        self.before_item();
        write_string(&mut self.out, name, Escaping::Protojson);
        self.out.push(':');
        self.last = Last::Name;
    }

    /// A value already formatted (a number, `true`, `null`).
    pub fn raw(&mut self, text: &str) {
        self.before_item();
        self.out.push_str(text);
        self.last = Last::Value;
    }

    pub fn string(&mut self, s: &str) {
        self.before_item();
        write_string(&mut self.out, s, Escaping::Protojson);
        self.last = Last::Value;
    }

    pub fn float(&mut self, value: f64, single: bool) {
        self.before_item();
        write_float(&mut self.out, value, single);
        self.last = Last::Value;
    }
}

/// Go's decision for a JSON number (`Token.Int(64)`, then `Token.Float(64)`): an integer when
/// the text denotes one that fits `i64` (`1.0`, `1e2` and `-0` included), else a float64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GoNumber {
    Int(i64),
    Float(f64),
}

/// The integer a JSON number's text denotes, as Go's `normalizeToIntString` reads it, as a
/// decimal string (sign included), or `None` if it has a fractional part.
pub fn integer_text(text: &str) -> Option<String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let int_part = if int_part == "0" { "" } else { int_part };
    let frac_part = frac_part.trim_end_matches('0');
    if int_part.is_empty() && frac_part.is_empty() {
        return Some("0".to_owned());
    }
    let exponent: i64 = match exponent {
        Some(e) => e.parse::<i32>().ok()?.into(),
        None => 0,
    };
    let mut digits = String::new();
    if exponent >= 0 {
        let exponent = usize::try_from(exponent).ok()?;
        if frac_part.len() > exponent || int_part.len() + exponent > 20 {
            return None;
        }
        digits.push_str(int_part);
        digits.push_str(frac_part);
        digits.extend(std::iter::repeat_n('0', exponent - frac_part.len()));
    } else {
        if !frac_part.is_empty() {
            return None;
        }
        let shift = usize::try_from(-exponent).ok()?;
        let index = int_part.len().checked_sub(shift)?;
        if int_part[index..].bytes().any(|b| b != b'0') {
            return None;
        }
        digits.push_str(&int_part[..index]);
    }
    if negative {
        digits.insert(0, '-');
    }
    Some(digits)
}

impl GoNumber {
    /// `None` when the text is neither an int64 nor a finite float64 (Go: "unable to parse number").
    pub fn from_text(text: &str) -> Option<GoNumber> {
        if let Some(int) = integer_text(text).and_then(|digits| digits.parse::<i64>().ok()) {
            return Some(GoNumber::Int(int));
        }
        let float: f64 = text.parse().ok()?;
        float.is_finite().then_some(GoNumber::Float(float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_keeps_order_duplicates_and_number_text() {
        let value = parse(br#" {"b":1.50,"a":[true,null,"x\u00e9\ud83d\ude00"],"b":-0} "#).unwrap();
        assert_eq!(
            value,
            Json::Object(vec![
                ("b".into(), Json::Number("1.50".into())),
                ("a".into(), Json::Array(vec![Json::Bool(true), Json::Null, Json::String("xé😀".into())])),
                ("b".into(), Json::Number("-0".into())),
            ])
        );
    }

    #[test]
    fn the_reader_refuses_what_is_not_json() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\" 1}",
            b"01",
            b"1.",
            b"1e",
            b"+1",
            b"\"\x01\"",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\xff\"",
            b"nul",
            b"{} {}",
            b"NaN",
        ] {
            assert!(parse(bad).is_err(), "{:?} is not JSON", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn values_are_counted_before_and_bounded_while_parsing() {
        for text in [
            "0",
            "[]",
            "[0,1,2]",
            r#"{"a":[1,{"b":"x,y:[{"}],"c\"":null}"#,
            r#"["\\",",",{}]"#,
            r#"{"input":[1,"two",{"three":3}]}"#,
        ] {
            fn size(value: &Json) -> usize {
                match value {
                    Json::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
                    Json::Object(members) => 1 + members.iter().map(|(_, v)| 1 + size(v)).sum::<usize>(),
                    _ => 1,
                }
            }
            let parsed = parse(text.as_bytes()).unwrap();
            assert!(count_values(text.as_bytes()) >= size(&parsed), "{text} counted short");
        }
        let most = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert!(parse(most.as_bytes()).is_ok());
        assert_eq!(count_values(most.as_bytes()), MAX_VALUES);
        let more = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        assert_eq!(parse(more.as_bytes()), Err(SyntaxError::TooMany));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(deep.as_bytes()).is_ok());
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse(deeper.as_bytes()), Err(SyntaxError::TooDeep));
        // Far deeper input fails the same way, without exhausting the stack.
        let huge = "[{\"a\":".repeat(100_000);
        assert_eq!(parse(huge.as_bytes()), Err(SyntaxError::TooDeep));
    }

    #[test]
    fn floats_are_written_as_go_writes_them() {
        // Expected texts: Go's strconv.AppendFloat(f, 'f' or 'e', -1, 64) with protojson's
        // exponent fix-up, as in `A/internal/protojson/json/encode.go`.
        let cases: [(f64, &str); 10] = [
            (2.0, "2"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (1.2345678901234567e19, "12345678901234567000"),
            (1e-10, "1e-10"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (value, text) in cases {
            let mut out = String::new();
            write_float(&mut out, value, false);
            assert_eq!(out, text, "{value:?}");
        }
        let mut out = String::new();
        write_float(&mut out, f64::from(0.1f32), true);
        assert_eq!(out, "0.1", "a float field is shortest for 32 bits");
    }

    #[test]
    fn numbers_are_integers_when_go_says_so() {
        assert_eq!(GoNumber::from_text("42"), Some(GoNumber::Int(42)));
        assert_eq!(GoNumber::from_text("1.0"), Some(GoNumber::Int(1)));
        assert_eq!(GoNumber::from_text("1e2"), Some(GoNumber::Int(100)));
        assert_eq!(GoNumber::from_text("1.5e1"), Some(GoNumber::Int(15)));
        assert_eq!(GoNumber::from_text("100e-2"), Some(GoNumber::Int(1)));
        assert_eq!(GoNumber::from_text("-0"), Some(GoNumber::Int(0)));
        assert_eq!(GoNumber::from_text("-0.0e5"), Some(GoNumber::Int(0)));
        assert_eq!(GoNumber::from_text("1.5"), Some(GoNumber::Float(1.5)));
        assert_eq!(GoNumber::from_text("150e-2"), Some(GoNumber::Float(1.5)));
        assert_eq!(GoNumber::from_text("9223372036854775807"), Some(GoNumber::Int(i64::MAX)));
        assert_eq!(GoNumber::from_text("9223372036854775808"), Some(GoNumber::Float(9223372036854775808.0)));
        assert_eq!(GoNumber::from_text("1e400"), None);
    }

    #[test]
    fn the_pretty_layout_is_protojsons() {
        let mut w = Writer::new(true);
        w.open('{');
        w.name("a");
        w.raw("1");
        w.name("b");
        w.open('[');
        w.close(']');
        w.name("c");
        w.open('{');
        w.name("d");
        w.string("x");
        w.close('}');
        w.close('}');
        assert_eq!(w.out, "{\n  \"a\": 1,\n  \"b\": [],\n  \"c\": {\n    \"d\": \"x\"\n  }\n}");
    }
}
