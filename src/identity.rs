//! Identity in Temporal's own history: what flowgate writes into a request in its caller's name.
//!
//! Temporal records the `identity` string a client puts in its request (who started, signalled,
//! terminated, polled, completed), and SDKs fill it with whatever they like (`pid@host`). After
//! flowgate has verified the caller, that string is the one thing in Temporal's history that
//! still says what the client claimed. Here it becomes what flowgate verified:
//!
//! * **identity**: rendered from `identity.template` (or the issuer's own `identity`), e.g.
//!   `okta:00u-alice via flowgate` or `github:acme/payments@prod`;
//! * **the initiator header** (`identity.header`, default `flowgate-principal`): starts and
//!   signals carry a Temporal header whose payload is JSON naming the principal, its issuer, the
//!   decision that let the call through and chosen claims of its token (repository, commit,
//!   pipeline, build URL). Workflow code reads it through its SDK's header API; a header of the
//!   same name that the client sent never reaches Temporal.
//!
//! **Rendered once per token.** A [`PrincipalStamp`] is built when a token is first verified and
//! kept with its session; a call only copies its request with a few dozen bytes appended
//! (`temporal::stamp`) and, for starts and signals, puts its decision id into the header.
//! Templates were parsed when the config was read.
//!
//! What is *not* stamped: the commands of a workflow task (child workflows, signals to other
//! workflows, continue-as-new): they are the workflow's doing, and the worker's identity is
//! already on the task completion that carries them.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::authn::Principal;
use crate::config::{Config, IdentityConfig, IdentityTemplate, TemplatePart};
use crate::error::truncated;
use crate::temporal::MethodSpec;
use crate::temporal::stamp::{self, Stamps};
use crate::temporal::wire::WireError;

/// How much of the client's own identity a `{client}` placeholder keeps.
pub const MAX_CLIENT_IDENTITY: usize = 128;

/// The identity templates and the header settings, from the config.
#[derive(Debug)]
pub struct Stamper {
    template: IdentityTemplate,
    per_issuer: HashMap<String, IdentityTemplate>,
    header: Option<String>,
    header_claims: Vec<String>,
}

impl Stamper {
    /// `config`'s `[identity]`, with each issuer's own template (`issuers[].identity`).
    pub fn new(config: &Config) -> Stamper {
        let templates =
            config.issuers.iter().filter_map(|issuer| Some((issuer.name.clone(), issuer.identity.clone()?)));
        Stamper::with_templates(&config.identity, templates)
    }

    fn with_templates(
        config: &IdentityConfig,
        per_issuer: impl IntoIterator<Item = (String, IdentityTemplate)>,
    ) -> Stamper {
        Stamper {
            template: config.template.clone(),
            per_issuer: per_issuer.into_iter().collect(),
            header: Some(config.header.clone()).filter(|name| !name.is_empty()),
            header_claims: config.header_claims.clone(),
        }
    }

    /// What `principal`'s calls are stamped with.
    pub fn for_principal(&self, principal: &Principal) -> PrincipalStamp {
        let template = self.per_issuer.get(&principal.issuer).unwrap_or(&self.template);
        let identity = (!template.is_empty()).then(|| render(template, principal));
        let header = self.header.as_ref().map(|name| {
            let claims: Map<String, Value> = self
                .header_claims
                .iter()
                .filter_map(|claim| principal.tags.get(claim).map(|value| (claim.clone(), Value::from(value.as_str()))))
                .collect();
            let mut json = serde_json::json!({
                "principal": principal.id,
                "kind": principal.kind.entity_type(),
                "issuer": principal.issuer,
                "issuer_url": principal.issuer_url,
                "sub": principal.sub,
                "claims": claims,
            })
            .to_string();
            // The decision id goes last: the object is kept open before it.
            json.pop();
            json.push_str(r#","decision_id":""#);
            HeaderParts { name: name.clone(), before_decision: json }
        });
        PrincipalStamp { identity, header }
    }
}

/// A rendered template: fixed text, or text around the client's own identity.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rendered {
    Fixed(String),
    AroundClient { before: String, after: String },
}

