//! Protobuf for the inspection target: a schema per catalog method, a structure-aware message
//! generator, and a reference decoder with the Temporal server's (Go protobuf's) semantics.
//!
//! The schema of a method is derived from the catalog's own field paths: every step but the last
//! is an embedded message, the last is a string (a bytes field for task tokens, a
//! `TaskQueue { name = 1, kind = 2, normal_name = 3 }` message for task queue references).
//! `ExecuteMultiOperation.operations = 2` is repeated, each element a oneof of
//! `start_workflow = 1` and `update_workflow = 2`. tests/catalog.rs checks the same paths
//! against the Temporal API descriptors, so the schema here is the real one, restricted to the
//! fields inspection reads.
//!
//! The reference decoder is built on prost's wire primitives (`prost::encoding`), driven by the
//! schema, with the rules the Go server follows: a field whose wire type differs from its
//! declared type is an unknown field, scalars take their last occurrence, embedded messages
//! merge, a oneof member clears its siblings, an enum is an `int32` (a 64-bit varint truncated),
//! strings must be UTF-8. Its canonical re-encoding (one occurrence per field, no unknown
//! fields) is what the server effectively acts on, so inspecting it must give the same answer
//! as inspecting the original bytes.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use flowgate::temporal::catalog::{CATALOG, MethodSpec, ResourceSpec, TaskQueueRef};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message as _};

// ---- schema ----------------------------------------------------------------------------------

#[derive(Debug)]
pub enum Kind {
    Str,
    Bytes,
    /// An enum: decoded as `int32`, like every protobuf runtime.
    Enum,
    Msg(Box<Node>),
    /// A repeated embedded message.
    Repeated(Box<Node>),
}

