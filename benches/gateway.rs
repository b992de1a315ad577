//! Side-by-side benchmark of three targets in front of one real Temporal dev server:
//! `direct` (Temporal itself), `bare` (a bare hyper h2c pass-through proxy, the floor any
//! proxy starts from) and `flowgate` (the gateway with a valid token and real policies).
//!
//! Run it with `bash scripts/bench.sh` (starts Temporal, builds flowgate, runs this). This
//! binary expects `TEMPORAL_ADDR=127.0.0.1:PORT` of a dev server that has the namespace
//! `payments` and raised rate limits; it starts the bare proxy (a child process: itself with
//! `--bare-proxy`), a test OIDC issuer (in process) and flowgate (`target/release/flowgate`).
//!
//! Environment (defaults in brackets):
//!   TEMPORAL_ADDR        host:port of Temporal's frontend (required)
//!   TEMPORAL_PID         its pid, to report Temporal's CPU time per call (optional)
//!   BENCH_TARGETS        [direct,bare,flowgate] which targets, in this base order
//!   BENCH_WORKLOADS      [describe,start] (also: worker)
//!   BENCH_MODES          [seq,rate,max]
//!   BENCH_ROUNDS         [3] rounds; targets alternate inside each round, order rotated
//!   BENCH_SEQ_CALLS      [2000] calls in sequential mode (DescribeNamespace)
//!   BENCH_START_SEQ_CALLS [500] calls in sequential mode for StartWorkflowExecution
//!   BENCH_RATE           [1000] requests/s in fixed-rate mode (DescribeNamespace)
//!   BENCH_START_RATE     [50] requests/s in fixed-rate mode for StartWorkflowExecution (the dev
//!                        server's SQLite store takes only ~100-150 starts/s on 2 cores)
//!   BENCH_DURATION       [10] seconds of fixed-rate and max-throughput runs
//!   BENCH_CONCURRENCY    [32] callers in max-throughput mode
//!   BENCH_WORKER_CALLS   [300] worker iterations (poll + completion) in sequential mode
//!   BENCH_WORKER_MAX_CALLS [600] worker iterations in max-throughput mode, shared by
//!                        BENCH_WORKER_CONCURRENCY [8] workers (bounded by count: the queue
//!                        holds exactly the workflows started for it); no fixed-rate mode
//!   BENCH_WORKER_WARMUP  [30] worker iterations before each measurement
//!   BENCH_START_CONCURRENCY [8] starts in flight while the worker's workflows are started
//!   BENCH_CONNS          [2] HTTP/2 connections per target (round-robin)
//!   BENCH_WARMUP         [300] calls before each measurement
//!   BENCH_POLLS          [2000] idle long polls for the memory figure (0 = skip)
//!   BENCH_POLL_CONNS     [4] connections those polls are spread over
//!   BENCH_POLL_RATE      [1000] polls opened per second
//!   BENCH_POLL_SETTLE    [5] seconds between opening the polls and reading RSS (10 000 polls
//!                        on 2 busy cores take longer than 5 s to reach the upstream)
//!   BENCH_NAMESPACE      [payments]
//!   FLOWGATE_BIN         [target/release/flowgate]
//!   BENCH_POLICY_SET     [repo] `repo` = the repo's policies/ plus a bench policy; `bench` = schema + bench policy only
//!   BENCH_OUT            write the markdown report here too
//!   BENCH_KEEP           keep the work dir (flowgate config, logs, decision log)
//!   TEMPORAL_HTTP_ADDR   host:port of Temporal's HTTP API port: with it, the HTTP API section
//!                        (GET /api/v1/namespaces/NS, HTTP/1.1 keep-alive) compares it with
//!                        flowgate's HTTP door
//!   BENCH_HTTP_CALLS     [1000] sequential calls per round in that section; then
//!                        BENCH_HTTP_CONNS [8] connections for BENCH_DURATION / 2

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use support::issuer::Issuer;
use support::loadgen::{self, Conns, Sample, Status, Summary, Workload};
use support::proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Sequential,
    Rate,
    Max,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Rate => "fixed rate",
            Mode::Max => "max throughput",
        }
    }
}

struct Settings {
    temporal: SocketAddr,
    temporal_pid: Option<u32>,
    targets: Vec<String>,
    workloads: Vec<Workload>,
    modes: Vec<Mode>,
    rounds: usize,
    seq_calls: usize,
    start_seq_calls: usize,
    rate: u64,
    start_rate: u64,
    duration: Duration,
    concurrency: usize,
    worker_calls: usize,
    worker_max_calls: usize,
    worker_concurrency: usize,
    worker_warmup: usize,
    start_concurrency: usize,
    conns: usize,
    warmup: usize,
    polls: usize,
    poll_conns: usize,
    poll_settle: Duration,
    namespace: String,
    flowgate_bin: PathBuf,
    policy_set: String,
    out: Option<PathBuf>,
    keep: bool,
}

