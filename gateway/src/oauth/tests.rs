//! Tokens signed here with real keys (ES256 from rcgen, verified through a JWKS file), one
//! refusal at a time. The end-to-end tests do the same against a real authorization server.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;
use crate::config::Config;

const ISSUER: &str = "https://idp.example.com/realms/team";
const RESOURCE: &str = "https://mcp.example.com/mcp";

struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    unix_now() as i64
}

/// Claims of a valid token of `sub`, with `extra` merged in (a `null` removes a claim).
fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": RESOURCE, "sub": sub,
        "iat": now(), "exp": now() + 600,
        "scope": "mcp:tools", "groups": ["support"],
    });
    for (key, value) in extra.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(key),
            value => claims
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), value.clone()),
        };
    }
    claims
}

struct Fixture {
    oauth: OAuth,
    signer: Signer,
    _dir: tempfile::TempDir,
}

fn fixture(extra_toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new("key-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk]}).to_string()).unwrap();
    let toml = format!(
        r#"
[upstream]
url = "http://127.0.0.1:3000/mcp"
[oauth]
resource = "{RESOURCE}"
scopes_supported = ["mcp:tools"]
{extra_toml}
[[oauth.issuers]]
issuer = "{ISSUER}"
jwks_file = "{}"
groups_claim = "groups"
[oauth.scope_groups]
"tickets:write" = "writers"
[groups.support]
tools = ["tickets_*"]
[groups.writers]
tools = ["deploy"]
"#,
        jwks.display()
    );
    let settings = Config::from_toml(&toml)
        .unwrap()
        .validate(None, None)
        .unwrap();
    let oauth = settings.policy.oauth.expect("[oauth]");
    Fixture {
        oauth: OAuth::new(OAuthSettings::clone(&oauth), &KeySets::default()),
        signer,
        _dir: dir,
    }
}

impl Fixture {
    async fn check(&self, token: &str) -> Result<Arc<TokenCaller>, TokenError> {
        self.oauth.authenticate(token.as_bytes()).await
    }
}

#[tokio::test]
async fn a_valid_token_names_its_caller_and_the_groups_its_claims_and_scopes_give() {
    let fixture = fixture("");
    let token = fixture.signer.sign(&claims(
        "alice",
        json!({"scope": "mcp:tools tickets:write"}),
    ));
    let verified = fixture.check(&token).await.unwrap();
    assert_eq!(&*verified.caller.name, "alice");
    assert_eq!(&*verified.issuer, ISSUER);
    let groups: Vec<&str> = verified.groups.iter().map(|g| &**g).collect();
    assert_eq!(groups, ["support", "writers"]);
    let origins: Vec<&str> = verified.caller.grants.as_ref().unwrap().origins().collect();
    assert_eq!(origins, ["groups.support", "groups.writers"]);

    let again = fixture.check(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&verified, &again),
        "a token seen before is not verified again"
    );
}

#[tokio::test]
async fn expired_early_misaddressed_and_foreign_tokens_are_refused_each_for_its_reason() {
    let fixture = fixture("");
    let cases = [
        (json!({"exp": now() - 120}), TokenError::Expired),
        (json!({"nbf": now() + 600}), TokenError::NotYetValid),
        (
            json!({"aud": "https://other.example.com/mcp"}),
            TokenError::Audience,
        ),
        (json!({"aud": null}), TokenError::MissingClaim("aud")),
        (json!({"exp": null}), TokenError::MissingClaim("exp")),
        (
            json!({"iss": "https://evil.example.com"}),
            TokenError::UnknownIssuer,
        ),
        (json!({"sub": null}), TokenError::NoCallerClaim),
    ];
    for (extra, expected) in cases {
        let token = fixture.signer.sign(&claims("alice", extra.clone()));
        assert_eq!(fixture.check(&token).await.err(), Some(expected), "{extra}");
    }
    // Within the clock skew (60 s), a just-expired token still passes.
    let token = fixture
        .signer
        .sign(&claims("alice", json!({"exp": now() - 10})));
    assert!(fixture.check(&token).await.is_ok());
}

