//! The load generator: hyper's HTTP/2 client over h2c (prior knowledge, TCP_NODELAY),
//! hand-encoded protobuf requests, and three ways to drive a target — sequential, open-loop
//! fixed rate (latency from the intended send time, so a stall is not hidden by coordinated
//! omission) and closed-loop max throughput. Every call's gRPC status is read from the
//! trailers (or from the headers of a trailers-only response) and counted: an HTTP 200 is not
//! a success.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::proto;

/// What one call came back with, as a status label: `OK`, `RESOURCE_EXHAUSTED`, …,
/// `no-grpc-status`, `http-502`, `transport`.
pub type Status = &'static str;

pub fn grpc_status_name(code: &str) -> Status {
    match code.trim() {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "grpc-status-invalid",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    DescribeNamespace,
    StartWorkflow,
    /// A worker's hot path: PollWorkflowTaskQueue, then RespondWorkflowTaskCompleted with the
    /// task's token and three commands ([`worker_sequential`], [`worker_concurrent`]).
    Worker,
}

/// A set of HTTP/2 connections to one target, used round-robin.
pub struct Conns {
    senders: Vec<SendRequest<Full<Bytes>>>,
    next: AtomicUsize,
    base: String,
    authorization: Option<HeaderValue>,
    namespace: String,
    /// Makes workflow ids unique across targets, rounds and runs.
    id_prefix: String,
    counter: AtomicU64,
    describe_body: Bytes,
}

impl Conns {
    pub async fn connect(
        addr: SocketAddr,
        connections: usize,
        token: Option<&str>,
        namespace: &str,
        id_prefix: String,
    ) -> anyhow::Result<Arc<Conns>> {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(1 << 24)
                .handshake(TokioIo::new(tcp))
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            senders.push(sender);
        }
        Ok(Arc::new(Conns {
            senders,
            next: AtomicUsize::new(0),
            base: format!("http://{addr}{}", proto::SERVICE),
            authorization: token.map(|t| HeaderValue::from_str(&format!("Bearer {t}")).expect("token header")),
            namespace: namespace.to_string(),
            id_prefix,
            counter: AtomicU64::new(0),
            describe_body: proto::describe_namespace(namespace),
        }))
    }

    pub fn body(&self, workload: Workload) -> (&'static str, Bytes) {
        match workload {
            Workload::DescribeNamespace => ("DescribeNamespace", self.describe_body.clone()),
            Workload::StartWorkflow => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-{n}", self.id_prefix);
                ("StartWorkflowExecution", proto::start_workflow(&self.namespace, &id))
            }
            Workload::Worker => unreachable!("the worker workload runs its own loop (worker_sequential)"),
        }
    }

    pub async fn run(&self, workload: Workload) -> (Status, Option<String>) {
        let (method, body) = self.body(workload);
        self.call(method, body, None).await
    }

    /// One unary call; returns the status label and, for a non-OK status, its grpc-message.
    pub async fn call(&self, method: &str, body: Bytes, timeout: Option<&str>) -> (Status, Option<String>) {
        let (status, msg, _) = self.call_body(method, body, timeout).await;
        (status, msg)
    }

    /// [`Conns::call`], also returning the response body (the framed message; empty on errors).
    pub async fn call_body(&self, method: &str, body: Bytes, timeout: Option<&str>) -> (Status, Option<String>, Bytes) {
        self.call_as(self.authorization.as_ref(), method, body, timeout).await
    }

    /// [`Conns::call_body`] with this `authorization` header instead of the connections' own.
    pub async fn call_as(
        &self,
        authorization: Option<&HeaderValue>,
        method: &str,
        body: Bytes,
        timeout: Option<&str>,
    ) -> (Status, Option<String>, Bytes) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let mut sender = self.senders[i].clone();
        let mut req = Request::post(format!("{}{method}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(auth) = authorization {
            req = req.header("authorization", auth.clone());
        }
        if let Some(t) = timeout {
            req = req.header("grpc-timeout", t);
        }
        let req = req.body(Full::new(body)).expect("request");
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return ("transport", Some(e.to_string()), Bytes::new()),
        };
        let http_status = resp.status();
        let (parts, body) = resp.into_parts();
        // Trailers-only response: the status is in the headers.
        let mut status = status_of(&parts.headers);
        let collected = body.collect().await;
        if status.is_none() {
            match &collected {
                Ok(c) => {
                    if let Some(t) = c.trailers() {
                        status = status_of(t);
                    }
                }
                Err(e) => return ("transport", Some(e.to_string()), Bytes::new()),
            }
        }
        if http_status != 200 {
            return (http_label(http_status.as_u16()), None, Bytes::new());
        }
        let data = collected.map(|c| c.to_bytes()).unwrap_or_default();
        match status {
            Some(("OK", _)) => ("OK", None, data),
            Some((s, m)) => (s, m, data),
            None => ("no-grpc-status", None, data),
        }
    }
}