impl Settings {
    fn seq_calls_for(&self, w: Workload) -> usize {
        match w {
            Workload::DescribeNamespace => self.seq_calls,
            Workload::StartWorkflow => self.start_seq_calls,
            Workload::Worker => self.worker_calls,
        }
    }
    /// StartWorkflowExecution is ~10x slower on the dev server: warm up with fewer calls.
    fn warmup_for(&self, w: Workload) -> usize {
        match w {
            Workload::DescribeNamespace => self.warmup,
            Workload::StartWorkflow => self.warmup.min(100),
            Workload::Worker => self.worker_warmup,
        }
    }
    fn rate_for(&self, w: Workload) -> u64 {
        match w {
            Workload::DescribeNamespace => self.rate,
            Workload::StartWorkflow => self.start_rate,
            Workload::Worker => 0,
        }
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| anyhow::anyhow!("{key}={v} is not a number")),
        _ => Ok(default),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let temporal = std::env::var("TEMPORAL_ADDR")
            .context("TEMPORAL_ADDR (host:port of a Temporal dev server) is required; run scripts/bench.sh")?
            .parse()
            .context("TEMPORAL_ADDR must be ip:port")?;
        let targets = list(&env_or("BENCH_TARGETS", "direct,bare,flowgate"));
        for t in &targets {
            if !["direct", "bare"].contains(&t.as_str()) && flowgate_variant(t).is_none() {
                bail!("unknown target {t} (direct, bare, flowgate, {})", FLOWGATE_VARIANTS.map(|(n, ..)| n).join(", "));
            }
        }
        let workloads = list(&env_or("BENCH_WORKLOADS", "describe,start"))
            .iter()
            .map(|w| match w.as_str() {
                "describe" => Ok(Workload::DescribeNamespace),
                "start" => Ok(Workload::StartWorkflow),
                "worker" => Ok(Workload::Worker),
                _ => bail!("unknown workload {w} (describe, start, worker)"),
            })
            .collect::<anyhow::Result<_>>()?;
        let modes = list(&env_or("BENCH_MODES", "seq,rate,max"))
            .iter()
            .map(|m| match m.as_str() {
                "seq" => Ok(Mode::Sequential),
                "rate" => Ok(Mode::Rate),
                "max" => Ok(Mode::Max),
                _ => bail!("unknown mode {m} (seq, rate, max)"),
            })
            .collect::<anyhow::Result<_>>()?;
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        Ok(Settings {
            temporal,
            temporal_pid: std::env::var("TEMPORAL_PID").ok().and_then(|p| p.trim().parse().ok()),
            targets,
            workloads,
            modes,
            rounds: env_num("BENCH_ROUNDS", 3)?,
            seq_calls: env_num("BENCH_SEQ_CALLS", 2000)?,
            start_seq_calls: env_num("BENCH_START_SEQ_CALLS", 500)?,
            rate: env_num("BENCH_RATE", 1000)?,
            start_rate: env_num("BENCH_START_RATE", 50)?,
            duration: Duration::from_secs_f64(env_num("BENCH_DURATION", 10.0)?),
            concurrency: env_num("BENCH_CONCURRENCY", 32)?,
            worker_calls: env_num("BENCH_WORKER_CALLS", 300)?,
            worker_max_calls: env_num("BENCH_WORKER_MAX_CALLS", 600)?,
            worker_concurrency: env_num("BENCH_WORKER_CONCURRENCY", 8)?,
            worker_warmup: env_num("BENCH_WORKER_WARMUP", 30)?,
            start_concurrency: env_num("BENCH_START_CONCURRENCY", 8)?,
            conns: env_num("BENCH_CONNS", 2)?,
            warmup: env_num("BENCH_WARMUP", 300)?,
            polls: env_num("BENCH_POLLS", 2000)?,
            poll_conns: env_num("BENCH_POLL_CONNS", 4)?,
            poll_settle: Duration::from_secs_f64(env_num("BENCH_POLL_SETTLE", 5.0)?),
            namespace: env_or("BENCH_NAMESPACE", "payments"),
            flowgate_bin: std::env::var_os("FLOWGATE_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("target/release/flowgate")),
            policy_set: env_or("BENCH_POLICY_SET", "repo"),
            out: std::env::var_os("BENCH_OUT").map(PathBuf::from),
            keep: std::env::var_os("BENCH_KEEP").is_some(),
        })
    }
}

/// A child process killed on drop.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {} (pid {})", self.name, self.child.id());
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = StdListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait_for_port(addr: SocketAddr, what: &str, child: &mut ChildGuard, log: Option<&Path>) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !child.alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = log.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    bail!("{what} did not come up on {addr}\n{tail}")
}

/// User + system CPU time of a process so far, in µs (from /proc/PID/stat; includes exited threads).
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1e6 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU µs per call of (the proxy, Temporal, the load generator) over one measurement.
#[derive(Clone, Copy)]
struct CpuSnap([Option<f64>; 3]);

