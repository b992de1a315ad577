//! Sealed task tokens: a worker can only complete a task flowgate handed to it.
//!
//! Temporal's task tokens are unsigned protobuf (namespace id, workflow id, run id, event ids),
//! so anyone who can read a history can build one by hand and complete someone else's activity.
//! flowgate therefore never hands out a token as it came from the upstream. Every token in a
//! response ([`TaskTokenKeys::seal_response`]) is replaced by a sealed one that wraps the
//! original together with a [`Binding`]: what the task was handed out for (kind, namespace, task
//! queue, workflow, activity type) and to whom. A `Respond*` call must bring a sealed token back
//! ([`TaskTokenKeys::unseal_request`]); flowgate checks the seal, authorizes the call against the
//! binding, and forwards the original token, so Temporal never sees the difference.
//!
//! A sealed token is
//!
//! ```text
//! "fgt1" | key id (8 bytes) | envelope (protobuf) | HMAC-SHA256 (32 bytes)
//! ```
//!
//! The key id is the start of the key's SHA-256, so the right key is found without trying them
//! all; the MAC covers every byte before it and is checked in constant time. The magic starts
//! with `f` (0x66), which as a protobuf tag has the invalid wire type 6, so no token Temporal
//! issues can be mistaken for a sealed one.
//!
//! Keys ([`TaskTokenKeys::from_config`]) come from `[task_tokens] key_file`: one base64 key per
//! line, the first seals, all of them open, so a key is rotated by putting a new one first and
//! removing the old one once the tasks it sealed are done. Without a key file each process draws
//! a random key: fine for a single replica, but several replicas must share a key file (a worker
//! may poll through one and complete through another), and a restart makes the outstanding
//! tokens unusable; their completions are refused, the tasks time out and Temporal retries them.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;

use super::wire::{self, Value, WireError};
use crate::config::{ConfigError, TaskTokensConfig};

/// The first bytes of every sealed token, and the format's version.
pub const MAGIC: &[u8; 4] = b"fgt1";
/// Bytes of the key id after the magic.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of the HMAC-SHA256 tag at the end.
pub const TAG_LEN: usize = 32;
/// The shortest key a key file may hold: the HMAC-SHA256 output size.
pub const MIN_KEY_LEN: usize = 32;
/// The longest upstream token flowgate seals. Temporal's are a few hundred bytes; a workflow id
/// and an activity id of the server's default 1000-byte limit still fit several times over.
pub const MAX_ORIGINAL_TOKEN_LEN: usize = 16 * 1024;
/// The longest name (namespace, queue, workflow id or type, activity type, principal) a binding
/// may carry.
pub const MAX_BINDING_FIELD_LEN: usize = 8 * 1024;
/// The longest sealed token [`TaskTokenKeys::open`] reads: more than anything
/// [`TaskTokenKeys::seal_response`] produces, so a longer one is refused before any hashing.
pub const MAX_SEALED_TOKEN_LEN: usize = 96 * 1024;

/// The largest envelope `seal_response` can build, with every length at its limit.
const MAX_ENVELOPE_LEN: usize = 3 + 3 + MAX_ORIGINAL_TOKEN_LEN // original
    + 2                                                      // kind
    + 6 * (1 + 2 + MAX_BINDING_FIELD_LEN)                    // six names
    + 1 + 10; // issued_at
const _: () = assert!(MAGIC.len() + KEY_ID_LEN + MAX_ENVELOPE_LEN + TAG_LEN <= MAX_SEALED_TOKEN_LEN);

/// Envelope field numbers.
mod field {
    pub const ORIGINAL: u32 = 1;
    pub const KIND: u32 = 2;
    pub const NAMESPACE: u32 = 3;
    pub const TASK_QUEUE: u32 = 4;
    pub const WORKFLOW_ID: u32 = 5;
    pub const WORKFLOW_TYPE: u32 = 6;
    pub const ACTIVITY_TYPE: u32 = 7;
    pub const PRINCIPAL: u32 = 8;
    pub const ISSUED_AT: u32 = 9;
}

/// Which kind of poll handed a task out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Workflow,
    Activity,
    Nexus,
}

impl TaskKind {
    /// The kind of token a task-token call of `method` takes (`None`: it takes none).
    pub fn of_method(method: &str) -> Option<TaskKind> {
        Some(match method {
            "RespondWorkflowTaskCompleted" | "RespondWorkflowTaskFailed" | "RespondQueryTaskCompleted" => {
                TaskKind::Workflow
            }
            "RecordActivityTaskHeartbeat"
            | "RespondActivityTaskCompleted"
            | "RespondActivityTaskFailed"
            | "RespondActivityTaskCanceled" => TaskKind::Activity,
            "RespondNexusTaskCompleted" | "RespondNexusTaskFailed" => TaskKind::Nexus,
            _ => return None,
        })
    }

    /// The poll RPC (and Cedar action) that hands out tasks of this kind.
    pub fn poll_action(self) -> &'static str {
        match self {
            TaskKind::Workflow => "PollWorkflowTaskQueue",
            TaskKind::Activity => "PollActivityTaskQueue",
            TaskKind::Nexus => "PollNexusTaskQueue",
        }
    }

    fn code(self) -> u64 {
        match self {
            TaskKind::Workflow => 1,
            TaskKind::Activity => 2,
            TaskKind::Nexus => 3,
        }
    }

    fn from_code(code: u64) -> Option<TaskKind> {
        match code {
            1 => Some(TaskKind::Workflow),
            2 => Some(TaskKind::Activity),
            3 => Some(TaskKind::Nexus),
            _ => None,
        }
    }
}

/// What a sealed token was handed out for, and to whom. Empty optional names read back as
/// `None` (as in proto3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub kind: TaskKind,
    pub namespace: String,
    /// The normal (never sticky) task queue the task belongs to.
    pub task_queue: String,
    pub workflow_id: Option<String>,
    pub workflow_type: Option<String>,
    pub activity_type: Option<String>,
    /// The principal id the token was handed to.
    pub principal: String,
    /// When it was sealed, in Unix seconds.
    pub issued_at: u64,
}

/// Who a response is going to: what every token sealed in it is bound to, besides what the
/// response itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealContext {
    pub principal: String,
    pub namespace: String,
    /// The queue the task was handed out from, by its normal name: the polled queue, the
    /// start's queue for an eager workflow task, the completed task's queue for a new workflow
    /// task and eager activities. A workflow task that names its own queue is bound to that one.
    pub task_queue: Option<String>,
}

/// Why a token could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskTokenError {
    #[error("task token was not issued by flowgate")]
    NotSealed,
    #[error(
        "task token was sealed with a key this gateway does not hold (a retired key, or a restart without `task_tokens.key_file`)"
    )]
    UnknownKey,
    #[error("task token seal does not verify")]
    BadSignature,
    #[error("malformed task token message: {0}")]
    Malformed(String),
    #[error("{what} is {len} bytes, over the {limit} a sealed task token may hold")]
    TooLarge { what: &'static str, len: usize, limit: usize },
}

