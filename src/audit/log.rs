//! The decision log's writer: one JSON line per record, chained, appended in order.
//!
//! **Written before the call goes on.** A decision waits until its line has been handed to the
//! OS (`audit.fsync = "never"` or `"interval"`) or is on the disk (`"always"`); only then is the
//! call forwarded. A write that fails refuses the call: the log is never silently skipped.
//!
//! **Chained.** Every line ends with `"prev":"<hex>"`, the SHA-256 of the line before it (its
//! bytes, without the newline; 64 zeros before the first line ever). The hash is taken under
//! the same lock as the write, so the order of the file is the order of the chain. The chain
//! goes on across rotations (the head is kept in memory) and restarts (read back from the last
//! line of the file or, when the file is new, from `<path>.head`, written at each reopen and at
//! shutdown; after a crash and a rotation while flowgate was down, the new file starts a break
//! that `audit verify` reports). `flowgate audit verify` walks it.
//!
//! **Two ways a line is written**, both under one lock on the file:
//!
//! * **inline**, on the caller's thread, when the sink is a regular file and `fsync` is not
//!   `always`: an appending `write(2)` into the page cache takes a few microseconds, less than
//!   handing the line to another thread and being woken back (two context switches and two
//!   futex calls). Callers that meet on the lock spin for it up to [`INLINE_WAIT`] rather than
//!   queueing at once: the holder is one `write(2)` away from releasing it; past that, the line
//!   goes to the writer thread, so a hung write holds one runtime thread, not all of them. A
//!   write slower than [`SLOW_WRITE`] (a stalling disk) turns the inline path off for
//!   [`SLOW_BACKOFF`];
//! * **through the writer thread** otherwise (standard output, which may be a pipe; `fsync =
//!   "always"`; a slow disk): it writes everything queued with one system call and, for
//!   `always`, one `fdatasync` (group commit), then wakes each waiting call.
//!
//! **Rotation.** [`DecisionLog::reopen`] (on SIGHUP) opens the path again: logrotate's
//! rename-then-signal loses no line and splits none, since every line is written whole under
//! the lock, to whichever file is open. The old file is flushed to the disk first.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::{AuditConfig, AuditFsync};

/// An inline write slower than this turns the inline path off for a while.
pub const SLOW_WRITE: Duration = Duration::from_millis(1);
/// How long the inline path stays off after a slow write.
pub const SLOW_BACKOFF: Duration = Duration::from_secs(10);
/// The most lines the writer thread writes with one system call.
const MAX_BATCH: usize = 4096;
/// How far back from the end of an existing log its last line is looked for.
const MAX_LAST_LINE: u64 = 64 * 1024 * 1024;

/// The `prev` of the first line of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

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

/// SHA-256 of one line (without its newline).
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

/// Where lines go.
enum Sink {
    File(Arc<File>),
    Stdout(std::io::Stdout),
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(file) => (&**file).write_all(bytes),
            Sink::Stdout(out) => out.write_all(bytes).and_then(|()| out.flush()),
        }
    }
}

/// What the lock guards: the sink and the head of the chain.
struct State {
    sink: Sink,
    head: [u8; 32],
    /// Lines written since the last `fdatasync` (for `fsync = "interval"`).
    unsynced: bool,
    /// The file's length after the last whole write, for a regular file: what a failed write is
    /// cut back to.
    len: Option<u64>,
    /// A failed write could not be cut back out: the next line starts with a newline, so that
    /// only the broken one is lost.
    needs_newline: bool,
}

impl State {
    /// Ends `record` (a JSON object without its closing brace) with the chain link, and writes
    /// it (see [`State::write_linked`]).
    fn append(&mut self, record: &mut Vec<u8>) -> std::io::Result<()> {
        let head = self.head;
        self.link(record);
        self.write_linked(record, head, false)
    }

    /// Writes `lines`, linked from `head` on, and syncs them to the disk if `sync`. All or
    /// nothing: when the write or the sync fails, the file is cut back to where it was (a
    /// partial line would run into the next record; lines not on the disk belong to calls that
    /// are refused) and the head goes back to `head`, so the chain goes on from the last line
    /// that stays.
    fn write_linked(&mut self, lines: &[u8], head: [u8; 32], sync: bool) -> std::io::Result<()> {
        if self.needs_newline && self.sink.write_all(b"\n").is_ok() {
            self.needs_newline = false;
        }
        let mut result = self.sink.write_all(lines);
        if result.is_ok()
            && sync
            && let Sink::File(file) = &self.sink
        {
            result = file.sync_data();
        }
        match &result {
            Ok(()) => {
                self.unsynced = !sync;
                self.len = self.len.map(|len| len + lines.len() as u64);
            }
            Err(_) => {
                self.head = head;
                if let (Sink::File(file), Some(len)) = (&self.sink, self.len)
                    && let Err(error) = file.set_len(len)
                {
                    // The file's end is unknown now: the next line starts on a line of its own.
                    tracing::error!(%error, "cannot cut a failed write out of the decision log");
                    self.len = None;
                    self.needs_newline = true;
                }
            }
        }
        result
    }

