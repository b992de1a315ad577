//! The floor any proxy starts from: a bare hyper h2c pass-through. Every request goes to the
//! upstream unchanged (only the URI authority is rewritten); bodies and trailers stream
//! through in both directions. TCP_NODELAY on both sides, concurrent streams raised.
//! Runs in its own process (the bench binary re-executes itself with `--bare-proxy`), so it
//! does not share a runtime with the load generator — like flowgate.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = Either<Incoming, Empty<Bytes>>;

pub async fn serve(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector);
    let authority: Authority = upstream.to_string().parse()?;
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder.http2().max_concurrent_streams(100_000).timer(TokioTimer::new());
    eprintln!("bare proxy listening on {listen} -> {upstream}");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        let authority = authority.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move { Ok::<_, Infallible>(forward(&client, authority, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    authority: Authority,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    parts.uri = Uri::from_parts(uri).expect("uri");
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Either::Left),
        Err(err) => Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", format!("bare proxy: upstream: {err}"))
            .body(Either::Right(Empty::new()))
            .expect("response"),
    }
}
