//! Budgets on request bytes held in memory.
//!
//! flowgate must read a call's first message before it can decide, so every stream in the
//! inspect phase holds up to one message (4 MiB by default) in memory. A connection may open
//! 10 000 streams, and a hostile client can announce a large message and send it slowly: 120
//! streams each holding 2 MiB grew the process by ~247 MiB before these budgets existed.
//!
//! Two budgets bound that, and a stream draws from both as its bytes arrive:
//!
//! * a **per-connection** budget (`limits.max_connection_buffered_bytes`), so one client cannot
//!   take the whole process's share;
//! * a **global** budget (`limits.max_buffered_bytes`), so many connections together cannot
//!   either.
//!
//! The last eighth of each budget is kept for small messages (at most [`SMALL_MESSAGE`] bytes):
//! streams that fill the budgets with large, slowly sent messages cannot starve the polls,
//! queries and signals, a few hundred bytes each, that other clients (or the same worker) send
//! meanwhile.
//!
//! A stream that would go over either budget is refused at once with `RESOURCE_EXHAUSTED`
//! rather than made to wait: a waiting stream would still hold its bytes, and waiting for
//! memory other streams hold is how budgets deadlock. SDKs retry `RESOURCE_EXHAUSTED` with
//! backoff (it is also how Temporal itself signals rate limits), so a legitimate burst recovers
//! on its own. Worker long polls carry a few hundred bytes each, so thousands of them fit in
//! any budget that admits one large message.
//!
//! Accounting is two atomic counters and no lock: [`Reservation::grow`] adds, and dropping the
//! reservation (when the buffered message has been forwarded or refused) gives the bytes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Messages up to this size may use the whole of a budget; larger ones only the first 7/8.
pub const SMALL_MESSAGE: usize = 64 * 1024;

/// A number of bytes that many streams share.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget { limit, used: AtomicUsize::new(0) })
    }

    /// What it holds at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// What streams holding a large message may use together: all but the small-message reserve.
    pub fn large_limit(&self) -> usize {
        self.limit - self.limit / 8
    }

    fn try_take(&self, bytes: usize, small: bool) -> bool {
        let ceiling = if small { self.limit } else { self.large_limit() };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= ceiling)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which budget a stream would have gone over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    #[error("this connection already holds {limit} bytes of unread requests")]
    Connection { limit: usize },
    #[error("the gateway already holds {limit} bytes of unread requests")]
    Global { limit: usize },
}

impl OverBudget {
    /// The metric label: which budget it was.
    pub fn scope(self) -> &'static str {
        match self {
            OverBudget::Connection { .. } => "connection",
            OverBudget::Global { .. } => "global",
        }
    }
}

/// The bytes one stream holds from its connection's budget and the global one; given back when
/// dropped.
#[derive(Debug)]
pub struct Reservation {
    connection: Arc<ByteBudget>,
    global: Arc<ByteBudget>,
    held: usize,
}

impl Reservation {
    pub fn new(connection: Arc<ByteBudget>, global: Arc<ByteBudget>) -> Reservation {
        Reservation { connection, global, held: 0 }
    }

    /// Holds `bytes` more, from both budgets, or neither. The stream's total after this grow
    /// decides whether it counts as a small message (it may then use the reserve).
    pub fn grow(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let small = self.held + bytes <= SMALL_MESSAGE;
        if !self.connection.try_take(bytes, small) {
            return Err(OverBudget::Connection { limit: self.connection.limit });
        }
        if !self.global.try_take(bytes, small) {
            self.connection.give_back(bytes);
            return Err(OverBudget::Global { limit: self.global.limit });
        }
        self.held += bytes;
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.connection.give_back(self.held);
            self.global.give_back(self.held);
        }
    }
}

/// Bytes held from one budget alone (the HTTP door's, `http_api.max_buffered_bytes`), resized as
/// a request or an answer moves through its stages and given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<ByteBudget>,
    held: usize,
}

impl Held {
    pub fn new(budget: Arc<ByteBudget>) -> Held {
        Held { budget, held: 0 }
    }

