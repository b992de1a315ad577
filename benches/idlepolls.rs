//! Heap held per idle long poll (issue 11), counted exactly rather than read from RSS.
//!
//! `cargo bench --bench idlepolls`. One process, a counting global allocator, and three targets
//! in front of one fake Temporal that holds every `Poll*` call open (and answers everything
//! else at once): `direct` (the fake itself), `bare` (`support::bare_proxy`, the hyper
//! pass-through) and `flowgate` (`flowgate::run` with a policy that permits the polls). For each
//! target, BENCH_POLLS polls are opened over BENCH_POLL_CONNS h2c connections; once the fake
//! holds all of them the live heap is read, then the polls are answered and the connections
//! closed. The heap a proxy holds per poll is its target's figure less `direct`'s (the load
//! generator's and the fake's own streams are in every figure alike). Targets are measured
//! BENCH_ROUNDS times in rotated order; medians are reported.
//!
//! RSS in front of the real dev server (`scripts/bench.sh`, BENCH_POLLS) also counts allocator
//! slack and Temporal's answers; this one tells which allocation a change removed, and
//! `heaptrack` over this binary (`BENCH_TARGETS=flowgate`) tells where each byte comes from.
//!
//! Knobs: BENCH_POLLS [2000]; BENCH_POLL_CONNS [4]; BENCH_ROUNDS [3]; BENCH_TARGETS
//! [direct,bare,flowgate].

#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use support::issuer::Issuer;
use support::loadgen::Conns;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const POLICY: &str = r#"// Written by benches/idlepolls.rs: the bench principal may poll.
@id("bench-idlepolls")
permit (
  principal == Temporal::Service::"bench:loadgen",
  action in [Temporal::Action::"DescribeNamespace", Temporal::Action::"PollActivityTaskQueue"],
  resource in Temporal::Namespace::"payments"
);
"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The fake Temporal: polls are held until `release` is notified, everything else is answered
/// `grpc-status: 0` at once. `held` counts the polls it holds.
struct Upstream {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

async fn start_upstream() -> anyhow::Result<Upstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let held = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (h, r) = (held.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            let (held, release) = (h.clone(), r.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (held, release) = (held.clone(), release.clone());
                    async move {
                        let poll = request.uri().path().contains("/Poll");
                        let _ = request.into_body().collect().await;
                        if poll {
                            let released = release.notified();
                            held.fetch_add(1, Ordering::SeqCst);
                            released.await;
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0")
                            .body(Empty::<Bytes>::new())
                            .expect("static response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_streams(1_000_000).timer(TokioTimer::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(Upstream { addr, held, release })
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    token: Option<String>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// Waits until `cond` holds (or 30 s pass); then lets the runtimes go quiet.
async fn until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Bytes live per poll with `polls` polls open through `target`.
async fn measure(target: &Target, upstream: &Upstream, polls: usize, connections: usize) -> anyhow::Result<f64> {
    let conns = Conns::connect(target.addr, connections, target.token.as_deref(), "payments", "idle".into()).await?;
    // One call first on every connection: the connections (and flowgate's upstream connection,
    // the token's session, the decision) exist before the baseline.
    for _ in 0..connections * 2 {
        let (status, message) =
            conns.call("DescribeNamespace", support::proto::describe_namespace("payments"), None).await;
        anyhow::ensure!(status == "OK", "{}: warm-up call: {status} {message:?}", target.name);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = live();
    let body = support::proto::poll_activity("payments", "bench-idle");
    let tasks: Vec<_> = (0..polls)
        .map(|_| {
            let (conns, body) = (conns.clone(), body.clone());
            tokio::spawn(async move { conns.call("PollActivityTaskQueue", body, Some("70S")).await })
        })
        .collect();
    until("the polls to reach the upstream", || upstream.held.load(Ordering::SeqCst) >= polls).await?;
    let during = live();
    upstream.release.notify_waiters();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        let (status, message) = task.await?;
        *statuses.entry(format!("{status} {}", message.unwrap_or_default())).or_default() += 1;
    }
    anyhow::ensure!(statuses.len() == 1 && statuses.contains_key("OK "), "{}: polls ended {statuses:?}", target.name);
    drop(conns);
    Ok((during - before) as f64 / polls as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let polls = env("BENCH_POLLS", 2000);
    let connections = env("BENCH_POLL_CONNS", 4);
    let rounds = env("BENCH_ROUNDS", 3);
    let wanted = std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "direct,bare,flowgate".into());
    let wanted: Vec<&str> = wanted.split(',').collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let upstream = runtime.block_on(start_upstream())?;
    let mut targets = Vec::new();
    if wanted.contains(&"direct") {
        targets.push(Target { name: "direct", addr: upstream.addr, token: None });
    }
    if wanted.contains(&"bare") {
        let addr = free_addr()?;
        runtime.spawn(support::bare_proxy::serve(addr, upstream.addr));
        targets.push(Target { name: "bare", addr, token: None });
    }
    // flowgate on its own runtime, as in `flowgate serve`.
    let gateway_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let work = tempfile::tempdir()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut gateway = None;
    let issuer = runtime.block_on(Issuer::start())?;
    if wanted.contains(&"flowgate") {
        let policies = work.path().join("policies");
        std::fs::create_dir_all(&policies)?;
        std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema())?;
        std::fs::write(policies.join("bench.cedar"), POLICY)?;
        let config = flowgate::Config::parse(&format!(
            r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "http://{upstream}"
[policy]
dir = "{policies}"
[audit]
path = "{audit}"
{issuers}"#,
            upstream = upstream.addr,
            policies = policies.display(),
            audit = work.path().join("decisions.jsonl").display(),
            issuers = issuer.config_table(),
        ))?;
        let listener = gateway_runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        gateway = Some(gateway_runtime.spawn(flowgate::run(
            flowgate::Listeners { gateway: listener, admin: None },
            config,
            async move {
                let _ = stopped.await;
            },
        )));
        targets.push(Target { name: "flowgate", addr, token: Some(issuer.token()?) });
    }
    // Let the bare proxy bind.
    std::thread::sleep(Duration::from_millis(200));

    println!("idle long polls: {polls} PollActivityTaskQueue over {connections} h2c connections, {rounds} rounds");
    println!("{:<9} {:>6} {:>14}", "target", "round", "bytes per poll");
    let mut figures: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for i in 0..targets.len() {
            let target = &targets[(i + round) % targets.len()];
            let per_poll = runtime.block_on(measure(target, &upstream, polls, connections))?;
            println!("{:<9} {round:>6} {per_poll:>14.0}", target.name);
            figures.entry(target.name).or_default().push(per_poll);
        }
    }
    let medians: BTreeMap<&str, f64> = figures.into_iter().map(|(name, values)| (name, median(values))).collect();
    println!("medians over {rounds} rounds (bytes of heap per poll):");
    let direct = medians.get("direct").copied();
    for (name, bytes) in &medians {
        match direct {
            Some(direct) if *name != "direct" => {
                println!("  {name:<9} {bytes:>8.0}   held by the proxy itself: {:>8.0}", bytes - direct)
            }
            _ => println!("  {name:<9} {bytes:>8.0}"),
        }
    }
    let _ = stop.send(());
    if let Some(gateway) = gateway {
        gateway_runtime.block_on(gateway)??;
    }
    Ok(())
}