impl From<WireError> for TaskTokenError {
    fn from(error: WireError) -> Self {
        TaskTokenError::Malformed(error.to_string())
    }
}

fn malformed(message: impl Into<String>) -> TaskTokenError {
    TaskTokenError::Malformed(message.into())
}

struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: hmac::Key,
}

impl SealKey {
    fn new(secret: &[u8]) -> SealKey {
        let hash = digest::digest(&digest::SHA256, secret);
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        SealKey { id, key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }
}

/// The keys that seal and open task tokens: the first seals, all open.
pub struct TaskTokenKeys {
    keys: Vec<SealKey>,
    ephemeral: bool,
}

impl fmt::Debug for TaskTokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only: the keys themselves never reach a log.
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("TaskTokenKeys").field("key_ids", &ids).field("ephemeral", &self.ephemeral).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TaskTokenKeys {
    /// The keys `[task_tokens]` names: its key file, or a random key for this process.
    pub fn from_config(config: &TaskTokensConfig) -> Result<TaskTokenKeys, ConfigError> {
        match &config.key_file {
            Some(path) => TaskTokenKeys::from_key_file(path),
            None => Ok(TaskTokenKeys::random()),
        }
    }

    /// Reads a key file: one standard (padded) base64 key of at least [`MIN_KEY_LEN`] bytes per
    /// line, e.g. from `openssl rand -base64 32`; blank lines and `#` comments are skipped.
    pub fn from_key_file(path: &Path) -> Result<TaskTokenKeys, ConfigError> {
        let error = |message: String| ConfigError::TaskTokenKeyFile { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        let mut secrets = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| error(format!("line {number}: not standard base64: {e}")))?;
            if secret.len() < MIN_KEY_LEN {
                return Err(error(format!(
                    "line {number}: key is {} bytes, at least {MIN_KEY_LEN} are needed (`openssl rand -base64 32`)",
                    secret.len()
                )));
            }
            secrets.push(secret);
        }
        if secrets.is_empty() {
            return Err(error("holds no key".into()));
        }
        Ok(TaskTokenKeys { keys: secrets.iter().map(|s| SealKey::new(s)).collect(), ephemeral: false })
    }

    /// Keys from raw secrets, the first sealing (tests, tools). Panics on an empty list.
    pub fn from_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> TaskTokenKeys {
        assert!(!secrets.is_empty(), "at least one task token key");
        TaskTokenKeys { keys: secrets.iter().map(|s| SealKey::new(s.as_ref())).collect(), ephemeral: false }
    }

    /// One random key, known only to this process.
    pub fn random() -> TaskTokenKeys {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("the system random generator works");
        TaskTokenKeys { keys: vec![SealKey::new(&secret)], ephemeral: true }
    }

    /// True for a random per-process key: tokens do not survive a restart or cross replicas.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The id of the sealing key, in hex (for the startup log).
    pub fn sealing_key_id(&self) -> String {
        hex(&self.keys[0].id)
    }