    /// Holds exactly `bytes` from now on: more are taken (all or none, from the whole budget, as
    /// these are never the small messages the reserve is for), fewer are given back. On refusal,
    /// what was held stays held.
    pub fn resize(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes > self.held {
            if !self.budget.try_take(bytes - self.held, true) {
                return Err(OverBudget::Global { limit: self.budget.limit });
            }
        } else {
            self.budget.give_back(self.held - bytes);
        }
        self.held = bytes;
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// Calls of each principal waiting for the rest of their first message (`limits.
/// max_waiting_calls_per_principal`).
///
/// Every call in flight holds one of `limits.max_concurrent_calls`, and a call whose message
/// never finishes holds it until `limits.first_message_timeout`. A principal that no policy could
/// permit the action is refused before the gateway waits (`gateway`); this bounds the others: a
/// token with a narrow grant, opening slow calls on many connections, holds at most this many
/// slots, not every one. A call that must wait takes a slot; a call whose message is there
/// already (nearly all) never touches the map, so its lock is off the hot path.
#[derive(Debug)]
pub struct WaitingCalls {
    max: usize,
    per_principal: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// A principal had `max` calls waiting for their first message already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{principal}` has {max} calls waiting for their first message already")]
pub struct TooManyWaiting {
    pub principal: String,
    pub max: usize,
}

impl WaitingCalls {
    pub fn new(max: usize) -> Arc<WaitingCalls> {
        Arc::new(WaitingCalls { max, per_principal: Default::default() })
    }

    /// A slot for one more waiting call of `principal`, given back when dropped.
    pub fn enter(self: &Arc<Self>, principal: &str) -> Result<WaitingSlot, TooManyWaiting> {
        let mut counts = self.per_principal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(principal.to_owned()).or_default();
        if *count >= self.max {
            return Err(TooManyWaiting { principal: principal.to_owned(), max: self.max });
        }
        *count += 1;
        Ok(WaitingSlot { calls: self.clone(), principal: principal.to_owned() })
    }

    /// Calls of `principal` waiting now.
    pub fn waiting(&self, principal: &str) -> usize {
        let counts = self.per_principal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(principal).copied().unwrap_or(0)
    }
}

/// See [`WaitingCalls::enter`].
#[derive(Debug)]
pub struct WaitingSlot {
    calls: Arc<WaitingCalls>,
    principal: String,
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        let mut counts = self.calls.per_principal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.principal) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_holds_bytes_from_both_budgets_until_dropped() {
        let global = ByteBudget::new(100);
        let connection = ByteBudget::new(60);
        let mut first = Reservation::new(connection.clone(), global.clone());
        first.grow(40).unwrap();
        assert_eq!((connection.used(), global.used()), (40, 40));
        let mut second = Reservation::new(connection.clone(), global.clone());
        assert_eq!(second.grow(30), Err(OverBudget::Connection { limit: 60 }));
        assert_eq!((connection.used(), global.used()), (40, 40), "a refused grow takes nothing");
        drop(first);
        assert_eq!((connection.used(), global.used()), (0, 0));
        second.grow(60).unwrap();
        assert_eq!(second.held(), 60);
    }

    #[test]
    fn held_bytes_resize_and_go_back_when_dropped() {
        let budget = ByteBudget::new(100);
        let mut a = Held::new(budget.clone());
        a.resize(70).unwrap();
        let mut b = Held::new(budget.clone());
        assert_eq!(b.resize(40), Err(OverBudget::Global { limit: 100 }));
        assert_eq!((b.held(), budget.used()), (0, 70), "a refused resize takes nothing");
        a.resize(20).unwrap();
        b.resize(80).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_global_budget_binds_across_connections() {
        let global = ByteBudget::new(50);
        let mut a = Reservation::new(ByteBudget::new(40), global.clone());
        let other = ByteBudget::new(40);
        let mut b = Reservation::new(other.clone(), global.clone());
        a.grow(40).unwrap();
        assert_eq!(b.grow(20), Err(OverBudget::Global { limit: 50 }));
        assert_eq!(other.used(), 0, "the connection's share is given back when the global budget refuses");
        b.grow(10).unwrap();
        assert_eq!(global.used(), 50);
    }

    #[test]
    fn large_messages_leave_the_reserve_to_small_ones() {
        let global = ByteBudget::new(800 * 1024);
        let connection = ByteBudget::new(800 * 1024);
        let mut large = Vec::new();
        loop {
            let mut r = Reservation::new(connection.clone(), global.clone());
            if r.grow(100 * 1024).is_err() {
                break;
            }
            large.push(r);
        }
        assert_eq!(large.len(), 7, "large messages stop at 7/8 of the budget");
        let mut small = Reservation::new(connection.clone(), global.clone());
        small.grow(SMALL_MESSAGE).unwrap();
        let mut growing = Reservation::new(connection.clone(), global.clone());
        growing.grow(10).unwrap();
        assert!(growing.grow(SMALL_MESSAGE).is_err(), "a stream that grows past small is large");
    }

    #[test]
    fn concurrent_streams_never_overdraw() {
        let global = ByteBudget::new(1000);
        let connection = ByteBudget::new(1000);
        let held: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (connection, global) = (connection.clone(), global.clone());
                    scope.spawn(move || {
                        let mut kept = Vec::new();
                        for _ in 0..200 {
                            let mut r = Reservation::new(connection.clone(), global.clone());
                            if r.grow(7).is_ok() {
                                kept.push(r);
                            }
                        }
                        kept
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 1000 / 7);
        assert_eq!(global.used(), held.len() * 7);
        drop(held);
        assert_eq!((global.used(), connection.used()), (0, 0));
    }

    #[test]
    fn each_principal_has_its_own_waiting_slots_and_gets_them_back() {
        let calls = WaitingCalls::new(2);
        let first = calls.enter("okta:eve").unwrap();
        let _second = calls.enter("okta:eve").unwrap();
        let refused = calls.enter("okta:eve").unwrap_err();
        assert_eq!(refused.to_string(), "`okta:eve` has 2 calls waiting for their first message already");
        assert!(calls.enter("okta:alice").is_ok(), "another principal is not affected");
        drop(first);
        assert_eq!(calls.waiting("okta:eve"), 1);
        assert!(calls.enter("okta:eve").is_ok(), "a slot given back is free again");
        assert_eq!(calls.waiting("okta:alice"), 0, "entries go when their last slot does");
    }
}
