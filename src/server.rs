//! The listeners and the `run` entry point.
//!
//! [`run`] is what `flowgate serve` calls and what tests call directly with listeners bound to
//! `127.0.0.1:0`: it loads everything that can fail (policies, issuers, TLS material, the
//! decision log) before accepting a single connection, then serves until `shutdown` resolves,
//! and drains: no new connections, in-flight calls (long polls included) get up to
//! `listen.shutdown_grace` to finish. Every connection is admitted and watched by `conn`
//! (caps, handshake deadline, idle timeout). Each request is routed: the token endpoint's paths
//! go to `mint` (when flowgate mints credentials), every other call goes through the gateway's
//! tower stack ([`gateway_stack`]: load shedding, the concurrency limit, the deadline, then the
//! gateway's phases) with its connection's byte budget.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::admin::{self, Admin};
use crate::api_key::ApiKey;
use crate::audit::DecisionLog;
use crate::authn::{Authenticator, HttpFetcher, LOGIN_PATH};
use crate::authz::PolicyEngine;
use crate::config::{Config, ListenConfig, ServerTlsConfig};
use crate::conn::{self, Activity, ConnectionLimits, ConnectionTracker, Tracked};
use crate::credential::Signer;
use crate::explain::Issuers;
use crate::gateway::{ClientConn, Gateway, GatewayService, Parts, RecentDenials};
use crate::http_door::{self, HttpDoor};
use crate::identity::Stamper;
use crate::layers::{DeadlineLayer, MeteredBody, MetricsLayer};
use crate::mint::replay::ReplayCache;
use crate::mint::{Minter, TokenEndpoint, exchange};
use crate::pem::{read_certs, read_key};
use crate::proxy::{ClientBody, HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, ResponseBody, Upstream};
use crate::ratelimit::RateLimits;
use crate::reload::PolicySets;
use crate::session::Sessions;
use crate::shutdown;
use crate::status::RespondLayer;
use crate::telemetry::Metrics;
use crate::temporal::task_token::TaskTokenKeys;
use crate::traces::Traces;

/// The sockets flowgate serves on.
pub struct Listeners {
    pub gateway: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in the config.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let gateway = TcpListener::bind(config.listen.address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", config.listen.address))?;
        let admin = match &config.admin {
            Some(admin) => Some(
                TcpListener::bind(admin.address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", admin.address))?,
            ),
            None => None,
        };
        Ok(Listeners { gateway, admin })
    }
}

/// Everything `run` builds from a config, checked: what `flowgate check` validates too. Each
/// door gets a narrow handle: the gateway, the admin endpoints, the token endpoint.
pub struct Prepared {
    pub gateway: Arc<Gateway>,
    pub admin: Arc<Admin>,
    /// With `[mint]`: the token endpoint, routed on the gateway's listener.
    pub token_endpoint: Option<Arc<TokenEndpoint>>,
    pub sessions: Arc<Sessions>,
    pub policies: Arc<PolicySets>,
    pub signer: Option<Arc<Signer>>,
    pub metrics: Arc<Metrics>,
    pub tls: Option<TlsAcceptor>,
    /// The decision log: reopened on SIGHUP, flushed at shutdown.
    pub log: DecisionLog,
    /// `[traces]`: started by `run`, flushed at shutdown.
    pub traces: Arc<Traces>,
    /// What `GET /.well-known/flowgate-login` answers (`authn::LOGIN_PATH`).
    pub login_document: Bytes,
    /// `upstream.credentials = "api_key"`: the key, whose file `run` watches.
    pub upstream_key: Option<Arc<ApiKey>>,
    /// With `[http_api]`: Temporal's HTTP API, on the gateway's listener.
    pub http_door: Option<Arc<HttpDoor>>,
}

/// Loads and checks everything in the config; no sockets, no background tasks.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    RateLimits::check(&config.rate_limits)?;
    let metrics = Arc::new(Metrics::with_namespaces(&config.metrics.namespaces));
    let traces = Arc::new(Traces::new(config.traces.as_ref())?);
    let enforced = PolicyEngine::load(&config.policy.dir)?;
    for warning in &enforced.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    let mut authn = Authenticator::new(config, HttpFetcher::new()?.with_traces(traces.clone()), metrics.clone())?;
    let signer = config.mint.as_ref().map(Signer::new).transpose()?.map(Arc::new);
    if let Some(signer) = &signer {
        authn = authn.with_own_credentials(signer.clone());
    }
    let authn = Arc::new(authn);
    let login_document = Bytes::from(authn.login_document().to_string());
    let minter = match (&signer, &config.replay.redis_url) {
        (None, _) => None,
        (Some(signer), Some(url)) => {
            Some(Minter::new(signer.clone(), ReplayCache::redis(url).map_err(anyhow::Error::msg)?))
        }
        (Some(signer), None) => Some(Minter::new(signer.clone(), ReplayCache::memory())),
    };
    let upstream = Upstream::new(&config.upstream)?;
    let upstream_key = upstream.api_key().cloned();
    let tls = config.listen.tls.as_ref().map(tls_acceptor).transpose()?;
    let log = DecisionLog::open_with(&config.audit)?;
    let shadow = config.policy.shadow_dir.as_deref().map(PolicyEngine::load).transpose()?;
    let task_tokens = Arc::new(TaskTokenKeys::from_config(&config.task_tokens)?);
    if task_tokens.is_ephemeral() {
        tracing::info!(
            "task tokens are sealed with a random per-process key: give replicas a shared `task_tokens.key_file`"
        );
    }
    let policies = Arc::new(PolicySets::new(config.policy.clone(), enforced, shadow, metrics.clone()));
    let sessions =
        Arc::new(Sessions::new(authn.clone(), config.token_cache.max_entries, Stamper::new(config), metrics.clone()));
    let denials = Arc::new(RecentDenials::default());
    let gateway = Arc::new(Gateway::new(
        config,
        Parts {
            sessions: sessions.clone(),
            policies: policies.clone(),
            denials: denials.clone(),
            log: log.clone(),
            upstream: upstream.clone(),
            metrics: metrics.clone(),
            signer: signer.clone(),
            task_tokens,
            traces: traces.clone(),
        },
    ));
    let admin = Arc::new(Admin {
        authn: authn.clone(),
        issuers: Issuers::from_config(config).unwrap_or_default(),
        policies: policies.clone(),
        denials,
        upstream,
        metrics: metrics.clone(),
        draining: std::sync::atomic::AtomicBool::new(false),
        sessions: sessions.clone(),
    });
    let token_endpoint = minter.map(|minter| {
        Arc::new(TokenEndpoint {
            minter: Arc::new(minter),
            authn,
            policies: policies.clone(),
            log: log.clone(),
            metrics: metrics.clone(),
            traces: traces.clone(),
        })
    });
    let http_door = config
        .http_api
        .as_ref()
        .map(|http_api| {
            HttpDoor::new(http_api, gateway.clone(), metrics.clone(), config.limits.first_message_timeout).map(Arc::new)
        })
        .transpose()?;
    Ok(Prepared {
        http_door,
        gateway,
        admin,
        token_endpoint,
        sessions,
        policies,
        signer,
        metrics,
        tls,
        log,
        traces,
        login_document,
        upstream_key,
    })
}

