//! Provider presets: what a demanding operator would otherwise have to know about each IdP.
//!
//! A preset fills in the issuer URL, where the keys are, which principal type the tokens map
//! to, the algorithms the provider signs with, and, for issuers shared by every customer of
//! the provider, which claim binds a token to *your* tenant. A shared issuer without such a
//! binding would accept tokens minted for anybody's repository, so it refuses to load.

use std::collections::BTreeMap;

use crate::authn::principal::ClaimMapping;
use crate::config::{ConfigError, EcdsaHighS, IssuerConfig, PrincipalKind};
use crate::outbound::is_https_or_loopback;

/// Where an issuer's JWKS is found.
#[derive(Debug, Clone, Copy)]
enum Keys {
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    /// `<issuer><suffix>`.
    UnderIssuer(&'static str),
    /// One URL for all tenants (Azure DevOps).
    Fixed(&'static str),
}

struct Preset {
    name: &'static str,
    issuer: Option<&'static str>,
    keys: Keys,
    principal: PrincipalKind,
    groups_claim: Option<&'static str>,
    algorithms: &'static [&'static str],
    /// Claims that bind a token to one tenant of a shared issuer; one must be in `required_claims`.
    tenant_claims: &'static [&'static str],
    /// Whether the provider's ECDSA signer leaves `s` high half of the time (see [`super::ecdsa`]).
    ecdsa_high_s: EcdsaHighS,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "github-actions",
        issuer: Some("https://token.actions.githubusercontent.com"),
        keys: Keys::UnderIssuer("/.well-known/jwks"),
        principal: PrincipalKind::CiJob,
        groups_claim: None,
        algorithms: &["RS256"],
        tenant_claims: &[
            "repository_owner",
            "repository_owner_id",
            "repository",
            "repository_id",
            "enterprise",
            "enterprise_id",
        ],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "buildkite",
        issuer: Some("https://agent.buildkite.com"),
        keys: Keys::UnderIssuer("/.well-known/jwks"),
        principal: PrincipalKind::CiJob,
        groups_claim: None,
        algorithms: &["RS256", "ES256"],
        tenant_claims: &["organization_slug", "organization_id"],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "bitbucket-pipelines",
        issuer: None,
        keys: Keys::UnderIssuer("/keys.json"),
        principal: PrincipalKind::CiJob,
        groups_claim: None,
        algorithms: &["RS256"],
        tenant_claims: &[],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "azure-devops",
        issuer: None,
        keys: Keys::Fixed("https://vstoken.dev.azure.com/.well-known/jwks"),
        principal: PrincipalKind::CiJob,
        groups_claim: None,
        algorithms: &["RS256"],
        tenant_claims: &["org_id"],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "gitlab",
        issuer: Some("https://gitlab.com"),
        keys: Keys::UnderIssuer("/oauth/discovery/keys"),
        principal: PrincipalKind::CiJob,
        groups_claim: None,
        algorithms: &["RS256"],
        tenant_claims: &["namespace_id", "namespace_path", "project_id", "project_path"],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "okta",
        issuer: None,
        keys: Keys::Discovery,
        principal: PrincipalKind::User,
        groups_claim: Some("groups"),
        algorithms: &["RS256"],
        tenant_claims: &[],
        ecdsa_high_s: EcdsaHighS::Refuse,
    },
    Preset {
        name: "kubernetes",
        issuer: None,
        keys: Keys::Discovery,
        principal: PrincipalKind::Service,
        groups_claim: None,
        algorithms: &["RS256", "ES256"],
        tenant_claims: &[],
        // The API server signs with Go's `crypto/ecdsa` (through go-jose), which does not
        // normalize: with an EC service-account key, half of its tokens are high-s.
        ecdsa_high_s: EcdsaHighS::Accept,
    },
];

pub const PRESET_NAMES: [&str; 7] =
    ["github-actions", "buildkite", "bitbucket-pipelines", "azure-devops", "gitlab", "okta", "kubernetes"];

/// How an issuer's key location is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Jwks(String),
    Discovery,
}