    /// Wraps `original` and `binding` into a sealed token. Lengths are not checked here;
    /// [`TaskTokenKeys::seal_response`] checks them before it seals.
    pub fn seal(&self, original: &[u8], binding: &Binding) -> Vec<u8> {
        let key = &self.keys[0];
        let names = [
            (field::NAMESPACE, Some(binding.namespace.as_str())),
            (field::TASK_QUEUE, Some(binding.task_queue.as_str())),
            (field::WORKFLOW_ID, binding.workflow_id.as_deref()),
            (field::WORKFLOW_TYPE, binding.workflow_type.as_deref()),
            (field::ACTIVITY_TYPE, binding.activity_type.as_deref()),
            (field::PRINCIPAL, Some(binding.principal.as_str())),
        ];
        let names_len: usize =
            names.iter().filter_map(|(n, v)| v.map(|v| wire::bytes_field_len(*n, v.len()))).sum::<usize>();
        let capacity = MAGIC.len()
            + KEY_ID_LEN
            + wire::bytes_field_len(field::ORIGINAL, original.len())
            + names_len
            + 16
            + TAG_LEN;
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.id);
        wire::put_bytes_field(&mut out, field::ORIGINAL, original);
        wire::put_varint_field(&mut out, field::KIND, binding.kind.code());
        for (number, value) in names {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                wire::put_bytes_field(&mut out, number, value.as_bytes());
            }
        }
        wire::put_varint_field(&mut out, field::ISSUED_AT, binding.issued_at);
        let tag = hmac::sign(&key.key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks a sealed token and returns the original token and its binding.
    pub fn open(&self, sealed: &[u8]) -> Result<(Vec<u8>, Binding), TaskTokenError> {
        if !sealed.starts_with(MAGIC) {
            return Err(TaskTokenError::NotSealed);
        }
        if sealed.len() > MAX_SEALED_TOKEN_LEN {
            return Err(TaskTokenError::TooLarge {
                what: "sealed task token",
                len: sealed.len(),
                limit: MAX_SEALED_TOKEN_LEN,
            });
        }
        let header = MAGIC.len() + KEY_ID_LEN;
        if sealed.len() < header + TAG_LEN {
            return Err(malformed(format!("sealed task token of {} bytes is too short", sealed.len())));
        }
        let (signed, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let id = &signed[MAGIC.len()..header];
        let key = self.keys.iter().find(|k| k.id == id).ok_or(TaskTokenError::UnknownKey)?;
        hmac::verify(&key.key, signed, tag).map_err(|_| TaskTokenError::BadSignature)?;
        decode_envelope(&signed[header..])
    }

    /// `message` (a decompressed response of `method`) with every task token in it sealed, or
    /// `None` when it holds none (an empty long-poll answer, a start without eager execution,
    /// a method that hands out no tasks). Every other field is kept byte for byte, in order.
    pub fn seal_response(
        &self,
        method: &str,
        message: &[u8],
        ctx: &SealContext,
    ) -> Result<Option<Vec<u8>>, TaskTokenError> {
        let sealer = Sealer { keys: self, ctx, issued_at: unix_now() };
        match method {
            "PollWorkflowTaskQueue" => sealer.workflow_task(message),
            "PollActivityTaskQueue" => sealer.activity_task(message),
            "PollNexusTaskQueue" => sealer.nexus_task(message),
            "RespondWorkflowTaskCompleted" => rewrite_fields(
                message,
                &[
                    // workflow_task: a new task when the worker asked for one.
                    Rule { number: 1, once: true, rewrite: &|m| sealer.workflow_task(m) },
                    // activity_tasks: activities scheduled with eager execution.
                    Rule { number: 2, once: false, rewrite: &|m| sealer.activity_task(m) },
                ],
            ),
            "StartWorkflowExecution" => sealer.start_response(message),
            // responses[].start_workflow
            "ExecuteMultiOperation" => rewrite_fields(
                message,
                &[Rule {
                    number: 1,
                    once: false,
                    rewrite: &|response| {
                        rewrite_fields(
                            response,
                            &[Rule { number: 1, once: true, rewrite: &|s| sealer.start_response(s) }],
                        )
                    },
                }],
            ),
            _ => Ok(None),
        }
    }

    /// A `Respond*` (or heartbeat) request with its sealed token, at `token_field` (1, or 3 for
    /// `RespondNexusTask*`), replaced by the original one, and the token's binding. A request
    /// without a token, or with the field twice (protobuf's last-wins would let a second,
    /// unchecked copy reach Temporal), is refused.
    pub fn unseal_request(&self, token_field: u32, message: &[u8]) -> Result<(Vec<u8>, Binding), TaskTokenError> {
        let mut found = None;
        for field in wire::raw_fields(message) {
            let field = field?;
            if field.number != token_field {
                continue;
            }
            let Value::Bytes(token) = field.value else {
                return Err(malformed(format!("task token field {token_field} is not length-delimited")));
            };
            if found.is_some() {
                return Err(malformed(format!("task token field {token_field} occurs more than once")));
            }
            found = Some((field.span, token));
        }
        let (span, token) = found.ok_or(TaskTokenError::NotSealed)?;
        let (original, binding) = self.open(token)?;
        let mut out =
            Vec::with_capacity(message.len() - span.len() + wire::bytes_field_len(token_field, original.len()));
        out.extend_from_slice(&message[..span.start]);
        wire::put_bytes_field(&mut out, token_field, &original);
        out.extend_from_slice(&message[span.end..]);
        Ok((out, binding))
    }
}

/// The methods whose responses [`TaskTokenKeys::seal_response`] rewrites: every other response
/// can stream through untouched.
pub const SEALED_RESPONSES: [&str; 6] = [
    "PollWorkflowTaskQueue",
    "PollActivityTaskQueue",
    "PollNexusTaskQueue",
    "RespondWorkflowTaskCompleted",
    "StartWorkflowExecution",
    "ExecuteMultiOperation",
];

/// Whether responses of `method` may carry task tokens.
pub fn seals_response(method: &str) -> bool {
    SEALED_RESPONSES.contains(&method)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn decode_envelope(envelope: &[u8]) -> Result<(Vec<u8>, Binding), TaskTokenError> {
    // The MAC has been checked, so this is flowgate's own encoding; it is still read strictly.
    let mut original = None;
    let mut kind = None;
    let mut issued_at = None;
    let mut names: [Option<String>; 6] = Default::default();
    for item in wire::fields(envelope) {
        let (number, value) = item?;
        let duplicate = || malformed(format!("sealed task token repeats field {number}"));
        match (number, value) {
            (field::ORIGINAL, Value::Bytes(bytes)) if original.is_none() => original = Some(bytes.to_vec()),
            (field::KIND, Value::Varint(code)) if kind.is_none() => {
                kind = Some(TaskKind::from_code(code).ok_or_else(|| malformed(format!("unknown task kind {code}")))?)
            }
            (field::ISSUED_AT, Value::Varint(at)) if issued_at.is_none() => issued_at = Some(at),
            (field::NAMESPACE..=field::PRINCIPAL, Value::Bytes(bytes)) => {
                let slot = &mut names[(number - field::NAMESPACE) as usize];
                if slot.is_some() {
                    return Err(duplicate());
                }
                let text = std::str::from_utf8(bytes).map_err(|_| malformed("sealed task token name is not UTF-8"))?;
                *slot = Some(text.to_owned());
            }
            (field::ORIGINAL | field::KIND | field::ISSUED_AT, _) => return Err(duplicate()),
            _ => return Err(malformed(format!("sealed task token has unknown field {number}"))),
        }
    }
    let [namespace, task_queue, workflow_id, workflow_type, activity_type, principal] = names;
    let binding = Binding {
        kind: kind.ok_or_else(|| malformed("sealed task token has no kind"))?,
        namespace: namespace.unwrap_or_default(),
        task_queue: task_queue.unwrap_or_default(),
        workflow_id,
        workflow_type,
        activity_type,
        principal: principal.unwrap_or_default(),
        issued_at: issued_at.unwrap_or_default(),
    };
    Ok((original.ok_or_else(|| malformed("sealed task token wraps no token"))?, binding))
}

type Rewrite<'f> = &'f dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, TaskTokenError>;

/// An embedded field to rewrite: its number, whether it is singular, and how.
struct Rule<'f> {
    number: u32,
    once: bool,
    rewrite: Rewrite<'f>,
}

/// `message` with the fields the rules name rewritten (their length prefixes recomputed) and
/// every other byte copied as it was; `None` when no rule changed anything.
fn rewrite_fields(message: &[u8], rules: &[Rule<'_>]) -> Result<Option<Vec<u8>>, TaskTokenError> {
    let mut seen = [false; 4];
    debug_assert!(rules.len() <= seen.len());
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for field in wire::raw_fields(message) {
        let field = field?;
        let Some(index) = rules.iter().position(|rule| rule.number == field.number) else {
            continue;
        };
        let Value::Bytes(payload) = field.value else {
            return Err(malformed(format!("field {} is not length-delimited", field.number)));
        };
        // A second copy of a singular message merges into the first on the client: refuse
        // rather than reason about which token would survive.
        if rules[index].once && seen[index] {
            return Err(malformed(format!("field {} occurs more than once", field.number)));
        }
        seen[index] = true;
        if let Some(new) = (rules[index].rewrite)(payload)? {
            let out = out.get_or_insert_with(|| Vec::with_capacity(message.len() + 256));
            out.extend_from_slice(&message[copied..field.span.start]);
            wire::put_bytes_field(out, field.number, &new);
            copied = field.span.end;
        }
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&message[copied..]);
        out
    }))
}

struct Sealer<'a> {
    keys: &'a TaskTokenKeys,
    ctx: &'a SealContext,
    issued_at: u64,
}

