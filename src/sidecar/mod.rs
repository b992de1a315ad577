//! The sidecar: a local, credential-free gRPC endpoint for a worker, in front of the gateway.
//!
//! A Temporal worker connects to the sidecar (`flowgate sidecar --config sidecar.toml`) on
//! localhost with no credentials at all. The sidecar holds a short-lived flowgate credential
//! and forwards every call to the gateway with `authorization: Bearer <credential>`, replacing
//! whatever the worker sent. The worker never sees a token, and nothing long-lived sits on the
//! machine.
//!
//! Where credentials come from ([`SourceConfig`]): a CI or workload token (an environment
//! variable, or a file such as a Kubernetes projected service-account token), or an OAuth
//! client-credentials grant (an Okta service app). That *subject token* is exchanged at the
//! gateway's token endpoint (RFC 8693, [`crate::exchange_client`]) for a credential with the
//! configured scope.
//!
//! Keeping it fresh: a background task refreshes at `refresh_at` of the credential's lifetime,
//! ± `jitter` (so a fleet of workers does not refresh in lockstep). Subject tokens are
//! single-use at the gateway, so a refresh exchanges the source's token only when it is one
//! the gateway has not answered for yet (the file changed, or Okta issued a new one);
//! otherwise it exchanges the credential it still holds. A refresh that fails is retried with
//! backoff.
//!
//! The one rule on the data path: an expired credential is never forwarded. A credential stops
//! being used a safety margin before it expires; while none is usable, a call waits up to
//! `credential.wait` for one and then fails with a trailers-only `UNAVAILABLE` that says why.
//! Nothing else limits a call: long polls last as long as their own `grpc-timeout`.
//!
//! The code is in three parts, each in its own file:
//!
//! * `config`: the TOML file ([`SidecarConfig`], [`SourceConfig`]), parsed and validated before
//!   anything starts;
//! * `refresher`: subject tokens from the source, token exchange, the refresh schedule and
//!   retries, and the state the data path reads;
//! * `forward`: the local listener and the forwarding of each call with the current credential.
//!
//! [`run_sidecar`] wires them: it starts the refresher, serves until shutdown, drains, and only
//! then stops the refresher, so the credential stays fresh until the last call is done.

mod config;
mod forward;
mod refresher;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{CredentialConfig, SidecarConfig, SidecarListenConfig, SidecarUpstreamConfig, SourceConfig};
use forward::Forwarder;
pub use refresher::{RefreshError, SourceError};
use refresher::{Refresher, State, keep_fresh};

use crate::proxy::Upstream;
use crate::shutdown;

/// Serves the worker on `listener` until `shutdown` resolves, then drains in-flight calls for
/// up to `listen.shutdown_grace`. What can fail at once (TLS material, an unset environment
/// variable) fails before the first connection; the first credential is fetched in the
/// background, and calls made before it arrives wait for it (up to `credential.wait`).
///
/// It also stops, with an error, when no credential can ever be had again: the gateway refused
/// the environment token and no usable credential is left. A CI step then fails with the
/// gateway's reason instead of hanging on `UNAVAILABLE`.
pub async fn run_sidecar(
    listener: TcpListener,
    config: SidecarConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let upstream = Upstream::new(&config.gateway_upstream()?)?;
    let refresher = Refresher::new(&config)?;
    let (state_sender, state) = watch::channel(State::default());
    let (trigger, signal) = shutdown::channel();
    let mut refresh_task = tokio::spawn(keep_fresh(
        refresher,
        state_sender,
        config.credential.refresh_at,
        config.credential.jitter,
        signal,
    ));
    let forwarder = Arc::new(Forwarder { upstream, state, wait: config.credential.wait });

    let gave_up = forward::serve(listener, forwarder, &config, shutdown, &mut refresh_task).await?;

    // The credential stays fresh until the last call is done.
    trigger.fire();
    match gave_up {
        None => refresh_task.await?.map_err(anyhow::Error::from),
        Some(finished) => Err(match finished? {
            Ok(()) => anyhow::anyhow!("the credential refresh stopped"),
            Err(error) => anyhow::anyhow!("no credential can be had: {error}"),
        }),
    }
}
