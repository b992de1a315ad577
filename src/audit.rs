//! The decision log: one JSON line per decision, written before the call goes on.
//!
//! A call serializes its record and waits until the line has been handed to the OS with
//! `write(2)`; only then is the call forwarded. If a write fails, the call is refused: the log is
//! never silently skipped. Nothing is dropped: each call waits for its own line.
//!
//! Two ways a line gets written, both under one lock on the file so lines never interleave:
//!
//! * **inline**, when the sink is a regular file, nobody else is writing and the file has been
//!   fast: an appending `write(2)` into the page cache takes a few microseconds, far less than
//!   waking another thread and being woken back (two context switches, ~20-30 µs on a busy
//!   2-core machine). A write that takes longer than [`SLOW_WRITE`] switches the inline path off
//!   for [`SLOW_BACKOFF`], so a stalling disk never holds the async runtime's threads again;
//! * **through the writer thread** otherwise (lock contended, standard output, which may be a
//!   pipe, or a slow disk): the thread writes everything queued in one system call (group
//!   commit), so throughput does not cost a syscall per call.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::authz::{Decision, PolicyEngine};
use crate::temporal::Call;

/// An inline write slower than this turns the inline path off for a while.
pub const SLOW_WRITE: Duration = Duration::from_millis(1);
/// How long the inline path stays off after a slow write.
pub const SLOW_BACKOFF: Duration = Duration::from_secs(10);

/// Why a record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open decision log `{path}`: {reason}")]
    Open { path: String, reason: String },
    #[error("decision log write failed: {0}")]
    Write(String),
    #[error("decision log writer has stopped")]
    Stopped,
}

#[derive(Debug)]
struct Job {
    line: Vec<u8>,
    written: oneshot::Sender<Result<(), String>>,
}

type Sink = Mutex<Box<dyn Write + Send>>;

/// A handle to the decision log. Cheap to clone; the writer stops when the last handle drops.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sink: SinkHandle,
    /// Inline writes are allowed only for regular files.
    inline: bool,
    /// Microseconds since `epoch` before which inline writes are off (after a slow write).
    inline_off_until_us: AtomicU64,
    epoch: Instant,
}

struct SinkHandle(Arc<Sink>);

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

const MAX_BATCH: usize = 4096;

impl DecisionLog {
    /// Opens `path` for appending (`-` is standard output) and starts the writer thread.
    pub fn open(path: &Path) -> Result<DecisionLog, AuditError> {
        let (sink, inline): (Box<dyn Write + Send>, bool) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdout()), false)
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| AuditError::Open { path: path.display().to_string(), reason: e.to_string() })?;
            let regular = file.metadata().map(|m| m.file_type().is_file()).unwrap_or(false);
            (Box::new(file), regular)
        };
        let sink = Arc::new(Mutex::new(sink));
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread_sink = sink.clone();
        std::thread::Builder::new()
            .name("flowgate-decision-log".into())
            .spawn(move || write_loop(&thread_sink, queue))
            .map_err(|e| AuditError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let shared = Arc::new(Shared {
            sink: SinkHandle(sink),
            inline,
            inline_off_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        Ok(DecisionLog { jobs, shared })
    }

    /// Writes one record and waits until it is written.
    pub async fn write<R: Serialize>(&self, record: &R) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| AuditError::Write(e.to_string()))?;
        line.push(b'\n');
        if let Some(result) = self.try_write_inline(&line) {
            return result;
        }
        let (written, done) = oneshot::channel();
        self.jobs.send(Job { line, written }).map_err(|_| AuditError::Stopped)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(AuditError::Write(reason)),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Writes `line` on the caller's thread if that is cheap right now; `None` means "queue it".
    fn try_write_inline(&self, line: &[u8]) -> Option<Result<(), AuditError>> {
        let shared = &self.shared;
        if !shared.inline {
            return None;
        }
        let now_us = shared.epoch.elapsed().as_micros() as u64;
        if now_us < shared.inline_off_until_us.load(Ordering::Relaxed) {
            return None;
        }
        let mut sink = shared.sink.0.try_lock().ok()?;
        let started = Instant::now();
        let result = sink.write_all(line).and_then(|()| sink.flush());
        drop(sink);
        let took = started.elapsed();
        if took > SLOW_WRITE {
            let until = shared.epoch.elapsed() + SLOW_BACKOFF;
            shared.inline_off_until_us.store(until.as_micros() as u64, Ordering::Relaxed);
            tracing::warn!(?took, "slow decision log write; writing through the writer thread for a while");
        }
        Some(result.map_err(|e| {
            tracing::error!(reason = %e, "decision log write failed; refusing the call");
            AuditError::Write(e.to_string())
        }))
    }
}

fn write_loop(sink: &Sink, queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(64);
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        buffer.clear();
        for job in &batch {
            buffer.extend_from_slice(&job.line);
        }
        let result = {
            let mut sink = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            sink.write_all(&buffer).and_then(|()| sink.flush()).map_err(|e| e.to_string())
        };
        if let Err(reason) = &result {
            tracing::error!(%reason, records = batch.len(), "decision log write failed; refusing those calls");
        }
        for job in batch.drain(..) {
            let _ = job.written.send(result.clone());
        }
    }
}