impl Sealer<'_> {
    /// Seals the token (field 1) of one task message, binding it to what `describe` reads.
    fn seal_task(
        &self,
        task: &[u8],
        kind: TaskKind,
        describe: impl Fn(&[u8]) -> Result<Names, TaskTokenError>,
    ) -> Result<Option<Vec<u8>>, TaskTokenError> {
        rewrite_fields(
            task,
            &[Rule {
                number: 1,
                once: true,
                rewrite: &|original| {
                    if original.is_empty() {
                        return Ok(None);
                    }
                    check_len("task token", original.len(), MAX_ORIGINAL_TOKEN_LEN)?;
                    let names = describe(task)?;
                    let task_queue = match names.task_queue.or_else(|| self.ctx.task_queue.clone()) {
                        Some(queue) if !queue.is_empty() => queue,
                        _ => return Err(malformed(format!("{} task names no task queue", kind.poll_action()))),
                    };
                    let binding = Binding {
                        kind,
                        namespace: self.ctx.namespace.clone(),
                        task_queue,
                        workflow_id: names.workflow_id,
                        workflow_type: names.workflow_type,
                        activity_type: names.activity_type,
                        principal: self.ctx.principal.clone(),
                        issued_at: self.issued_at,
                    };
                    check_binding(&binding)?;
                    Ok(Some(self.keys.seal(original, &binding)))
                },
            }],
        )
    }

    /// A `PollWorkflowTaskQueueResponse`: workflow_execution = 2 (workflow_id = 1),
    /// workflow_type = 3 (name = 1), workflow_execution_task_queue = 11 (name = 1).
    fn workflow_task(&self, task: &[u8]) -> Result<Option<Vec<u8>>, TaskTokenError> {
        self.seal_task(task, TaskKind::Workflow, |task| {
            Ok(Names {
                task_queue: owned(wire::last_string(task, &[11, 1])?),
                workflow_id: owned(wire::last_string(task, &[2, 1])?),
                workflow_type: owned(wire::last_string(task, &[3, 1])?),
                activity_type: None,
            })
        })
    }

    /// A `PollActivityTaskQueueResponse`: workflow_type = 3, workflow_execution = 4,
    /// activity_type = 5 (name = 1 in each). Its queue is the one it was handed out from.
    fn activity_task(&self, task: &[u8]) -> Result<Option<Vec<u8>>, TaskTokenError> {
        self.seal_task(task, TaskKind::Activity, |task| {
            Ok(Names {
                task_queue: None,
                workflow_id: owned(wire::last_string(task, &[4, 1])?),
                workflow_type: owned(wire::last_string(task, &[3, 1])?),
                activity_type: owned(wire::last_string(task, &[5, 1])?),
            })
        })
    }

    /// A `PollNexusTaskQueueResponse`: a token and the queue it was handed out from.
    fn nexus_task(&self, task: &[u8]) -> Result<Option<Vec<u8>>, TaskTokenError> {
        self.seal_task(task, TaskKind::Nexus, |_| Ok(Names::default()))
    }

    /// A `StartWorkflowExecutionResponse`: eager_workflow_task = 2.
    fn start_response(&self, response: &[u8]) -> Result<Option<Vec<u8>>, TaskTokenError> {
        rewrite_fields(response, &[Rule { number: 2, once: true, rewrite: &|task| self.workflow_task(task) }])
    }
}

/// The names a task message itself gives its binding.
#[derive(Default)]
struct Names {
    task_queue: Option<String>,
    workflow_id: Option<String>,
    workflow_type: Option<String>,
    activity_type: Option<String>,
}

fn owned(value: Option<&str>) -> Option<String> {
    value.map(str::to_owned)
}

fn check_len(what: &'static str, len: usize, limit: usize) -> Result<(), TaskTokenError> {
    if len > limit { Err(TaskTokenError::TooLarge { what, len, limit }) } else { Ok(()) }
}

