//! flowgate: an identity-aware access gateway for the Temporal workflow engine.
//!
//! The crate is layered: each module imports only modules listed before it in this file (a
//! test, `tests/layers.rs`, checks it), and the order follows one call through the gateway.
//! `docs/architecture.md` draws it.
//!
//! * **Bottom, what everything may use:** [`config`] (the TOML file), [`telemetry`] (metrics),
//!   [`traces`] (OpenTelemetry spans), [`error`], [`grpc`] (status codes and framing), [`shutdown`], [`budget`] and [`conn`]
//!   (byte budgets, connection caps), [`ecdsa`] (low-s signatures), and [`temporal`]: the method
//!   catalog, the protobuf reader, what a request names and what it implies; [`http_api`]
//!   transcodes Temporal's HTTP/JSON API to those gRPC calls and back. [`layers`] holds
//!   the cross-cutting tower layers of the call stack (deadline; shedding and concurrency come
//!   from tower itself).
//! * **Identity:** [`credential`] is the format and the keys of flowgate's own credentials;
//!   [`authn`] turns a bearer token into a principal (any configured issuer, or flowgate's own).
//! * **Decisions:** [`authz`] asks Cedar (engine, decision cache, schema, lints, the grants of
//!   minted credentials); [`session`] keeps a verified principal with its decision caches for
//!   as long as its token lives; [`reload`] swaps policy sets in while the gateway runs.
//! * **Recording, refusing, forwarding:** [`audit`] writes the decision record, [`sticky`] keeps
//!   sticky queues to their workers, [`proxy`] forwards to Temporal, [`namespace_ids`] resolves
//!   namespaces named by id, and [`status`] is the one place a refusal becomes a gRPC status.
//! * **The phases:** [`gateway`]: authenticate → inspect → authorize → record → forward, a
//!   tower `Service`.
//! * **The other doors:** [`mint`] (the token endpoint), [`explain`] and [`policy_test`] /
//!   [`policy_fmt`] (the policy authoring loop), [`admin`] (health, metrics, explanations),
//!   each reaching the running gateway through a narrow handle.
//! * **Top:** [`server`] routes each listener's requests to the gateway's stack or the token
//!   endpoint; beside a worker, [`sidecar`] forwards to the gateway with a short-lived
//!   credential it keeps fresh through [`exchange_client`]; for people, [`login`] gets and keeps
//!   an access token from the identity provider a gateway names.
#![forbid(unsafe_code)]

/// The version `flowgate --version` prints: the package version and the commit it was built
/// from (`build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FLOWGATE_COMMIT"), ")");

// The order of these declarations is the architecture: each module imports only modules
// declared before it (`tests/layers.rs`; `rustfmt.toml` keeps rustfmt from sorting them).
//
// Bottom: what every layer may use.
pub mod config;
pub mod error;
pub mod pem;
pub mod outbound;
pub mod grpc;
pub mod shutdown;
pub mod telemetry;
pub mod traceparent;
pub mod traces;
pub mod budget;
pub mod conn;
pub mod ecdsa;
pub mod temporal;
pub mod http_api;
pub mod layers;
// Identity, then decisions.
pub mod credential;
pub mod authn;
pub mod authz;
pub mod identity;
pub mod session;
pub mod reload;
pub mod ratelimit;
// Recording, refusing, forwarding.
pub mod audit;
pub mod sticky;
pub mod api_key;
pub mod proxy;
pub mod namespace_ids;
pub mod status;
// The phases.
pub mod gateway;
pub mod http_door;
// The other doors, and the policy authoring loop.
pub mod mint;
pub mod explain;
pub mod policy_test;
pub mod policy_fmt;
pub mod admin;
// The listeners, and the worker sidecar.
pub mod server;
pub mod exchange_client;
pub mod sidecar;
pub mod login;

pub use config::Config;
pub use server::{Listeners, run};