fn status_of(h: &HeaderMap) -> Option<(Status, Option<String>)> {
    let code = h.get("grpc-status")?.to_str().unwrap_or("?");
    let msg = h.get("grpc-message").and_then(|m| m.to_str().ok()).map(str::to_string);
    Some((grpc_status_name(code), msg))
}

fn http_label(code: u16) -> Status {
    match code {
        400 => "http-400",
        401 => "http-401",
        403 => "http-403",
        404 => "http-404",
        429 => "http-429",
        500 => "http-500",
        502 => "http-502",
        503 => "http-503",
        504 => "http-504",
        _ => "http-other",
    }
}

/// Raw results of one measurement.
#[derive(Default)]
pub struct Sample {
    /// Per-call latency in nanoseconds.
    pub latencies: Vec<u64>,
    pub statuses: BTreeMap<Status, u64>,
    /// One grpc-message per non-OK status, for the report.
    pub messages: BTreeMap<Status, String>,
    pub elapsed: Duration,
    /// Open-loop only: how late the generator itself sent each call (ns).
    pub send_lag: Vec<u64>,
}

impl Sample {
    fn add(&mut self, latency: Duration, status: Status, msg: Option<String>) {
        self.latencies.push(latency.as_nanos() as u64);
        *self.statuses.entry(status).or_default() += 1;
        if let Some(m) = msg {
            self.messages.entry(status).or_insert(m);
        }
    }
}

/// One call at a time, `n` calls.
pub async fn sequential(conns: &Arc<Conns>, workload: Workload, n: usize) -> Sample {
    let mut s = Sample { latencies: Vec::with_capacity(n), ..Default::default() };
    let start = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let (status, msg) = conns.run(workload).await;
        s.add(t0.elapsed(), status, msg);
    }
    s.elapsed = start.elapsed();
    s
}

/// Open loop at `rps` for `duration`. A dedicated OS thread keeps the schedule with
/// nanosecond sleeps (tokio's timer has 1 ms granularity) and spawns each call onto the
/// runtime; latency runs from the intended send time to the end of the trailers.
pub async fn fixed_rate(conns: &Arc<Conns>, workload: Workload, rps: u64, duration: Duration) -> Sample {
    let total = (rps as f64 * duration.as_secs_f64()) as u64;
    let interval_ns = 1_000_000_000 / rps.max(1);
    let handle = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Duration, Status, Option<String>)>();
    let start = Instant::now() + Duration::from_millis(5);
    let conns2 = conns.clone();
    let dispatcher = std::thread::spawn(move || {
        for i in 0..total {
            let intended = start + Duration::from_nanos(i * interval_ns);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let conns = conns2.clone();
            let tx = tx.clone();
            handle.spawn(async move {
                let lag = Instant::now().saturating_duration_since(intended);
                let (status, msg) = conns.run(workload).await;
                let _ = tx.send((Instant::now() - intended, lag, status, msg));
            });
        }
    });
    let mut s = Sample { latencies: Vec::with_capacity(total as usize), ..Default::default() };
    let mut last = start;
    while let Some((lat, lag, status, msg)) = rx.recv().await {
        s.add(lat, status, msg);
        s.send_lag.push(lag.as_nanos() as u64);
        last = Instant::now();
    }
    dispatcher.join().expect("dispatcher thread");
    s.elapsed = last.saturating_duration_since(start);
    s
}

/// Closed loop: `concurrency` callers back to back for `duration`.
pub async fn max_throughput(conns: &Arc<Conns>, workload: Workload, concurrency: usize, duration: Duration) -> Sample {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let conns = conns.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (status, msg) = conns.run(workload).await;
                s.add(t0.elapsed(), status, msg);
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        let s = t.await.expect("caller task");
        all.latencies.extend(s.latencies);
        for (k, v) in s.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in s.messages {
            all.messages.entry(k).or_insert(v);
        }
    }
    all.elapsed = start.elapsed();
    all
}

/// One worker measurement: each poll, each completion, and each whole iteration (poll then
/// completion; its rate is the worker's throughput).
#[derive(Default)]
pub struct WorkerSample {
    pub poll: Sample,
    pub complete: Sample,
    pub iteration: Sample,
}

impl WorkerSample {
    fn merge(&mut self, other: WorkerSample) {
        for (all, part) in
            [(&mut self.poll, other.poll), (&mut self.complete, other.complete), (&mut self.iteration, other.iteration)]
        {
            all.latencies.extend(part.latencies);
            for (k, v) in part.statuses {
                *all.statuses.entry(k).or_default() += v;
            }
            for (k, v) in part.messages {
                all.messages.entry(k).or_insert(v);
            }
        }
    }

    fn set_elapsed(&mut self, elapsed: Duration) {
        self.poll.elapsed = elapsed;
        self.complete.elapsed = elapsed;
        self.iteration.elapsed = elapsed;
    }
}