#[derive(Debug)]
struct HeaderParts {
    name: String,
    /// The JSON object up to the decision id's opening quote.
    before_decision: String,
}

/// What one principal's calls are stamped with, rendered once per token.
#[derive(Debug)]
pub struct PrincipalStamp {
    identity: Option<Rendered>,
    header: Option<HeaderParts>,
}

impl PrincipalStamp {
    /// Nothing to stamp.
    pub fn none() -> PrincipalStamp {
        PrincipalStamp { identity: None, header: None }
    }

    /// `message` stamped for a call of `spec` allowed by decision `decision_id`; `None` when the
    /// request goes on unchanged.
    pub fn apply(&self, spec: &MethodSpec, message: &[u8], decision_id: &str) -> Result<Option<Vec<u8>>, WireError> {
        let identity = match (&self.identity, spec.identity) {
            (Some(Rendered::Fixed(text)), Some(_)) => Some(std::borrow::Cow::Borrowed(text.as_str())),
            (Some(Rendered::AroundClient { before, after }), Some(_)) => {
                let client = truncated(stamp::client_identity(spec, message)?, MAX_CLIENT_IDENTITY);
                Some(std::borrow::Cow::Owned(format!("{before}{client}{after}")))
            }
            _ => None,
        };
        let header = match (&self.header, spec.header) {
            (Some(parts), Some(_)) => {
                let mut json = String::with_capacity(parts.before_decision.len() + decision_id.len() + 2);
                json.push_str(&parts.before_decision);
                // A decision id is a UUID: nothing in it needs escaping.
                json.push_str(decision_id);
                json.push_str("\"}");
                Some((parts.name.as_str(), stamp::header(&parts.name, json.as_bytes())))
            }
            _ => None,
        };
        if identity.is_none() && header.is_none() {
            return Ok(None);
        }
        let header = header.as_ref().map(|(name, encoded)| (*name, encoded.as_slice()));
        stamp::stamp(spec, message, Stamps { identity: identity.as_deref(), header })
    }

    /// The identity Temporal records for this principal when the template does not quote the
    /// client (for the decision record and tests); `None` otherwise or when off.
    pub fn fixed_identity(&self) -> Option<&str> {
        match &self.identity {
            Some(Rendered::Fixed(text)) => Some(text),
            _ => None,
        }
    }
}

