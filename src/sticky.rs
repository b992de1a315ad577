//! Who owns each sticky task queue.
//!
//! A Temporal worker caches the workflows it runs and asks the server to send their next tasks
//! to a queue of its own, its *sticky* queue (`TaskQueue{name: <worker-specific>, kind: STICKY,
//! normal_name: <its normal queue>}`). Temporal acts on the sticky name; policies cannot name
//! it (it is made up per process), so they are asked about the normal queue. That alone would
//! let any worker of the normal queue poll another worker's sticky queue and take the tasks of
//! workflows cached there, or register someone else's queue as its workflow's sticky queue.
//!
//! So a sticky queue belongs to the first principal that polls it or registers it
//! (`RespondWorkflowTaskCompleted.sticky_attributes`), and only that principal may poll,
//! register or shut it down (`ShutdownWorker.sticky_task_queue`) afterwards.
//!
//! Trade-offs:
//! * ownership lives in this process. Behind several replicas a worker's connection normally
//!   stays on one replica; a claim made on another replica is its own. A sticky queue's tasks
//!   fall back to the normal queue after `schedule_to_start_timeout` (seconds), so a worker
//!   refused here loses a cache hit, never a task.
//! * the table is bounded: [`MAX_QUEUES`] in all and [`MAX_PER_PRINCIPAL`] per principal. A
//!   principal past its share gives up its own least recently used queue, so one caller
//!   cannot crowd others out; a full table gives up the least recently used queue of anyone,
//!   after it has been idle for [`IDLE`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many sticky queues are remembered in all.
pub const MAX_QUEUES: usize = 65_536;
/// How many sticky queues one principal may hold (one per worker process it runs).
pub const MAX_PER_PRINCIPAL: usize = 256;
/// How long an unused claim is kept when the table is full. Temporal drops a sticky queue's
/// stickiness after its worker stops polling it for far less.
pub const IDLE: Duration = Duration::from_secs(600);

/// Why a sticky queue cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickyError {
    #[error("sticky task queue `{0}` belongs to another worker")]
    Taken(String),
    #[error("sticky task queue `{0}` was not registered by this worker")]
    NotOwned(String),
    #[error("too many sticky task queues are in use; retry later")]
    Full,
}

struct Owner {
    principal: String,
    last_used: Instant,
}

/// The owners of sticky queues, keyed by namespace and queue name.
#[derive(Default)]
pub struct StickyQueues {
    owners: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    queues: HashMap<(String, String), Owner>,
    /// How many queues each principal holds, so a claim does not count them one by one.
    held: HashMap<String, usize>,
}

impl Table {
    fn remove(&mut self, key: &(String, String)) {
        if let Some(owner) = self.queues.remove(key)
            && let Some(count) = self.held.get_mut(&owner.principal)
        {
            *count -= 1;
            if *count == 0 {
                self.held.remove(&owner.principal);
            }
        }
    }
}

impl StickyQueues {
    pub fn new() -> StickyQueues {
        StickyQueues::default()
    }

    /// Claims `queue` for `principal`, or confirms it already holds it.
    pub fn claim(&self, namespace: &str, queue: &str, principal: &str) -> Result<(), StickyError> {
        self.claim_at(namespace, queue, principal, Instant::now())
    }

    fn claim_at(&self, namespace: &str, queue: &str, principal: &str, now: Instant) -> Result<(), StickyError> {
        let mut table = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), queue.to_owned());
        if let Some(owner) = table.queues.get_mut(&key) {
            if owner.principal != principal {
                return Err(StickyError::Taken(queue.to_owned()));
            }
            owner.last_used = now;
            return Ok(());
        }
        // A new queue: rare (once per worker process), so a scan for the one to give up is fine.
        if table.held.get(principal).copied().unwrap_or(0) >= MAX_PER_PRINCIPAL {
            let oldest = oldest(&table.queues, |o| o.principal == principal);
            table.remove(&oldest.expect("the principal holds queues"));
        } else if table.queues.len() >= MAX_QUEUES {
            match oldest(&table.queues, |o| now.duration_since(o.last_used) >= IDLE) {
                Some(key) => table.remove(&key),
                None => return Err(StickyError::Full),
            };
        }
        table.queues.insert(key, Owner { principal: principal.to_owned(), last_used: now });
        *table.held.entry(principal.to_owned()).or_default() += 1;
        Ok(())
    }

    /// Gives `queue` up, if `principal` holds it (a worker shutting down).
    pub fn release(&self, namespace: &str, queue: &str, principal: &str) -> Result<(), StickyError> {
        let mut table = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), queue.to_owned());
        match table.queues.get(&key) {
            Some(owner) if owner.principal == principal => {
                table.remove(&key);
                Ok(())
            }
            _ => Err(StickyError::NotOwned(queue.to_owned())),
        }
    }
}

fn oldest(owners: &HashMap<(String, String), Owner>, eligible: impl Fn(&Owner) -> bool) -> Option<(String, String)> {
    owners.iter().filter(|(_, o)| eligible(o)).min_by_key(|(_, o)| o.last_used).map(|(key, _)| key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sticky_queue_belongs_to_its_first_principal() {
        let queues = StickyQueues::new();
        queues.claim("payments", "host:1", "buildkite:a").unwrap();
        queues.claim("payments", "host:1", "buildkite:a").unwrap();
        assert_eq!(queues.claim("payments", "host:1", "buildkite:b"), Err(StickyError::Taken("host:1".into())));
        // The same name in another namespace is another queue.
        queues.claim("analytics", "host:1", "buildkite:b").unwrap();
        assert_eq!(queues.release("payments", "host:1", "buildkite:b"), Err(StickyError::NotOwned("host:1".into())));
        queues.release("payments", "host:1", "buildkite:a").unwrap();
        queues.claim("payments", "host:1", "buildkite:b").unwrap();
    }

    #[test]
    fn one_principal_cannot_crowd_out_the_others() {
        let queues = StickyQueues::new();
        let start = Instant::now();
        queues.claim_at("payments", "victim", "okta:victim", start).unwrap();
        for i in 0..MAX_PER_PRINCIPAL * 4 {
            let at = start + Duration::from_millis(i as u64);
            queues.claim_at("payments", &format!("spam-{i}"), "okta:attacker", at).unwrap();
        }
        let table = queues.owners.lock().unwrap();
        assert_eq!(table.held["okta:attacker"], MAX_PER_PRINCIPAL);
        let owners = &table.queues;
        assert_eq!(owners.values().filter(|o| o.principal == "okta:attacker").count(), MAX_PER_PRINCIPAL);
        assert!(owners.contains_key(&("payments".to_owned(), "victim".to_owned())));
        // The attacker kept its most recent queues.
        assert!(owners.contains_key(&("payments".to_owned(), format!("spam-{}", MAX_PER_PRINCIPAL * 4 - 1))));
    }
}
