//! The gateway as an OAuth 2.1 resource server, end to end: a real authorization server
//! (`oidc-provider`, `tests/peers/auth_server.mjs`) issues the tokens, the official SDK client
//! sends them through the real gateway binary to an MCP server of the official SDK
//! (`tests/peers/grants_server.mjs`) that records what reaches it.

use std::{net::SocketAddr, time::Duration};

use e2e_tests::{
    ALICE_KEY, AuthServer, Gateway, GrantsServer, Options, eventually, free_port, post, raw_post,
    raw_request, sdk_client, send,
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A gateway on a port chosen first, so that its URL (the resource) can be given to the
/// authorization server before either starts.
struct Setup {
    addr: SocketAddr,
    /// `[blocking] auth_failures`: high, unless a test is about blocks.
    auth_failures: u32,
}

impl Setup {
    fn new() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            auth_failures: 1000,
        }
    }

    fn resource(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The gateway with `[oauth]` for `issuer` (keys discovered) and `extra` sections.
    fn gateway(&self, upstream: &str, issuer: &str, oauth: &str, extra: &str) -> Gateway {
        let sections = format!(
            r#"
[blocking]
auth_failures = {}
[authorization]
default = "deny"
[groups.support]
tools = ["tickets_*"]
[groups.writers]
tools = ["deploy"]
[oauth]
resource = "{}"
scopes_supported = ["mcp:tools"]
{oauth}
[oauth.scope_groups]
"tickets:write" = "writers"
[[oauth.issuers]]
issuer = "{issuer}"
groups_claim = "groups"
{extra}
"#,
            self.auth_failures,
            self.resource()
        );
        Gateway::start_with(
            upstream,
            Options {
                sections: &sections,
                addr: Some(self.addr),
                without_users: !oauth.contains("keys_alongside = true"),
                ..Options::default()
            },
        )
    }
}

/// The groups claim of the service client svc-support's tokens.
const SUPPORT: &str = r#"{"svc-support":["support"]}"#;

impl Setup {
    /// The authorization server on `port`, issuing tokens for this gateway.
    fn idp(&self, port: u16, kid: &str, env: &[(&str, &str)]) -> AuthServer {
        AuthServer::start(port, &self.resource(), kid, env)
    }

