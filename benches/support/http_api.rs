//! The HTTP API section of `benches/gateway.rs`: `GET /api/v1/namespaces/{ns}` (the HTTP form of
//! DescribeNamespace) against Temporal's own HTTP port (`direct`) and flowgate's HTTP door, over
//! HTTP/1.1 keep-alive connections: sequential latency, then throughput with several
//! connections, with the proxy's CPU per call and every status counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};

/// One HTTP/1.1 keep-alive connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    authorization: Option<String>,
    path: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr, token: Option<&str>, namespace: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Conn {
            sender,
            authorization: token.map(|t| format!("Bearer {t}")),
            path: format!("/api/v1/namespaces/{namespace}"),
        })
    }

    /// One call: its latency in ns and its HTTP status.
    pub async fn call(&mut self) -> anyhow::Result<(u64, u16)> {
        let mut request = http::Request::get(&self.path).header("host", "bench");
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        let request = request.body(Empty::new())?;
        let started = Instant::now();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok((started.elapsed().as_nanos() as u64, status))
    }
}

/// What one run of one target measured.
#[derive(Default)]
pub struct Run {
    pub latencies: Vec<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
}

/// `calls` calls, one after another, on one connection.
pub async fn sequential(addr: SocketAddr, token: Option<&str>, namespace: &str, calls: usize) -> anyhow::Result<Run> {
    let mut conn = Conn::open(addr, token, namespace).await?;
    let mut run = Run::default();
    let started = Instant::now();
    for _ in 0..calls {
        let (latency, status) = conn.call().await?;
        run.latencies.push(latency);
        *run.statuses.entry(status).or_default() += 1;
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// As many calls as `conns` connections make in `duration`, each one after another.
pub async fn throughput(
    addr: SocketAddr,
    token: Option<&str>,
    namespace: &str,
    conns: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..conns {
        let mut conn = Conn::open(addr, token, namespace).await?;
        tasks.push(tokio::spawn(async move {
            let mut run = Run::default();
            while Instant::now() < until {
                let (latency, status) = conn.call().await?;
                run.latencies.push(latency);
                *run.statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok(run)
        }));
    }
    let mut total = Run::default();
    for task in tasks {
        let run = task.await??;
        total.latencies.extend(run.latencies);
        for (status, n) in run.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
