//! The principal: who a verified token says the caller is, in the shape policies see.
//!
//! `Temporal::<Kind>::"<issuer name>:<sub>"` with attributes `issuer` and `sub`, every string,
//! number and boolean claim as a string-valued entity tag (nested objects flattened with `.`),
//! and the issuer's groups claim as parents `Temporal::Group::"<issuer name>:<group>"`. The Cedar
//! entities are built once per token (the token cache keeps them), not once per call.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{LazyLock, RwLock};
use std::time::SystemTime;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};

use crate::authn::AuthnError;
use crate::config::PrincipalKind;
use crate::credential::MintedGrant;

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The configured issuer name (not the URL).
    pub issuer: String,
    pub sub: String,
    /// `<issuer name>:<sub>`, the Cedar entity id.
    pub id: String,
    pub groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// When the token stops being valid (its `exp`).
    pub expires_at: SystemTime,
    /// The principal entity and its group entities, ready for Cedar.
    pub entities: Vec<Entity>,
    pub uid: EntityUid,
    /// The issuer's URL (`iss`), for the `act` claim of credentials minted for it.
    pub issuer_url: String,
    /// For flowgate's own credentials: the grant they carry, enforced on every call.
    pub minted: Option<MintedGrant>,
}

/// How one issuer's claims become a principal: the part of an issuer's settings that policies
/// see. The gateway, `flowgate policy test` and `flowgate explain` share it, so a test case's
/// principal is exactly the one a real token with those claims would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The configured issuer name (principal ids are `<name>:<sub>`).
    pub issuer_name: String,
    pub kind: PrincipalKind,
    pub groups_claim: Option<String>,
    /// Okta: a token whose `sub` equals its `cid` (and that has no `uid`) is a service's.
    pub client_credentials_are_services: bool,
}

impl ClaimMapping {
    /// The principal of (already verified) `claims`.
    pub fn principal(&self, claims: &Map<String, Value>, expires_at: SystemTime) -> Result<Principal, AuthnError> {
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.as_str(),
            None | Some(Value::Null) | Some(Value::String(_)) => return Err(AuthnError::MissingClaim("sub".into())),
            Some(_) => return Err(AuthnError::ClaimType { claim: "sub".into(), expected: "a string" }),
        };
        let groups = match &self.groups_claim {
            Some(claim) => groups_from(claims, claim).map_err(|_| AuthnError::ClaimType {
                claim: claim.clone(),
                expected: "a string or array of strings",
            })?,
            None => Vec::new(),
        };
        let kind = if self.client_credentials_are_services
            && claims.get("cid").and_then(Value::as_str) == Some(sub)
            && !claims.contains_key("uid")
        {
            PrincipalKind::Service
        } else {
            self.kind
        };
        Ok(Principal::new(kind, &self.issuer_name, sub, groups, flatten_claims(claims), expires_at))
    }
}

/// `Temporal::<type_name>::"<id>"`. Type names come from code (a dozen of them), and Cedar's
/// parser is the dear part of building a uid (several µs; a principal, its groups and every
/// resource need one), so each type name is parsed once and kept.
pub fn entity_uid(type_name: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(temporal_type(type_name), EntityId::new(id))
}

/// At most this many distinct type names are kept (the schema has fewer); past it, parsed
/// each time, so no caller can grow the table without bound.
const MAX_KEPT_TYPE_NAMES: usize = 64;

fn temporal_type(type_name: &str) -> EntityTypeName {
    static PARSED: LazyLock<RwLock<HashMap<String, EntityTypeName>>> = LazyLock::new(Default::default);
    if let Some(parsed) = PARSED.read().unwrap_or_else(|p| p.into_inner()).get(type_name) {
        return parsed.clone();
    }
    let parsed =
        EntityTypeName::from_str(&format!("Temporal::{type_name}")).expect("static entity type names are valid");
    let mut kept = PARSED.write().unwrap_or_else(|p| p.into_inner());
    if kept.len() < MAX_KEPT_TYPE_NAMES {
        kept.insert(type_name.to_owned(), parsed.clone());
    }
    parsed
}

/// Flattens claims into tags: strings as they are, numbers and booleans as their JSON text,
/// nested objects joined with `.`; arrays and nulls are not tags.
pub fn flatten_claims(claims: &Map<String, Value>) -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
        match value {
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            Value::Number(n) => {
                out.insert(prefix.to_owned(), n.to_string());
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), b.to_string());
            }
            Value::Object(map) => {
                for (key, inner) in map {
                    walk(&format!("{prefix}.{key}"), inner, out);
                }
            }
            Value::Array(_) | Value::Null => {}
        }
    }
    let mut out = BTreeMap::new();
    for (key, value) in claims {
        walk(key, value, &mut out);
    }
    out
}