    /// A client-credentials token of `client` for this gateway.
    async fn token(&self, idp: &AuthServer, client: &str, scope: &str) -> String {
        idp.client_token(client, &self.resource(), scope).await
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A `tools/call` of `tool` with `token` as the bearer credential.
async fn call_with(gateway: &Gateway, token: &str, tool: &str) -> e2e_tests::Answer {
    post(gateway, &[("authorization", &bearer(token))], &call(tool)).await
}

fn call(tool: &str) -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
}

/// What the official SDK client (v1) saw with `token` as its bearer credential.
fn sdk_report(gateway: &Gateway, token: &str, calls: &str) -> Value {
    let report = sdk_client(
        &gateway.url(),
        Some(token),
        "grants",
        0,
        &[("CALLS", calls), ("PROMPTS", ""), ("READS", "")],
    );
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    report
}

fn tool_names(report: &Value) -> Vec<&str> {
    report["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {report}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
async fn tokens_of_the_real_authorization_server_call_tools_as_their_subject_with_their_groups() {
    let setup = Setup::new();
    let server = GrantsServer::start(false);
    let idp = setup.idp(free_port(), "k1", &[("TOKEN_GROUPS", SUPPORT)]);
    let gateway = setup.gateway(&server.url(), &idp.issuer(), "", "[upstream.identity]");

    let support = setup.token(&idp, "svc-support", "mcp:tools").await;
    let report = sdk_report(&gateway, &support, "tickets_search,deploy");
    assert_eq!(
        tool_names(&report),
        [
            "tickets_search",
            "tickets_get",
            "tickets_create",
            "tickets_update",
            "tickets_delete"
        ],
        "the support group's tools, from the token's groups claim"
    );
    assert_eq!(report["calls"]["tickets_search"], "ok");
    assert_ne!(report["calls"]["deploy"], "ok", "{report}");

    // A scope that maps onto a group grants its tools too.
    let writer = setup
        .token(&idp, "svc-other", "mcp:tools tickets:write")
        .await;
    let report = sdk_report(&gateway, &writer, "deploy,tickets_search");
    assert_eq!(tool_names(&report), ["deploy"]);
    assert_eq!(report["calls"]["deploy"], "ok");
    assert_ne!(report["calls"]["tickets_search"], "ok");

    // What reached the server: the calls granted, and never a token.
    let received: Vec<Value> = server.received();
    assert_eq!(
        received,
        [
            json!({"method": "tools/call", "name": "tickets_search"}),
            json!({"method": "tools/call", "name": "deploy"}),
        ]
    );
    let headers = server.headers();
    assert!(!headers.is_empty());
    for seen in &headers {
        assert_eq!(seen.get("authorization"), None, "{seen}");
        let text = seen.to_string();
        assert!(!text.contains(&support) && !text.contains(&writer));
    }
    let callers: Vec<&str> = headers
        .iter()
        .filter_map(|seen| seen["x-mcp-caller"].as_str())
        .collect();
    assert!(callers.contains(&"svc-support") && callers.contains(&"svc-other"));

    // Each request carried the gateway's signed assertion of its caller, which verifies with
    // the key the gateway publishes, and which a client cannot forge.
    let jwks = send(
        Method::GET,
        &format!("http://{}/.well-known/jwks.json", setup.addr),
        &[],
        "",
    )
    .await;
    assert_eq!(jwks.status, StatusCode::OK);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[server.url()]);
    validation.set_issuer(&[setup.resource()]);
    let verified = |seen: &Value| {
        let assertion = seen["x-mcp-identity"]
            .as_str()
            .unwrap_or_else(|| panic!("{seen}"));
        jsonwebtoken::decode::<Value>(assertion, &key, &validation)
            .unwrap_or_else(|err| panic!("{err}: {assertion}"))
            .claims
    };
    let last = headers.last().unwrap();
    assert_eq!(verified(last)["sub"], "svc-other");
    assert_eq!(verified(last)["groups"], json!(["writers"]));
    let first = headers.first().unwrap();
    assert_eq!(verified(first)["sub"], "svc-support");
    assert_eq!(verified(first)["groups"], json!(["support"]));
    let forged = post(
        &gateway,
        &[
            ("authorization", &bearer(&support)),
            ("x-mcp-identity", "forged"),
        ],
        &call("tickets_get"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::OK, "{}", forged.text());
    let headers = server.headers();
    assert_eq!(verified(headers.last().unwrap())["sub"], "svc-support");

    // The audit names the caller, the method and the issuer; never the token.
    let audit = std::fs::read_to_string(&gateway.audit_path).unwrap();
    assert!(!audit.contains(&support) && !audit.contains(&writer));
    let lines = gateway.audit_lines();
    let call_line = lines
        .iter()
        .find(|line| line["tool"] == "tickets_search" && line["event"] == "request")
        .unwrap_or_else(|| panic!("no audit line of the call: {lines:?}"));
    assert_eq!(call_line["caller"], "svc-support");
    assert_eq!(call_line["auth"], "oauth");
    assert_eq!(call_line["issuer"], idp.issuer());
}

/// What `tests/peers/oauth_client.mjs` (the SDK's own OAuth client) did, signing in as `login`.
fn sign_in_and_call(gateway: &Gateway, login: &str, tool: &str) -> Value {
    let output = std::process::Command::new("node")
        .arg(e2e_tests::workspace_root().join("tests/peers/oauth_client.mjs"))
        .args([&gateway.url(), login, tool])
        .current_dir(e2e_tests::workspace_root().join("tests/peers"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|err| {
            panic!(
                "no report ({err}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(report["error"], Value::Null, "{report}\n{}", gateway.logs());
    report
}

#[tokio::test]
async fn the_sdks_oauth_client_discovers_registers_signs_in_and_calls_and_each_user_sees_their_own_tools()
 {
    let setup = Setup::new();
    let server = GrantsServer::start(false);
    let idp = setup.idp(
        free_port(),
        "k1",
        &[("TOKEN_GROUPS", r#"{"alice":["support"],"bob":["writers"]}"#)],
    );
    let gateway = setup.gateway(&server.url(), &idp.issuer(), "", "");

    let alice = sign_in_and_call(&gateway, "alice", "tickets_search");
    assert_eq!(
        alice["steps"],
        json!([
            "registered",
            "authorize",
            "login form",
            "consent form",
            "redirected back with a code",
            "401",
            "token"
        ]),
        "{alice}"
    );
    // The SDK took the resource and scopes from the gateway's challenge and metadata.
    assert_eq!(alice["resource"], setup.resource());
    assert_eq!(alice["scope"], "mcp:tools");
    assert_eq!(
        alice["iss"],
        idp.issuer(),
        "RFC 9207: the issuer in the response"
    );
    assert_eq!(
        alice["tools"],
        json!([
            "tickets_search",
            "tickets_get",
            "tickets_create",
            "tickets_update",
            "tickets_delete"
        ])
    );
    assert_eq!(alice["call"], "called tickets_search");

    let bob = sign_in_and_call(&gateway, "bob", "deploy");
    assert_eq!(bob["tools"], json!(["deploy"]), "{bob}");
    assert_eq!(bob["call"], "called deploy");
    let callers: Vec<Value> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["method"] == "tools/call" && line["event"] == "request")
        .map(|line| json!([line["caller"], line["tool"], line["auth"]]))
        .collect();
    assert_eq!(
        callers,
        [
            json!(["alice", "tickets_search", "oauth"]),
            json!(["bob", "deploy", "oauth"]),
        ]
    );
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_told_where_to_sign_in_and_why_it_was_refused() {
    let setup = Setup::new();
    let server = GrantsServer::start(true);
    let idp = setup.idp(free_port(), "k1", &[("TTL", "2")]);
    let other_idp = setup.idp(free_port(), "k1", &[]);
    let gateway = setup.gateway(
        &server.url(),
        &idp.issuer(),
        "clock_skew_secs = 0\nkeys_alongside = true\n[[oauth.tool_scopes]]\ntools = [\"tickets_delete\"]\nscopes = [\"tickets:write\"]",
        "",
    );
    let metadata_url = format!(
        "http://{}/.well-known/oauth-protected-resource/mcp",
        setup.addr
    );

    // No token: 401 with the metadata's URL and the scopes to ask for.
    let answer = post(&gateway, &[], &call("tickets_search")).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["www-authenticate"],
        format!("Bearer resource_metadata=\"{metadata_url}\", scope=\"mcp:tools\"").as_str()
    );
    // The metadata, at the path-inserted URL and at the root, names the resource and the issuer.
    for url in [
        metadata_url.clone(),
        format!("http://{}/.well-known/oauth-protected-resource", setup.addr),
    ] {
        let metadata = send(Method::GET, &url, &[], "").await;
        assert_eq!(metadata.status, StatusCode::OK, "{url}");
        assert_eq!(metadata.headers["access-control-allow-origin"], "*");
        assert_eq!(
            metadata.json(),
            json!({
                "resource": setup.resource(),
                "authorization_servers": [idp.issuer()],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["mcp:tools"],
            })
        );
    }
    // The gateway is no authorization server: those paths stay a JSON 404.
    let probe = send(
        Method::GET,
        &format!(
            "http://{}/.well-known/oauth-authorization-server",
            setup.addr
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(probe.status, StatusCode::NOT_FOUND);

    // Keys of [[users]] work beside tokens here (keys_alongside).
    let by_key = post(
        &gateway,
        &[("authorization", &bearer(ALICE_KEY))],
        &call("tickets_search"),
    )
    .await;
    assert_eq!(
        by_key.status,
        StatusCode::FORBIDDEN,
        "alice has no grant under default = deny"
    );

    let refused = |answer: &e2e_tests::Answer, description: &str| {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(description),
            "{challenge}"
        );
        assert!(challenge.starts_with(&format!("Bearer resource_metadata=\"{metadata_url}\"")));
    };
    let garbage = post(
        &gateway,
        &[("authorization", "Bearer not.a.token")],
        &call("x"),
    )
    .await;
    refused(&garbage, "not a well-formed access token");
    let foreign = setup.token(&other_idp, "svc-support", "mcp:tools").await;
    let answer = call_with(&gateway, &foreign, "x").await;
    refused(&answer, "issuer is not accepted");

    // A token without the scope a tool needs: 403 insufficient_scope naming every scope needed.
    let reader = setup.token(&idp, "svc-support", "mcp:tools").await;
    let answer = call_with(&gateway, &reader, "tickets_delete").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"tickets:write\""),
        "{challenge}"
    );
    assert_eq!(
        answer.json()["error"]["data"]["requiredScopes"],
        json!(["tickets:write"])
    );
    assert!(
        server.received().is_empty(),
        "nothing refused reached the server"
    );

    // Expired (TTL 2 s, no clock skew allowed).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let answer = call_with(&gateway, &reader, "x").await;
    refused(&answer, "expired");
    let lines = gateway.audit_lines();
    assert!(
        lines.iter().any(|line| line["decision"] == "invalid_token"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_when_a_token_names_it_and_known_keys_outlive_the_idp() {
    let setup = Setup::new();
    let server = GrantsServer::start(true);
    let port = free_port();
    let idp = setup.idp(port, "k1", &[("TOKEN_GROUPS", SUPPORT)]);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gateway = setup.gateway(
        &server.url(),
        &idp.issuer(),
        "",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let ok = |answer: &e2e_tests::Answer| {
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}\n{}",
            answer.text(),
            gateway.logs()
        );
    };
    let first = setup.token(&idp, "svc-support", "mcp:tools").await;
    let second = setup.token(&idp, "svc-support", "mcp:tools").await;
    ok(&call_with(&gateway, &first, "tickets_search").await);

    // The IdP goes away: a token never seen before still verifies with the keys known.
    drop(idp);
    ok(&call_with(&gateway, &second, "tickets_search").await);

    // It comes back with a new key (a rotation): the new kid is fetched when a token names it.
    let idp = setup.idp(port, "k2", &[("TOKEN_GROUPS", SUPPORT)]);
    let rotated = setup.token(&idp, "svc-support", "mcp:tools").await;
    // Unknown kids refresh the keys at most every 10 s: the first tries may come too soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = call_with(&gateway, &rotated, "tickets_search").await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was never fetched: {}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Rotated again, and the IdP down before the gateway could fetch: the new kid is refused.
    drop(idp);
    let idp = setup.idp(port, "k3", &[]);
    let unseen = setup.token(&idp, "svc-support", "mcp:tools").await;
    drop(idp);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let answer = call_with(&gateway, &unseen, "tickets_search").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("does not publish"),
        "{:?}",
        answer.headers
    );
    // The gateway says so, and stays ready: the keys it knows still verify.
    let ready = send(Method::GET, &format!("http://{admin}/readyz"), &[], "").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let issuer = &ready.json()["oauth"]["issuers"][0];
    assert_eq!(issuer["keys"], 1, "{issuer}");
    assert!(
        issuer["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{issuer}"
    );
    let metrics = send(Method::GET, &format!("http://{admin}/metrics"), &[], "")
        .await
        .text();
    let failing = format!("oauth_keys_refresh_failing{{issuer=\"http://127.0.0.1:{port}\"}} 1");
    assert!(metrics.contains(&failing), "{metrics}");
    // Tokens verified before keep working.
    ok(&call_with(&gateway, &rotated, "tickets_search").await);
}

#[tokio::test]
async fn opaque_tokens_are_checked_by_introspection_with_the_gateways_own_client() {
    let setup = Setup::new();
    let server = GrantsServer::start(true);
    let idp = setup.idp(
        free_port(),
        "k1",
        &[("OPAQUE", "1"), ("TOKEN_GROUPS", SUPPORT)],
    );
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "test-secret\n").unwrap();
    let gateway = setup.gateway(
        &server.url(),
        &idp.issuer(),
        "",
        &format!(
            "[oauth.issuers.introspection]\nclient_id = \"gateway-test\"\nclient_secret_file = \"{}\"",
            secret.path().display()
        ),
    );
    let token = setup.token(&idp, "svc-support", "mcp:tools").await;
    assert_eq!(token.matches('.').count(), 0, "an opaque token: {token}");
    let answer = call_with(&gateway, &token, "tickets_search").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}\n{}",
        answer.text(),
        gateway.logs()
    );
    let answer = call_with(&gateway, &token, "deploy").await;
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "the groups of the introspection answer"
    );
    let made_up = post(
        &gateway,
        &[("authorization", "Bearer made-up-opaque-token")],
        &call("tickets_search"),
    )
    .await;
    assert_eq!(made_up.status, StatusCode::UNAUTHORIZED);
    assert!(
        made_up.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("not active")
    );
}

#[tokio::test]
async fn forged_tokens_count_as_failed_authentications_and_block_their_source() {
    let mut setup = Setup::new();
    setup.auth_failures = 3;
    let server = GrantsServer::start(true);
    let idp = setup.idp(free_port(), "k1", &[("TOKEN_GROUPS", SUPPORT)]);
    let gateway = setup.gateway(&server.url(), &idp.issuer(), "", "");
    let token = setup.token(&idp, "svc-support", "mcp:tools").await;
    // The real token with another signature: well-formed, of the right issuer, not its own.
    let (signed, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", "A".repeat(86));
    let offender: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let good: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let body = call("tickets_search");
    for _ in 0..3 {
        let answer = raw_request(
            offender,
            gateway.addr,
            &raw_post(gateway.addr, &bearer(&forged), &body),
        )
        .await
        .expect("answer");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("signature is not valid"), "{answer}");
    }
    eventually("the block is audited", || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "block")
    });
    assert!(
        raw_request(
            offender,
            gateway.addr,
            &raw_post(gateway.addr, &bearer(&token), &body)
        )
        .await
        .is_err(),
        "the blocked source is refused even with a valid token"
    );
    let answer = raw_request(
        good,
        gateway.addr,
        &raw_post(gateway.addr, &bearer(&token), &body),
    )
    .await
    .expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
