//! The listeners and the `run` entry point.
//!
//! [`run`] is what `flowgate serve` calls and what tests call directly with listeners bound to
//! `127.0.0.1:0`: it loads everything that can fail (policies, issuers, TLS material, the
//! decision log) before accepting a single connection, then serves until `shutdown` resolves,
//! and drains: no new connections, in-flight calls (long polls included) get up to
//! `listen.shutdown_grace` to finish. Every connection is admitted and watched by `conn`
//! (caps, handshake deadline, idle timeout); every call is handed to [`Gateway::handle`] with
//! its connection's byte budget.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::audit::DecisionLog;
use crate::authn::{Authenticator, HttpFetcher};
use crate::authz::PolicyEngine;
use crate::config::{Config, ListenConfig, ServerTlsConfig};
use crate::conn::{self, Activity, ConnectionLimits, ConnectionTracker, Tracked};
use crate::gateway::{ClientConn, Gateway};
use crate::mint::Minter;
use crate::mint::replay::ReplayCache;
use crate::proxy::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, Upstream, read_certs, read_pem_key};
use crate::shutdown;
use crate::telemetry::Metrics;
use crate::temporal::task_token::TaskTokenKeys;

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

/// Everything `run` builds from a config, checked: what `flowgate check` validates too.
pub struct Prepared {
    pub gateway: Arc<Gateway>,
    pub tls: Option<TlsAcceptor>,
}

/// Loads and checks everything in the config; no sockets, no background tasks.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let metrics = Arc::new(Metrics::new());
    let policies = PolicyEngine::load(&config.policy.dir)?;
    for warning in &policies.warnings {
        tracing::warn!(%warning, "policy warning");
    }
    let mut authn = Authenticator::new(config, HttpFetcher::new(), metrics.clone())?;
    let minter = match &config.mint {
        Some(mint) => {
            let replay = match &config.replay.redis_url {
                Some(url) => ReplayCache::redis(url).map_err(anyhow::Error::msg)?,
                None => ReplayCache::memory(),
            };
            let minter = Arc::new(Minter::new(mint, replay)?);
            authn = authn.with_minter(minter.clone());
            Some(minter)
        }
        None => None,
    };
    let upstream = Upstream::new(&config.upstream)?;
    let tls = config.listen.tls.as_ref().map(tls_acceptor).transpose()?;
    let log = DecisionLog::open(&config.audit.path)?;
    let shadow = config.policy.shadow_dir.as_deref().map(PolicyEngine::load).transpose()?;
    let task_tokens = Arc::new(TaskTokenKeys::from_config(&config.task_tokens)?);
    if task_tokens.is_ephemeral() {
        tracing::info!(
            "task tokens are sealed with a random per-process key: give replicas a shared `task_tokens.key_file`"
        );
    }
    let gateway = Arc::new(Gateway::new(config, authn, policies, shadow, log, upstream, metrics, minter, task_tokens));
    Ok(Prepared { gateway, tls })
}

fn tls_acceptor(tls: &ServerTlsConfig) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(read_certs(&tls.cert)?, read_pem_key(&tls.key)?)?;
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

/// Serves until `shutdown` resolves, then drains.
pub async fn run(listeners: Listeners, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let nofile = conn::raise_nofile_limit();
    let Prepared { gateway, tls, .. } = prepare(&config)?;
    let (trigger, signal) = shutdown::channel();
    gateway.authenticator().spawn_key_refresh(signal.clone());
    if let Some(minter) = gateway.minter() {
        minter.spawn_key_reload(signal.clone());
    }
    spawn_cache_sweeper(gateway.clone(), signal.clone());
    crate::reload::spawn_policy_watch(gateway.clone(), signal.clone());
    let limits = gateway_limits(&config.listen, nofile);
    if let Some(admin) = listeners.admin {
        let admin_limits = admin::connection_limits(&limits);
        let tracker = ConnectionTracker::new("admin", admin_limits, gateway.metrics().clone());
        tokio::spawn(admin::serve(admin, gateway.clone(), tracker, signal.clone()));
    }

    let builder = Arc::new(http2_server(config.listen.max_concurrent_streams, limits.handshake_timeout));
    let tracker = ConnectionTracker::new("gateway", limits, gateway.metrics().clone());
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
            let gateway = gateway.clone();
            let activity = activity.clone();
            let client = ClientConn::new(peer, &config.limits);
            hyper::service::service_fn(move |request| {
                let gateway = gateway.clone();
                let client = client.clone();
                let in_flight = activity.request();
                async move {
                    let response = gateway.handle(request, &client).await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
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
    Ok(())
}

fn spawn_cache_sweeper(gateway: Arc<Gateway>, mut signal: shutdown::Signal) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => gateway.authenticator().sweep_cache(),
                _ = signal.wait() => return,
            }
        }
    });
}