/// An issuer's settings after the preset and the explicit config are combined.
#[derive(Debug, Clone)]
pub struct ResolvedIssuer {
    pub name: String,
    pub preset: Option<&'static str>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// How its tokens' claims become principals.
    pub mapping: ClaimMapping,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub required_claims: BTreeMap<String, String>,
    pub ecdsa_high_s: EcdsaHighS,
}

fn invalid(index: usize, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: format!("issuers[{index}].{field}"), message: message.into() }
}

fn parse_algorithm(index: usize, name: &str) -> Result<jsonwebtoken::Algorithm, ConfigError> {
    use jsonwebtoken::Algorithm::*;
    let algorithm: jsonwebtoken::Algorithm =
        name.parse().map_err(|_| invalid(index, "algorithms", format!("unknown algorithm `{name}`")))?;
    match algorithm {
        HS256 | HS384 | HS512 => {
            Err(invalid(index, "algorithms", format!("`{name}` is symmetric; only public-key algorithms are accepted")))
        }
        _ => Ok(algorithm),
    }
}

/// A URL flowgate fetches keys from must be https, except on loopback (tests, sidecars).
fn check_fetch_url(index: usize, field: &str, url: &str) -> Result<(), ConfigError> {
    if let Err(e) = url.parse::<http::Uri>() {
        return Err(invalid(index, field, format!("`{url}` is not a URL: {e}")));
    }
    if !is_https_or_loopback(url) {
        return Err(invalid(index, field, format!("`{url}` must be an https:// URL (http:// only on loopback)")));
    }
    Ok(())
}

/// Combines an `[[issuers]]` entry with its preset and checks the result.
pub fn resolve(index: usize, config: &IssuerConfig) -> Result<ResolvedIssuer, ConfigError> {
    let preset = match &config.preset {
        None => None,
        Some(name) => Some(PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
            invalid(index, "preset", format!("unknown preset `{name}` (known: {})", PRESET_NAMES.join(", ")))
        })?),
    };
    let issuer = config
        .issuer
        .clone()
        .or_else(|| preset.and_then(|p| p.issuer.map(str::to_owned)))
        .ok_or_else(|| invalid(index, "issuer", "is required (the exact `iss` of the tokens)"))?;
    if issuer.is_empty() {
        return Err(invalid(index, "issuer", "must not be empty"));
    }
    if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
        return Err(invalid(index, "audiences", "must list at least one non-empty audience"));
    }
    let keys = match (&config.jwks_uri, preset.map(|p| p.keys)) {
        (Some(uri), _) => KeySource::Jwks(uri.clone()),
        (None, Some(Keys::UnderIssuer(suffix))) => KeySource::Jwks(format!("{}{suffix}", issuer.trim_end_matches('/'))),
        (None, Some(Keys::Fixed(uri))) => KeySource::Jwks(uri.to_owned()),
        (None, Some(Keys::Discovery) | None) => KeySource::Discovery,
    };
    match &keys {
        KeySource::Jwks(uri) => check_fetch_url(index, "jwks_uri", uri)?,
        KeySource::Discovery => check_fetch_url(index, "issuer", &issuer)?,
    }
    let algorithms = match &config.algorithms {
        Some(names) if names.is_empty() => return Err(invalid(index, "algorithms", "must not be empty")),
        Some(names) => names.iter().map(|n| parse_algorithm(index, n)).collect::<Result<_, _>>()?,
        None => preset
            .map_or(&["RS256", "ES256"][..], |p| p.algorithms)
            .iter()
            .map(|n| parse_algorithm(index, n))
            .collect::<Result<_, _>>()?,
    };
    let mut required_claims = config.required_claims.clone();
    if let Some(preset) = preset {
        bind_tenant(index, preset, &issuer, &mut required_claims)?;
    }
    Ok(ResolvedIssuer {
        name: config.name.clone(),
        preset: preset.map(|p| p.name),
        issuer,
        audiences: config.audiences.clone(),
        keys,
        mapping: claim_mapping(&config.name, preset, config.principal, config.groups_claim.clone()),
        algorithms,
        required_claims,
        ecdsa_high_s: config.ecdsa_high_s.or(preset.map(|p| p.ecdsa_high_s)).unwrap_or(EcdsaHighS::Refuse),
    })
}