impl CpuSnap {
    fn take(proxy: Option<u32>, temporal: Option<u32>) -> CpuSnap {
        CpuSnap([proxy.and_then(cpu_us), temporal.and_then(cpu_us), cpu_us(std::process::id())])
    }
    fn per_call(self, later: CpuSnap, calls: usize) -> [f64; 3] {
        std::array::from_fn(|i| match (self.0[i], later.0[i]) {
            (Some(a), Some(b)) => (b - a) / calls.max(1) as f64,
            _ => f64::NAN,
        })
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// flowgate setup

const BENCH_POLICY: &str = r#"// Written by benches/gateway.rs: the load generator's principal may do what the benchmark does.
@id("bench")
permit (
  principal == Temporal::Service::"bench:loadgen",
  action in [
    Temporal::Action::"DescribeNamespace",
    Temporal::Action::"StartWorkflowExecution",
    Temporal::Action::"PollActivityTaskQueue",
    Temporal::Action::"PollWorkflowTaskQueue",
    Temporal::Action::"RespondWorkflowTaskCompleted"
  ],
  resource in Temporal::Namespace::"payments"
);

// The worker workload's commands: activities on the benchmark's own queues only.
@id("bench-worker-commands")
permit (
  principal == Temporal::Service::"bench:loadgen",
  action in Temporal::Action::"command",
  resource in Temporal::Namespace::"payments"
)
when { resource is Temporal::TaskQueue && resource.name like "bench-worker-*" };
"#;

fn write_policies(dir: &Path, set: &str, flowgate_bin: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    if set == "repo" && repo.is_dir() {
        for entry in std::fs::read_dir(&repo)? {
            let p = entry?.path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "cedar" || ext == "cedarschema" {
                std::fs::copy(&p, dir.join(p.file_name().unwrap()))?;
            }
        }
    } else if repo.join("schema.cedarschema").is_file() {
        std::fs::copy(repo.join("schema.cedarschema"), dir.join("schema.cedarschema"))?;
    } else {
        let out = Command::new(flowgate_bin).args(["policy", "schema"]).output()?;
        anyhow::ensure!(out.status.success(), "flowgate policy schema failed");
        std::fs::write(dir.join("schema.cedarschema"), out.stdout)?;
    }
    std::fs::write(dir.join("bench.cedar"), BENCH_POLICY)?;
    Ok(())
}

/// flowgate with one setting changed, to measure what it costs: (target name, `[audit]` keys,
/// extra tables).
const FLOWGATE_VARIANTS: [(&str, &str, &str); 8] = [
    // Nothing stamped into requests: the cost of identity stamping is `flowgate` less this.
    ("flowgate-nostamp", "", "[identity]\ntemplate = \"\"\nheader = \"\"\n"),
    ("flowgate-fsync-always", "fsync = \"always\"\n", ""),
    ("flowgate-fsync-never", "fsync = \"never\"\n", ""),
    // The default (`interval`, 1 s) is `flowgate` itself.
    ("flowgate-fsync-interval", "fsync = \"interval\"\n", ""),
    // `[traces]` exporting to an OTLP sink in this process (`{otlp}`), which reads and drops
    // each export: the cost of tracing is these less `flowgate`, at each sampling ratio. The
    // bench client sends no `traceparent`, so the ratio alone decides.
    ("flowgate-traces-0pct", "", "[traces]\nendpoint = \"http://{otlp}/v1/traces\"\nsample_ratio = 0.0\n"),
    ("flowgate-traces-1pct", "", "[traces]\nendpoint = \"http://{otlp}/v1/traces\"\nsample_ratio = 0.01\n"),
    ("flowgate-traces-100pct", "", "[traces]\nendpoint = \"http://{otlp}/v1/traces\"\nsample_ratio = 1.0\n"),
    // Two `[[rate_limits]]` that pick every call and refuse none: the cost of admission.
    (
        "flowgate-ratelimits",
        "",
        "[[rate_limits]]\nname = \"bench-principal\"\nper = \"principal\"\nrate = 1000000.0\nmax_concurrent = 100000\n\
         [[rate_limits]]\nname = \"bench-namespace\"\nper = \"namespace\"\nrate = 1000000.0\n",
    ),
];

/// An OTLP/HTTP endpoint that reads every export and answers 200, for the traced variants.
async fn otlp_sink() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let _ = request.into_body().collect().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    Ok(addr)
}

/// The `[audit]` keys and extra tables of a flowgate target; `None` for other targets.
fn flowgate_variant(name: &str) -> Option<(&'static str, &'static str)> {
    if name == "flowgate" {
        return Some(("", ""));
    }
    FLOWGATE_VARIANTS.iter().find(|(n, ..)| *n == name).map(|&(_, audit, tables)| (audit, tables))
}

async fn start_flowgate(
    s: &Settings,
    work: &Path,
    issuer: &Issuer,
    name: &str,
) -> anyhow::Result<(ChildGuard, SocketAddr, SocketAddr)> {
    let (audit_extra, tables) = flowgate_variant(name).context("not a flowgate target")?;
    let tables = if tables.contains("{otlp}") {
        tables.replace("{otlp}", &otlp_sink().await?.to_string())
    } else {
        tables.to_owned()
    };
    let listen = free_port()?;
    let admin = free_port()?;
    let policies = work.join("policies");
    write_policies(&policies, &s.policy_set, &s.flowgate_bin)?;
    let config = format!(
        r#"[listen]
address = "{listen}"
[admin]
address = "{admin}"
[upstream]
address = "http://{temporal}"
[policy]
dir = "{policies}"
[audit]
path = "{audit}"
[http_api]
{audit_extra}{tables}
{issuers}"#,
        temporal = s.temporal,
        policies = policies.display(),
        audit = work.join(format!("decisions-{name}.jsonl")).display(),
        issuers = issuer.config_table(),
    );
    let config_path = work.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let log_path = work.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&s.flowgate_bin)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("FLOWGATE_LOG", std::env::var("FLOWGATE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", s.flowgate_bin.display()))?;
    let mut guard = ChildGuard { name: "flowgate", child };
    // Readiness: GET /readyz on the admin listener until 200.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{admin}/readyz").parse()?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = client.get(uri.clone()).await
            && resp.status() == 200
        {
            break;
        }
        if !guard.alive() || Instant::now() > until {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("flowgate did not become ready (GET {uri}):\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((guard, listen, admin))
}

// ---------------------------------------------------------------------------------------------
// measurements

struct Target {
    name: String,
    addr: SocketAddr,
    token: Option<String>,
    pid: Option<u32>,
}

#[derive(Default)]
struct Cell {
    rounds: Vec<Summary>,
    statuses: BTreeMap<Status, u64>,
    messages: BTreeMap<Status, String>,
}

type Key = (usize, Mode, String); // (series index, see `all_series`; mode; target)

async fn measure(
    s: &Settings,
    target: &Target,
    workload: Workload,
    mode: Mode,
    round: usize,
) -> anyhow::Result<(Sample, [f64; 3])> {
    let prefix = format!("bench-{}-{}-r{round}-{:?}", std::process::id(), target.name, mode);
    let conns = Conns::connect(target.addr, s.conns, target.token.as_deref(), &s.namespace, prefix).await?;
    // Warm up: connections, upstream pools, token cache, Temporal's caches.
    let warmup = s.warmup_for(workload);
    if warmup > 0 {
        let per = warmup.div_ceil(8);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = conns.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    c.run(workload).await;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
    }
    let before = CpuSnap::take(target.pid, s.temporal_pid);
    let sample = match mode {
        Mode::Sequential => loadgen::sequential(&conns, workload, s.seq_calls_for(workload)).await,
        Mode::Rate => loadgen::fixed_rate(&conns, workload, s.rate_for(workload), s.duration).await,
        Mode::Max => loadgen::max_throughput(&conns, workload, s.concurrency, s.duration).await,
    };
    let cpu = before.per_call(CpuSnap::take(target.pid, s.temporal_pid), sample.latencies.len());
    Ok((sample, cpu))
}

/// The task queue of one worker measurement: its own, so that it holds exactly the workflows
/// started for it.
fn worker_queue(target: &str, mode: Mode, round: usize) -> String {
    format!("bench-worker-{}-{target}-r{round}-{mode:?}", std::process::id())
}

fn worker_calls_for(s: &Settings, mode: Mode) -> usize {
    if mode == Mode::Max { s.worker_max_calls } else { s.worker_calls }
}

/// Starts, directly on Temporal, the workflows every target's worker measurement of this round
/// will take (warm-up included), so that the measured calls are only the worker's.
async fn start_worker_workflows(s: &Settings, targets: &[Target], mode: Mode, round: usize) -> anyhow::Result<()> {
    let prefix = format!("bench-{}-wf", std::process::id());
    let direct = Conns::connect(s.temporal, s.conns, None, &s.namespace, prefix).await?;
    let started = Instant::now();
    let per_queue = s.worker_warmup + worker_calls_for(s, mode);
    for t in targets {
        let queue = worker_queue(&t.name, mode, round);
        let statuses = loadgen::start_workflows(&direct, &queue, per_queue, s.start_concurrency).await;
        let ok = statuses.get("OK").copied().unwrap_or(0) as usize;
        anyhow::ensure!(ok == per_queue, "starting workflows on {queue}: {}", fmt_statuses(&statuses));
    }
    eprintln!(
        "round {} worker {}: started {} workflows on {} queues directly on Temporal in {:.1} s",
        round + 1,
        mode.name(),
        per_queue * targets.len(),
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    // Let Temporal hand the new workflow tasks to matching before anything is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// One worker measurement: polls and completions through `target` on the queue the round's
/// workflows were started on. CPU is per iteration (one poll and one completion).
async fn measure_worker(
    s: &Settings,
    target: &Target,
    mode: Mode,
    round: usize,
) -> anyhow::Result<(loadgen::WorkerSample, [f64; 3])> {
    let queue = worker_queue(&target.name, mode, round);
    let prefix = format!("bench-{}-{}-r{round}-{:?}", std::process::id(), target.name, mode);
    let conns = Conns::connect(target.addr, s.conns, target.token.as_deref(), &s.namespace, prefix).await?;
    if s.worker_warmup > 0 {
        let warm = loadgen::worker_concurrent(&conns, &queue, 4, s.worker_warmup).await;
        if warm.complete.statuses.keys().any(|k| *k != "OK") || warm.poll.statuses.keys().any(|k| *k != "OK") {
            eprintln!(
                "  warm-up {}: polls [{}], completions [{}] {:?}",
                target.name,
                fmt_statuses(&warm.poll.statuses),
                fmt_statuses(&warm.complete.statuses),
                warm.complete.messages
            );
        }
    }
    let before = CpuSnap::take(target.pid, s.temporal_pid);
    let sample = match mode {
        Mode::Max => loadgen::worker_concurrent(&conns, &queue, s.worker_concurrency, s.worker_max_calls).await,
        _ => loadgen::worker_sequential(&conns, &queue, s.worker_calls).await,
    };
    let cpu = before.per_call(CpuSnap::take(target.pid, s.temporal_pid), sample.poll.latencies.len());
    Ok((sample, cpu))
}

/// The rows a workload has in the report: the worker's are its polls, its completions and its
/// whole iterations.
const WORKER_POLL: &str = "PollWorkflowTaskQueue (worker)";
const WORKER_COMPLETE: &str = "RespondWorkflowTaskCompleted (worker)";
const WORKER_ITERATION: &str = "worker iteration (poll + completion)";

fn series_of(w: Workload) -> &'static [&'static str] {
    match w {
        Workload::DescribeNamespace => &["DescribeNamespace"],
        Workload::StartWorkflow => &["StartWorkflowExecution"],
        Workload::Worker => &[WORKER_POLL, WORKER_COMPLETE, WORKER_ITERATION],
    }
}

fn all_series(s: &Settings) -> Vec<&'static str> {
    s.workloads.iter().flat_map(|w| series_of(*w).iter().copied()).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn med(cell: &Cell, f: impl Fn(&Summary) -> f64) -> f64 {
    median(cell.rounds.iter().map(f).collect())
}

fn fmt_statuses(st: &BTreeMap<Status, u64>) -> String {
    st.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// Idle long polls held open through a target; returns (rss before, rss during, polls still
/// open when measured, statuses of polls that ended early).
async fn poll_memory(s: &Settings, target: &Target) -> anyhow::Result<(u64, u64, usize, BTreeMap<Status, u64>)> {
    let pid = target.pid.context("no pid")?;
    let conns = Conns::connect(target.addr, s.poll_conns, target.token.as_deref(), &s.namespace, "poll".into()).await?;
    // Settle, then measure the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = vm_rss_kib(pid).context("VmRSS")?;
    let queue = format!("bench-idle-{}", uuid::Uuid::now_v7());
    let body = proto::poll_activity(&s.namespace, &queue);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(s.polls);
    // Opened at BENCH_POLL_RATE per second: all at once, the dev server refuses thousands of them
    // ("namespace rate limit exceeded") whatever its rps settings.
    let rate: f64 = std::env::var("BENCH_POLL_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000.0);
    let opening = Instant::now();
    for i in 0..s.polls {
        let due = opening + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (c, b, tx) = (conns.clone(), body.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let (st, msg) = c.call("PollActivityTaskQueue", b, Some("70S")).await;
            let _ = tx.send((st, msg));
        }));
    }
    drop(tx);
    tokio::time::sleep(s.poll_settle).await;
    let during = vm_rss_kib(pid).context("VmRSS")?;
    let mut ended = BTreeMap::new();
    while let Ok((st, msg)) = rx.try_recv() {
        *ended.entry(st).or_default() += 1;
        if let Some(m) = msg {
            eprintln!("  poll ended early: {st}: {m}");
        }
    }
    let open = s.polls - ended.values().sum::<u64>() as usize;
    for t in &tasks {
        t.abort(); // drops the response future: RST_STREAM(CANCEL) to the target
    }
    drop(conns);
    Ok((before, during, open, ended))
}

/// One target's idle-poll memory figure: name, RSS before and during (KiB), polls open, statuses.
type MemoryRow = (String, u64, u64, usize, BTreeMap<Status, u64>);

/// A report row: mode, label, metric, target text, bound (NaN: context, no bound), whether it
/// is a ratio (higher is better) rather than a difference.
type TargetRow<'a> = (Mode, &'a str, &'a dyn Fn(&Summary) -> f64, &'a str, f64, bool);

/// What each series is compared on. The worker's target (issue 10) is ≤ 20 µs p50 added per
/// call, for the poll and for the completion.
fn target_rows(series: &str) -> Vec<TargetRow<'static>> {
    match series {
        WORKER_POLL | WORKER_COMPLETE => vec![
            (Mode::Sequential, "p50 sequential (µs)", &|x| x.p50, "≤ +20 µs", 20.0, false),
            (Mode::Sequential, "p99 sequential (µs)", &|x| x.p99, "(context)", f64::NAN, false),
            (Mode::Max, "p50 at max throughput (µs)", &|x| x.p50, "(context)", f64::NAN, false),
        ],
        WORKER_ITERATION => vec![
            (Mode::Sequential, "iterations/s sequential", &|x| x.rps, "(context)", f64::NAN, true),
            (Mode::Max, "iterations/s at max throughput", &|x| x.rps, "(context)", f64::NAN, true),
            (
                Mode::Sequential,
                "proxy CPU per iteration, sequential (µs)",
                &|x| x.cpu_proxy,
                "(context)",
                f64::NAN,
                false,
            ),
            (
                Mode::Max,
                "proxy CPU per iteration at max throughput (µs)",
                &|x| x.cpu_proxy,
                "(context)",
                f64::NAN,
                false,
            ),
        ],
        _ => vec![
            (Mode::Sequential, "p50 sequential (µs)", &|x| x.p50, "≤ +50 µs", 50.0, false),
            (Mode::Rate, "p99 at fixed rate (µs)", &|x| x.p99, "≤ +250 µs", 250.0, false),
            (Mode::Max, "max throughput (rps)", &|x| x.rps, "≥ 85 % of bare", 0.85, true),
            (Mode::Max, "proxy CPU per call at max throughput (µs)", &|x| x.cpu_proxy, "(context)", f64::NAN, false),
        ],
    }
}

fn fmt_cpu(v: f64) -> String {
    if v.is_nan() { "–".to_string() } else { format!("{v:.0}") }
}

fn report(s: &Settings, cells: &BTreeMap<Key, Cell>, memory: &[MemoryRow]) -> String {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Machine: {nproc} CPUs ({cpu}), shared with other work. {} rounds, targets interleaved (order rotated each round); \
         medians across rounds. Sequential: {} DescribeNamespace / {} StartWorkflowExecution calls; fixed rate: open-loop at {} rps for DescribeNamespace and {} rps for StartWorkflowExecution, {:.0} s (latency from the intended send time); \
         max throughput: {} callers for {:.0} s. {} HTTP/2 connection(s) per target, {} warm-up calls (at most 100 for StartWorkflowExecution) before each run. Latencies in µs.\n",
        s.rounds,
        s.seq_calls,
        s.start_seq_calls,
        s.rate,
        s.start_rate,
        s.duration.as_secs_f64(),
        s.concurrency,
        s.duration.as_secs_f64(),
        s.conns,
        s.warmup
    );
    if s.workloads.contains(&Workload::Worker) {
        let _ = writeln!(
            out,
            "Worker: one iteration is PollWorkflowTaskQueue on the measurement's own task queue, then RespondWorkflowTaskCompleted with the \
             task token the target handed out and three commands (ScheduleActivityTask on the same queue, RecordMarker, CompleteWorkflowExecution); \
             the workflows were started directly on Temporal before the measurement. Sequential: {} iterations by one worker; max throughput: {} iterations \
             shared by {} workers; {} warm-up iterations before each. Poll and completion latencies are per call; the iteration row's CPU is per iteration (two calls).\n",
            s.worker_calls, s.worker_max_calls, s.worker_concurrency, s.worker_warmup
        );
    }
    let series = all_series(s);
    let _ = writeln!(
        out,
        "| workload | mode | target | p50 | p90 | p99 | max | rps | CPU µs/call: proxy · Temporal | gRPC statuses (all rounds) |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    for (wi, w) in series.iter().enumerate() {
        for m in &s.modes {
            for t in &s.targets {
                let Some(c) = cells.get(&(wi, *m, t.clone())) else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} · {} | {} |",
                    w,
                    m.name(),
                    t,
                    med(c, |x| x.p50),
                    med(c, |x| x.p90),
                    med(c, |x| x.p99),
                    med(c, |x| x.max),
                    med(c, |x| x.rps),
                    fmt_cpu(med(c, |x| x.cpu_proxy)),
                    fmt_cpu(med(c, |x| x.cpu_temporal)),
                    fmt_statuses(&c.statuses)
                );
            }
        }
    }
    // Comparisons against the targets the issue sets.
    let _ = writeln!(out, "\n### flowgate vs bare proxy (and bare vs direct)\n");
    let _ = writeln!(out, "| workload | metric | direct | bare | flowgate | flowgate − bare | target | met |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|---|");
    for (wi, w) in series.iter().enumerate() {
        let get = |m: Mode, t: &str, f: &dyn Fn(&Summary) -> f64| {
            cells.get(&(wi, m, t.to_string())).map(|c| med(c, f)).unwrap_or(f64::NAN)
        };
        for (m, label, f, goal, limit, ratio) in target_rows(w) {
            if !s.modes.contains(&m) || !cells.keys().any(|(i, mode, _)| *i == wi && *mode == m) {
                continue;
            }
            let (d, b, g) = (get(m, "direct", f), get(m, "bare", f), get(m, "flowgate", f));
            let (diff, met) = if ratio {
                let r = g / b;
                (
                    format!("{:.1} %", r * 100.0),
                    if limit.is_nan() {
                        ""
                    } else if r.is_nan() {
                        "–"
                    } else if r >= limit {
                        "yes"
                    } else {
                        "no"
                    },
                )
            } else {
                let dd = g - b;
                (
                    format!("{dd:+.0}"),
                    if limit.is_nan() {
                        ""
                    } else if dd.is_nan() {
                        "–"
                    } else if dd <= limit {
                        "yes"
                    } else {
                        "no"
                    },
                )
            };
            let _ = writeln!(
                out,
                "| {w} | {label} | {} | {} | {} | {diff} | {goal} | {met} |",
                fmt_cpu(d),
                fmt_cpu(b),
                fmt_cpu(g)
            );
        }
    }
    if s.rounds > 1 {
        let _ = writeln!(out, "\n### Per round (p50 / p99 µs, rps)\n");
        let _ = writeln!(out, "| workload | mode | target | rounds |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (wi, w) in series.iter().enumerate() {
            for m in &s.modes {
                for t in &s.targets {
                    let Some(c) = cells.get(&(wi, *m, t.clone())) else { continue };
                    let rounds: Vec<String> =
                        c.rounds.iter().map(|r| format!("{:.0} / {:.0}, {:.0}", r.p50, r.p99, r.rps)).collect();
                    let _ = writeln!(out, "| {w} | {} | {} | {} |", m.name(), t, rounds.join(" · "));
                }
            }
        }
    }
    // Generator health at fixed rate.
    let mut lags = Vec::new();
    for ((wi, m, t), c) in cells {
        if *m == Mode::Rate {
            lags.push(format!(
                "{} {}: p50 {:.0} µs, p99 {:.0} µs",
                series[*wi],
                t,
                med(c, |x| x.lag_p50),
                med(c, |x| x.lag_p99)
            ));
        }
    }
    if !lags.is_empty() {
        let _ = writeln!(
            out,
            "\nLoad generator send lag at fixed rate (included in the latencies above): {}.",
            lags.join("; ")
        );
    }
    let msgs: Vec<String> =
        cells.iter().flat_map(|((_, _, t), c)| c.messages.iter().map(move |(k, v)| format!("{t} {k}: {v}"))).collect();
    if !msgs.is_empty() {
        let _ = writeln!(out, "\nSample error messages:");
        for m in msgs.iter().take(12) {
            let _ = writeln!(out, "- {m}");
        }
    }
    if !memory.is_empty() {
        let _ = writeln!(
            out,
            "\n### Memory with {} idle long polls (PollActivityTaskQueue, grpc-timeout 70S, {} connections)\n",
            s.polls, s.poll_conns
        );
        let _ = writeln!(out, "| target | RSS before | RSS with polls open | per poll | polls open | ended early |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
        for (t, before, during, open, ended) in memory {
            let per = (*during as f64 - *before as f64) * 1024.0 / (*open).max(1) as f64;
            let _ = writeln!(
                out,
                "| {t} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {open} | {} |",
                *before as f64 / 1024.0,
                *during as f64 / 1024.0,
                per / 1024.0,
                if ended.is_empty() { "none".to_string() } else { fmt_statuses(ended) }
            );
        }
    }
    out
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("flowgate-bench-").tempdir()?;
    let work_path = work.path().to_path_buf();
    eprintln!("work dir: {}", work_path.display());
    let mut targets = Vec::new();
    let mut _guards = Vec::new();
    for name in &s.targets {
        match name.as_str() {
            "direct" => targets.push(Target { name: name.clone(), addr: s.temporal, token: None, pid: None }),
            "bare" => {
                let addr = free_port()?;
                let log_path = work_path.join("bare.log");
                let child = Command::new(std::env::current_exe()?)
                    .arg("--bare-proxy")
                    .arg(addr.to_string())
                    .arg(s.temporal.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log_path)?)
                    .spawn()?;
                let mut guard = ChildGuard { name: "bare proxy", child };
                wait_for_port(addr, "bare proxy", &mut guard, Some(&log_path)).await?;
                targets.push(Target { name: name.clone(), addr, token: None, pid: Some(guard.pid()) });
                _guards.push(guard);
            }
            name if flowgate_variant(name).is_some() => {
                if !s.flowgate_bin.is_file() {
                    bail!(
                        "{} not found: build it (cargo build --release) or set BENCH_TARGETS=direct,bare",
                        s.flowgate_bin.display()
                    );
                }
                let issuer = Issuer::start().await?;
                let token = issuer.token()?;
                let (guard, addr, admin) = start_flowgate(&s, &work_path, &issuer, name).await?;
                eprintln!("{name} ready on {addr} (admin {admin}, pid {})", guard.pid());
                targets.push(Target { name: name.to_owned(), addr, token: Some(token), pid: Some(guard.pid()) });
                _guards.push(guard);
            }
            _ => unreachable!(),
        }
    }

    let mut cells: BTreeMap<Key, Cell> = BTreeMap::new();
    let total_start = Instant::now();
    let series = all_series(&s);
    let mut add = |series_index: usize, round: usize, m: Mode, t: &Target, mut sample: Sample, cpu: [f64; 3]| {
        let mut sum = sample.summary();
        [sum.cpu_proxy, sum.cpu_temporal, sum.cpu_loadgen] = cpu;
        eprintln!(
            "round {} {:<22} {:<14} {:<8} p50 {:>7.0} p90 {:>7.0} p99 {:>7.0} max {:>8.0} µs  {:>7.0} rps  cpu/call proxy {:>5.0} temporal {:>5.0} µs  [{}]",
            round + 1,
            series[series_index],
            m.name(),
            t.name,
            sum.p50,
            sum.p90,
            sum.p99,
            sum.max,
            sum.rps,
            sum.cpu_proxy,
            sum.cpu_temporal,
            fmt_statuses(&sample.statuses)
        );
        let cell = cells.entry((series_index, m, t.name.clone())).or_default();
        cell.rounds.push(sum);
        for (st, n) in &sample.statuses {
            *cell.statuses.entry(st).or_default() += n;
        }
        for (st, msg) in std::mem::take(&mut sample.messages) {
            cell.messages.entry(st).or_insert(msg);
        }
    };
    for round in 0..s.rounds {
        let mut first_series = 0;
        for &w in &s.workloads {
            let si = first_series;
            first_series += series_of(w).len();
            for &m in &s.modes {
                if w == Workload::Worker {
                    if m == Mode::Rate {
                        continue; // a worker is a closed loop of pollers
                    }
                    start_worker_workflows(&s, &targets, m, round).await?;
                }
                for k in 0..targets.len() {
                    let t = &targets[(k + round) % targets.len()];
                    if w == Workload::Worker {
                        let (sample, cpu) = measure_worker(&s, t, m, round).await?;
                        let no_cpu = [f64::NAN; 3];
                        add(si, round, m, t, sample.poll, no_cpu);
                        add(si + 1, round, m, t, sample.complete, no_cpu);
                        add(si + 2, round, m, t, sample.iteration, cpu);
                    } else {
                        let (sample, cpu) = measure(&s, t, w, m, round).await?;
                        add(si, round, m, t, sample, cpu);
                    }
                }
            }
        }
    }
    eprintln!("measurements took {:.0} s", total_start.elapsed().as_secs_f64());

    let mut memory = Vec::new();
    if s.polls > 0 {
        for t in targets.iter().filter(|t| t.pid.is_some()) {
            let (before, during, open, ended) = poll_memory(&s, t).await?;
            eprintln!("memory {}: {before} KiB -> {during} KiB with {open} polls open", t.name);
            memory.push((t.name.clone(), before, during, open, ended));
        }
    }

    let mut text = report(&s, &cells, &memory);
    if let Some(http) = std::env::var("TEMPORAL_HTTP_ADDR").ok().filter(|a| !a.is_empty()) {
        let http: SocketAddr = http.parse().context("TEMPORAL_HTTP_ADDR must be ip:port")?;
        text.push_str(&http_api_section(&s, http, &targets).await?);
    }
    println!("{text}");
    if let Some(path) = &s.out {
        std::fs::write(path, &text)?;
    }
    if s.keep {
        let kept = work.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

/// The HTTP API: Temporal's own HTTP port beside each flowgate target's HTTP door, rounds
/// alternating; medians of the rounds.
async fn http_api_section(s: &Settings, temporal_http: SocketAddr, targets: &[Target]) -> anyhow::Result<String> {
    use support::http_api;
    let calls: usize = env_num("BENCH_HTTP_CALLS", 1000)?;
    let conns: usize = env_num("BENCH_HTTP_CONNS", 8)?;
    let mut http_targets = vec![("direct (Temporal's HTTP port)".to_owned(), temporal_http, None, None)];
    for t in targets.iter().filter(|t| t.token.is_some()) {
        http_targets.push((format!("{} (HTTP door)", t.name), t.addr, t.token.clone(), t.pid));
    }
    /// One target's rounds.
    #[derive(Default)]
    struct Rounds {
        p50: Vec<f64>,
        p99: Vec<f64>,
        rps: Vec<f64>,
        cpu: Vec<f64>,
        statuses: BTreeMap<u16, u64>,
    }
    let mut rows: Vec<Rounds> = http_targets.iter().map(|_| Rounds::default()).collect();
    for _ in 0..3 {
        let _ = http_api::sequential(temporal_http, None, &s.namespace, 50).await?;
    }
    for round in 0..s.rounds {
        for k in 0..http_targets.len() {
            let i = (k + round) % http_targets.len();
            let (name, addr, token, pid) = &http_targets[i];
            let _ = http_api::sequential(*addr, token.as_deref(), &s.namespace, calls / 10).await?;
            let mut seq = http_api::sequential(*addr, token.as_deref(), &s.namespace, calls).await?;
            let cpu_before = pid.and_then(cpu_us);
            let max = http_api::throughput(*addr, token.as_deref(), &s.namespace, conns, s.duration / 2).await?;
            let cpu = match (cpu_before, pid.and_then(cpu_us)) {
                (Some(a), Some(b)) => (b - a) / max.latencies.len().max(1) as f64,
                _ => f64::NAN,
            };
            seq.latencies.sort_unstable();
            let (p50, p99) = (loadgen::percentile(&seq.latencies, 0.5), loadgen::percentile(&seq.latencies, 0.99));
            let rps = max.latencies.len() as f64 / max.elapsed.as_secs_f64();
            eprintln!(
                "round {} http {name:<32} p50 {p50:>6.0} p99 {p99:>6.0} µs  {rps:>6.0} rps ({conns} conns)  cpu/call {cpu:>5.0} µs  {:?}",
                round + 1,
                seq.statuses
            );
            let row = &mut rows[i];
            row.p50.push(p50);
            row.p99.push(p99);
            row.rps.push(rps);
            row.cpu.push(cpu);
            for (status, n) in seq.statuses.into_iter().chain(max.statuses) {
                *row.statuses.entry(status).or_default() += n;
            }
        }
    }
    let mut out = format!(
        "\n### HTTP API: GET /api/v1/namespaces/{ns} (DescribeNamespace), HTTP/1.1 keep-alive\n\n\
         {calls} sequential calls, then {conns} connections for {secs:.0} s; medians of {rounds} rounds.\n\n\
         | target | p50 µs | p99 µs | rps ({conns} conns) | proxy CPU µs/call | HTTP statuses |\n|---|---|---|---|---|---|\n",
        ns = s.namespace,
        secs = (s.duration / 2).as_secs_f64(),
        rounds = s.rounds,
    );
    for ((name, ..), Rounds { p50, p99, rps, cpu, statuses }) in http_targets.iter().zip(rows) {
        let statuses = statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {statuses} |",
            median(p50),
            median(p99),
            median(rps),
            median(cpu)
        );
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--bare-proxy") {
        let listen = args.get(1).context("--bare-proxy LISTEN UPSTREAM")?.parse()?;
        let upstream = args.get(2).context("--bare-proxy LISTEN UPSTREAM")?.parse()?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return rt.block_on(support::bare_proxy::serve(listen, upstream));
    }
    let settings = Settings::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(settings))
}
