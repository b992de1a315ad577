//! The verified-token cache: a token's signature is checked once, then its value (the
//! gateway's `session::Session`: the principal and what is kept for it) is reused until the
//! token expires.
//!
//! It is a [`quick_cache::sync::Cache`]: sharded (a lookup or an insert locks one of a few dozen
//! shards, never the whole cache, and never for longer than one hash-table operation), bounded
//! by entry count, with a scan-resistant eviction policy (S3-FIFO-like: a new entry starts in a
//! small probationary section and is promoted only if it is read again; evicted newcomers leave
//! a ghost key so a token that comes back is admitted straight into the main section). It
//! replaces a hand-written `RwLock<HashMap>` that, once full of live tokens, scanned every entry
//! under the write lock on each uncached token (O(n) per new token, every reader stalled), and
//! then refused to cache new tokens at all. Here a flood of distinct one-shot tokens churns
//! through the probationary section only: callers that come back keep their entries.
//!
//! Keys are the full token text, so two tokens can never share an entry; memory is bounded by
//! `max_entries` times the largest token the header limits allow. The crate has no notion of
//! time, so expiry is ours: [`TokenCache::get`] never returns an expired value (and drops it),
//! and [`TokenCache::sweep`] drops every expired entry (the server calls it every 60 s).

use std::sync::Arc;
use std::time::SystemTime;

use quick_cache::sync::Cache;

/// A cached value that stops being valid at some point (a token's `exp`).
pub trait Expires {
    fn expires_at(&self) -> SystemTime;
}

pub struct TokenCache<V> {
    /// `None` when `max_entries` is 0: nothing is ever cached.
    entries: Option<Cache<Box<str>, Arc<V>>>,
}

impl<V: Expires + Send + Sync + 'static> TokenCache<V> {
    /// A cache of at most about `max_entries` tokens (the crate rounds per shard); 0 never caches.
    pub fn new(max_entries: usize) -> Self {
        TokenCache { entries: (max_entries > 0).then(|| Cache::new(max_entries)) }
    }

    /// The cached value of `token`, unless it has expired.
    pub fn get(&self, token: &str) -> Option<Arc<V>> {
        let entries = self.entries.as_ref()?;
        let value = entries.get(token)?;
        if value.expires_at() > SystemTime::now() {
            return Some(value);
        }
        // Expired: free its slot now rather than at the next sweep.
        entries.remove_if(token, |v| v.expires_at() <= SystemTime::now());
        None
    }

    pub fn insert(&self, token: &str, value: Arc<V>) {
        if let Some(entries) = &self.entries {
            entries.insert(token.into(), value);
        }
    }

    /// Drops every entry expired at `now` (one shard locked at a time).
    pub fn sweep(&self, now: SystemTime) {
        if let Some(entries) = &self.entries {
            entries.retain(|_, value| value.expires_at() > now);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Value(SystemTime);

    impl Expires for Value {
        fn expires_at(&self) -> SystemTime {
            self.0
        }
    }

    fn value(expires_in: i64) -> Arc<Value> {
        let now = SystemTime::now();
        let magnitude = Duration::from_secs(expires_in.unsigned_abs());
        Arc::new(Value(if expires_in >= 0 { now + magnitude } else { now - magnitude }))
    }

    #[test]
    fn expired_entries_are_not_served() {
        let cache = TokenCache::new(10);
        cache.insert("live", value(60));
        cache.insert("dead", value(-1));
        cache.insert("later", value(60));
        assert!(cache.get("live").is_some());
        assert!(cache.get("dead").is_none());
        assert_eq!(cache.len(), 2, "reading an expired entry drops it");
        cache.sweep(SystemTime::now() + Duration::from_secs(120));
        assert!(cache.is_empty(), "the sweep drops what has expired by then");
    }

    #[test]
    fn a_sweep_keeps_live_entries() {
        let cache = TokenCache::new(10);
        cache.insert("live", value(60));
        cache.insert("dead", value(-1));
        cache.sweep(SystemTime::now());
        assert_eq!(cache.len(), 1);
        assert!(cache.get("live").is_some());
    }

    #[test]
    fn tokens_never_share_an_entry() {
        let cache = TokenCache::new(10);
        let (a, b) = (value(60), value(60));
        cache.insert("header.payload.sig-a", a.clone());
        cache.insert("header.payload.sig-b", b.clone());
        assert!(Arc::ptr_eq(&cache.get("header.payload.sig-a").unwrap(), &a));
        assert!(Arc::ptr_eq(&cache.get("header.payload.sig-b").unwrap(), &b));
        assert!(cache.get("header.payload.sig-").is_none());
        assert!(cache.get("header.payload").is_none());
    }

    #[test]
    fn zero_entries_never_caches() {
        let cache = TokenCache::new(0);
        cache.insert("a", value(60));
        assert!(cache.get("a").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::new(1_000);
        for i in 0..20_000 {
            cache.insert(&format!("token-{i}"), value(60));
        }
        // The crate rounds capacity per shard; never far above the bound.
        assert!(cache.len() <= 1_100, "{} entries", cache.len());
        // Full, it still takes new tokens (the old map refused them until some expired).
        cache.insert("newcomer", value(60));
        assert!(cache.get("newcomer").is_some());
    }

    #[test]
    fn a_flood_of_one_shot_tokens_does_not_evict_callers_that_come_back() {
        let capacity = 10_000;
        let cache = TokenCache::new(capacity);
        // Real callers fill half the cache and come back a few times.
        let hot: Vec<String> = (0..capacity / 2).map(|i| format!("hot-{i}")).collect();
        for token in &hot {
            cache.insert(token, value(600));
        }
        for _ in 0..3 {
            for token in &hot {
                assert!(cache.get(token).is_some());
            }
        }
        // Then ten times the capacity of distinct tokens, each seen once.
        for i in 0..capacity * 10 {
            cache.insert(&format!("one-shot-{i}"), value(600));
        }
        let missing = hot.iter().filter(|token| cache.get(token).is_none()).count();
        assert_eq!(missing, 0, "{missing} of {} returning callers were evicted by one-shot tokens", hot.len());
        assert!(cache.len() <= capacity + capacity / 10);
    }

    #[test]
    fn concurrent_readers_and_writers_agree() {
        let cache = Arc::new(TokenCache::new(1_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let token = format!("t{t}-{}", i % 100);
                        match cache.get(&token) {
                            Some(_) => {}
                            None => cache.insert(&token, value(60)),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        for t in 0..4 {
            assert!(cache.get(&format!("t{t}-0")).is_some());
        }
    }
}