fn check_binding(binding: &Binding) -> Result<(), TaskTokenError> {
    let names = [
        ("namespace", Some(&binding.namespace)),
        ("task queue", Some(&binding.task_queue)),
        ("workflow id", binding.workflow_id.as_ref()),
        ("workflow type", binding.workflow_type.as_ref()),
        ("activity type", binding.activity_type.as_ref()),
        ("principal", Some(&binding.principal)),
    ];
    for (what, value) in names {
        check_len(what, value.map_or(0, String::len), MAX_BINDING_FIELD_LEN)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    // Just enough of the Temporal API, with its field numbers (see the module docs).
    #[derive(Clone, PartialEq, prost::Message)]
    struct WorkflowExecution {
        #[prost(string, tag = "1")]
        workflow_id: String,
        #[prost(string, tag = "2")]
        run_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct TaskQueue {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int32, tag = "2")]
        kind: i32,
        #[prost(string, tag = "3")]
        normal_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct PollWorkflowTaskQueueResponse {
        #[prost(bytes = "vec", tag = "1")]
        task_token: Vec<u8>,
        #[prost(message, optional, tag = "2")]
        workflow_execution: Option<WorkflowExecution>,
        #[prost(message, optional, tag = "3")]
        workflow_type: Option<Named>,
        #[prost(int64, tag = "5")]
        started_event_id: i64,
        #[prost(int32, tag = "6")]
        attempt: i32,
        /// `History`, opaque here.
        #[prost(bytes = "vec", tag = "8")]
        history: Vec<u8>,
        #[prost(message, optional, tag = "11")]
        workflow_execution_task_queue: Option<TaskQueue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct PollActivityTaskQueueResponse {
        #[prost(bytes = "vec", tag = "1")]
        task_token: Vec<u8>,
        #[prost(string, tag = "2")]
        workflow_namespace: String,
        #[prost(message, optional, tag = "3")]
        workflow_type: Option<Named>,
        #[prost(message, optional, tag = "4")]
        workflow_execution: Option<WorkflowExecution>,
        #[prost(message, optional, tag = "5")]
        activity_type: Option<Named>,
        #[prost(string, tag = "6")]
        activity_id: String,
        #[prost(bytes = "vec", tag = "8")]
        input: Vec<u8>,
        #[prost(int32, tag = "13")]
        attempt: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct PollNexusTaskQueueResponse {
        #[prost(bytes = "vec", tag = "1")]
        task_token: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        request: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct RespondWorkflowTaskCompletedResponse {
        #[prost(message, optional, tag = "1")]
        workflow_task: Option<PollWorkflowTaskQueueResponse>,
        #[prost(message, repeated, tag = "2")]
        activity_tasks: Vec<PollActivityTaskQueueResponse>,
        #[prost(int64, tag = "3")]
        reset_history_event_id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct StartWorkflowExecutionResponse {
        #[prost(string, tag = "1")]
        run_id: String,
        #[prost(message, optional, tag = "2")]
        eager_workflow_task: Option<PollWorkflowTaskQueueResponse>,
        #[prost(bool, tag = "3")]
        started: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct MultiOperationResponse {
        #[prost(message, optional, tag = "1")]
        start_workflow: Option<StartWorkflowExecutionResponse>,
        #[prost(bytes = "vec", tag = "2")]
        update_workflow: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ExecuteMultiOperationResponse {
        #[prost(message, repeated, tag = "1")]
        responses: Vec<MultiOperationResponse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct RespondActivityTaskCompletedRequest {
        #[prost(bytes = "vec", tag = "1")]
        task_token: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        result: Vec<u8>,
        #[prost(string, tag = "3")]
        identity: String,
        #[prost(string, tag = "4")]
        namespace: String,
    }

    const KEY_A: [u8; 32] = [0xa5; 32];
    const KEY_B: [u8; 32] = [0x5b; 32];

    fn keys() -> TaskTokenKeys {
        TaskTokenKeys::from_secrets(&[KEY_A])
    }

    /// A token shaped like Temporal's: protobuf, starting with field 1 (namespace id).
    fn upstream_token(seed: u8) -> Vec<u8> {
        let mut token = Vec::new();
        wire::put_bytes_field(&mut token, 1, b"5c6f1d3e-8d1b-4f3a-9d2e-namespace-id");
        wire::put_bytes_field(&mut token, 2, b"deploy-7f3a");
        wire::put_bytes_field(&mut token, 3, b"0196b3c4-run-id");
        wire::put_varint_field(&mut token, 4, 5);
        wire::put_varint_field(&mut token, 5, u64::from(seed));
        token
    }

    fn ctx(queue: Option<&str>) -> SealContext {
        SealContext {
            principal: "buildkite:pipeline:deploy".into(),
            namespace: "payments".into(),
            task_queue: queue.map(Into::into),
        }
    }

    fn binding() -> Binding {
        Binding {
            kind: TaskKind::Activity,
            namespace: "payments".into(),
            task_queue: "deploy".into(),
            workflow_id: Some("deploy-7f3a".into()),
            workflow_type: Some("DeployService".into()),
            activity_type: Some("Approve".into()),
            principal: "buildkite:pipeline:deploy".into(),
            issued_at: 1_700_000_000,
        }
    }

    fn workflow_task(token: Vec<u8>, queue: Option<&str>) -> PollWorkflowTaskQueueResponse {
        PollWorkflowTaskQueueResponse {
            task_token: token,
            workflow_execution: Some(WorkflowExecution { workflow_id: "deploy-7f3a".into(), run_id: "r1".into() }),
            workflow_type: Some(Named { name: "DeployService".into() }),
            started_event_id: 3,
            attempt: 1,
            history: [0x0a, 0x02, 0x08, 0x01].repeat(50),
            workflow_execution_task_queue: queue.map(|q| TaskQueue {
                name: q.into(),
                kind: 1,
                normal_name: String::new(),
            }),
        }
    }

    fn activity_task(token: Vec<u8>, id: &str) -> PollActivityTaskQueueResponse {
        PollActivityTaskQueueResponse {
            task_token: token,
            workflow_namespace: "payments".into(),
            workflow_type: Some(Named { name: "DeployService".into() }),
            workflow_execution: Some(WorkflowExecution { workflow_id: "deploy-7f3a".into(), run_id: "r1".into() }),
            activity_type: Some(Named { name: "Approve".into() }),
            activity_id: id.into(),
            input: b"payload".to_vec(),
            attempt: 2,
        }
    }

    /// Opens a sealed token and checks it wraps `original`.
    fn opened(keys: &TaskTokenKeys, sealed: &[u8], original: &[u8]) -> Binding {
        assert!(sealed.starts_with(MAGIC), "not sealed: {sealed:?}");
        let (inner, binding) = keys.open(sealed).unwrap();
        assert_eq!(inner, original);
        binding
    }

    #[test]
    fn seal_then_open_round_trips() {
        let keys = keys();
        let original = upstream_token(1);
        let sealed = keys.seal(&original, &binding());
        assert_eq!(&sealed[..4], MAGIC);
        assert_eq!(keys.open(&sealed).unwrap(), (original.clone(), binding()));
        // Absent and empty names read back as absent; every kind survives.
        for kind in [TaskKind::Workflow, TaskKind::Activity, TaskKind::Nexus] {
            let bare = Binding {
                kind,
                workflow_id: None,
                workflow_type: Some(String::new()),
                activity_type: None,
                ..binding()
            };
            let (_, back) = keys.open(&keys.seal(&original, &bare)).unwrap();
            assert_eq!(back, Binding { workflow_type: None, ..bare });
        }
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let keys = keys();
        let sealed = keys.seal(&upstream_token(1), &binding());
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            let expected = match index {
                0..4 => TaskTokenError::NotSealed,
                4..12 => TaskTokenError::UnknownKey,
                _ => TaskTokenError::BadSignature,
            };
            assert_eq!(keys.open(&tampered).unwrap_err(), expected, "byte {index}");
        }
        // Cut short or lengthened, it no longer verifies either.
        assert_eq!(keys.open(&sealed[..sealed.len() - 1]).unwrap_err(), TaskTokenError::BadSignature);
        assert_eq!(keys.open(&[&sealed[..], &[0]].concat()).unwrap_err(), TaskTokenError::BadSignature);
        assert!(matches!(keys.open(&sealed[..20]).unwrap_err(), TaskTokenError::Malformed(_)));
    }

    #[test]
    fn tokens_flowgate_did_not_seal_are_refused() {
        let keys = keys();
        // A token as Temporal issues it, built by hand from a history: not sealed.
        assert_eq!(keys.open(&upstream_token(1)).unwrap_err(), TaskTokenError::NotSealed);
        assert_eq!(keys.open(b"").unwrap_err(), TaskTokenError::NotSealed);
        assert_eq!(TaskTokenError::NotSealed.to_string(), "task token was not issued by flowgate");
        // The magic and a made-up key id.
        let forged = [&MAGIC[..], &[7; 8], &upstream_token(1), &[0; 32]].concat();
        assert_eq!(keys.open(&forged).unwrap_err(), TaskTokenError::UnknownKey);
        // The right key id (it is public: every sealed token shows it), a forged MAC.
        let sealed = keys.seal(&upstream_token(1), &binding());
        let forged = [&sealed[..12], &upstream_token(2), &[0; 32]].concat();
        assert_eq!(keys.open(&forged).unwrap_err(), TaskTokenError::BadSignature);
        // Sealed by another gateway's key.
        let other = TaskTokenKeys::from_secrets(&[KEY_B]).seal(&upstream_token(1), &binding());
        assert_eq!(keys.open(&other).unwrap_err(), TaskTokenError::UnknownKey);
        // A random per-process key is another key again.
        let random = TaskTokenKeys::random();
        assert!(random.is_ephemeral());
        assert_eq!(random.open(&sealed).unwrap_err(), TaskTokenError::UnknownKey);
        assert_ne!(random.sealing_key_id(), TaskTokenKeys::random().sealing_key_id());
    }

    #[test]
    fn overlong_sealed_tokens_are_refused_before_hashing() {
        let keys = keys();
        let huge = [&MAGIC[..], &vec![0; MAX_SEALED_TOKEN_LEN]].concat();
        assert!(matches!(keys.open(&huge).unwrap_err(), TaskTokenError::TooLarge { .. }));
    }

    #[test]
    fn rotation_opens_with_old_keys_and_seals_with_the_first() {
        let old = TaskTokenKeys::from_secrets(&[KEY_A]);
        let rotated = TaskTokenKeys::from_secrets(&[KEY_B, KEY_A]);
        let original = upstream_token(1);
        let sealed_before = old.seal(&original, &binding());
        assert_eq!(rotated.open(&sealed_before).unwrap().0, original);
        let sealed_after = rotated.seal(&original, &binding());
        assert_eq!(&sealed_after[4..12], &TaskTokenKeys::from_secrets(&[KEY_B]).keys[0].id);
        assert_eq!(rotated.open(&sealed_after).unwrap().0, original);
        // A replica still on the old file cannot open the new key's tokens.
        assert_eq!(old.open(&sealed_after).unwrap_err(), TaskTokenError::UnknownKey);
        assert_eq!(rotated.sealing_key_id().len(), 16);
    }

    #[test]
    fn key_files_are_read_with_comments_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task-token.keys");
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        std::fs::write(&path, format!("# rotated 2025-01\n\n{}  # new\n{}\n", b64(&KEY_B), b64(&KEY_A))).unwrap();
        let keys = TaskTokenKeys::from_key_file(&path).unwrap();
        assert!(!keys.is_ephemeral());
        assert_eq!(keys.keys.len(), 2);
        let sealed = TaskTokenKeys::from_secrets(&[KEY_A]).seal(b"t", &binding());
        assert_eq!(keys.open(&sealed).unwrap().0, b"t");
        assert_eq!(&keys.seal(b"t", &binding())[4..12], &TaskTokenKeys::from_secrets(&[KEY_B]).keys[0].id);
        let config = TaskTokensConfig { key_file: Some(path.clone()) };
        assert!(!TaskTokenKeys::from_config(&config).unwrap().is_ephemeral());
        assert!(TaskTokenKeys::from_config(&TaskTokensConfig::default()).unwrap().is_ephemeral());

        let error = |text: &str| {
            std::fs::write(&path, text).unwrap();
            TaskTokenKeys::from_key_file(&path).unwrap_err().to_string()
        };
        let shown = path.display().to_string();
        let message = error(&format!("# comment\n{}\nnot*base64\n", b64(&KEY_A)));
        assert!(
            message.contains(&format!("`{shown}`")) && message.contains("line 3: not standard base64"),
            "{message}"
        );
        let message = error(&format!("{}\n", b64(&[1; 16])));
        assert!(message.contains("line 1: key is 16 bytes, at least 32"), "{message}");
        let message = error("# nothing here\n\n");
        assert!(message.contains("holds no key"), "{message}");
        let missing = dir.path().join("missing.keys");
        let message = TaskTokenKeys::from_key_file(&missing).unwrap_err().to_string();
        assert!(message.contains("task_tokens.key_file") && message.contains("cannot read it"), "{message}");
    }

    #[test]
    fn poll_workflow_task_is_sealed_and_bound_to_the_workflows_queue() {
        let keys = keys();
        let original = upstream_token(1);
        let response = workflow_task(original.clone(), Some("deploy"));
        let message = response.encode_to_vec();
        // The polled queue was a sticky one, by its normal name `ignored`: field 11 wins.
        let sealed = keys.seal_response("PollWorkflowTaskQueue", &message, &ctx(Some("ignored"))).unwrap().unwrap();
        let decoded = PollWorkflowTaskQueueResponse::decode(&sealed[..]).unwrap();
        let binding = opened(&keys, &decoded.task_token, &original);
        assert_eq!(binding.kind, TaskKind::Workflow);
        assert_eq!(binding.task_queue, "deploy");
        assert_eq!(binding.workflow_id.as_deref(), Some("deploy-7f3a"));
        assert_eq!(binding.workflow_type.as_deref(), Some("DeployService"));
        assert_eq!(binding.activity_type, None);
        assert_eq!((binding.namespace.as_str(), binding.principal.as_str()), ("payments", "buildkite:pipeline:deploy"));
        assert!(binding.issued_at > 1_700_000_000);
        // Everything but the token is unchanged.
        assert_eq!(PollWorkflowTaskQueueResponse { task_token: original.clone(), ..decoded }, response);
        // Without field 11 the polled queue is the binding's.
        let message = workflow_task(original.clone(), None).encode_to_vec();
        let sealed = keys.seal_response("PollWorkflowTaskQueue", &message, &ctx(Some("deploy"))).unwrap().unwrap();
        let token = PollWorkflowTaskQueueResponse::decode(&sealed[..]).unwrap().task_token;
        assert_eq!(opened(&keys, &token, &original).task_queue, "deploy");
        // Neither: nothing to bind the task to, so nothing is handed out.
        let error = keys.seal_response("PollWorkflowTaskQueue", &message, &ctx(None)).unwrap_err();
        assert!(error.to_string().contains("names no task queue"), "{error}");
    }

    #[test]
    fn poll_activity_and_nexus_tasks_are_sealed_to_the_polled_queue() {
        let keys = keys();
        let original = upstream_token(2);
        let response = activity_task(original.clone(), "approve-1");
        let sealed = keys
            .seal_response("PollActivityTaskQueue", &response.encode_to_vec(), &ctx(Some("deploy")))
            .unwrap()
            .unwrap();
        let decoded = PollActivityTaskQueueResponse::decode(&sealed[..]).unwrap();
        let bound = opened(&keys, &decoded.task_token, &original);
        assert_eq!(bound, Binding { issued_at: bound.issued_at, ..binding() });
        assert_eq!(PollActivityTaskQueueResponse { task_token: original.clone(), ..decoded }, response);

        let response = PollNexusTaskQueueResponse { task_token: original.clone(), request: b"\x0a\x03op1".to_vec() };
        let sealed = keys
            .seal_response("PollNexusTaskQueue", &response.encode_to_vec(), &ctx(Some("nexus-q")))
            .unwrap()
            .unwrap();
        let decoded = PollNexusTaskQueueResponse::decode(&sealed[..]).unwrap();
        let binding = opened(&keys, &decoded.task_token, &original);
        assert_eq!((binding.kind, binding.task_queue.as_str()), (TaskKind::Nexus, "nexus-q"));
        assert_eq!((binding.workflow_id, binding.workflow_type, binding.activity_type), (None, None, None));
        assert_eq!(decoded.request, response.request);
    }

    #[test]
    fn responses_without_tokens_are_left_alone() {
        let keys = keys();
        // The empty answer of a long poll that timed out, and a token-less message.
        for method in ["PollWorkflowTaskQueue", "PollActivityTaskQueue", "PollNexusTaskQueue"] {
            assert_eq!(keys.seal_response(method, b"", &ctx(Some("q"))).unwrap(), None);
        }
        let empty_token = PollNexusTaskQueueResponse { task_token: vec![], request: b"r".to_vec() }.encode_to_vec();
        assert_eq!(keys.seal_response("PollNexusTaskQueue", &empty_token, &ctx(Some("q"))).unwrap(), None);
        // A start without eager execution, a completion without a new task.
        let start = StartWorkflowExecutionResponse { run_id: "r".into(), eager_workflow_task: None, started: true };
        assert_eq!(keys.seal_response("StartWorkflowExecution", &start.encode_to_vec(), &ctx(None)).unwrap(), None);
        let done = RespondWorkflowTaskCompletedResponse { reset_history_event_id: 4, ..Default::default() };
        assert_eq!(
            keys.seal_response("RespondWorkflowTaskCompleted", &done.encode_to_vec(), &ctx(None)).unwrap(),
            None
        );
        // Methods that hand out no tasks, whatever their message holds.
        let message = activity_task(upstream_token(1), "a").encode_to_vec();
        assert_eq!(keys.seal_response("DescribeNamespace", &message, &ctx(None)).unwrap(), None);
        assert!(seals_response("PollActivityTaskQueue") && !seals_response("DescribeNamespace"));
    }

    #[test]
    fn workflow_task_completion_seals_the_new_task_and_eager_activities() {
        let keys = keys();
        let response = RespondWorkflowTaskCompletedResponse {
            workflow_task: Some(workflow_task(upstream_token(1), None)),
            activity_tasks: vec![activity_task(upstream_token(2), "a-1"), activity_task(upstream_token(3), "a-2")],
            reset_history_event_id: 9,
        };
        let sealed = keys
            .seal_response("RespondWorkflowTaskCompleted", &response.encode_to_vec(), &ctx(Some("deploy")))
            .unwrap()
            .unwrap();
        let mut decoded = RespondWorkflowTaskCompletedResponse::decode(&sealed[..]).unwrap();
        let task = decoded.workflow_task.as_mut().unwrap();
        let binding = opened(&keys, &task.task_token, &upstream_token(1));
        assert_eq!((binding.kind, binding.task_queue.as_str()), (TaskKind::Workflow, "deploy"));
        task.task_token = upstream_token(1);
        for (activity, seed) in decoded.activity_tasks.iter_mut().zip([2, 3]) {
            let binding = opened(&keys, &activity.task_token, &upstream_token(seed));
            assert_eq!((binding.kind, binding.task_queue.as_str()), (TaskKind::Activity, "deploy"));
            activity.task_token = upstream_token(seed);
        }
        assert_eq!(decoded, response);
        // Unsealing every token gives back the upstream's bytes exactly.
        assert_eq!(decoded.encode_to_vec(), response.encode_to_vec());
    }

    #[test]
    fn eager_workflow_starts_are_sealed_alone_and_in_multi_operations() {
        let keys = keys();
        let start = StartWorkflowExecutionResponse {
            run_id: "r1".into(),
            eager_workflow_task: Some(workflow_task(upstream_token(4), Some("deploy"))),
            started: true,
        };
        let sealed = keys
            .seal_response("StartWorkflowExecution", &start.encode_to_vec(), &ctx(Some("deploy")))
            .unwrap()
            .unwrap();
        let mut decoded = StartWorkflowExecutionResponse::decode(&sealed[..]).unwrap();
        let task = decoded.eager_workflow_task.as_mut().unwrap();
        assert_eq!(opened(&keys, &task.task_token, &upstream_token(4)).kind, TaskKind::Workflow);
        task.task_token = upstream_token(4);
        assert_eq!(decoded, start);

        let multi = ExecuteMultiOperationResponse {
            responses: vec![
                MultiOperationResponse { start_workflow: Some(start.clone()), update_workflow: vec![] },
                MultiOperationResponse { start_workflow: None, update_workflow: b"\x0a\x02u1".to_vec() },
            ],
        };
        let sealed =
            keys.seal_response("ExecuteMultiOperation", &multi.encode_to_vec(), &ctx(Some("deploy"))).unwrap().unwrap();
        let mut decoded = ExecuteMultiOperationResponse::decode(&sealed[..]).unwrap();
        let task = decoded.responses[0].start_workflow.as_mut().unwrap().eager_workflow_task.as_mut().unwrap();
        assert_eq!(opened(&keys, &task.task_token, &upstream_token(4)).task_queue, "deploy");
        task.task_token = upstream_token(4);
        assert_eq!(decoded, multi);
        assert_eq!(decoded.encode_to_vec(), multi.encode_to_vec());
    }

    /// The sealed token at the top level of `message` (field 1).
    fn token_in(message: &[u8]) -> Vec<u8> {
        wire::last_bytes(message, &[1]).unwrap().unwrap().to_vec()
    }

    #[test]
    fn unknown_fields_and_field_order_are_kept_byte_for_byte() {
        let keys = keys();
        let original = upstream_token(1);
        // Unknown fields of every wire type, the token in the middle, fields out of order.
        let unknown_before = [&[0xf8u8, 0x07, 0x2a][..], &[0x79, 1, 2, 3, 4, 5, 6, 7, 8]].concat(); // 127:varint, 15:fixed64
        let mut task = Vec::new();
        wire::put_bytes_field(&mut task, 11, &[0x0a, 0x06, b'd', b'e', b'p', b'l', b'o', b'y']);
        task.extend_from_slice(&unknown_before);
        let token_at = task.len();
        wire::put_bytes_field(&mut task, 1, &original);
        let after_token = task.len();
        wire::put_bytes_field(&mut task, 500, b"unknown bytes");
        task.extend_from_slice(&[0x8d, 0x01, 9, 9, 9, 9]); // 17: fixed32
        wire::put_bytes_field(&mut task, 2, b"\x0a\x03wf1");

        let sealed = keys.seal_response("PollWorkflowTaskQueue", &task, &ctx(None)).unwrap().unwrap();
        let token = token_in(&sealed);
        let mut expected = task[..token_at].to_vec();
        wire::put_bytes_field(&mut expected, 1, &token);
        expected.extend_from_slice(&task[after_token..]);
        assert_eq!(sealed, expected);
        assert_eq!(opened(&keys, &token, &original).workflow_id.as_deref(), Some("wf1"));

        // The same task nested twice deep: each enclosing length is recomputed.
        let mut start = Vec::new();
        wire::put_bytes_field(&mut start, 1, b"run");
        wire::put_bytes_field(&mut start, 2, &task);
        wire::put_varint_field(&mut start, 3, 1);
        let mut response = Vec::new();
        wire::put_bytes_field(&mut response, 9, b"unknown");
        wire::put_bytes_field(&mut response, 1, &start);
        let mut multi = Vec::new();
        wire::put_bytes_field(&mut multi, 1, &response);
        let sealed = keys.seal_response("ExecuteMultiOperation", &multi, &ctx(None)).unwrap().unwrap();
        let inner = wire::last_bytes(&sealed, &[1, 1, 2]).unwrap().unwrap();
        let token = token_in(inner);
        assert_eq!(opened(&keys, &token, &original).task_queue, "deploy");
        let mut task_sealed = task[..token_at].to_vec();
        wire::put_bytes_field(&mut task_sealed, 1, &token);
        task_sealed.extend_from_slice(&task[after_token..]);
        let mut start_sealed = Vec::new();
        wire::put_bytes_field(&mut start_sealed, 1, b"run");
        wire::put_bytes_field(&mut start_sealed, 2, &task_sealed);
        wire::put_varint_field(&mut start_sealed, 3, 1);
        let mut response_sealed = Vec::new();
        wire::put_bytes_field(&mut response_sealed, 9, b"unknown");
        wire::put_bytes_field(&mut response_sealed, 1, &start_sealed);
        let mut expected = Vec::new();
        wire::put_bytes_field(&mut expected, 1, &response_sealed);
        assert_eq!(sealed, expected);
        assert!(wire::validate(&sealed).is_ok());
    }

    #[test]
    fn repeated_or_mistyped_token_fields_in_responses_are_refused() {
        let keys = keys();
        let task = workflow_task(upstream_token(1), Some("deploy")).encode_to_vec();
        let twice = [task.clone(), {
            let mut extra = Vec::new();
            wire::put_bytes_field(&mut extra, 1, &upstream_token(2));
            extra
        }]
        .concat();
        let error = keys.seal_response("PollWorkflowTaskQueue", &twice, &ctx(None)).unwrap_err();
        assert!(error.to_string().contains("field 1 occurs more than once"), "{error}");
        let mistyped = [&task[..], &[0x08, 0x01]].concat();
        assert!(matches!(
            keys.seal_response("PollWorkflowTaskQueue", &mistyped, &ctx(None)),
            Err(TaskTokenError::Malformed(_))
        ));
        // Two eager workflow tasks in one start (a client merges them): refused too.
        let mut start = Vec::new();
        wire::put_bytes_field(&mut start, 2, &task);
        wire::put_bytes_field(&mut start, 2, &task);
        assert!(keys.seal_response("StartWorkflowExecution", &start, &ctx(None)).is_err());
        // Corrupt protobuf is an error, not a pass-through.
        assert!(keys.seal_response("PollActivityTaskQueue", &[0x0a, 0x10, 1], &ctx(Some("q"))).is_err());
    }

    #[test]
    fn oversized_tokens_and_names_are_not_sealed() {
        let keys = keys();
        let big = vec![1; MAX_ORIGINAL_TOKEN_LEN + 1];
        let message = activity_task(big, "a").encode_to_vec();
        let error = keys.seal_response("PollActivityTaskQueue", &message, &ctx(Some("q"))).unwrap_err();
        assert!(matches!(error, TaskTokenError::TooLarge { what: "task token", .. }), "{error}");
        let mut task = activity_task(upstream_token(1), "a");
        task.workflow_execution.as_mut().unwrap().workflow_id = "w".repeat(MAX_BINDING_FIELD_LEN + 1);
        let error = keys.seal_response("PollActivityTaskQueue", &task.encode_to_vec(), &ctx(Some("q"))).unwrap_err();
        assert!(matches!(error, TaskTokenError::TooLarge { what: "workflow id", .. }), "{error}");
        // At every limit the sealed token still opens.
        let mut task = activity_task(vec![7; MAX_ORIGINAL_TOKEN_LEN], "a");
        let long = "n".repeat(MAX_BINDING_FIELD_LEN);
        task.workflow_execution.as_mut().unwrap().workflow_id = long.clone();
        task.workflow_type = Some(Named { name: long.clone() });
        task.activity_type = Some(Named { name: long.clone() });
        let ctx = SealContext { principal: long.clone(), namespace: long.clone(), task_queue: Some(long.clone()) };
        let sealed = keys.seal_response("PollActivityTaskQueue", &task.encode_to_vec(), &ctx).unwrap().unwrap();
        let token = PollActivityTaskQueueResponse::decode(&sealed[..]).unwrap().task_token;
        assert!(token.len() <= MAX_SEALED_TOKEN_LEN);
        assert_eq!(opened(&keys, &token, &vec![7; MAX_ORIGINAL_TOKEN_LEN]).principal, long);
    }

    #[test]
    fn requests_get_their_original_token_back() {
        let keys = keys();
        let original = upstream_token(1);
        let sealed = keys.seal(&original, &binding());
        let request = RespondActivityTaskCompletedRequest {
            task_token: sealed,
            result: b"approved".to_vec(),
            identity: "worker-1".into(),
            namespace: "payments".into(),
        };
        let (forwarded, got) = keys.unseal_request(1, &request.encode_to_vec()).unwrap();
        assert_eq!(got, binding());
        let expected = RespondActivityTaskCompletedRequest { task_token: original.clone(), ..request.clone() };
        assert_eq!(forwarded, expected.encode_to_vec());

        // RespondNexusTaskCompleted: namespace = 1, identity = 2, task_token = 3.
        let mut nexus = Vec::new();
        wire::put_bytes_field(&mut nexus, 1, b"payments");
        wire::put_bytes_field(&mut nexus, 2, b"worker-1");
        wire::put_bytes_field(&mut nexus, 3, &keys.seal(&original, &binding()));
        wire::put_bytes_field(&mut nexus, 4, b"\x0a\x00");
        let (forwarded, _) = keys.unseal_request(3, &nexus).unwrap();
        let mut expected = Vec::new();
        wire::put_bytes_field(&mut expected, 1, b"payments");
        wire::put_bytes_field(&mut expected, 2, b"worker-1");
        wire::put_bytes_field(&mut expected, 3, &original);
        wire::put_bytes_field(&mut expected, 4, b"\x0a\x00");
        assert_eq!(forwarded, expected);
    }

    #[test]
    fn requests_with_a_forged_missing_or_second_token_are_refused() {
        let keys = keys();
        let forged =
            RespondActivityTaskCompletedRequest { task_token: upstream_token(1), ..Default::default() }.encode_to_vec();
        assert_eq!(keys.unseal_request(1, &forged).unwrap_err(), TaskTokenError::NotSealed);
        let none = RespondActivityTaskCompletedRequest { identity: "w".into(), ..Default::default() }.encode_to_vec();
        assert_eq!(keys.unseal_request(1, &none).unwrap_err(), TaskTokenError::NotSealed);
        // A sealed token, then a hand-built one: protobuf's last-wins would act on the second.
        let mut twice = Vec::new();
        wire::put_bytes_field(&mut twice, 1, &keys.seal(&upstream_token(1), &binding()));
        wire::put_bytes_field(&mut twice, 1, &upstream_token(2));
        let error = keys.unseal_request(1, &twice).unwrap_err();
        assert!(error.to_string().contains("occurs more than once"), "{error}");
        let mut mistyped = Vec::new();
        wire::put_bytes_field(&mut mistyped, 1, &keys.seal(&upstream_token(1), &binding()));
        wire::put_varint_field(&mut mistyped, 1, 5);
        assert!(matches!(keys.unseal_request(1, &mistyped).unwrap_err(), TaskTokenError::Malformed(_)));
        assert!(matches!(keys.unseal_request(1, &[0x0a, 0x05, 1]).unwrap_err(), TaskTokenError::Malformed(_)));
        // Tampered in the request: the seal check is the same as `open`'s.
        let mut sealed = keys.seal(&upstream_token(1), &binding());
        let last = sealed.len() - 1;
        sealed[last] ^= 0x80;
        let tampered = RespondActivityTaskCompletedRequest { task_token: sealed, ..Default::default() }.encode_to_vec();
        assert_eq!(keys.unseal_request(1, &tampered).unwrap_err(), TaskTokenError::BadSignature);
    }

    #[test]
    fn keys_never_reach_debug_output() {
        let text = format!("{:?}", keys());
        assert!(!text.contains("a5a5a5a5a5a5a5a5a5"), "{text}");
        assert!(text.contains(&keys().sealing_key_id()), "{text}");
    }
}
