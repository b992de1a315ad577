//! flowgate: an identity-aware access gateway for the Temporal workflow engine.
//!
//! A call flows through the modules in this order (see [`gateway`] for the phases):
//! [`server`] accepts it, [`temporal`] classifies and inspects it, [`authn`] authenticates the
//! caller, [`namespace_ids`] resolves a namespace named by id, [`authz`] decides with Cedar
//! (every question the request implies: a task completion's commands, a start that
//! terminates; [`sticky`] keeps sticky queues to their workers), [`audit`] records the
//! decision, [`proxy`] forwards it, and [`status`] is the one place refusals become gRPC
//! statuses. [`config`] is the TOML file, [`admin`] the health and metrics endpoints. [`mint`]
//! issues short-lived worker credentials in exchange for CI tokens (the token endpoint on the
//! same listener).
//!
//! The policy authoring loop: [`reload`] swaps policy sets in while the gateway runs (and a
//! shadow set beside the enforced one), [`explain`] shows how a described call is decided,
//! [`policy_test`] runs the test cases kept next to the policies, and [`policy_fmt`] formats
//! them.
//!
//! Beside a worker, [`sidecar`] is a local endpoint that forwards to the gateway with a
//! short-lived credential it keeps fresh, got through [`exchange_client`] (RFC 8693 token
//! exchange at the gateway's token endpoint).
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod budget;
pub mod config;
pub mod conn;
pub mod exchange_client;
pub mod explain;
pub mod gateway;
pub mod mint;
pub mod namespace_ids;
pub mod policy_fmt;
pub mod policy_test;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod sidecar;
pub mod status;
pub mod sticky;
pub mod telemetry;
pub mod temporal;

pub use config::Config;
pub use server::{Listeners, run};
