//! Token exchanges per second, through a real `flowgate serve` (release build).
//!
//! `cargo build --release && cargo bench --bench exchange`. An in-process OIDC issuer signs
//! BENCH_EXCHANGES tokens up front, each with its own `jti` (subject tokens are single-use),
//! then BENCH_CONCURRENCY HTTP/1.1 keep-alive clients exchange them as fast as they can. Every
//! exchange is checked for HTTP 200 and an `access_token`: the status counts are printed.
//! What one exchange costs flowgate: full verification of the subject token (ES256), a Cedar
//! decision, the single-use check, the decision record, and signing the credential (ES256).
//!
//! Knobs: BENCH_EXCHANGES [4000], BENCH_CONCURRENCY [16], FLOWGATE_BIN [target/release/flowgate].

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::issuer::Issuer;

const POLICY: &str = r#"
@id("bench-exchange")
permit (
  principal == Temporal::Service::"bench:loadgen",
  action == Temporal::Action::"IssueCredential",
  resource == Temporal::Namespace::"payments"
);
"#;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let exchanges = env("BENCH_EXCHANGES", 4000);
    let concurrency = env("BENCH_CONCURRENCY", 16);
    let binary = std::env::var("FLOWGATE_BIN").unwrap_or_else(|_| "target/release/flowgate".into());
    let work = tempfile::tempdir()?;
    let issuer = Issuer::start().await?;

    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("schema.cedarschema"), flowgate::authz::generated_schema())?;
    std::fs::write(policies.join("bench.cedar"), POLICY)?;
    let port = free_port();
    let config = format!(
        r#"[listen]
address = "127.0.0.1:{port}"
[upstream]
address = "http://127.0.0.1:9"
[policy]
dir = "{policies}"
[audit]
path = "{audit}"
[mint]
issuer = "http://127.0.0.1:{port}"
key_dir = "{keys}"
{issuers}"#,
        policies = policies.display(),
        audit = work.path().join("decisions.jsonl").display(),
        keys = work.path().join("keys").display(),
        issuers = issuer.config_table(),
    );
    let config_path = work.path().join("flowgate.toml");
    std::fs::write(&config_path, config)?;
    let mut child = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start `{binary}` (cargo build --release first): {e}"))?;
    let result = measure(port, &issuer, exchanges, concurrency).await;
    let _ = child.kill();
    let _ = child.wait();
    let (elapsed, statuses, latencies) = result?;
    let ok = statuses.get("200 issued").copied().unwrap_or(0);
    let mut sorted = latencies;
    sorted.sort_unstable();
    let pct = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
    println!("| exchanges | concurrency | seconds | exchanges/s | p50 µs | p99 µs | statuses |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {exchanges} | {concurrency} | {:.2} | {:.0} | {} | {} | {} |",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

type Measured = (Duration, BTreeMap<String, usize>, Vec<u64>);

async fn measure(port: u16, issuer: &Issuer, exchanges: usize, concurrency: usize) -> anyhow::Result<Measured> {
    // Wait for the listener (the discovery document answers once flowgate serves).
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "flowgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Signed before the clock starts: the issuer's signing is not flowgate's cost.
    let bodies: Vec<String> = (0..exchanges)
        .map(|i| {
            let token = issuer.token_with_jti(Some(&format!("bench-{i}")))?;
            Ok(form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange")
                .append_pair("subject_token", &token)
                .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
                .append_pair("scope", "namespace:payments role:worker task_queue:bench")
                .finish())
        })
        .collect::<anyhow::Result<_>>()?;
    let queue = Arc::new(Mutex::new(bodies));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(exchanges)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (queue, statuses, latencies) = (queue.clone(), statuses.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            loop {
                let Some(body) = queue.lock().unwrap().pop() else { return anyhow::Ok(()) };
                let request = http::Request::post("/oauth2/token")
                    .header("host", "flowgate")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(body)))?;
                let sent = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let reply: serde_json::Value =
                    serde_json::from_slice(&response.into_body().collect().await?.to_bytes()).unwrap_or_default();
                latencies.lock().unwrap().push(sent.elapsed().as_micros() as u64);
                let label = match (status, reply.get("access_token"), reply.get("error").and_then(|e| e.as_str())) {
                    (200, Some(_), _) => "200 issued".to_owned(),
                    (status, _, Some(error)) => format!("{status} {error}"),
                    (status, _, None) => format!("{status} ?"),
                };
                *statuses.lock().unwrap().entry(label).or_default() += 1;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let statuses = statuses.lock().unwrap().clone();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    Ok((elapsed, statuses, latencies))
}