    /// Closes `record` with `"prev"`, advances the head to it, and adds the newline.
    fn link(&mut self, record: &mut Vec<u8>) {
        record.extend_from_slice(b",\"prev\":\"");
        record.extend_from_slice(hex(&self.head).as_bytes());
        record.extend_from_slice(b"\"}");
        self.head = line_hash(record);
        record.push(b'\n');
    }
}

struct Job {
    /// The records, each without its closing brace, written in this order.
    records: Vec<Vec<u8>>,
    /// Told when the line is written (and synced, with `always`); `None` when nobody waits.
    written: Option<oneshot::Sender<Result<(), String>>>,
}

struct Shared {
    /// The file's path; `None` for standard output.
    path: Option<PathBuf>,
    /// Where the chain's head is kept: for a regular file, `<path>.head`.
    head_file: Option<PathBuf>,
    state: Mutex<State>,
    fsync: AuditFsync,
    /// Inline writes are allowed: a regular file, and `fsync` is not `always`.
    inline: bool,
    /// Microseconds since `epoch` before which inline writes are off (after a slow write).
    inline_off_until_us: AtomicU64,
    epoch: Instant,
    /// Wakes the interval syncer early when the log closes.
    closed: Arc<(Mutex<bool>, Condvar)>,
    /// Counts the files the log has written to: 1, then one more at each reopen.
    generation: AtomicU64,
}

/// A handle to the decision log. Cheap to clone; the writer stops when the last handle drops.
#[derive(Clone)]
pub struct DecisionLog {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

impl DecisionLog {
    /// Opens `path` for appending (`-` is standard output), flushing per `audit.fsync = "never"`.
    pub fn open(path: &Path) -> Result<DecisionLog, AuditError> {
        let config =
            AuditConfig { path: path.to_owned(), fsync: AuditFsync::Never, fsync_interval: Duration::from_secs(1) };
        DecisionLog::open_with(&config)
    }