/// `principal` of a record.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub id: &'a str,
    pub issuer: &'a str,
}

/// `resource` of a record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    /// The namespace id the request named instead of a name; `namespace` is then the name the
    /// upstream resolved it to (absent when it was not resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_type: Option<&'a str>,
    /// A Nexus endpoint, with the service and operation called on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nexus_service: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nexus_operation: Option<&'a str>,
    /// The sticky queue a worker polls, registers or shuts down (policies are asked about its
    /// normal queue, `task_queue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky_queue: Option<&'a str>,
}

impl<'a> ResourceRecord<'a> {
    /// What a call names, as recorded.
    pub fn of(call: &'a Call) -> ResourceRecord<'a> {
        let r = &call.resource;
        ResourceRecord {
            kind: r.kind.entity_type(),
            namespace: r.namespace.as_deref(),
            namespace_id: call.namespace_id.as_deref(),
            workflow_type: r.workflow_type.as_deref(),
            workflow_id: r.workflow_id.as_deref(),
            task_queue: r.task_queue.as_deref(),
            schedule_id: r.schedule_id.as_deref(),
            signal_name: call.signal_name.as_deref(),
            query_type: call.query_type.as_deref(),
            update_name: call.update_name.as_deref(),
            activity_type: call.activity_type.as_deref(),
            endpoint: r.endpoint.as_deref(),
            nexus_service: call.nexus_service.as_deref(),
            nexus_operation: call.nexus_operation.as_deref(),
            sticky_queue: call.sticky_queue.as_deref(),
        }
    }
}

/// One question asked for a call (`questions` of a record): the RPC itself first, then each
/// question its request implies (a task completion's commands, the terminate of a start with
/// `TERMINATE_EXISTING`, ...), each with its own decision and policies.
#[derive(Debug, Clone, Serialize)]
pub struct QuestionRecord<'a> {
    pub action: &'a str,
    /// Why it was asked: `the call`, `command 2`, `workflow_id_conflict_policy TERMINATE_EXISTING, ...`.
    pub origin: String,
    pub resource: ResourceRecord<'a>,
    pub decision: &'static str,
    pub reasons: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub errors: &'a [String],
    /// Refused before any policy was asked (outside a credential's grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'a str>,
}

/// `client` of a record.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRecord<'a> {
    pub addr: String,
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
}

/// One decision, as written to the log (field names are a contract: see DESIGN.md).
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub ts: String,
    pub decision_id: String,
    pub kind: &'static str,
    pub decision: &'static str,
    pub reasons: Cow<'a, [String]>,
    pub errors: Cow<'a, [String]>,
    pub principal: Option<PrincipalRecord<'a>>,
    pub action: &'a str,
    pub method: &'a str,
    pub resource: Option<ResourceRecord<'a>>,
    pub client: ClientRecord<'a>,
    pub policy_version: &'a str,
    pub latency_us: u64,
    /// The gRPC status of a refused call; for a token exchange, the HTTP status of a refusal.
    pub status: Option<u16>,
    /// For a token exchange: the scope asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    /// What the shadow policy set decided, when it differs from the enforced decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord<'a>>,
    /// Every question asked, when the request implied more than its RPC (empty otherwise:
    /// the top-level fields are then the only question).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<QuestionRecord<'a>>,
}

/// The shadow set's decision (`policy.shadow_dir`), recorded when it disagrees.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowRecord<'a> {
    pub decision: &'static str,
    pub reasons: &'a [String],
    pub errors: &'a [String],
    pub policy_version: &'a str,
}

impl<'a> ShadowRecord<'a> {
    /// The shadow set's decision for the record, when it differs from the enforced one.
    pub fn of(enforced: &Decision, shadow: &'a Decision, engine: &'a PolicyEngine) -> Option<ShadowRecord<'a>> {
        (shadow.allowed != enforced.allowed || shadow.reasons != enforced.reasons).then(|| ShadowRecord {
            decision: if shadow.allowed { "allow" } else { "deny" },
            reasons: &shadow.reasons,
            errors: &shadow.errors,
            policy_version: engine.version(),
        })
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A time-ordered unique id.
pub fn decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_lines_and_in_the_file_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        let writes = (0..200).map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.write(&serde_json::json!({"n": i})).await })
        });
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen: Vec<i64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_i64().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_the_caller() {
        let log = DecisionLog::open(Path::new("/dev/full")).unwrap();
        let err = log.write(&serde_json::json!({"n": 1})).await.unwrap_err();
        assert!(err.to_string().contains("write failed"), "{err}");
    }

    #[test]
    fn an_unopenable_log_names_its_path() {
        let err = DecisionLog::open(Path::new("/nonexistent-dir/decisions.jsonl")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/decisions.jsonl"), "{err}");
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let ts = timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456));
        assert_eq!(ts, "2023-11-14T22:13:20.123456Z");
    }
}
