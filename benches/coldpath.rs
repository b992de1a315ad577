//! The cold path (issue 11): what a caller with a token flowgate has not seen yet costs, next to
//! one whose token is cached.
//!
//! `cargo bench --bench coldpath`. Two parts:
//!
//! 1. End to end, in one process: `flowgate::run` (on its own 2-thread runtime) in front of an
//!    instant fake Temporal (an h2c server that answers every call trailers-only with
//!    `grpc-status: 0`), an OIDC issuer whose JWKS is served in process, and BENCH_CONCURRENCY
//!    callers on h2c calling DescribeNamespace (allowed by a bench policy). Two modes,
//!    alternated round by round (the order flips every round): `warm`, one token on every call,
//!    and `cold`, a distinct valid token on every call, all signed before measuring. Every
//!    call's gRPC status is checked. Reported: rps and p50/p99 per mode (medians over rounds)
//!    and the cold/warm ratio (the issue's target: cold ≥ 60 % of warm).
//! 2. In process, ns per new token: signature verification alone (the issuer's key parsed once
//!    from its JWKS, as `Authenticator::verify` checks it; `jsonwebtoken::decode` for reference)
//!    against everything else a new token costs: `Authenticator::authenticate` of a new token
//!    less the signature, its parts (claims into tags, the principal and its Cedar entities, the
//!    token-cache insert), and the first decision (decisions are cached per principal, so a new
//!    token asks Cedar once).
//!
//! Knobs: BENCH_PART [all] `e2e` | `micro`; BENCH_CALLS [8000] calls per mode and round;
//! BENCH_ROUNDS [5]; BENCH_CONCURRENCY [8]; BENCH_CONNECTIONS [2] h2c connections the callers
//! share; BENCH_POLICY_SET [repo] `repo` = the repo's policies/ plus the bench policy, `bench` =
//! schema and bench policy only; BENCH_TOKEN_CACHE [100000] `token_cache.max_entries`;
//! BENCH_MICRO_TOKENS [2000] new tokens per in-process sample; BENCH_ALG [ES256] or RS256, what
//! the issuer signs with (GitHub Actions, GitLab and Okta sign RS256); BENCH_MODES [warm,cold]
//! the modes measured (one alone, to profile it: the gateway's threads are named `flowgate`).

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value};
use support::issuer::Issuer;
use support::loadgen::{Conns, percentile};
use tokio::net::TcpListener;

const BENCH_POLICY: &str = r#"// Written by benches/coldpath.rs: the bench principal may describe its namespace.
@id("bench-coldpath")
permit (
  principal == Temporal::Service::"bench:loadgen",
  action == Temporal::Action::"DescribeNamespace",
  resource in Temporal::Namespace::"payments"
);
"#;

const DESCRIBE: &str = "/temporal.api.workflowservice.v1.WorkflowService/DescribeNamespace";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let part = std::env::var("BENCH_PART").unwrap_or_else(|_| "all".into());
    let work = tempfile::tempdir()?;
    let policies = work.path().join("policies");
    write_policies(&policies, &std::env::var("BENCH_POLICY_SET").unwrap_or_else(|_| "repo".into()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let algorithm = match std::env::var("BENCH_ALG").as_deref() {
        Ok("RS256") => jsonwebtoken::Algorithm::RS256,
        Ok("ES256") | Err(_) => jsonwebtoken::Algorithm::ES256,
        Ok(other) => anyhow::bail!("BENCH_ALG is ES256 or RS256, not `{other}`"),
    };
    let issuer = runtime.block_on(Issuer::start_with(algorithm))?;
    println!("tokens signed {algorithm:?}");
    if part == "all" || part == "e2e" {
        end_to_end(&runtime, &issuer, work.path(), &policies)?;
    }
    if part == "all" || part == "micro" {
        micro(&runtime, &issuer, &policies)?;
    }
    Ok(())
}

fn write_policies(dir: &Path, set: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    if set == "repo" {
        for entry in std::fs::read_dir(&repo)? {
            let path = entry?.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("cedar" | "cedarschema")) {
                std::fs::copy(&path, dir.join(path.file_name().expect("a file")))?;
            }
        }
    } else {
        std::fs::write(dir.join("schema.cedarschema"), flowgate::authz::generated_schema())?;
    }
    std::fs::write(dir.join("bench-coldpath.cedar"), BENCH_POLICY)?;
    Ok(())
}