    /// Opens the log `config` names, continues its chain, and starts the writer thread (and,
    /// for `fsync = "interval"`, the syncer).
    pub fn open_with(config: &AuditConfig) -> Result<DecisionLog, AuditError> {
        let path = &config.path;
        let failed = |reason: String| AuditError::Open { path: path.display().to_string(), reason };
        let (sink, head, len, file_path) = if path.as_os_str() == "-" {
            (Sink::Stdout(std::io::stdout()), GENESIS, None, None)
        } else {
            let (file, head, len) = open_file(path).map_err(|e| failed(e.to_string()))?;
            (Sink::File(Arc::new(file)), head, len, Some(path.clone()))
        };
        let regular = len.is_some();
        let shared = Arc::new(Shared {
            head_file: file_path.as_deref().filter(|_| regular).map(head_path),
            path: file_path,
            state: Mutex::new(State { sink, head, unsynced: false, len, needs_newline: false }),
            fsync: config.fsync,
            inline: regular && config.fsync != AuditFsync::Always,
            inline_off_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
            closed: Arc::new((Mutex::new(false), Condvar::new())),
            generation: AtomicU64::new(1),
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("flowgate-decision-log".into())
            .spawn(move || write_loop(&writer, queue))
            .map_err(|e| failed(e.to_string()))?;
        if config.fsync == AuditFsync::Interval && shared.path.is_some() {
            let (syncer, closed) = (Arc::downgrade(&shared), shared.closed.clone());
            let interval = config.fsync_interval;
            std::thread::Builder::new()
                .name("flowgate-decision-log-sync".into())
                .spawn(move || sync_loop(&syncer, &closed, interval))
                .map_err(|e| failed(e.to_string()))?;
        }
        Ok(DecisionLog { jobs, shared })
    }

    /// Writes one record and waits until it is written (and on the disk, with `always`).
    pub async fn write<R: Serialize>(&self, record: &R) -> Result<(), AuditError> {
        self.write_after::<R, R>(None, record).await
    }

    /// Writes `first`, if any, then `record`, together (nothing comes between them), and waits
    /// until both are written.
    pub async fn write_after<F: Serialize, R: Serialize>(
        &self,
        first: Option<&F>,
        record: &R,
    ) -> Result<(), AuditError> {
        let mut records = Vec::with_capacity(2);
        if let Some(first) = first {
            records.push(open_object(first)?);
        }
        records.push(open_object(record)?);
        let records = match self.try_write_inline(records) {
            Ok(result) => return result,
            Err(records) => records,
        };
        let (written, done) = oneshot::channel();
        self.jobs.send(Job { records, written: Some(written) }).map_err(|_| AuditError::Stopped)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(AuditError::Write(reason)),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Writes one record without waiting for it: for what has already happened (a call's
    /// outcome), where nothing waits on the record. Never blocks longer than one inline write.
    pub fn write_detached<R: Serialize>(&self, record: &R) -> Result<(), AuditError> {
        let records = vec![open_object(record)?];
        match self.try_write_inline(records) {
            Ok(result) => result,
            Err(records) => self.jobs.send(Job { records, written: None }).map_err(|_| AuditError::Stopped),
        }
    }

    /// Writes `records` on the caller's thread when that is cheap; gives them back to be queued.
    fn try_write_inline(&self, mut records: Vec<Vec<u8>>) -> Result<Result<(), AuditError>, Vec<Vec<u8>>> {
        let shared = &self.shared;
        if !shared.inline {
            return Err(records);
        }
        let now_us = shared.epoch.elapsed().as_micros() as u64;
        if now_us < shared.inline_off_until_us.load(Ordering::Relaxed) {
            return Err(records);
        }
        let Some(mut state) = lock_soon(&shared.state) else { return Err(records) };
        let started = Instant::now();
        let result = match records.as_mut_slice() {
            [one] => state.append(one),
            many => {
                let head = state.head;
                let mut buffer = Vec::with_capacity(many.iter().map(|r| r.len() + 80).sum());
                for record in many.iter_mut() {
                    state.link(record);
                    buffer.extend_from_slice(record);
                }
                state.write_linked(&buffer, head, false)
            }
        };
        drop(state);
        let took = started.elapsed();
        if took > SLOW_WRITE {
            let until = shared.epoch.elapsed() + SLOW_BACKOFF;
            shared.inline_off_until_us.store(until.as_micros() as u64, Ordering::Relaxed);
            tracing::warn!(?took, "slow decision log write; writing through the writer thread for a while");
        }
        Ok(result.map_err(|e| {
            tracing::error!(reason = %e, "decision log write failed; refusing the call");
            AuditError::Write(e.to_string())
        }))
    }

    /// Which file the log writes to: 1 at first, one more at each reopen. Whatever is written
    /// once per file (a principal's snapshot) is written again when it changes.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Opens the log's path again (after logrotate renamed the file), flushing the old file to
    /// the disk first. The chain continues into the new file. On failure the old file stays in
    /// use and nothing is lost. Standard output is not reopened.
    pub fn reopen(&self) -> Result<(), AuditError> {
        let Some(path) = &self.shared.path else { return Ok(()) };
        let failed = |e: std::io::Error| AuditError::Open { path: path.display().to_string(), reason: e.to_string() };
        // Opened, and the old file flushed, outside the lock: calls go on being recorded meanwhile.
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(failed)?;
        let metadata = file.metadata().map_err(failed)?;
        let (old, head) = {
            let mut state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let old = std::mem::replace(&mut state.sink, Sink::File(Arc::new(file)));
            state.len = metadata.file_type().is_file().then_some(metadata.len());
            state.unsynced = false;
            state.needs_newline = false;
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
            (old, state.head)
        };
        if let Sink::File(old) = old
            && self.shared.fsync != AuditFsync::Never
            && let Err(error) = old.sync_data()
        {
            tracing::error!(%error, "cannot flush the rotated decision log to the disk");
        }
        if let Some(head_file) = &self.shared.head_file {
            write_head(head_file, &head);
        }
        Ok(())
    }

    /// Flushes the file to the disk (unless `fsync = "never"`) and keeps the chain's head in
    /// `<path>.head`, for a restart that finds the file rotated away. At shutdown.
    pub fn checkpoint(&self) {
        let Some(head_file) = &self.shared.head_file else { return };
        let state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Sink::File(file) = &state.sink
            && self.shared.fsync != AuditFsync::Never
            && let Err(error) = file.sync_data()
        {
            tracing::error!(%error, "cannot flush the decision log to the disk");
        }
        write_head(head_file, &state.head);
    }

    /// The hash of the last line written: the `prev` of the next.
    pub fn head(&self) -> [u8; 32] {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).head
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The head is kept by `checkpoint` (at shutdown), not here: this runs whenever the
        // writer thread happens to end, possibly after another log was opened on the path.
        if let Sink::File(file) = &state.sink
            && self.fsync != AuditFsync::Never
        {
            let _ = file.sync_data();
        }
        let (closed, wake) = &*self.closed;
        *closed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        wake.notify_all();
    }
}

/// How long a caller on the async runtime waits for another's inline write to finish before it
/// hands its record to the writer thread instead: a write takes a few microseconds, and waiting
/// that long is cheaper than the two thread wake-ups of the queue; a write that takes longer
/// (a stalling disk) must not hold the runtime's other threads too.
const INLINE_WAIT: Duration = Duration::from_micros(50);

/// The lock, if it can be had within [`INLINE_WAIT`] (spinning, not sleeping).
fn lock_soon(state: &Mutex<State>) -> Option<std::sync::MutexGuard<'_, State>> {
    let mut since: Option<Instant> = None;
    loop {
        match state.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        let since = *since.get_or_insert_with(Instant::now);
        if since.elapsed() > INLINE_WAIT {
            return None;
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}

/// A record serialized as a JSON object without its closing brace, for [`State::link`].
fn open_object<R: Serialize>(record: &R) -> Result<Vec<u8>, AuditError> {
    let mut bytes = serde_json::to_vec(record).map_err(|e| AuditError::Write(e.to_string()))?;
    match bytes.pop() {
        Some(b'}') if bytes.len() > 1 => Ok(bytes),
        // `{}` would become `{,"prev":…}`; records always have fields.
        _ => Err(AuditError::Write("a record must be a JSON object with fields".into())),
    }
}

/// `<path>.head`: the chain's head when the log was last reopened or closed.
fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// Replaces `head_file` (written aside and renamed: never half written).
fn write_head(head_file: &Path, head: &[u8; 32]) {
    let mut temporary = head_file.as_os_str().to_owned();
    temporary.push(".tmp");
    let written =
        std::fs::write(&temporary, format!("{}\n", hex(head))).and_then(|()| std::fs::rename(&temporary, head_file));
    if let Err(error) = written {
        tracing::warn!(%error, path = %head_file.display(), "cannot keep the decision log's chain head");
    }
}

fn read_head(path: &Path) -> Option<[u8; 32]> {
    parse_hash(std::fs::read_to_string(head_path(path)).ok()?.trim())
}

/// A SHA-256 written as 64 hex digits (either case), as `prev` and `<path>.head` hold it.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let value = |digit: u8| (digit as char).to_digit(16).expect("checked: a hex digit") as u8;
    let mut hash = [0; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = value(digits[2 * i]) << 4 | value(digits[2 * i + 1]);
    }
    Some(hash)
}

/// Opens `path` for appending and finds the head of its chain: the hash of its last line; for
/// an empty file, the head kept at the last reopen or close; else [`GENESIS`]. A last line cut
/// short (a crash mid-write) is ended with a newline first, so the next record does not run
/// into it: `audit verify` then reports that one line, and the chain goes on from it.
fn open_file(path: &Path) -> std::io::Result<(File, [u8; 32], Option<u64>)> {
    let mut file = OpenOptions::new().create(true).append(true).read(true).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Ok((file, read_head(path).unwrap_or(GENESIS), None));
    }
    let len = metadata.len();
    if len == 0 {
        return Ok((file, read_head(path).unwrap_or(GENESIS), Some(0)));
    }
    let start = len.saturating_sub(MAX_LAST_LINE);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start).min(1 << 20) as usize);
    (&mut file).take(len - start).read_to_end(&mut tail)?;
    let mut len = len;
    if tail.last() != Some(&b'\n') {
        file.write_all(b"\n")?;
        tail.push(b'\n');
        len += 1;
    }
    let body = &tail[..tail.len() - 1];
    let last = match body.iter().rposition(|&b| b == b'\n') {
        Some(newline) => &body[newline + 1..],
        None if start == 0 => body,
        None => {
            return Err(std::io::Error::other(format!(
                "its last line is longer than {MAX_LAST_LINE} bytes: cannot continue its chain"
            )));
        }
    };
    Ok((file, line_hash(last), Some(len)))
}

fn write_loop(shared: &Shared, queue: mpsc::Receiver<Job>) {
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
        let result = {
            let mut state = shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let head = state.head;
            for job in &mut batch {
                for record in &mut job.records {
                    state.link(record);
                    buffer.extend_from_slice(record);
                }
            }
            state.write_linked(&buffer, head, shared.fsync == AuditFsync::Always).map_err(|e| e.to_string())
        };
        if let Err(reason) = &result {
            tracing::error!(%reason, records = batch.len(), "decision log write failed; refusing those calls");
        }
        for job in batch.drain(..) {
            if let Some(written) = job.written {
                let _ = written.send(result.clone());
            }
        }
    }
}

