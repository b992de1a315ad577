//! Authorization: Cedar policies from `policy.dir`, loaded and validated once, asked per call.
//!
//! A policy set is every `*.cedar` file of the directory plus `schema.cedarschema`. Loading is
//! all-or-nothing: a parse error, a policy without a unique `@id`, a strict-validation error or
//! a schema that does not declare every action flowgate can ask about is reported with its file,
//! line and column, and the set is not used. Policies are known by their `@id`, so decisions
//! name the policies that determined them.
//!
//! Per call, the request is built from entities prepared ahead: the principal's (cached with
//! its token) and each action's (built at load time with its access group as parent). The
//! resource entity is the only one made per call.
//!
//! Two things keep a decision cheap on the path of every call:
//!
//! * **Per-action slices.** At load time each action gets the policies whose action scope can
//!   match it (`action`, `action == A`, `action in [A, group-of-A]`); Cedar evaluates only those.
//!   A policy whose action scope does not match is false before its conditions run, so it can
//!   neither determine a decision nor report an error: the slice decides exactly as the whole
//!   set would.
//! * **Decision cache.** A decision is a pure function of the policy set, the principal's
//!   entities (fixed for the life of its token), the action, the method and the call's
//!   resource and context fields. Each principal keeps its last [`DECISION_CACHE_SIZE`]
//!   decisions keyed by exactly those inputs and tagged with the policy set's generation, so a
//!   worker polling the same task queue is decided by Cedar once per token and policy set, and
//!   a reload invalidates everything at once.
//! * **Decisions shared across tokens.** A principal's cache dies with its token, and CI jobs
//!   each bring a new one. So each set also keeps decisions keyed by what its policies can see
//!   of a principal: its uid, `issuer`, `sub`, groups, and the tags the set names literally in
//!   `getTag` / `hasTag` (found at load). The next job of a pipeline, whose token differs only
//!   in claims no policy reads (`jti`, `run_id`, `iat`), is decided as the last one was,
//!   without Cedar. A set that names a tag by any other expression shares nothing.
//!
//! The files, one concern each: [`load`] reads a policy directory and locates every problem;
//! [`engine`] builds the validated set with its per-action slices and decides; [`cache`] keeps
//! a principal's recent decisions and the decisions principals share; [`schema`] generates the Cedar schema from the method
//! catalog; [`lint`] warns about policies that are valid Cedar but cannot do what they say;
//! [`grant`] enforces the limits a flowgate credential carries. `authz` sees principals as
//! `authn` made them and calls as `temporal` read them; it never reads a request itself.

pub mod cache;
pub mod engine;
pub mod grant;
pub mod lint;
pub mod load;
pub mod schema;

pub use self::cache::{DECISION_CACHE_SIZE, DecisionCache};
pub use self::engine::{Decision, PUBLIC_REASON, PolicyEngine, call_context, resource_entities};
pub use self::load::{MAX_POLICY_NESTING, PolicyError, PolicyProblem, policy_files};
pub use self::schema::{SCHEMA_FILE, generated_schema};

/// The action of the token exchange (`Temporal::Action::"IssueCredential"`).
pub const ISSUE_CREDENTIAL: &str = "IssueCredential";
