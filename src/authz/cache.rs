//! The decision cache: each principal's last decisions, so a worker polling the same queue is
//! decided by Cedar once per token and policy set.
//!
//! A decision is a pure function of the policy set, the principal's entities (fixed for the
//! life of its token), the action, the method and the call's resource and context fields, so
//! those are the key, and each entry is tagged with the set's generation: a reload invalidates
//! every principal's cache at once, without touching them. The cache is small and per
//! principal (a `Vec` scanned under a mutex only that principal's calls contend for): a fixed
//! footprint per token, no global lock, and a flood of one-off calls evicts only its own
//! principal's entries. It lives with the principal's session (`session`), not in `authn`.

use std::sync::{Arc, Mutex};

use super::engine::Decision;
use crate::temporal::{Call, Resource};

/// How many decisions a principal remembers. A worker repeats a handful of distinct calls
/// (polls and responses on its queues); a client starting workflows with fresh ids misses
/// anyway, and a small bound keeps a token's footprint small.
pub const DECISION_CACHE_SIZE: usize = 16;

/// The last decisions made for one principal, under one policy set generation.
#[derive(Debug, Default)]
pub struct DecisionCache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    generation: u64,
    entries: Vec<CachedDecision>,
    /// Next slot to overwrite once full (round robin: cheap, and fair to a steady mix).
    next: usize,
}

#[derive(Debug)]
struct CachedDecision {
    action: &'static str,
    method_path: Box<str>,
    /// Without its workflow id when `by_id` is false.
    call: Call,
    by_id: bool,
    decision: Arc<Decision>,
}

impl DecisionCache {
    /// The decision cached for this call. `by_id`: whether the workflow id is part of the key
    /// (some policy of the action can observe it; see `engine`).
    pub(crate) fn get(
        &self,
        generation: u64,
        action: &str,
        method_path: &str,
        call: &Call,
        by_id: bool,
    ) -> Option<Arc<Decision>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            return None;
        }
        state
            .entries
            .iter()
            .find(|e| {
                e.action == action
                    && e.by_id == by_id
                    && &*e.method_path == method_path
                    && if by_id { e.call == *call } else { same_but_workflow_id(&e.call, call) }
            })
            .map(|e| e.decision.clone())
    }

    pub(crate) fn insert(
        &self,
        generation: u64,
        action: &'static str,
        method_path: &str,
        call: &Call,
        by_id: bool,
        decision: Arc<Decision>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            state.generation = generation;
            state.entries.clear();
            state.next = 0;
        }
        let mut call = call.clone();
        if !by_id {
            call.resource.workflow_id = None;
        }
        let entry = CachedDecision { action, method_path: method_path.into(), call, by_id, decision };
        if state.entries.len() < DECISION_CACHE_SIZE {
            state.entries.push(entry);
        } else {
            let slot = state.next;
            state.entries[slot] = entry;
            state.next = (slot + 1) % DECISION_CACHE_SIZE;
        }
    }
}

/// Whether two calls are the same but for their workflow id. Every field is named, so a field
/// added to `Call` or `Resource` is part of the key until someone decides otherwise.
fn same_but_workflow_id(a: &Call, b: &Call) -> bool {
    let Call {
        resource,
        signal_name,
        query_type,
        update_name,
        activity_type,
        nexus_service,
        nexus_operation,
        implied_by,
        has_task_token,
        sticky_queue,
        namespace_id,
    } = a;
    let Resource { kind, namespace, workflow_id: _, workflow_type, task_queue, schedule_id, endpoint } = resource;
    let r = &b.resource;
    *kind == r.kind
        && *namespace == r.namespace
        && *workflow_type == r.workflow_type
        && *task_queue == r.task_queue
        && *schedule_id == r.schedule_id
        && *endpoint == r.endpoint
        && *signal_name == b.signal_name
        && *query_type == b.query_type
        && *update_name == b.update_name
        && *activity_type == b.activity_type
        && *nexus_service == b.nexus_service
        && *nexus_operation == b.nexus_operation
        && *implied_by == b.implied_by
        && *has_task_token == b.has_task_token
        && *sticky_queue == b.sticky_queue
        && *namespace_id == b.namespace_id
}

#[cfg(test)]
impl DecisionCache {
    /// How many decisions are held.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }
}
