//! The decision log: one JSON line per decision, written before the call goes on.
//!
//! Records are written by a dedicated thread, so file I/O never blocks the async runtime. A
//! call hands its serialized record to the thread and waits until the record has been written
//! (handed to the OS with `write(2)`); only then is the call forwarded. Under load the thread
//! writes everything queued in one system call (group commit), so throughput does not cost a
//! syscall per call. If a write fails, every call whose record was in it is refused: the log is
//! never silently skipped. Nothing is dropped: the queue holds at most one record per call in
//! flight, because each call waits for its own.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;
use tokio::sync::oneshot;

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

/// A handle to the decision log. Cheap to clone; the writer stops when the last handle drops.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    jobs: mpsc::Sender<Job>,
}

const MAX_BATCH: usize = 4096;

impl DecisionLog {
    /// Opens `path` for appending (`-` is standard output) and starts the writer thread.
    pub fn open(path: &Path) -> Result<DecisionLog, AuditError> {
        let sink: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| AuditError::Open { path: path.display().to_string(), reason: e.to_string() })?;
            Box::new(file)
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("flowgate-decision-log".into())
            .spawn(move || write_loop(sink, queue))
            .map_err(|e| AuditError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(DecisionLog { jobs })
    }

    /// Writes one record and waits until it is written.
    pub async fn write<R: Serialize>(&self, record: &R) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| AuditError::Write(e.to_string()))?;
        line.push(b'\n');
        let (written, done) = oneshot::channel();
        self.jobs.send(Job { line, written }).map_err(|_| AuditError::Stopped)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(AuditError::Write(reason)),
            Err(_) => Err(AuditError::Stopped),
        }
    }
}

fn write_loop(mut sink: Box<dyn Write + Send>, queue: mpsc::Receiver<Job>) {
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
        let result = sink.write_all(&buffer).and_then(|()| sink.flush()).map_err(|e| e.to_string());
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
#[derive(Debug, Clone, Serialize)]
pub struct ResourceRecord<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
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
    pub reasons: Vec<String>,
    pub errors: Vec<String>,
    pub principal: Option<PrincipalRecord<'a>>,
    pub action: &'a str,
    pub method: &'a str,
    pub resource: Option<ResourceRecord<'a>>,
    pub client: ClientRecord<'a>,
    pub policy_version: &'a str,
    pub latency_us: u64,
    pub status: Option<u16>,
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
