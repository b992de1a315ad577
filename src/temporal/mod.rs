//! Temporal awareness: what a gRPC call to the Temporal frontend means.
//!
//! flowgate never trusts a method by its name alone. This module owns the two facts the rest of
//! the gateway needs about a call:
//!
//! * [`catalog`]: every WorkflowService and OperatorService RPC with its Cedar action, the access
//!   group the action belongs to, and which request fields name the resource it touches;
//! * [`inspect`]: reading those fields out of the first (for Temporal: the only) request message,
//!   un-gzipping it first when the client compressed it.
//!
//! * [`implied`]: what the request makes Temporal do beyond its RPC (a task completion's
//!   commands, a start that terminates or signals), as further questions;
//! * [`stamp`]: what flowgate writes into an allowed request: the verified principal over the
//!   client's `identity`, and the verified initiator into the Temporal headers of starts and
//!   signals.
//!
//! The protobuf decoding lives in [`wire`]: a small, allocation-free walker over the wire format
//! that follows protobuf's own merge rules (for a singular field the last occurrence wins), so a
//! request that names a namespace twice is read the same way the Temporal server reads it.

pub mod catalog;
pub mod implied;
pub mod inspect;
pub mod stamp;
pub mod task_token;
pub mod wire;

pub use catalog::{Access, MethodSpec, ResourceSpec, Stamp, TaskQueueRef, lookup};
pub use inspect::{Call, InspectError, Resource, ResourceKind};