#[tokio::test]
async fn forged_signatures_alg_none_and_hmac_with_the_public_key_are_refused() {
    let fixture = fixture("");
    let good = claims("alice", json!({}));

    // Another key under the issuer's kid.
    let forger = Signer::new("key-1");
    assert_eq!(
        fixture.check(&forger.sign(&good)).await.err(),
        Some(TokenError::Signature)
    );
    // A kid the issuer does not publish.
    let stranger = Signer::new("key-9");
    assert_eq!(
        fixture.check(&stranger.sign(&good)).await.err(),
        Some(TokenError::UnknownKey)
    );
    // `alg: none`, no signature.
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let none = format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(&good)
    );
    assert_eq!(
        fixture.check(&none).await.err(),
        Some(TokenError::Malformed)
    );
    // HS256 with the issuer's public key as the secret (the classic key-confusion attack).
    let public = fixture.signer.jwk.to_string();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-1".into());
    let confused = encode(
        &header,
        &good,
        &EncodingKey::from_secret(public.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        fixture.check(&confused).await.err(),
        Some(TokenError::Algorithm)
    );
    // A payload changed after signing.
    let token = fixture.signer.sign(&good);
    let mut parts: Vec<&str> = token.split('.').collect();
    let tampered = part(&claims("mallory", json!({})));
    parts[1] = &tampered;
    assert_eq!(
        fixture.check(&parts.join(".")).await.err(),
        Some(TokenError::Signature)
    );
    assert_eq!(
        fixture.check("not-a-jwt").await.err(),
        Some(TokenError::Malformed)
    );
}

#[tokio::test]
async fn scopes_a_call_needs_are_all_named_and_only_the_missing_ones_refuse() {
    let fixture = fixture(
        r#"required_scopes = ["mcp:tools"]
[[oauth.tool_scopes]]
tools = ["deploy", "tickets_delete"]
scopes = ["tickets:write"]"#,
    );
    let reader = fixture
        .check(&fixture.signer.sign(&claims("alice", json!({}))))
        .await
        .unwrap();
    let needed = fixture.oauth.scopes_for(&[("deploy", 1)]);
    assert_eq!(needed, ["mcp:tools", "tickets:write"]);
    assert_eq!(reader.missing_scopes(&needed), ["tickets:write"]);
    let listing = fixture.oauth.scopes_for(&[]);
    assert!(reader.missing_scopes(&listing).is_empty());
    assert_eq!(
        fixture.oauth.insufficient_scope(&needed).to_str().unwrap(),
        "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", \
         scope=\"mcp:tools tickets:write\", error=\"insufficient_scope\", \
         error_description=\"the token lacks a scope this request needs\""
    );
}

#[test]
fn the_metadata_names_the_resource_and_its_issuers_at_both_well_known_paths() {
    let fixture = fixture("");
    let document = fixture
        .oauth
        .metadata_at("/.well-known/oauth-protected-resource/mcp", "/mcp")
        .unwrap();
    let document: Value = serde_json::from_slice(&document).unwrap();
    assert_eq!(
        document,
        json!({
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["mcp:tools"],
        })
    );
    assert!(
        fixture
            .oauth
            .metadata_at("/.well-known/oauth-protected-resource", "/mcp")
            .is_some()
    );
    assert!(
        fixture
            .oauth
            .metadata_at("/.well-known/oauth-protected-resource/other", "/mcp")
            .is_none()
    );
    assert_eq!(
        fixture.oauth.challenge(None).to_str().unwrap(),
        "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
    );
}

#[test]
fn explain_answers_for_a_token_as_a_request_with_it_would_be_answered() {
    let fixture = fixture(
        r#"[[oauth.tool_scopes]]
tools = ["deploy"]
scopes = ["tickets:write"]"#,
    );
    let settings = fixture.oauth.settings();
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let ask = |groups: &[&str], scopes: &[&str], tool: &str| {
        explain(
            settings,
            "alice",
            &strings(groups),
            &strings(scopes),
            crate::authz::Category::Tools,
            tool,
            None,
        )
    };
    assert!(ask(&["support"], &["mcp:tools"], "tickets_get").allowed);
    let denied = ask(&["support"], &["mcp:tools"], "deploy");
    assert!(!denied.allowed);
    assert!(
        denied.reason.contains("lacks scope tickets:write"),
        "{}",
        denied.reason
    );
    // The scope that deploy needs also puts the token in the writers group.
    let writer = ask(&[], &["tickets:write"], "deploy");
    assert!(writer.allowed, "{}", writer.reason);
    assert_eq!(
        writer.rules[0],
        "a token's groups and scopes put it in: writers"
    );
}

#[tokio::test]
async fn a_revoked_caller_is_refused_even_with_a_token_verified_before() {
    let fixture = fixture(r#"revoked_callers = ["mallory"]"#);
    let token = fixture.signer.sign(&claims("mallory", json!({})));
    assert_eq!(fixture.check(&token).await.err(), Some(TokenError::Revoked));
    assert_eq!(
        fixture.check(&token).await.err(),
        Some(TokenError::Revoked),
        "remembered, and still refused"
    );
    let alice = fixture.signer.sign(&claims("alice", json!({})));
    assert!(fixture.check(&alice).await.is_ok());
}