/// How an issuer named `name` maps claims to principals: the explicit settings, else the
/// preset's, else a `User` without groups.
fn claim_mapping(
    name: &str,
    preset: Option<&Preset>,
    principal: Option<PrincipalKind>,
    groups_claim: Option<String>,
) -> ClaimMapping {
    ClaimMapping {
        issuer_name: name.to_owned(),
        kind: principal.or(preset.map(|p| p.principal)).unwrap_or(PrincipalKind::User),
        groups_claim: groups_claim.or_else(|| preset.and_then(|p| p.groups_claim.map(str::to_owned))),
        client_credentials_are_services: preset.is_some_and(|p| p.name == "okta") && principal.is_none(),
    }
}

/// The claim mapping of an issuer described only by preset and overrides, without the issuer
/// URL, audiences and keys a gateway needs (`flowgate policy test`, `flowgate explain`).
pub fn mapping_for(
    name: &str,
    preset: Option<&str>,
    principal: Option<PrincipalKind>,
    groups_claim: Option<String>,
) -> Result<ClaimMapping, String> {
    let preset = match preset {
        None => None,
        Some(wanted) => Some(
            PRESETS
                .iter()
                .find(|p| p.name == wanted)
                .ok_or_else(|| format!("unknown preset `{wanted}` (known: {})", PRESET_NAMES.join(", ")))?,
        ),
    };
    Ok(claim_mapping(name, preset, principal, groups_claim))
}