/// The groups claim: an array of strings, or one string. Other shapes are a typed-claim error.
pub fn groups_from(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, String> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(group)) => Ok(vec![group.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| format!("claim `{claim}` holds a non-string group"))
            })
            .collect(),
        Some(_) => Err(format!("claim `{claim}` must be a string or an array of strings")),
    }
}

impl crate::authn::Expires for Principal {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl Principal {
    pub fn new(
        kind: PrincipalKind,
        issuer: &str,
        sub: &str,
        groups: Vec<String>,
        tags: BTreeMap<String, String>,
        expires_at: SystemTime,
    ) -> Principal {
        let id = format!("{issuer}:{sub}");
        let uid = entity_uid(kind.entity_type(), &id);
        let group_uids: Vec<EntityUid> = groups.iter().map(|g| entity_uid("Group", &format!("{issuer}:{g}"))).collect();
        let attrs = [
            ("issuer".to_owned(), RestrictedExpression::new_string(issuer.to_owned())),
            ("sub".to_owned(), RestrictedExpression::new_string(sub.to_owned())),
        ];
        let tag_values = tags.iter().map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
        let principal = Entity::new_with_tags(uid.clone(), attrs, group_uids.iter().cloned(), tag_values)
            .expect("string attributes and tags always evaluate");
        let mut entities = vec![principal];
        entities.extend(group_uids.into_iter().map(|g| Entity::new_no_attrs(g, Default::default())));
        Principal {
            kind,
            issuer: issuer.to_owned(),
            sub: sub.to_owned(),
            id,
            groups,
            tags,
            expires_at,
            entities,
            uid,
            issuer_url: String::new(),
            minted: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_flatten_like_the_design_says() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"system:serviceaccount:payments:worker","build_number":42,"compliant":false,
                "step_key":null,"aud":["a","b"],
                "kubernetes.io":{"namespace":"payments","pod":{"name":"w-1"}}}"#,
        )
        .unwrap();
        let tags = flatten_claims(&claims);
        assert_eq!(tags["build_number"], "42");
        assert_eq!(tags["compliant"], "false");
        assert_eq!(tags["kubernetes.io.namespace"], "payments");
        assert_eq!(tags["kubernetes.io.pod.name"], "w-1");
        assert!(!tags.contains_key("step_key"));
        assert!(!tags.contains_key("aud"));
    }

    #[test]
    fn groups_are_typed() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"g1":["a","b"],"g2":"solo","g3":[1],"g4":{}}"#).unwrap();
        assert_eq!(groups_from(&claims, "g1").unwrap(), ["a", "b"]);
        assert_eq!(groups_from(&claims, "g2").unwrap(), ["solo"]);
        assert!(groups_from(&claims, "g3").is_err());
        assert!(groups_from(&claims, "g4").is_err());
        assert!(groups_from(&claims, "missing").unwrap().is_empty());
    }

    #[test]
    fn kept_type_names_make_the_same_uids() {
        for _ in 0..2 {
            assert_eq!(entity_uid("Group", "okta:ops").to_string(), r#"Temporal::Group::"okta:ops""#);
            assert_eq!(
                entity_uid("Namespace", "payments"),
                EntityUid::from_str(r#"Temporal::Namespace::"payments""#).unwrap()
            );
        }
        assert_ne!(entity_uid("User", "x"), entity_uid("Service", "x"));
    }

    #[test]
    fn principal_entity_carries_tags_and_groups() {
        let tags = BTreeMap::from([("repository".to_owned(), "acme/payments".to_owned())]);
        let p = Principal::new(
            PrincipalKind::CiJob,
            "github",
            "repo:acme/payments:ref:refs/heads/main",
            vec!["ops".into()],
            tags,
            SystemTime::now(),
        );
        assert_eq!(p.id, "github:repo:acme/payments:ref:refs/heads/main");
        assert_eq!(p.uid.to_string(), r#"Temporal::CiJob::"github:repo:acme/payments:ref:refs/heads/main""#);
        assert_eq!(p.entities.len(), 2);
        assert_eq!(p.entities[1].uid().to_string(), r#"Temporal::Group::"github:ops""#);
    }
}