fn render(template: &IdentityTemplate, principal: &Principal) -> Rendered {
    let mut before = String::new();
    let mut after: Option<String> = None;
    for part in &template.parts {
        let out = after.as_mut().unwrap_or(&mut before);
        match part {
            TemplatePart::Text(text) => out.push_str(text),
            TemplatePart::Principal => out.push_str(&principal.id),
            TemplatePart::Kind => out.push_str(principal.kind.entity_type()),
            TemplatePart::Issuer => out.push_str(&principal.issuer),
            TemplatePart::Sub => out.push_str(&principal.sub),
            TemplatePart::Claim(claim) => out.push_str(principal.tags.get(claim).map_or("", String::as_str)),
            TemplatePart::Client => after = Some(String::new()),
        }
    }
    match after {
        Some(after) => Rendered::AroundClient { before, after },
        None => Rendered::Fixed(before),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::authn::principal::ClaimMapping;
    use crate::config::PrincipalKind;
    use crate::temporal::lookup;
    use crate::temporal::wire;

    fn principal() -> Principal {
        let mapping = ClaimMapping {
            issuer_name: "github".into(),
            kind: PrincipalKind::CiJob,
            groups_claim: None,
            client_credentials_are_services: false,
        };
        let claims = serde_json::json!({
            "sub": "repo:acme/payments:environment:prod",
            "repository": "acme/payments",
            "environment": "prod",
            "sha": "abc123",
            "secret_thing": "not copied",
        });
        let claims = claims.as_object().unwrap().clone();
        mapping.principal(&claims, SystemTime::now() + Duration::from_secs(60)).unwrap()
    }

    fn config(template: &str) -> IdentityConfig {
        IdentityConfig {
            template: IdentityTemplate::parse(template).unwrap(),
            header: "flowgate-principal".into(),
            header_claims: vec!["repository".into(), "sha".into(), "missing".into()],
        }
    }

    fn field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::put_bytes_field(&mut out, number, value);
        out
    }

    const START: &str = "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution";

    #[test]
    fn templates_render_the_verified_principal() {
        let stamp = Stamper::with_templates(&config("{principal} via flowgate"), []).for_principal(&principal());
        assert_eq!(stamp.fixed_identity(), Some("github:repo:acme/payments:environment:prod via flowgate"));
        let custom = IdentityTemplate::parse("{issuer}:{claim:repository}@{claim:environment} ({kind})").unwrap();
        let stamp = Stamper::with_templates(&config("{principal}"), [("github".to_owned(), custom)])
            .for_principal(&principal());
        assert_eq!(stamp.fixed_identity(), Some("github:acme/payments@prod (CiJob)"));
    }

    #[test]
    fn a_start_gets_the_identity_and_the_header_with_its_decision() {
        let stamp = Stamper::with_templates(&config("{principal}"), []).for_principal(&principal());
        let message = [field(1, b"payments"), field(9, b"mallory")].concat();
        let stamped = stamp.apply(lookup(START), &message, "0193-decision").unwrap().unwrap();
        assert_eq!(wire::last_string(&stamped, &[9]).unwrap(), Some("github:repo:acme/payments:environment:prod"));
        let entry = wire::last_bytes(&stamped, &[16, 1]).unwrap().unwrap();
        assert_eq!(wire::last_string(entry, &[1]).unwrap(), Some("flowgate-principal"));
        let json: Value = serde_json::from_slice(wire::last_bytes(entry, &[2, 2]).unwrap().unwrap()).unwrap();
        assert_eq!(json["principal"], "github:repo:acme/payments:environment:prod");
        assert_eq!(json["decision_id"], "0193-decision");
        assert_eq!(json["kind"], "CiJob");
        assert_eq!(json["claims"], serde_json::json!({"repository": "acme/payments", "sha": "abc123"}));
    }

    #[test]
    fn the_client_placeholder_quotes_a_bounded_client_identity() {
        let stamp = Stamper::with_templates(&config("{principal} ({client})"), []).for_principal(&principal());
        let long = "é".repeat(100);
        let message = [field(1, b"payments"), field(9, long.as_bytes())].concat();
        let stamped = stamp.apply(lookup(START), &message, "d").unwrap().unwrap();
        let identity = wire::last_string(&stamped, &[9]).unwrap().unwrap();
        assert_eq!(identity, format!("github:repo:acme/payments:environment:prod ({})", "é".repeat(64)));
    }

    #[test]
    fn off_leaves_requests_alone() {
        let config =
            IdentityConfig { template: IdentityTemplate::parse("").unwrap(), header: String::new(), ..config("") };
        let stamp = Stamper::with_templates(&config, []).for_principal(&principal());
        assert_eq!(stamp.apply(lookup(START), &field(9, b"mallory"), "d").unwrap(), None);
        assert_eq!(PrincipalStamp::none().apply(lookup(START), &field(9, b"x"), "d").unwrap(), None);
    }

    #[test]
    fn template_errors_name_the_placeholder() {
        assert!(IdentityTemplate::parse("{nope}").unwrap_err().contains("`{nope}`"));
        assert!(IdentityTemplate::parse("a}b").is_err());
        assert!(IdentityTemplate::parse("{client}{client}").is_err());
        assert_eq!(IdentityTemplate::parse("{{x}}").unwrap().parts, vec![TemplatePart::Text("{x}".into())]);
    }
}