#[derive(Debug, Default)]
pub struct Node {
    pub fields: BTreeMap<u32, Kind>,
    /// Field numbers that form one oneof.
    pub oneof: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Leaf {
    Str,
    Bytes,
    TaskQueue,
}

impl Node {
    fn insert(&mut self, path: &[u32], leaf: Leaf) {
        let (&first, rest) = path.split_first().expect("catalog paths are not empty");
        if rest.is_empty() {
            let kind = match leaf {
                Leaf::Str => Kind::Str,
                Leaf::Bytes => Kind::Bytes,
                Leaf::TaskQueue => {
                    let mut queue = Node::default();
                    queue.fields.insert(1, Kind::Str);
                    queue.fields.insert(2, Kind::Enum);
                    queue.fields.insert(3, Kind::Str);
                    Kind::Msg(Box::new(queue))
                }
            };
            match self.fields.get(&first) {
                None => {
                    self.fields.insert(first, kind);
                }
                Some(Kind::Str) if matches!(kind, Kind::Str) => {}
                Some(other) => panic!("field {first} is both {other:?} and {kind:?}"),
            }
            return;
        }
        let child = self.fields.entry(first).or_insert_with(|| Kind::Msg(Box::default()));
        match child {
            Kind::Msg(node) | Kind::Repeated(node) => node.insert(rest, leaf),
            other => panic!("field {first} is both {other:?} and a message"),
        }
    }
}

fn task_queue_leaf(reference: TaskQueueRef) -> (&'static [u32], Leaf) {
    match reference {
        TaskQueueRef::Message(path) => (path, Leaf::TaskQueue),
        TaskQueueRef::Name(path) => (path, Leaf::Str),
    }
}

fn schema_of(spec: &MethodSpec) -> Node {
    let mut paths: Vec<(&'static [u32], Leaf)> = Vec::new();
    match spec.resource {
        ResourceSpec::Cluster | ResourceSpec::NexusEndpoint => {}
        ResourceSpec::Namespace { namespace } => paths.push((namespace, Leaf::Str)),
        ResourceSpec::Workflow { namespace, workflow_id, workflow_type, task_queue } => {
            paths.push((namespace, Leaf::Str));
            paths.extend(workflow_id.map(|p| (p, Leaf::Str)));
            paths.extend(workflow_type.map(|p| (p, Leaf::Str)));
            paths.extend(task_queue.map(task_queue_leaf));
        }
        ResourceSpec::TaskQueue { namespace, task_queue } => {
            paths.push((namespace, Leaf::Str));
            paths.push(task_queue_leaf(task_queue));
        }
        ResourceSpec::Schedule { namespace, schedule_id, workflow_type, task_queue } => {
            paths.push((namespace, Leaf::Str));
            paths.push((schedule_id, Leaf::Str));
            paths.extend(workflow_type.map(|p| (p, Leaf::Str)));
            paths.extend(task_queue.map(task_queue_leaf));
        }
    }
    for path in [spec.signal_name, spec.query_type, spec.update_name, spec.namespace_id].into_iter().flatten() {
        paths.push((path, Leaf::Str));
    }
    paths.extend(spec.task_token.map(|p| (p, Leaf::Bytes)));
    // The sticky queue a worker shuts down, or registers with a task completion.
    match spec.name {
        "ShutdownWorker" => paths.push((&[2], Leaf::Str)),
        "RespondWorkflowTaskCompleted" => paths.push((&[4, 1], Leaf::TaskQueue)),
        _ => {}
    }
    let mut root = Node::default();
    for (path, leaf) in paths {
        root.insert(path, leaf);
    }
    if spec.name == "ExecuteMultiOperation" {
        let Some(Kind::Msg(operation)) = root.fields.remove(&2) else {
            panic!("ExecuteMultiOperation has no operations")
        };
        let mut operation = *operation;
        operation.oneof = vec![1, 2];
        root.fields.insert(2, Kind::Repeated(Box::new(operation)));
    }
    root
}

/// The schema of every catalog entry, in catalog order.
pub static SCHEMAS: LazyLock<Vec<Node>> = LazyLock::new(|| CATALOG.iter().map(schema_of).collect());

// ---- messages as the generator builds them ---------------------------------------------------

/// One field on the wire, possibly of the wrong wire type, possibly malformed.
#[derive(Debug, Clone)]
pub enum Item {
    Len {
        number: u32,
        bytes: Vec<u8>,
    },
    Msg {
        number: u32,
        items: Vec<Item>,
    },
    Varint {
        number: u32,
        value: u64,
    },
    Fixed32 {
        number: u32,
        value: u32,
    },
    Fixed64 {
        number: u32,
        value: u64,
    },
    /// A (deprecated) group, `extra` more groups nested inside it, closed or not.
    Group {
        number: u32,
        items: Vec<Item>,
        extra: usize,
        closed: bool,
    },
    /// Bytes as they come, usually not a valid field.
    Raw(Vec<u8>),
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

pub fn encode(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        encode_item(item, &mut out);
    }
    out
}

fn encode_item(item: &Item, out: &mut Vec<u8>) {
    match item {
        Item::Len { number, bytes } => {
            put_key(out, *number, 2);
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        Item::Msg { number, items } => {
            let inner = encode(items);
            put_key(out, *number, 2);
            put_varint(out, inner.len() as u64);
            out.extend(inner);
        }
        Item::Varint { number, value } => {
            put_key(out, *number, 0);
            put_varint(out, *value);
        }
        Item::Fixed32 { number, value } => {
            put_key(out, *number, 5);
            out.extend(value.to_le_bytes());
        }
        Item::Fixed64 { number, value } => {
            put_key(out, *number, 1);
            out.extend(value.to_le_bytes());
        }
        Item::Group { number, items, extra, closed } => {
            for _ in 0..=*extra {
                put_key(out, *number, 3);
            }
            out.extend(encode(items));
            if *closed {
                for _ in 0..=*extra {
                    put_key(out, *number, 4);
                }
            }
        }
        Item::Raw(bytes) => out.extend_from_slice(bytes),
    }
}

/// A byte-level change after encoding: what a fuzzer's mutator does to a valid message.
#[derive(Debug, Clone)]
pub enum Damage {
    None,
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
}

impl Damage {
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Damage::None => {}
            Damage::Truncate(at) => {
                if !bytes.is_empty() {
                    bytes.truncate(at.index(bytes.len()));
                }
            }
            Damage::Flip(at, mask) => {
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask | 1;
                }
            }
            Damage::Insert(at, extra) => {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
        }
    }
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        16 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        1 => (any::<prop::sample::Index>(), vec(any::<u8>(), 1..4)).prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
    ]
}

// ---- generators ------------------------------------------------------------------------------

/// Strings that collide across occurrences, so "which occurrence wins" matters.
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        16 => prop::sample::select(vec!["", "payments", "prod", "a", "Deploy", "tq", "sticky-7f3a"]).prop_map(|s| s.as_bytes().to_vec()),
        6 => "[a-z0-9.-]{0,12}".prop_map(String::into_bytes),
        1 => Just(vec![0xff, 0xfe]),
        1 => vec(any::<u8>(), 0..8),
    ]
}