/// Enforces the tenant binding of shared issuers.
fn bind_tenant(
    index: usize,
    preset: &Preset,
    issuer: &str,
    required: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    match preset.name {
        // Every Azure DevOps organisation's tokens verify against the same JWKS: the signature
        // does not prove the organisation, so `org_id` must match the one in the issuer URL.
        "azure-devops" => {
            let org = issuer
                .strip_prefix("https://vstoken.dev.azure.com/")
                .filter(|org| !org.is_empty() && !org.contains('/'))
                .ok_or_else(|| {
                    invalid(
                        index,
                        "issuer",
                        "must be `https://vstoken.dev.azure.com/<organization-id>` for azure-devops",
                    )
                })?;
            match required.get("org_id") {
                Some(bound) if bound != org => {
                    return Err(invalid(
                        index,
                        "required_claims",
                        format!("`org_id` = `{bound}` contradicts the organisation `{org}` in the issuer URL"),
                    ));
                }
                Some(_) => {}
                None => {
                    required.insert("org_id".into(), org.into());
                }
            }
            Ok(())
        }
        // gitlab.com is shared; a self-managed instance is its own tenant.
        "gitlab" if issuer.trim_end_matches('/') != "https://gitlab.com" => Ok(()),
        "bitbucket-pipelines" | "okta" | "kubernetes" => Ok(()),
        _ => {
            if preset.tenant_claims.iter().any(|claim| required.contains_key(*claim)) {
                Ok(())
            } else {
                Err(invalid(
                    index,
                    "required_claims",
                    format!(
                        "preset `{}` is a shared issuer: bind your tenant with one of {}",
                        preset.name,
                        preset.tenant_claims.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(toml_text: &str) -> Result<ResolvedIssuer, ConfigError> {
        let config: IssuerConfig = toml::from_str(&format!("name = \"ci\"\naudiences = [\"a\"]\n{toml_text}")).unwrap();
        resolve(0, &config)
    }

    #[test]
    fn shared_issuers_refuse_to_load_without_a_tenant_binding() {
        for preset in ["github-actions", "buildkite", "gitlab"] {
            let err = issuer(&format!("preset = \"{preset}\"")).unwrap_err().to_string();
            assert!(err.contains("shared issuer"), "{preset}: {err}");
        }
        let ok = issuer("preset = \"github-actions\"\nrequired_claims = { repository_owner = \"acme\" }").unwrap();
        assert_eq!(ok.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(ok.keys, KeySource::Jwks("https://token.actions.githubusercontent.com/.well-known/jwks".into()));
        assert_eq!(ok.mapping.kind, PrincipalKind::CiJob);
        let binding_elsewhere = issuer("preset = \"buildkite\"\nrequired_claims = { pipeline_slug = \"x\" }");
        assert!(binding_elsewhere.is_err());
    }

    #[test]
    fn self_managed_gitlab_is_not_shared() {
        let ok = issuer("preset = \"gitlab\"\nissuer = \"https://gitlab.acme.dev\"").unwrap();
        assert_eq!(ok.keys, KeySource::Jwks("https://gitlab.acme.dev/oauth/discovery/keys".into()));
    }

    #[test]
    fn azure_devops_binds_the_organisation_from_the_issuer() {
        let ok = issuer("preset = \"azure-devops\"\nissuer = \"https://vstoken.dev.azure.com/0ca3ddd9\"").unwrap();
        assert_eq!(ok.required_claims.get("org_id").map(String::as_str), Some("0ca3ddd9"));
        assert_eq!(ok.keys, KeySource::Jwks("https://vstoken.dev.azure.com/.well-known/jwks".into()));
        let err = issuer(
            "preset = \"azure-devops\"\nissuer = \"https://vstoken.dev.azure.com/a\"\nrequired_claims = { org_id = \"b\" }",
        );
        assert!(err.unwrap_err().to_string().contains("contradicts"));
        assert!(issuer("preset = \"azure-devops\"").is_err());
    }

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        let err = issuer("issuer = \"https://idp.example\"\nalgorithms = [\"HS256\"]").unwrap_err();
        assert!(err.to_string().contains("symmetric"), "{err}");
        let err = issuer("issuer = \"https://idp.example\"\nalgorithms = [\"none\"]").unwrap_err();
        assert!(err.to_string().contains("unknown algorithm `none`"), "{err}");
    }

    #[test]
    fn key_urls_must_be_https_except_on_loopback() {
        assert!(issuer("issuer = \"http://idp.example\"").is_err());
        assert!(issuer("issuer = \"http://127.0.0.1:8080\"").is_ok());
        assert!(issuer("issuer = \"https://idp.example\"\njwks_uri = \"http://keys.example/jwks\"").is_err());
    }

    #[test]
    fn high_s_ecdsa_is_refused_unless_the_provider_cannot_help_it() {
        assert_eq!(issuer("issuer = \"https://idp.example\"").unwrap().ecdsa_high_s, EcdsaHighS::Refuse);
        let accept = issuer("issuer = \"https://idp.example\"\necdsa_high_s = \"accept\"").unwrap();
        assert_eq!(accept.ecdsa_high_s, EcdsaHighS::Accept);
        let kubernetes = issuer("preset = \"kubernetes\"\nissuer = \"https://kubernetes.default.svc\"").unwrap();
        assert_eq!(kubernetes.ecdsa_high_s, EcdsaHighS::Accept, "Go's signer does not normalize");
        let strict = "preset = \"kubernetes\"\nissuer = \"https://kubernetes.default.svc\"\necdsa_high_s = \"refuse\"";
        assert_eq!(issuer(strict).unwrap().ecdsa_high_s, EcdsaHighS::Refuse, "the config wins");
    }

    #[test]
    fn okta_preset_maps_groups_and_services() {
        let ok = issuer("preset = \"okta\"\nissuer = \"https://acme.okta.com/oauth2/default\"").unwrap();
        assert_eq!(ok.mapping.groups_claim.as_deref(), Some("groups"));
        assert!(ok.mapping.client_credentials_are_services);
        assert_eq!(ok.keys, KeySource::Discovery);
        assert!(issuer("preset = \"okta\"").is_err(), "okta needs its issuer");
        assert!(issuer("preset = \"jenkins\"").unwrap_err().to_string().contains("unknown preset `jenkins`"));
    }
}