fn tls_acceptor(tls: &ServerTlsConfig) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca).context("listen.tls.client_ca")? {
                roots.add(cert).context("listen.tls.client_ca")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cert = read_certs(&tls.cert).context("listen.tls.cert")?;
    let key = read_key(&tls.key).context("listen.tls.key")?;
    let mut server = builder.with_single_cert(cert, key).context("listen.tls")?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The HTTP/2 server settings every flowgate listener uses (the gateway and the sidecar):
/// many concurrent streams for multiplexed long polls, keep-alive pings, and the large
/// windows `proxy` explains; HTTP/1.1 (the token endpoint) gets a bound on header reads.
pub fn http2_server(max_concurrent_streams: u32, header_read_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    builder
}

/// The connection limits of the gateway listener, from `[listen]`.
pub fn gateway_limits(listen: &ListenConfig, nofile: Option<u64>) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: listen.max_connections.unwrap_or_else(|| conn::default_max_connections(nofile)),
        max_connections_per_client: listen.max_connections_per_client,
        handshake_timeout: listen.handshake_timeout,
        idle_timeout: listen.idle_timeout,
    }
}

/// The gateway's call stack for the calls of one connection, outermost first: metrics, the
/// answer to what a layer below refused (`status`, like every other refusal), load shedding,
/// the concurrency limit shared by every connection (`calls`), the call's deadline, then the
/// gateway's phases (`layers` says why each is where it is).
pub fn gateway_stack(
    gateway: Arc<Gateway>,
    conn: ClientConn,
    calls: Arc<Semaphore>,
    metrics: Arc<Metrics>,
) -> impl Service<
    http::Request<ClientBody>,
    Response = http::Response<MeteredBody<ResponseBody>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    ServiceBuilder::new()
        .layer(MetricsLayer::new(metrics))
        .layer(RespondLayer)
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(calls))
        .layer(DeadlineLayer::default())
        .service(GatewayService::new(gateway, conn))
}

