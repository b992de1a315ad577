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
use crate::temporal::Call;

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
    call: Call,
    decision: Arc<Decision>,
}

impl DecisionCache {
    pub(crate) fn get(&self, generation: u64, action: &str, method_path: &str, call: &Call) -> Option<Arc<Decision>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            return None;
        }
        state
            .entries
            .iter()
            .find(|e| e.action == action && &*e.method_path == method_path && e.call == *call)
            .map(|e| e.decision.clone())
    }

    pub(crate) fn insert(
        &self,
        generation: u64,
        action: &'static str,
        method_path: &str,
        call: &Call,
        decision: Arc<Decision>,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != generation {
            state.generation = generation;
            state.entries.clear();
            state.next = 0;
        }
        let entry = CachedDecision { action, method_path: method_path.into(), call: call.clone(), decision };
        if state.entries.len() < DECISION_CACHE_SIZE {
            state.entries.push(entry);
        } else {
            let slot = state.next;
            state.entries[slot] = entry;
            state.next = (slot + 1) % DECISION_CACHE_SIZE;
        }
    }
}

#[cfg(test)]
impl DecisionCache {
    /// How many decisions are held.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }
}