/// `count` distinct valid tokens (each its own `jti`), as `authorization` header values.
fn sign(issuer: &Issuer, prefix: &str, count: usize) -> anyhow::Result<Vec<HeaderValue>> {
    (0..count)
        .map(|i| {
            let token = issuer.token_with_jti(Some(&format!("{prefix}-{i}")))?;
            Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
        })
        .collect()
}

fn config_text(work: &Path, policies: &Path, upstream: SocketAddr, issuer: &Issuer) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "http://{upstream}"
[policy]
dir = "{policies}"
[audit]
path = "{audit}"
[token_cache]
max_entries = {cache}
{issuers}"#,
        policies = policies.display(),
        audit = work.join("decisions.jsonl").display(),
        cache = env("BENCH_TOKEN_CACHE", 100_000),
        issuers = issuer.config_table(),
    )
}

// ---------------------------------------------------------------------------------------------
// end to end

/// The instant upstream: every call is answered trailers-only, `grpc-status: 0`, once its
/// request body has been read.
async fn start_upstream() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    let _ = request.into_body().collect().await;
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Empty::<Bytes>::new())
                        .expect("static response");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
    /// CPU time of flowgate's threads (its runtime's and the decision log's) per call.
    cpu_us: f64,
}

/// CPU time (user + system) of this process's threads whose name starts with `flowgate`: the
/// gateway's runtime (named so in `end_to_end`) and the decision log's writer.
fn flowgate_cpu() -> Duration {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // pid (comm) state ppid ... utime stime: fields 14 and 15, counted after the comm.
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        if !head.split_once('(').is_some_and(|(_, comm)| comm.starts_with("flowgate")) {
            continue;
        }
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        total += (tick(11) + tick(12)) / ticks;
    }
    Duration::from_secs_f64(total)
}

