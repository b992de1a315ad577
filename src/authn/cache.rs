//! The verified-token cache: a token's signature is checked once, then the principal is reused
//! until the token expires.
//!
//! Keys are the full token text, so two tokens can never share an entry. The cache is bounded:
//! when full, expired entries are swept; if it is still full, new tokens are verified on every
//! call instead of evicting live ones (a flood of distinct tokens cannot push out real callers).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::Principal;

/// What a cached value knows of its token: when it stops being valid.
pub trait Expires {
    fn expires_at(&self) -> SystemTime;
}

impl Expires for Principal {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

pub struct TokenCache<V> {
    entries: RwLock<HashMap<Box<str>, Arc<V>>>,
    max_entries: usize,
}

impl<V: Expires + Send + Sync + 'static> TokenCache<V> {
    pub fn new(max_entries: usize) -> TokenCache<V> {
        TokenCache { entries: RwLock::new(HashMap::new()), max_entries }
    }

    /// A cached value whose token has not expired.
    pub fn get(&self, token: &str) -> Option<Arc<V>> {
        let entries = self.entries.read().expect("token cache lock");
        entries.get(token).filter(|p| p.expires_at() > SystemTime::now()).cloned()
    }

    pub fn insert(&self, token: &str, principal: Arc<V>) {
        if self.max_entries == 0 {
            return;
        }
        let mut entries = self.entries.write().expect("token cache lock");
        if entries.len() >= self.max_entries {
            let now = SystemTime::now();
            entries.retain(|_, p| p.expires_at() > now);
            if entries.len() >= self.max_entries {
                return;
            }
        }
        entries.insert(token.into(), principal);
    }

    pub fn sweep(&self, now: SystemTime) {
        self.entries.write().expect("token cache lock").retain(|_, p| p.expires_at() > now);
    }

    pub fn len(&self) -> usize {
        self.entries.read().expect("token cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::PrincipalKind;

    fn principal(expires_in: i64) -> Arc<Principal> {
        let now = SystemTime::now();
        let expires_at = if expires_in >= 0 {
            now + Duration::from_secs(expires_in as u64)
        } else {
            now - Duration::from_secs((-expires_in) as u64)
        };
        Arc::new(Principal::new(PrincipalKind::User, "okta", "u", vec![], Default::default(), expires_at))
    }

    #[test]
    fn expired_entries_are_not_served() {
        let cache = TokenCache::new(10);
        cache.insert("live", principal(60));
        cache.insert("dead", principal(-1));
        assert!(cache.get("live").is_some());
        assert!(cache.get("dead").is_none());
        cache.sweep(SystemTime::now());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_keeps_live_entries() {
        let cache = TokenCache::new(2);
        cache.insert("a", principal(60));
        cache.insert("b", principal(-1));
        cache.insert("c", principal(60));
        assert!(cache.get("c").is_some(), "the expired entry made room");
        cache.insert("d", principal(60));
        assert!(cache.get("d").is_none(), "no room: not cached");
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
    }
}