/// The long-poll deadline a worker sends; the queue has a backlog, so a poll that waits this
/// long means the benchmark started too few workflows.
const WORKER_POLL_TIMEOUT: &str = "20S";

/// One worker iteration on `task_queue`: poll a workflow task, complete it with the task's
/// token (as the target handed it out: sealed by flowgate) and three commands. A poll that
/// brings no task is counted as `no-task` and not completed.
async fn worker_iteration(conns: &Conns, poll_body: &Bytes, task_queue: &str, out: &mut WorkerSample) {
    let started = Instant::now();
    let (status, msg, body) =
        conns.call_body("PollWorkflowTaskQueue", poll_body.clone(), Some(WORKER_POLL_TIMEOUT)).await;
    let token = if status == "OK" { proto::workflow_task_token(&body) } else { Vec::new() };
    let status = if status == "OK" && token.is_empty() { "no-task" } else { status };
    out.poll.add(started.elapsed(), status, msg);
    if token.is_empty() {
        return;
    }
    let completion = proto::complete_workflow_task(&conns.namespace, token, task_queue);
    let completing = Instant::now();
    let (status, msg) = conns.call("RespondWorkflowTaskCompleted", completion, None).await;
    out.complete.add(completing.elapsed(), status, msg.clone());
    out.iteration.add(started.elapsed(), status, msg);
}

/// One worker, `n` iterations back to back.
pub async fn worker_sequential(conns: &Arc<Conns>, task_queue: &str, n: usize) -> WorkerSample {
    let poll_body = proto::poll_workflow(&conns.namespace, task_queue);
    let mut out = WorkerSample::default();
    let start = Instant::now();
    for _ in 0..n {
        worker_iteration(conns, &poll_body, task_queue, &mut out).await;
    }
    out.set_elapsed(start.elapsed());
    out
}

/// `concurrency` workers sharing `n` iterations (the queue holds exactly as many tasks as
/// were started, so the run is bounded by count, not by time).
pub async fn worker_concurrent(conns: &Arc<Conns>, task_queue: &str, concurrency: usize, n: usize) -> WorkerSample {
    let left = Arc::new(AtomicUsize::new(n));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (conns, left, task_queue) = (conns.clone(), left.clone(), task_queue.to_string());
        tasks.push(tokio::spawn(async move {
            let poll_body = proto::poll_workflow(&conns.namespace, &task_queue);
            let mut out = WorkerSample::default();
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1)).is_ok() {
                worker_iteration(&conns, &poll_body, &task_queue, &mut out).await;
            }
            out
        }));
    }
    let mut all = WorkerSample::default();
    for t in tasks {
        all.merge(t.await.expect("worker task"));
    }
    all.set_elapsed(start.elapsed());
    all
}

/// Starts `n` workflows on `task_queue` through `conns` (Temporal itself, so that the measured
/// calls are only the worker's), `concurrency` at a time; returns the statuses.
pub async fn start_workflows(
    conns: &Arc<Conns>,
    task_queue: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<Status, u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (conns, next, task_queue) = (conns.clone(), next.clone(), task_queue.to_string());
        tasks.push(tokio::spawn(async move {
            let mut statuses: BTreeMap<Status, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break statuses;
                }
                let id = format!("{}-{task_queue}-{i}", conns.id_prefix);
                let body = proto::start_workflow_on(&conns.namespace, &id, &task_queue);
                let (status, msg) = conns.call("StartWorkflowExecution", body, None).await;
                if let Some(msg) = msg {
                    eprintln!("  start on {task_queue}: {status}: {msg}");
                }
                *statuses.entry(status).or_default() += 1;
            }
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("starter task") {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

/// Percentiles and rate of a sample, latencies in µs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub rps: f64,
    pub lag_p50: f64,
    pub lag_p99: f64,
    /// CPU µs per call spent by the proxy process, Temporal and the load generator
    /// (filled in by the caller; NaN when unknown).
    pub cpu_proxy: f64,
    pub cpu_temporal: f64,
    pub cpu_loadgen: f64,
}

pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

impl Sample {
    pub fn summary(&mut self) -> Summary {
        self.latencies.sort_unstable();
        self.send_lag.sort_unstable();
        let l = &self.latencies;
        Summary {
            p50: percentile(l, 0.50),
            p90: percentile(l, 0.90),
            p99: percentile(l, 0.99),
            max: l.last().map(|m| *m as f64 / 1000.0).unwrap_or(f64::NAN),
            rps: l.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            lag_p50: percentile(&self.send_lag, 0.50),
            lag_p99: percentile(&self.send_lag, 0.99),
            cpu_proxy: f64::NAN,
            cpu_temporal: f64::NAN,
            cpu_loadgen: f64::NAN,
        }
    }
}