/// Varints around the values that matter: enum values, and 64-bit values whose low 32 bits are
/// an enum value (an `int32` field keeps only those).
fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..4u64,
        1 => Just(2 | (1 << 32)),
        1 => Just(1 | (1 << 32)),
        1 => Just(u64::MAX),
        1 => Just((-2i64) as u64),
        1 => any::<u64>(),
    ]
}

fn field_number(known: Vec<u32>) -> BoxedStrategy<u32> {
    let known = if known.is_empty() { vec![1] } else { known };
    prop_oneof![
        12 => prop::sample::select(known),
        6 => 1..40u32,
        1 => prop::sample::select(vec![0, 19_000, (1 << 29) - 1, 1 << 29, u32::MAX >> 3, u32::MAX]),
    ]
    .boxed()
}

/// Fields that are not messages: any wire type, any number.
fn scalar_item(numbers: Vec<u32>) -> BoxedStrategy<Item> {
    let number = field_number(numbers);
    prop_oneof![
        4 => (number.clone(), text()).prop_map(|(number, bytes)| Item::Len { number, bytes }),
        4 => (number.clone(), varint_value()).prop_map(|(number, value)| Item::Varint { number, value }),
        1 => (number.clone(), any::<u32>()).prop_map(|(number, value)| Item::Fixed32 { number, value }),
        1 => (number, any::<u64>()).prop_map(|(number, value)| Item::Fixed64 { number, value }),
        1 => vec(any::<u8>(), 1..6).prop_map(Item::Raw),
    ]
    .boxed()
}

fn group_item(numbers: Vec<u32>) -> BoxedStrategy<Item> {
    let extra = prop_oneof![4 => 0..3usize, 1 => prop::sample::select(vec![62, 63, 64, 65, 98, 99, 100, 101, 300])];
    (field_number(numbers.clone()), vec(scalar_item(numbers), 0..3), extra, prop::bool::weighted(0.9))
        .prop_map(|(number, items, extra, closed)| Item::Group { number, items, extra, closed })
        .boxed()
}

/// The fields of a message of schema `node`: mostly its own fields with the right wire type,
/// with the wrong one, repeated, nested as deep as the schema goes, plus unknown fields and
/// groups.
pub fn message(node: &'static Node) -> BoxedStrategy<Vec<Item>> {
    let numbers: Vec<u32> = node.fields.keys().copied().collect();
    let mut choices: Vec<(u32, BoxedStrategy<Item>)> = Vec::new();
    for (&number, kind) in &node.fields {
        let right = match kind {
            Kind::Str => text().prop_map(move |bytes| Item::Len { number, bytes }).boxed(),
            Kind::Bytes => vec(any::<u8>(), 0..4).prop_map(move |bytes| Item::Len { number, bytes }).boxed(),
            Kind::Enum => varint_value().prop_map(move |value| Item::Varint { number, value }).boxed(),
            Kind::Msg(child) | Kind::Repeated(child) => {
                message(child).prop_map(move |items| Item::Msg { number, items }).boxed()
            }
        };
        choices.push((8, right));
    }
    choices.push((2, scalar_item(numbers.clone())));
    choices.push((1, group_item(numbers)));
    vec(Union::new_weighted(choices), 0..7).boxed()
}

// ---- the reference decoder -------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Val {
    Str(String),
    Bytes(Vec<u8>),
    Enum(i32),
    Msg(Decoded),
    Repeated(Vec<Decoded>),
}

/// A message as the server holds it after decoding.
#[derive(Debug, Clone)]
pub struct Decoded {
    node: &'static Node,
    values: BTreeMap<u32, Val>,
}

impl Decoded {
    pub fn decode(node: &'static Node, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let mut decoded = Decoded { node, values: BTreeMap::new() };
        decoded.merge(bytes)?;
        Ok(decoded)
    }

    fn set(&mut self, number: u32, value: Val) {
        if self.node.oneof.contains(&number) {
            self.values.retain(|n, _| !self.node.oneof.contains(n));
        }
        self.values.insert(number, value);
    }