/// `fsync = "interval"`: flushes what was written since the last round, off the lock (the
/// file is shared, so writers go on meanwhile), until the log closes.
fn sync_loop(shared: &std::sync::Weak<Shared>, closed: &(Mutex<bool>, Condvar), interval: Duration) {
    loop {
        // The log is not kept alive between rounds.
        let file = {
            let Some(log) = shared.upgrade() else { return };
            let mut state = log.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let file = match &state.sink {
                Sink::File(file) if state.unsynced => Some(file.clone()),
                _ => None,
            };
            state.unsynced = false;
            file
        };
        if let Some(file) = file
            && let Err(error) = file.sync_data()
        {
            tracing::error!(%error, "cannot flush the decision log to the disk");
        }
        let (closed, wake) = closed;
        let guard = closed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *guard {
            return;
        }
        let (guard, _) = wake.wait_timeout(guard, interval).unwrap_or_else(|poisoned| poisoned.into_inner());
        if *guard {
            return;
        }
    }
}

/// Reopens the log on every SIGHUP until shutdown (logrotate's `postrotate`). A failed reopen
/// keeps writing to the file already open, and says why.
pub fn spawn_reopen_on_hangup(log: DecisionLog, mut shutdown: crate::shutdown::Signal) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the decision log is not reopened on rotation");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    // Opening a file can block: off the runtime's threads.
                    let log = log.clone();
                    match tokio::task::spawn_blocking(move || log.reopen()).await {
                        Ok(Ok(())) => tracing::info!("SIGHUP: decision log reopened"),
                        Ok(Err(error)) => tracing::error!(%error, "SIGHUP: cannot reopen the decision log; still writing to the file open before"),
                        Err(error) => tracing::error!(%error, "SIGHUP: decision log reopen failed"),
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

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
        let mut seen: Vec<i64> = lines(&path).iter().map(|l| l["n"].as_i64().unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn each_line_links_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 1})).await.unwrap();
        log.write_detached(&serde_json::json!({"n": 2})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(raw[0], format!(r#"{{"n":1,"prev":"{}"}}"#, hex(&GENESIS)));
        assert_eq!(raw[1], format!(r#"{{"n":2,"prev":"{}"}}"#, hex(&line_hash(raw[0].as_bytes()))));
        assert_eq!(log.head(), line_hash(raw[1].as_bytes()));
    }

    #[tokio::test]
    async fn every_fsync_mode_writes_and_chains() {
        for fsync in [AuditFsync::Always, AuditFsync::Interval, AuditFsync::Never] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("decisions.jsonl");
            let config = AuditConfig { path: path.clone(), fsync, fsync_interval: Duration::from_millis(10) };
            let log = DecisionLog::open_with(&config).unwrap();
            let writes: Vec<_> = (0..50)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.write(&serde_json::json!({"n": i})).await })
                })
                .collect();
            for write in writes {
                write.await.unwrap().unwrap();
            }
            log.write_detached(&serde_json::json!({"n": 50})).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(log);
            assert_eq!(lines(&path).len(), 51, "{fsync:?}");
            assert!(super::super::chain::verify(&[path]).unwrap().intact(), "{fsync:?}");
        }
    }

    #[tokio::test]
    async fn a_line_cut_short_by_a_crash_is_ended_and_the_chain_goes_on_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 1})).await.unwrap();
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"n":2,"pr"#).unwrap();
        let log = DecisionLog::open(&path).unwrap();
        log.write(&serde_json::json!({"n": 3})).await.unwrap();
        let verified = super::super::chain::verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(verified.breaks.len(), 1, "{:?}", verified.breaks);
        assert_eq!(verified.breaks[0].line, 2, "only the cut line is reported");
        assert_eq!(lines_raw(&path)[2], lines_raw(&path)[2].trim_end(), "the next record has a line of its own");
    }

    fn lines_raw(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
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
}