/// Serves until `shutdown` resolves, then drains.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let nofile = conn::raise_nofile_limit();
    let Prepared {
        gateway,
        admin,
        token_endpoint,
        sessions,
        policies,
        signer,
        metrics,
        tls,
        log,
        traces,
        login_document,
        upstream_key,
        http_door,
    } = prepare(&config)?;
    traces.start()?;
    let (trigger, signal) = shutdown::channel();
    sessions.authenticator().spawn_key_refresh(signal.clone());
    if let Some(signer) = &signer {
        signer.spawn_key_reload(signal.clone());
    }
    spawn_session_sweeper(sessions, signal.clone());
    crate::reload::spawn_policy_watch(policies, signal.clone());
    if let Some(key) = &upstream_key {
        tracing::info!(key = %key.fingerprint(), "calls go upstream with flowgate's API key");
        key.spawn_watch(metrics.clone(), signal.clone());
    }
    crate::audit::log::spawn_reopen_on_hangup(log.clone(), signal.clone());
    let limits = gateway_limits(&config.listen, nofile);
    if let Some(listener) = listeners.admin {
        let admin_limits = admin::connection_limits(&limits);
        let tracker = ConnectionTracker::new("admin", admin_limits, metrics.clone());
        tokio::spawn(admin::serve(listener, admin, tracker, signal.clone()));
    }
    let calls = Arc::new(Semaphore::new(config.limits.max_concurrent_calls.min(Semaphore::MAX_PERMITS)));

    let builder = Arc::new(http2_server(config.listen.max_concurrent_streams, limits.handshake_timeout));
    let tracker = ConnectionTracker::new("gateway", limits, metrics.clone());
    let local = listeners.gateway.local_addr()?;
    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        max_connections_per_client = limits.max_connections_per_client,
        "flowgate is serving"
    );

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listeners.gateway.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over a cap: closed at once (dropping the stream), counted by the tracker.
        let activity = Activity::new();
        let Ok(slot) = tracker.admit(peer, &activity) else { continue };
        let _ = stream.set_nodelay(true);
        let service = {
            let stack =
                gateway_stack(gateway.clone(), ClientConn::new(peer, &config.limits), calls.clone(), metrics.clone());
            let token_endpoint = token_endpoint.clone();
            let http_door = http_door.clone();
            let login_document = login_document.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request| {
                let in_flight = activity.request();
                let doors = (token_endpoint.clone(), http_door.clone());
                let response = route(stack.clone(), doors, &login_document, request, peer);
                async move { Ok::<_, Infallible>(response.await.map(|body| Tracked::new(body, in_flight))) }
            })
        };
        let builder = builder.clone();
        let signal = signal.clone();
        match &tls {
            None => {
                let connect = async move {
                    Ok::<_, std::convert::Infallible>(
                        builder.serve_connection(TokioIo::new(stream), service).into_owned(),
                    )
                };
                tokio::spawn(conn::serve(slot, peer, activity, connect, signal));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let connect = async move {
                    let stream = acceptor.accept(stream).await?;
                    Ok::<_, std::io::Error>(builder.serve_connection(TokioIo::new(stream), service).into_owned())
                };
                tokio::spawn(conn::serve(slot, peer, activity, connect, signal));
            }
        }
    }

    tracing::info!(grace = ?config.listen.shutdown_grace, "shutting down: draining in-flight calls");
    drop(listeners.gateway);
    trigger.fire();
    tokio::select! {
        () = tracker.drained() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(config.listen.shutdown_grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    log.checkpoint();
    traces.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The doors of the gateway's listener besides gRPC: the token endpoint (with `[mint]`) and the
/// HTTP API (with `[http_api]`).
type Doors = (Option<Arc<TokenEndpoint>>, Option<Arc<HttpDoor>>);

/// Routes one request of the gateway's listener: how people log in (`GET` of
/// `authn::LOGIN_PATH`), the token endpoint (and its JWKS and discovery document) when flowgate
/// mints credentials, the HTTP API for other requests that are not gRPC when it is on, the
/// gateway's stack for everything else.
fn route<S>(
    stack: S,
    doors: Doors,
    login_document: &Bytes,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> impl Future<Output = http::Response<MeteredBody<ResponseBody>>> + Send + use<S>
where
    S: Service<http::Request<ClientBody>, Response = http::Response<MeteredBody<ResponseBody>>, Error = Infallible>
        + Send,
    S::Future: Send,
{
    let login =
        (request.method() == http::Method::GET && request.uri().path() == LOGIN_PATH).then(|| login_document.clone());
    async move {
        if let Some(document) = login {
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::CACHE_CONTROL, "max-age=300")
                .body(ResponseBody::full(document))
                .expect("static headers are valid");
            return response.map(MeteredBody::unobserved);
        }
        route_call(stack, doors, request, peer).await
    }
}

async fn route_call<S>(
    stack: S,
    (token_endpoint, http_door): Doors,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> http::Response<MeteredBody<ResponseBody>>
where
    S: Service<http::Request<ClientBody>, Response = http::Response<MeteredBody<ResponseBody>>, Error = Infallible>,
    S::Future: Send,
{
    match (token_endpoint, http_door) {
        // Boxed: this future lives as long as the call (70 s for a long poll), and inline it would
        // be sized by the token exchange's state, the largest of the doors.
        (Some(endpoint), _) if exchange::is_oauth_path(request.uri().path()) => {
            Box::pin(exchange::serve(&endpoint, request, peer)).await.map(MeteredBody::unobserved)
        }
        (_, Some(door)) if http_door::is_http(&request) => Box::pin(door.serve(stack, request)).await,
        _ => match stack.oneshot(request.map(ClientBody::Stream)).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
    }
}

fn spawn_session_sweeper(sessions: Arc<Sessions>, mut signal: shutdown::Signal) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => sessions.sweep(),
                _ = signal.wait() => return,
            }
        }
    });
}
