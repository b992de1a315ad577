//! Rate limits and concurrency caps on allowed calls (`[[rate_limits]]`): what keeps a runaway
//! pipeline from flooding Temporal, and from spending the quotas of whatever its workflows call.
//!
//! A limit picks calls by action, namespace, principal type and the `@id` of the policy that
//! allowed them (each selector optional; all must match), and counts them per principal, per
//! namespace, per principal and namespace, or for everyone together. It has a token bucket
//! (`rate` a second, up to `burst` at once) and, optionally, a cap on the calls it picked that
//! are in flight at once (`max_concurrent`). Only allowed calls are counted: a denied call costs
//! Temporal nothing. Long polls are exempt from the rate (a worker polls again as soon as a poll
//! ends; the connection and stream budgets bound them) but not from `max_concurrent`.
//!
//! A call over a limit is refused with `RESOURCE_EXHAUSTED`, how long to wait in its message and
//! in `grpc-retry-pushback-ms` (gRPC's retry hint), recorded as a refusal naming the limit, and
//! counted in `flowgate_rate_limited_total{limit}`. Nothing is spent when a call is refused: the
//! tokens one limit gave are handed back when another refuses.
//!
//! Limits count RPCs: the commands of a workflow task completion (a child workflow a worker
//! starts) are decided, not counted.
//!
//! State is per replica, in memory, bounded: each limit keeps at most [`MAX_KEYS`] keys, and a
//! bucket that has refilled is forgotten first. With `n` replicas behind a balancer, a
//! principal's effective rate is up to `n` times the configured one; divide by the replica count
//! (Redis-shared limits are not built).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, RateLimitConfig, RateLimitKey};
use crate::temporal::catalog;

/// How many keys (principals, namespaces) one limit tracks at most.
pub const MAX_KEYS: usize = 100_000;

/// What a limit needs to know of an allowed call.
pub struct CallFacts<'a> {
    pub action: &'a str,
    pub long_poll: bool,
    pub namespace: Option<&'a str>,
    pub principal_id: &'a str,
    pub principal_type: &'a str,
    /// The `@id`s of the policies that allowed it.
    pub reasons: &'a [String],
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    #[error("rate limit `{limit}` reached for {key}: retry in {}ms", .retry_after.as_millis().max(1))]
    Rate { limit: String, key: String, retry_after: Duration },
    #[error("rate limit `{limit}` allows {max} calls in flight at once for {key}; retry when one ends")]
    Concurrency { limit: String, key: String, max: u32 },
    #[error("rate limit `{limit}` tracks {MAX_KEYS} keys already; retry later")]
    Full { limit: String },
}

impl Limited {
    pub fn limit(&self) -> &str {
        match self {
            Limited::Rate { limit, .. } | Limited::Concurrency { limit, .. } | Limited::Full { limit } => limit,
        }
    }

    /// How long the client should wait before it tries again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Limited::Rate { retry_after, .. } => *retry_after,
            Limited::Concurrency { .. } | Limited::Full { .. } => Duration::from_secs(1),
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

struct Limit {
    config: RateLimitConfig,
    state: Mutex<HashMap<String, Bucket>>,
}

impl Limit {
    fn applies(&self, call: &CallFacts<'_>) -> bool {
        let c = &self.config;
        let any = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        };
        any(&c.actions, Some(call.action))
            && any(&c.namespaces, call.namespace)
            && any(&c.principal_types, Some(call.principal_type))
            && (c.policies.is_empty() || call.reasons.iter().any(|r| c.policies.contains(r)))
    }

