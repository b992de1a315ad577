//! Building blocks of the gateway benchmark (benches/gateway.rs).

pub mod bare_proxy;
pub mod http_api;
pub mod issuer;
pub mod loadgen;
pub mod proto;
