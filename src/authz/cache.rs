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
//!
//! **Decisions shared across tokens** ([`SharedDecisions`]). Every CI job comes with a token
//! of its own, so a burst of jobs from one pipeline would ask Cedar the same question once per
//! job: the one cost of a new token besides its signature that grows with the policy set. But
//! Cedar sees a principal only through its uid, its `issuer` and `sub` attributes, its groups
//! and the tags policies read with `getTag` / `hasTag`. When every tag name in the set is a
//! literal (`engine` finds them at load), two principals that agree on those are
//! indistinguishable to every policy, and so is the decision of the same call: the set's shared
//! cache is keyed by exactly that, the claims no policy reads (`jti`, `run_id`, `iat`, ...)
//! left out. A set with a tag named by any other expression gets no shared cache. The cache is
//! bounded by the bytes of its keys, and belongs to its policy set: a reload starts a new one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::engine::Decision;
use crate::authn::Principal;
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

/// The bytes a set's shared cache may hold (its keys, a principal's observed tags and a call's
/// names, and its decisions' reasons and errors), and about how many entries that is.
pub const SHARED_CACHE_BYTES: u64 = 16 * 1024 * 1024;
const SHARED_CACHE_ITEMS: usize = 16 * 1024;

/// One policy set's decisions, shared by every principal that its policies cannot tell apart.
pub struct SharedDecisions {
    /// The principal tags the set's policies read, sorted.
    pub(crate) observed_tags: Vec<String>,
    entries: Cache<SharedKey, Arc<Decision>, KeyBytes>,
}

/// What a shared decision is keyed by: everything of the principal that a policy of the set can
/// observe, and the call as the principal's own cache keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    /// The principal's uid (its type and id), `issuer`, `sub`, groups, and each observed tag's
    /// value or absence, length-prefixed so that no two principals encode alike.
    principal: Box<[u8]>,
    action: &'static str,
    method_path: Box<str>,
    /// Without its workflow id when `by_id` is false.
    call: Call,
    by_id: bool,
}

#[derive(Clone)]
struct KeyBytes;

impl Weighter<SharedKey, Arc<Decision>> for KeyBytes {
    fn weight(&self, key: &SharedKey, decision: &Arc<Decision>) -> u64 {
        let texts = |texts: &[String]| texts.iter().map(|t| t.len() + 24).sum::<usize>();
        let decision = texts(&decision.reasons) + texts(&decision.errors);
        (key.principal.len() + key.method_path.len() + call_bytes(&key.call) + decision + 64) as u64
    }
}

impl std::fmt::Debug for SharedDecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDecisions").field("observed_tags", &self.observed_tags).finish_non_exhaustive()
    }
}

impl SharedDecisions {
    /// A cache for a set whose policies read exactly `observed_tags` of a principal's tags.
    pub(crate) fn new(observed_tags: BTreeSet<String>) -> SharedDecisions {
        SharedDecisions {
            observed_tags: observed_tags.into_iter().collect(),
            entries: Cache::with_weighter(SHARED_CACHE_ITEMS, SHARED_CACHE_BYTES, KeyBytes),
        }
    }

    /// The decision cached for `principal`'s call, or the one `decide` makes, cached then: a
    /// call decided for another principal that the policies cannot tell from this one is
    /// answered as it was. Two first calls at once may both decide (no caller ever waits on
    /// another's evaluation).
    pub(crate) fn get_or_decide(
        &self,
        principal: &Principal,
        action: &'static str,
        method_path: &str,
        call: &Call,
        by_id: bool,
        decide: impl FnOnce() -> Arc<Decision>,
    ) -> Arc<Decision> {
        let key = self.key(principal, action, method_path, call, by_id);
        if let Some(decision) = self.entries.get(&key) {
            return decision;
        }
        let decision = decide();
        self.entries.insert(key, decision.clone());
        decision
    }

    fn key(
        &self,
        principal: &Principal,
        action: &'static str,
        method_path: &str,
        call: &Call,
        by_id: bool,
    ) -> SharedKey {
        let mut encoded = Vec::with_capacity(128);
        let mut put = |bytes: &[u8]| {
            encoded.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            encoded.extend_from_slice(bytes);
        };
        // The uid is made of these two: no need to render it.
        put(principal.kind.entity_type().as_bytes());
        put(principal.id.as_bytes());
        put(principal.issuer.as_bytes());
        put(principal.sub.as_bytes());
        put(&(principal.groups.len() as u32).to_le_bytes());
        for group in &principal.groups {
            put(group.as_bytes());
        }
        for tag in &self.observed_tags {
            match principal.tags.get(tag) {
                Some(value) => {
                    put(b"=");
                    put(value.as_bytes());
                }
                None => put(b""),
            }
        }
        let mut call = call.clone();
        if !by_id {
            call.resource.workflow_id = None;
        }
        SharedKey { principal: encoded.into(), action, method_path: method_path.into(), call, by_id }
    }

    /// How many decisions are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// About how many bytes a call's names take. Every field is named, as in
/// [`same_but_workflow_id`], so a new one is counted.
fn call_bytes(call: &Call) -> usize {
    let Call {
        resource,
        signal_name,
        query_type,
        update_name,
        activity_type,
        nexus_service,
        nexus_operation,
        implied_by: _,
        has_task_token: _,
        sticky_queue,
        namespace_id,
    } = call;
    let Resource { kind: _, namespace, workflow_id, workflow_type, task_queue, schedule_id, endpoint } = resource;
    [
        signal_name,
        query_type,
        update_name,
        activity_type,
        nexus_service,
        nexus_operation,
        sticky_queue,
        namespace_id,
        namespace,
        workflow_id,
        workflow_type,
        task_queue,
        schedule_id,
        endpoint,
    ]
    .iter()
    .map(|name| name.as_ref().map_or(0, String::len))
    .sum::<usize>()
        + std::mem::size_of::<Call>()
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