    /// The key a call is counted under: borrowed from the call but for the one kind that
    /// joins two names (no allocation for a key already tracked).
    fn key<'c>(&self, call: &CallFacts<'c>) -> Cow<'c, str> {
        let namespace = call.namespace.unwrap_or("");
        match self.config.per {
            RateLimitKey::Principal => Cow::Borrowed(call.principal_id),
            RateLimitKey::Namespace => Cow::Borrowed(namespace),
            // Length-prefixed: no principal id and namespace can spell another pair's key.
            RateLimitKey::PrincipalNamespace => {
                Cow::Owned(format!("{}:{}{namespace}", call.principal_id.len(), call.principal_id))
            }
            RateLimitKey::All => Cow::Borrowed(""),
        }
    }

    /// A key as refusals name it.
    fn describe(&self, key: &str) -> String {
        match self.config.per {
            RateLimitKey::Principal => format!("principal `{key}`"),
            RateLimitKey::Namespace => format!("namespace `{key}`"),
            RateLimitKey::PrincipalNamespace => {
                let (length, rest) = key.split_once(':').unwrap_or(("0", key));
                let (principal, namespace) = rest.split_at(length.parse::<usize>().unwrap_or(0).min(rest.len()));
                format!("principal `{principal}` in namespace `{namespace}`")
            }
            RateLimitKey::All => "everyone".to_owned(),
        }
    }

    /// Takes a token (unless `exempt`) and, with `max_concurrent`, a slot for `key`, or says
    /// why not.
    fn take(&self, key: &str, exempt: bool, now: Instant) -> Result<(), Limited> {
        let c = &self.config;
        let mut state = self.state.lock().expect("rate limit lock");
        if !state.contains_key(key) {
            if state.len() >= MAX_KEYS {
                // Forget the keys whose buckets are full and idle: they behave as new ones would.
                state.retain(|_, b| b.in_flight > 0 || refill(b, c, now) < c.burst());
                if state.len() >= MAX_KEYS {
                    return Err(Limited::Full { limit: c.name.clone() });
                }
            }
            state.insert(key.to_owned(), Bucket { tokens: c.burst(), refilled: now, in_flight: 0 });
        }
        let bucket = state.get_mut(key).expect("inserted above");
        if let Some(max) = c.max_concurrent
            && bucket.in_flight >= max
        {
            return Err(Limited::Concurrency { limit: c.name.clone(), key: self.describe(key), max });
        }
        if !exempt {
            let tokens = refill(bucket, c, now);
            if tokens < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - tokens) / c.rate);
                return Err(Limited::Rate { limit: c.name.clone(), key: self.describe(key), retry_after });
            }
            bucket.tokens = tokens - 1.0;
            bucket.refilled = now;
        }
        if c.max_concurrent.is_some() {
            bucket.in_flight += 1;
        }
        Ok(())
    }

    /// Hands back what [`take`](Self::take) took: the slot (`slot`), and the token (`refund`).
    fn give_back(&self, key: &str, slot: bool, refund: bool) {
        let mut state = self.state.lock().expect("rate limit lock");
        if let Some(bucket) = state.get_mut(key) {
            if slot {
                bucket.in_flight = bucket.in_flight.saturating_sub(1);
            }
            if refund {
                bucket.tokens = (bucket.tokens + 1.0).min(self.config.burst());
            }
        }
    }
}

/// The bucket's tokens at `now` (not stored).
fn refill(bucket: &Bucket, config: &RateLimitConfig, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
    (bucket.tokens + elapsed * config.rate).min(config.burst())
}

/// Every configured limit.
#[derive(Clone, Default)]
pub struct RateLimits {
    limits: Arc<Vec<Arc<Limit>>>,
}

/// The concurrency slots an admitted call holds until it ends (dropped: given back). Empty, and
/// free, unless a limit with `max_concurrent` picked the call.
#[must_use]
pub struct Admission {
    held: Vec<(Arc<Limit>, String)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        for (limit, key) in self.held.drain(..) {
            limit.give_back(&key, true, false);
        }
    }
}

impl RateLimits {
    pub fn new(configs: &[RateLimitConfig]) -> RateLimits {
        let limits = configs
            .iter()
            .map(|config| Arc::new(Limit { config: config.clone(), state: Mutex::new(HashMap::new()) }))
            .collect();
        RateLimits { limits: Arc::new(limits) }
    }