    /// The value at `path` read the way inspection reads a path through a repeated field: the
    /// last element that has it.
    pub fn at(&self, path: &[u32]) -> Option<&Val> {
        let (first, rest) = path.split_first()?;
        let value = self.values.get(first)?;
        if rest.is_empty() {
            return Some(value);
        }
        match value {
            Val::Msg(inner) => inner.at(rest),
            Val::Repeated(elements) => elements.iter().rev().find_map(|e| e.at(rest)),
            _ => None,
        }
    }

    /// The string at `path`; empty reads as absent, as in proto3.
    pub fn string(&self, path: &[u32]) -> Option<String> {
        match self.at(path) {
            Some(Val::Str(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    pub fn has_bytes(&self, path: &[u32]) -> bool {
        matches!(self.at(path), Some(Val::Bytes(b)) if !b.is_empty())
    }

    /// The task queue the server routes by: a sticky queue (kind 2) by its normal name when it
    /// has one.
    /// The `kind` of the `TaskQueue` message at `path` (0 when absent).
    pub fn queue_kind(&self, path: &[u32]) -> i32 {
        match self.at(&[path, &[2]].concat()) {
            Some(Val::Enum(kind)) => *kind,
            _ => 0,
        }
    }

    pub fn task_queue(&self, reference: TaskQueueRef) -> Option<String> {
        match reference {
            TaskQueueRef::Name(path) => self.string(path),
            TaskQueueRef::Message(path) => {
                let field = |n: u32| [path, &[n]].concat();
                let sticky = matches!(self.at(&field(2)), Some(Val::Enum(2)));
                let name = self.string(&field(1));
                if sticky { self.string(&field(3)).or(name) } else { name }
            }
        }
    }
}

impl prost::Message for Decoded {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        for (&number, value) in &self.values {
            match value {
                Val::Str(s) => encoding::string::encode(number, s, buf),
                Val::Bytes(b) => encoding::bytes::encode(number, b, buf),
                Val::Enum(v) => encoding::int32::encode(number, v, buf),
                Val::Msg(m) => encoding::message::encode(number, m, buf),
                Val::Repeated(ms) => ms.iter().for_each(|m| encoding::message::encode(number, m, buf)),
            }
        }
    }

    fn merge_field(
        &mut self,
        number: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match (self.node.fields.get(&number), wire_type) {
            (Some(Kind::Str), WireType::LengthDelimited) => {
                let mut s = String::new();
                encoding::string::merge(wire_type, &mut s, buf, ctx)?;
                self.set(number, Val::Str(s));
            }
            (Some(Kind::Bytes), WireType::LengthDelimited) => {
                let mut b = Vec::new();
                encoding::bytes::merge(wire_type, &mut b, buf, ctx)?;
                self.set(number, Val::Bytes(b));
            }
            (Some(Kind::Enum), WireType::Varint) => {
                let mut v = 0i32;
                encoding::int32::merge(wire_type, &mut v, buf, ctx)?;
                self.set(number, Val::Enum(v));
            }
            (Some(Kind::Msg(child)), WireType::LengthDelimited) => {
                let mut inner = match self.values.remove(&number) {
                    Some(Val::Msg(existing)) => existing,
                    _ => Decoded { node: child, values: BTreeMap::new() },
                };
                encoding::message::merge(wire_type, &mut inner, buf, ctx)?;
                self.set(number, Val::Msg(inner));
            }
            (Some(Kind::Repeated(child)), WireType::LengthDelimited) => {
                let mut element = Decoded { node: child, values: BTreeMap::new() };
                encoding::message::merge(wire_type, &mut element, buf, ctx)?;
                match self.values.entry(number).or_insert_with(|| Val::Repeated(Vec::new())) {
                    Val::Repeated(elements) => elements.push(element),
                    _ => unreachable!("a repeated field holds elements"),
                }
            }
            // Unknown, or known with another wire type: skipped, as Go skips it.
            _ => encoding::skip_field(wire_type, number, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.values
            .iter()
            .map(|(&number, value)| match value {
                Val::Str(s) => encoding::string::encoded_len(number, s),
                Val::Bytes(b) => encoding::bytes::encoded_len(number, b),
                Val::Enum(v) => encoding::int32::encoded_len(number, v),
                Val::Msg(m) => encoding::message::encoded_len(number, m),
                Val::Repeated(ms) => encoding::message::encoded_len_repeated(number, ms),
            })
            .sum()
    }

    fn clear(&mut self) {
        self.values.clear();
    }
}