/// `tokens.len()` calls by `concurrency` callers, each call with the next token of `tokens`.
async fn drive(conns: &Arc<Conns>, tokens: Arc<Vec<HeaderValue>>, concurrency: usize) -> anyhow::Result<Round> {
    let body = support::proto::describe_namespace("payments");
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = flowgate_cpu();
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (conns, tokens, next, body) = (conns.clone(), tokens.clone(), next.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(token) = tokens.get(i) else { break };
                    let t0 = Instant::now();
                    let (status, message, _) =
                        conns.call_as(Some(token), "DescribeNamespace", body.clone(), None).await;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                    if status != "OK" {
                        *failures.entry(format!("{status}: {}", message.unwrap_or_default())).or_default() += 1;
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tokens.len());
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for caller in callers {
        let (l, f) = caller.await?;
        latencies.extend(l);
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(failures.is_empty(), "calls failed: {failures:?}");
    latencies.sort_unstable();
    Ok(Round {
        rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        cpu_us: (flowgate_cpu() - cpu_before).as_secs_f64() * 1e6 / latencies.len() as f64,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn end_to_end(runtime: &tokio::runtime::Runtime, issuer: &Issuer, work: &Path, policies: &Path) -> anyhow::Result<()> {
    let calls = env("BENCH_CALLS", 8000);
    let rounds = env("BENCH_ROUNDS", 5);
    let concurrency = env("BENCH_CONCURRENCY", 8);
    let connections = env("BENCH_CONNECTIONS", 2);
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "warm,cold".into());
    let modes: Vec<&str> = modes.split(',').collect();

    let upstream = runtime.block_on(start_upstream())?;
    let config = flowgate::Config::parse(&config_text(work, policies, upstream, issuer))?;
    // flowgate on its own runtime, as in `flowgate serve`; the callers, the issuer and the
    // upstream share the bench's runtime (and the same 2 cores).
    let gateway_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("flowgate").enable_all().build()?;
    let listener = gateway_runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = gateway_runtime.spawn(flowgate::run(
        flowgate::Listeners { gateway: listener, admin: None },
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    eprintln!("signing {} tokens ({rounds} rounds of {calls} cold calls) …", rounds * calls + 1);
    let signing = Instant::now();
    let warm_token = sign(issuer, "warm", 1)?.remove(0);
    let cold_tokens: Vec<Vec<HeaderValue>> = (0..rounds)
        .map(|round| sign(issuer, &format!("cold{round}"), if modes.contains(&"cold") { calls } else { 0 }))
        .collect::<Result<_, _>>()?;
    eprintln!("  signed in {:.1} s", signing.elapsed().as_secs_f64());
    let warm_tokens = Arc::new(vec![warm_token; calls]);

    let result = runtime.block_on(async {
        let conns = Conns::connect(addr, connections, None, "payments", "coldpath".into()).await?;
        // Warm-up: keys fetched, connections up, the warm token cached.
        drive(&conns, Arc::new(warm_tokens[..500.min(calls)].to_vec()), concurrency).await?;
        let warmup = sign(issuer, "warmup", 500)?;
        drive(&conns, Arc::new(warmup), concurrency).await?;

        println!(
            "cold path: DescribeNamespace, {concurrency} callers on {connections} h2c connections, {calls} calls per mode and round, {rounds} rounds"
        );
        println!("{:<6} {:>5} {:>10} {:>9} {:>9} {:>9}", "mode", "round", "rps", "p50 µs", "p99 µs", "CPU µs");
        let (mut warm, mut cold) = (Vec::new(), Vec::new());
        for (round, tokens) in cold_tokens.into_iter().enumerate() {
            let tokens = Arc::new(tokens);
            let order = if round % 2 == 0 { ["warm", "cold"] } else { ["cold", "warm"] };
            for mode in order.into_iter().filter(|mode| modes.contains(mode)) {
                let sample = if mode == "warm" {
                    drive(&conns, warm_tokens.clone(), concurrency).await?
                } else {
                    drive(&conns, tokens.clone(), concurrency).await?
                };
                println!(
                    "{mode:<6} {round:>5} {:>10.0} {:>9.1} {:>9.1} {:>9.1}",
                    sample.rps, sample.p50, sample.p99, sample.cpu_us
                );
                if mode == "warm" { warm.push(sample) } else { cold.push(sample) }
            }
        }
        let summary = |rounds: &[Round]| {
            (
                median(rounds.iter().map(|r| r.rps).collect()),
                median(rounds.iter().map(|r| r.p50).collect()),
                median(rounds.iter().map(|r| r.p99).collect()),
                median(rounds.iter().map(|r| r.cpu_us).collect()),
            )
        };
        for (mode, rounds) in [("warm", &warm), ("cold", &cold)] {
            if (cold.is_empty() || warm.is_empty())
                && let Some((rps, p50, p99, cpu)) = (!rounds.is_empty()).then(|| summary(rounds))
            {
                println!("median {mode}: {rps:.0} rps  p50 {p50:.1} µs  p99 {p99:.1} µs  CPU {cpu:.1} µs/call");
            }
        }
        if warm.is_empty() || cold.is_empty() {
            return anyhow::Ok(());
        }
        let (warm_rps, warm_p50, warm_p99, warm_cpu) = summary(&warm);
        let (cold_rps, cold_p50, cold_p99, cold_cpu) = summary(&cold);
        println!("medians over {rounds} rounds:");
        println!(
            "  warm (one token)           {warm_rps:>8.0} rps  p50 {warm_p50:>7.1} µs  p99 {warm_p99:>7.1} µs  CPU {warm_cpu:>5.1} µs/call"
        );
        println!(
            "  cold (a new token a call)  {cold_rps:>8.0} rps  p50 {cold_p50:>7.1} µs  p99 {cold_p99:>7.1} µs  CPU {cold_cpu:>5.1} µs/call"
        );
        println!(
            "  cold / warm throughput     {:>7.1} %  (target ≥ 60 %); cold p50 − warm p50 = {:.1} µs",
            100.0 * cold_rps / warm_rps,
            cold_p50 - warm_p50
        );
        anyhow::Ok(())
    });
    let _ = stop.send(());
    gateway_runtime.block_on(gateway)??;
    result
}

// ---------------------------------------------------------------------------------------------
// in process

/// Median over 7 samples of the mean ns per item of `f` over `items` (fresh items per sample,
/// made by `make` outside the timing).
fn time_each<T, F: FnMut(T)>(name: &str, mut make: impl FnMut() -> Vec<T>, mut f: F) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..7 {
        let items = make();
        let count = items.len() as u32;
        let started = Instant::now();
        for item in items {
            f(item);
        }
        samples.push(started.elapsed().as_nanos() as f64 / f64::from(count));
    }
    let ns = median(samples);
    println!("{name:<66} {ns:>9.0} ns");
    ns
}

fn micro(runtime: &tokio::runtime::Runtime, issuer: &Issuer, policies: &Path) -> anyhow::Result<()> {
    let per_sample = env("BENCH_MICRO_TOKENS", 2000);
    let work = tempfile::tempdir()?;
    let config = flowgate::Config::parse(&config_text(work.path(), policies, "127.0.0.1:9".parse()?, issuer))?;
    let metrics = Arc::new(flowgate::telemetry::Metrics::new());
    let authn = flowgate::authn::Authenticator::new(&config, flowgate::authn::HttpFetcher::new()?, metrics.clone())?;
    let sessions = flowgate::session::Sessions::new(
        Arc::new(authn),
        config.token_cache.max_entries,
        flowgate::identity::Stamper::new(&config),
        metrics,
    );
    let engine = flowgate::authz::PolicyEngine::load(policies)?;
    let describe = flowgate::temporal::catalog::lookup(DESCRIBE);
    let describe_call = flowgate::temporal::Call::new(flowgate::temporal::Resource {
        kind: flowgate::temporal::ResourceKind::Namespace,
        namespace: Some("payments".into()),
        workflow_id: None,
        workflow_type: None,
        task_queue: None,
        schedule_id: None,
        endpoint: None,
    });

    // The issuer's key, as `Authenticator::verify` gets it (from the JWKS).
    let jwks: Value = runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let response = client.get(issuer.jwks_uri.parse()?).await?;
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(serde_json::from_slice(&body)?)
    })?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone())?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
    let mut validation = jsonwebtoken::Validation::new(issuer.algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;

    let token = issuer.token_with_jti(Some("micro"))?;
    let claims: Map<String, Value> = jsonwebtoken::decode(&token, &key, &validation)?.claims;
    let mapping = flowgate::authn::principal::ClaimMapping {
        issuer_name: "bench".into(),
        kind: flowgate::config::PrincipalKind::Service,
        groups_claim: None,
        client_credentials_are_services: false,
    };
    let expires_at = UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap_or(0));
    let mut batch = 0usize;
    let mut fresh_headers = || {
        batch += 1;
        sign(issuer, &format!("micro{batch}"), per_sample).expect("tokens sign")
    };
    // The key arrives with the first token (fetched from the JWKS), then stays.
    let first = fresh_headers().remove(0);
    // The calls below complete without waiting; a current-thread runtime adds least to them.
    let local = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    local.block_on(sessions.authenticate(Some(&first)))?;

    println!("per new token (in process, median of 7 samples of {per_sample} tokens):");
    // The key as flowgate keeps it: parsed once when the JWKS is fetched.
    let parsed = flowgate::authn::jwks::parse_jwks(&jwks);
    let parsed = parsed.values().next().ok_or_else(|| anyhow::anyhow!("the bench issuer's key did not parse"))?;
    let (signing_input, signature_b64) = token.rsplit_once('.').expect("three parts");
    let signature = time_each(
        "signature verification alone (the key parsed once, as flowgate verifies)",
        || vec![(); per_sample],
        |()| {
            let signature = URL_SAFE_NO_PAD.decode(black_box(signature_b64)).unwrap();
            assert!(parsed.verify(issuer.algorithm, black_box(signing_input.as_bytes()), &signature));
        },
    );
    time_each(
        "  for reference: jsonwebtoken::decode (key parsed and segments decoded per call)",
        || vec![(); per_sample],
        |()| {
            black_box(jsonwebtoken::decode::<Map<String, Value>>(black_box(&token), &key, &validation).unwrap());
        },
    );
    let authenticate =
        time_each("Sessions::authenticate, new token (verify, session, cache insert)", &mut fresh_headers, |header| {
            black_box(local.block_on(sessions.authenticate(Some(&header))).unwrap());
        });
    time_each(
        "  of which claims into tags (flatten_claims)",
        || vec![(); per_sample],
        |()| {
            black_box(flowgate::authn::principal::flatten_claims(black_box(&claims)));
        },
    );
    let principal_ns = time_each(
        "  of which claims into a principal and its Cedar entities (tags included)",
        || vec![(); per_sample],
        |()| {
            black_box(mapping.principal(black_box(&claims), expires_at).unwrap());
        },
    );
    let principal = Arc::new(flowgate::session::Session::new(
        mapping.principal(&claims, expires_at)?,
        flowgate::identity::PrincipalStamp::none(),
    ));
    let roomy = flowgate::authn::TokenCache::new(100_000);
    let mut inserted = 0;
    let insert = time_each(
        "  of which the token-cache insert (cache of 100000, not full)",
        || {
            inserted += per_sample;
            (inserted - per_sample..inserted).map(|i| format!("{token}{i}")).collect()
        },
        |key: String| roomy.insert(&key, principal.clone()),
    );
    let filled = flowgate::authn::TokenCache::new(100_000);
    let key_like = |i: usize| format!("{token}{i}");
    for i in 0..100_000 {
        filled.insert(&key_like(i), principal.clone());
    }
    let mut next_key = 100_000;
    time_each(
        "  the token-cache insert once the cache is full of live tokens",
        || {
            next_key += per_sample;
            (next_key - per_sample..next_key).map(key_like).collect()
        },
        |key: String| filled.insert(&key, principal.clone()),
    );
    let decision = time_each(
        "first decision of a new principal (Cedar, DescribeNamespace)",
        || (0..per_sample).map(|_| mapping.principal(&claims, expires_at).unwrap()).collect(),
        |principal| {
            let decision = engine.authorize(&principal, describe, DESCRIBE, &describe_call);
            assert!(decision.allowed, "the bench policy allows DescribeNamespace");
        },
    );
    // The next job of the same pipeline: a new token, but a principal the policies cannot tell
    // from one decided before (only `jti`, `iat`, ... differ), so its decision is shared.
    engine.authorize_in(
        &flowgate::authz::DecisionCache::default(),
        &principal.principal,
        describe,
        DESCRIBE,
        &describe_call,
    );
    let shared_decision = time_each(
        "first decision of a new token of a principal seen before (shared)",
        || (0..per_sample).map(|_| mapping.principal(&claims, expires_at).unwrap()).collect(),
        |principal| {
            let cache = flowgate::authz::DecisionCache::default();
            let decision = engine.authorize_in(&cache, &principal, describe, DESCRIBE, &describe_call);
            assert!(decision.allowed, "the bench policy allows DescribeNamespace");
        },
    );
    let cached_header = first.clone();
    let cached = time_each(
        "a cached token's call: authenticate (hit) + decision (cached)",
        || vec![(); per_sample * 10],
        |()| {
            let session = local.block_on(sessions.authenticate(Some(&cached_header))).unwrap();
            black_box(engine.authorize_in(&session.decisions, &session.principal, describe, DESCRIBE, &describe_call));
        },
    );
    println!(
        "  of which the rest (segments parsed, claims checked, key looked up, metrics): {:.0} ns",
        authenticate - signature - principal_ns - insert
    );
    for (whose, first_decision) in [("a new principal", decision), ("a principal seen before", shared_decision)] {
        let rest = authenticate - signature + first_decision;
        println!(
            "everything but the signature, {whose}: {rest:.0} ns = authenticate − signature {:.0} + first decision \
             {first_decision:.0} ({:.0} % of the signature; target < 100 %)",
            authenticate - signature,
            100.0 * rest / signature,
        );
    }
    println!("a cached token's call: {cached:.0} ns");
    Ok(())
}