    /// Refuses a limit naming an action that is no RPC: a typo would pick nothing, silently.
    pub fn check(configs: &[RateLimitConfig]) -> Result<(), ConfigError> {
        for (i, config) in configs.iter().enumerate() {
            if let Some(unknown) = config.actions.iter().find(|a| catalog::rpc(a).name != a.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("rate_limits[{i}].actions"),
                    message: format!(
                        "`{unknown}` is not a Temporal RPC (actions are RPC names, e.g. `StartWorkflowExecution`)"
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Admits an allowed call under every limit that picks it, or refuses it under the first
    /// that will not (having given back what the others took).
    pub fn admit(&self, call: &CallFacts<'_>) -> Result<Admission, Limited> {
        let now = Instant::now();
        let mut admission = Admission { held: Vec::new() };
        let mut spent: Vec<(&Arc<Limit>, Cow<'_, str>)> = Vec::new();
        for limit in self.limits.iter().filter(|l| l.applies(call)) {
            let key = limit.key(call);
            if let Err(limited) = limit.take(&key, call.long_poll, now) {
                // What the earlier limits gave this call goes back: tokens and slots.
                for (limit, key) in spent.drain(..) {
                    limit.give_back(&key, limit.config.max_concurrent.is_some(), !call.long_poll);
                }
                admission.held.clear();
                return Err(limited);
            }
            if limit.config.max_concurrent.is_some() {
                admission.held.push((limit.clone(), key.clone().into_owned()));
            }
            spent.push((limit, key));
        }
        Ok(admission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> RateLimits {
        let config: crate::config::Config = toml::from_str(&format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"http://127.0.0.1:1\"\n\
             [policy]\ndir = \"p\"\n[audit]\npath = \"-\"\n[[rate_limits]]\n{text}"
        ))
        .unwrap();
        RateLimits::new(&config.rate_limits)
    }

    fn call<'a>(principal: &'a str, action: &'a str, reasons: &'a [String]) -> CallFacts<'a> {
        CallFacts {
            action,
            long_poll: action.starts_with("Poll"),
            namespace: Some("payments"),
            principal_id: principal,
            principal_type: "CiJob",
            reasons,
        }
    }

    #[test]
    fn an_action_that_is_no_rpc_is_refused() {
        let config: crate::config::Config = toml::from_str(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"http://127.0.0.1:1\"\n\
             [policy]\ndir = \"p\"\n[audit]\npath = \"-\"\n[[rate_limits]]\nname = \"x\"\nrate = 1.0\n\
             actions = [\"StartWorkflowExecution\", \"StartWorkflow\"]",
        )
        .unwrap();
        let error = RateLimits::check(&config.rate_limits).unwrap_err().to_string();
        assert!(
            error.contains("`rate_limits[0].actions`") && error.contains("`StartWorkflow` is not a Temporal RPC"),
            "{error}"
        );
    }

    #[test]
    fn a_burst_then_the_rate_per_principal() {
        let limits = limit("name = \"starts\"\nactions = [\"StartWorkflowExecution\"]\nrate = 10.0\nburst = 3");
        let none = [];
        let ci = call("github:ci", "StartWorkflowExecution", &none);
        let admitted: Vec<_> = (0..3).map(|_| limits.admit(&ci).unwrap()).collect();
        let Err(Limited::Rate { limit, retry_after, .. }) = limits.admit(&ci) else { panic!("the fourth is refused") };
        assert_eq!(limit, "starts");
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100), "{retry_after:?}");
        // Someone else has a bucket of their own; other actions are not picked.
        assert!(limits.admit(&call("okta:alice", "StartWorkflowExecution", &none)).is_ok());
        assert!(limits.admit(&call("github:ci", "DescribeWorkflowExecution", &none)).is_ok());
        drop(admitted);
        std::thread::sleep(Duration::from_millis(120));
        assert!(limits.admit(&ci).is_ok(), "a token came back after 1/rate");
    }

    #[test]
    fn principal_and_namespace_keys_cannot_be_spelled_by_another_pair() {
        let limits = limit("name = \"pn\"\nper = \"principal_namespace\"\nrate = 0.001\nburst = 1");
        let none = [];
        let mut victim = call("okta:alice", "StartWorkflowExecution", &none);
        victim.namespace = Some("payments");
        let mut other = call("okta:alice\0payments", "StartWorkflowExecution", &none);
        other.namespace = Some("");
        let _spent = limits.admit(&other).unwrap();
        let _victim = limits.admit(&victim).expect("a bucket of its own");
        let refused = limits.admit(&victim).err().expect("its own bucket is empty");
        assert_eq!(
            refused.to_string().split(": retry").next().unwrap(),
            "rate limit `pn` reached for principal `okta:alice` in namespace `payments`"
        );
    }

    #[test]
    fn concurrency_is_capped_and_long_polls_skip_the_rate() {
        let limits = limit("name = \"polls\"\nrate = 0.001\nburst = 1\nmax_concurrent = 2");
        let none = [];
        let poll = call("flowgate:worker", "PollWorkflowTaskQueue", &none);
        let first = limits.admit(&poll).unwrap();
        let _second = limits.admit(&poll).expect("polls spend no tokens");
        assert!(matches!(limits.admit(&poll), Err(Limited::Concurrency { max: 2, .. })));
        drop(first);
        assert!(limits.admit(&poll).is_ok(), "a slot came back when a poll ended");
    }

    #[test]
    fn policies_pick_calls_by_id_and_a_refusal_spends_nothing() {
        let limits = limit(
            "name = \"by-policy\"\npolicies = [\"ci-deploys\"]\nrate = 0.001\nburst = 5\n\
             [[rate_limits]]\nname = \"everyone\"\nper = \"all\"\nrate = 0.001\nburst = 1",
        );
        let by_ci = ["ci-deploys".to_owned()];
        let other = ["people".to_owned()];
        let _one = limits.admit(&call("a", "StartWorkflowExecution", &by_ci)).unwrap();
        // `everyone` has no token left: refused, and `by-policy` keeps its token.
        assert_eq!(
            limits.admit(&call("a", "StartWorkflowExecution", &by_ci)).err().expect("refused").limit(),
            "everyone"
        );
        let state = limits.limits[0].state.lock().unwrap();
        let bucket = state.get("a").unwrap();
        assert!((bucket.tokens - 4.0).abs() < 0.01, "{}", bucket.tokens);
        drop(state);
        assert_eq!(
            limits.admit(&call("b", "StartWorkflowExecution", &other)).err().expect("refused").limit(),
            "everyone"
        );
    }
}
