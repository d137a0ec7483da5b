//! The configuration's documented defaults and the errors that name their field.

use std::{path::PathBuf, time::Duration};

use super::*;
use crate::digest::Sha256Digest;

const KEY_HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

fn settings(toml: &str) -> Result<Settings, ConfigError> {
    Config::from_toml(toml)
        .map_err(|message| ConfigError::Parse {
            path: "test.toml".into(),
            message,
        })?
        .validate(None, None)
}

fn error(toml: &str) -> String {
    settings(toml)
        .expect_err("config should be rejected")
        .to_string()
}

fn with_user(rest: &str) -> String {
    format!(
        "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n{rest}\n[[users]]\nname = \"alice\"\nkey_sha256 = \"{KEY_HASH}\"\n"
    )
}

#[test]
fn the_legacy_sse_path_is_optional_and_checked() {
    assert_eq!(
        settings(&with_user(""))
            .unwrap()
            .serving
            .upstream
            .legacy_sse_path,
        None
    );
    let legacy = settings(&with_user("sse_path = \"/sse\"")).unwrap();
    assert_eq!(
        legacy.serving.upstream.legacy_sse_path.as_deref(),
        Some("/sse")
    );
    for bad in ["sse", "/sse?x=1", "/mcp"] {
        let message = error(&with_user(&format!("sse_path = \"{bad}\"")));
        assert!(message.contains("upstream.sse_path"), "{bad}: {message}");
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let settings = settings(&with_user("")).expect("valid");
    assert_eq!(settings.node.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(settings.serving.mcp_path, "/mcp");
    assert_eq!(settings.node.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(settings.serving.idle_timeout, Duration::from_secs(30));
    assert_eq!(
        settings.serving.upstream.caller_header.as_str(),
        "x-mcp-caller"
    );
    assert_eq!(settings.serving.upstream.timeout, Duration::from_secs(300));
    assert_eq!(settings.policy.default_limit.requests.get(), 100);
    assert_eq!(
        settings.policy.default_limit.window,
        Duration::from_secs(60)
    );
    assert_eq!(
        settings.policy.rate_limit_status,
        hyper::StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        settings.node.audit.path,
        PathBuf::from("logs/mcp-audit.jsonl")
    );
    assert!(!settings.node.audit.fsync);
    assert_eq!(settings.policy.users.len(), 1);
    // XDP is opt-in; its limits protect the listen port; blocking is on.
    assert!(settings.node.xdp.interfaces.is_empty());
    assert_eq!(settings.serving.xdp.program.port_count, 1);
    assert_eq!(settings.serving.xdp.program.ports[0], 8080);
    assert_eq!(settings.serving.xdp.program.ipv6_prefix_len, 64);
    assert_eq!(
        settings.node.xdp.pin_dir,
        Some(PathBuf::from("/sys/fs/bpf/mcp-gateway"))
    );
    assert!(settings.serving.blocking.enabled);
    assert_eq!(settings.serving.blocking.auth_failures, 10);
    assert_eq!(settings.serving.blocking.block, Duration::from_secs(300));
    // IPv6 offenders are /64s, escalating to their /48; IPv4 does not escalate unless asked.
    assert_eq!(settings.serving.blocking.ipv6_prefix_len, 64);
    assert_eq!(
        settings.serving.blocking.ipv6_escalation,
        Some(Escalation {
            prefix_len: 48,
            blocks: 8
        })
    );
    assert_eq!(settings.serving.blocking.ipv4_escalation, None);
}

#[test]
fn limits_have_defaults_and_each_names_its_field_when_wrong() {
    let defaults = settings(&with_user("")).expect("valid");
    assert_eq!(
        (defaults.node.limits, defaults.serving.limits),
        Limits::default().into()
    );
    assert_eq!(defaults.serving.limits.max_batch_messages, 100);
    let set = settings(&with_user(
        "[limits]\nmax_batch_messages = 5\nmax_in_flight_per_caller = 2",
    ))
    .expect("valid")
    .serving
    .limits;
    assert_eq!(
        (set.max_batch_messages, set.max_in_flight_per_caller),
        (5, 2)
    );
    for (toml, field) in [
        (
            "[limits]\nmax_batch_messages = 0",
            "limits.max_batch_messages",
        ),
        (
            "[limits]\nmax_streams_per_connection = 0",
            "limits.max_streams_per_connection",
        ),
        (
            "[limits]\nmax_header_bytes = 1000",
            "limits.max_header_bytes",
        ),
        ("[limits]\nmax_batch = 5", "max_batch"),
    ] {
        let message = error(&with_user(toml));
        assert!(message.contains(field), "{toml}: {message}");
    }
}

#[test]
fn escalation_settings_are_checked_against_the_blocks_they_gather() {
    let on = settings(&with_user(
        "[blocking]\nipv6_prefix_len = 56\n[blocking.escalation]\nipv4_blocks = 4\nipv4_prefix_len = 20\nipv6_blocks = 0",
    ))
    .expect("valid");
    assert_eq!(
        on.serving.blocking.ipv4_escalation,
        Some(Escalation {
            prefix_len: 20,
            blocks: 4
        })
    );
    assert_eq!(on.serving.blocking.ipv6_escalation, None, "0 blocks: off");
    assert_eq!(on.serving.blocking.ipv6_prefix_len, 56);
    for (toml, field) in [
        (
            "[blocking]\nipv6_prefix_len = 0",
            "blocking.ipv6_prefix_len",
        ),
        (
            "[blocking]\nipv6_prefix_len = 129",
            "blocking.ipv6_prefix_len",
        ),
        (
            "[blocking]\nipv6_prefix_len = 48\n[blocking.escalation]\nipv6_prefix_len = 48",
            "blocking.escalation.ipv6_prefix_len",
        ),
        (
            "[blocking.escalation]\nipv4_blocks = 3\nipv4_prefix_len = 32",
            "blocking.escalation.ipv4_prefix_len",
        ),
        (
            "[blocking.escalation]\nipv4_blocks = 1",
            "blocking.escalation.ipv4_blocks",
        ),
        ("[blocking.escalation]\nipv5_blocks = 1", "ipv5_blocks"),
    ] {
        let message = error(&with_user(toml));
        assert!(message.contains(field), "{toml}: {message}");
    }
}

#[test]
fn xdp_section_fills_the_program_config() {
    let toml = format!(
        "{}[xdp]\nenabled = true\ninterface = \"veth0\"\nports = [443, 8443]\ndry_run = true\nallow = [\"10.1.2.3/8\", \"2001:db8::1\"]\n[xdp.rate]\npackets_per_sec = 50\nburst = 100\n",
        with_user("")
    );
    let settings = settings(&toml).expect("valid");
    let program = settings.serving.xdp.program;
    assert_eq!(&program.ports[..2], &[443, 8443]);
    assert_eq!(program.port_count, 2);
    assert_eq!(program.flags, gateway_ebpf::XdpConfig::FLAG_DRY_RUN);
    assert_eq!((program.packets_per_sec, program.burst), (50, 100));
    let allow: Vec<String> = settings
        .serving
        .xdp
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allow, ["10.0.0.0/8", "2001:db8::1/128"]);
    assert_eq!(settings.node.xdp.interfaces, ["veth0"]);
    let two = format!(
        "{}[xdp]\nenabled = true\ninterface = [\"veth0\", \"veth1\"]\n",
        with_user("")
    );
    assert_eq!(
        self::settings(&two).expect("valid").node.xdp.interfaces,
        ["veth0", "veth1"]
    );
    let empty = format!("{}[xdp]\nenabled = true\ninterface = []\n", with_user(""));
    assert!(error(&empty).contains("xdp.interface"));
}

#[test]
fn errors_name_the_field() {
    assert!(error(&with_user("timeout_secs = 0")).contains("upstream.timeout_secs"));
    assert!(
        error("[upstream]\nurl = \"ftp://x/mcp\"\n[[users]]\nname=\"a\"\nkey_sha256=\"00\"")
            .contains("upstream.url")
    );
    let bad_hash =
        "[upstream]\nurl = \"http://h:1/\"\n[[users]]\nname = \"a\"\nkey_sha256 = \"abc\"";
    assert!(error(bad_hash).contains("users[0].key_sha256"));
    assert!(
        error(&format!("{}[rate_limit]\nrequests = 0\n", with_user("")))
            .contains("rate_limit.requests")
    );
    assert!(
        error(&format!("{}[rate_limit]\nstatus = 503\n", with_user("")))
            .contains("rate_limit.status")
    );
    // Unknown keys and wrong types name the key, with toml's line information.
    assert!(error(&format!("{}\nlisten_port = 3\n", with_user(""))).contains("listen_port"));
    assert!(error(&format!("listen = \"nowhere\"\n{}", with_user(""))).contains("listen"));
    assert!(
        error(&format!("idle_timeout_secs = 0\n{}", with_user(""))).contains("idle_timeout_secs")
    );
    assert!(error("[upstream]\nurl = \"http://h:1/\"\n").contains("users"));
    assert!(error(&format!("{}[xdp]\nenabled = true\n", with_user(""))).contains("xdp.interface"));
    assert!(
        error(&format!(
            "allowed_origins = [\"https://a.example\", \"a.example\"]\n{}",
            with_user("")
        ))
        .contains("allowed_origins[1]")
    );
}

#[test]
fn tool_limits_are_read_and_checked() {
    let toml = format!(
        "{}[rate_limit.tools]\nsearch = {{ requests = 5, window_secs = 10 }}\n",
        with_user("")
    );
    let settings = settings(&toml).expect("valid");
    assert_eq!(settings.policy.tool_limits["search"].requests.get(), 5);
    let bad = format!(
        "{}[rate_limit.tools]\nsearch = {{ requests = 0, window_secs = 10 }}\n",
        with_user("")
    );
    assert!(error(&bad).contains("rate_limit.tools.search.requests"));
}

#[test]
fn env_keys_add_users() {
    let config = Config::from_toml("[upstream]\nurl = \"http://h:1/mcp\"\n").unwrap();
    let settings = config
        .validate(
            Some("shared-key-0123456789"),
            Some(r#"{"bob": "bob-key-0123456789", "carol": "carol-key-0123456789"}"#),
        )
        .expect("valid");
    let names: Vec<_> = settings
        .policy
        .users
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(names, ["default", "bob", "carol"]);
    assert_eq!(
        settings.policy.users[1].key_digest,
        Some(Sha256Digest::of(b"bob-key-0123456789"))
    );

    let config = Config::from_toml("[upstream]\nurl = \"http://h:1/mcp\"\n").unwrap();
    let err = config
        .validate(None, Some("[1,2]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MCP_USER_KEYS"), "{err}");
}

#[test]
fn duplicate_users_and_shared_keys_are_rejected() {
    let twice = format!(
        "{}[[users]]\nname = \"alice\"\nkey_sha256 = \"{}\"\n",
        with_user(""),
        "ab".repeat(32)
    );
    assert!(error(&twice).contains("defined twice"));
    let same_key = format!(
        "{}[[users]]\nname = \"bob\"\nkey_sha256 = \"{KEY_HASH}\"\n",
        with_user("")
    );
    assert!(error(&same_key).contains("same key"));
}

/// `with_user`, plus Bob (another key) and `rest` after the users.
fn with_alice_and_bob(alice_rule: &str, rest: &str) -> String {
    let bob_hash = Sha256Digest::of(b"bob's key").to_hex();
    format!(
        "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n\
         [[users]]\nname = \"alice\"\nkey_sha256 = \"{KEY_HASH}\"\n{alice_rule}\n\
         [[users]]\nname = \"bob\"\nkey_sha256 = \"{bob_hash}\"\n{rest}\n"
    )
}

fn grants_of<'s>(settings: &'s Settings, user: &str) -> Option<&'s crate::authz::Grants> {
    let user = settings
        .policy
        .users
        .iter()
        .find(|u| u.name == user)
        .unwrap();
    user.grants.as_deref()
}

#[test]
fn users_get_their_own_rule_and_their_groups_and_no_grants_without_rules() {
    let settings = settings(&with_alice_and_bob(
        "tools = [\"search\"]",
        "[groups.support]\nmembers = [\"alice\"]\nprompts = [\"triage_*\"]\n",
    ))
    .unwrap();
    let alice = grants_of(&settings, "alice").expect("alice has rules");
    assert_eq!(
        alice.origins().collect::<Vec<_>>(),
        ["users.alice", "groups.support"]
    );
    assert!(
        grants_of(&settings, "bob").is_none(),
        "no rule, default allow: nothing to check"
    );

    let denying = settings_with_default_deny();
    let bob = grants_of(&denying, "bob").expect("default deny gives everyone grants");
    assert!(
        !bob.decide(crate::authz::Category::Tools, "search", || unreachable!())
            .allowed
    );
}

fn settings_with_default_deny() -> Settings {
    settings(&with_alice_and_bob(
        "",
        "[authorization]\ndefault = \"deny\"\n",
    ))
    .unwrap()
}

#[test]
fn rule_errors_name_the_group_or_user_field_and_position() {
    for (rule, rest, field) in [
        ("tools = [\"ok\", \"bad[\"]", "", "users[0].tools[1]"),
        ("resources = [\"!\"]", "", "users[0].resources[0]"),
        (
            "tool_annotations = [\"readonly\"]",
            "",
            "users[0].tool_annotations[0]",
        ),
        (
            "",
            "[groups.ops]\nmembers = [\"alice\", \"carol\"]",
            "groups.ops.members[1]",
        ),
        (
            "",
            "[groups.ops]\nmembers = [\"bob\", \"bob\"]",
            "groups.ops.members[1]",
        ),
        ("", "[groups.ops]\ntools = [\"{a\"]", "groups.ops.tools[0]"),
        ("", "[groups.\"o p s\"]\nmembers = []", "groups.o p s"),
        ("", "[authorization]\ndefault = \"maybe\"", "default"),
        (
            "",
            "[blocking]\nforbidden_calls = 0",
            "blocking.forbidden_calls",
        ),
    ] {
        let message = error(&with_alice_and_bob(rule, rest));
        assert!(message.contains(field), "{field}: {message}");
    }
}

#[test]
fn plain_listen_needs_tls_and_its_own_address() {
    let message = error(&format!(
        "plain_listen = \"127.0.0.1:9000\"\n{}",
        with_user("")
    ));
    assert!(message.starts_with("plain_listen: "), "{message}");
    assert!(message.contains("[tls]"), "{message}");
    let message = error(&with_user("").replace("[upstream]", "[tls]\n[upstream]"));
    assert!(message.starts_with("tls: no certificate"), "{message}");
}

#[test]
fn a_user_needs_a_key_or_a_certificate_name_and_a_certificate_name_needs_client_ca() {
    let upstream = "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n";
    let err = error(&format!("{upstream}[[users]]\nname = \"a\"\n"));
    assert!(
        err.contains("users[0].key_sha256: needed, unless the user is identified by tls_subject"),
        "{err}"
    );
    let err = error(&format!(
        "{upstream}[[users]]\nname = \"a\"\ntls_subject = \"agent\"\n"
    ));
    assert!(
        err.contains("users[0].tls_subject: a certificate name starts with"),
        "{err}"
    );
    let err = error(&format!(
        "{upstream}[[users]]\nname = \"a\"\ntls_subject = \"CN=agent\"\n"
    ));
    assert!(
        err.contains("users[0].tls_subject: needs [tls] client_ca"),
        "{err}"
    );
    let err = error(&format!(
        "{upstream}[[users]]\nname = \"a\"\ntls_subject = \"CN=agent\"\n\
         [[users]]\nname = \"b\"\ntls_subject = \"CN=agent\"\n"
    ));
    assert!(err.contains("same tls_subject as another user"), "{err}");
}

#[test]
fn the_admin_listener_defaults_to_loopback_and_elsewhere_needs_a_token() {
    let admin = settings(&with_user("")).unwrap().node.admin.unwrap();
    assert_eq!(
        admin.listen,
        AdminAddress::Tcp("127.0.0.1:7390".parse().unwrap())
    );
    assert_eq!(admin.token, None);
    assert!(admin.caller_labels);
    let none = format!("{}\n[admin]\nlisten = \"\"\n", with_user(""));
    assert_eq!(settings(&none).unwrap().node.admin, None);
    let unix = format!(
        "{}\n[admin]\nlisten = \"/run/gw/admin.sock\"\n",
        with_user("")
    );
    assert_eq!(
        settings(&unix).unwrap().node.admin.unwrap().listen,
        AdminAddress::Unix("/run/gw/admin.sock".into())
    );
    let open = format!("{}\n[admin]\nlisten = \"0.0.0.0:9090\"\n", with_user(""));
    assert!(error(&open).contains("admin.key_sha256: needed to listen on 0.0.0.0:9090"));
    let guarded = format!(
        "{}\n[admin]\nlisten = \"0.0.0.0:9090\"\nkey_sha256 = \"{KEY_HASH}\"\n",
        with_user("")
    );
    assert!(settings(&guarded).is_ok());
    let bad = format!("{}\n[admin]\nlisten = \"localhost\"\n", with_user(""));
    assert!(error(&bad).contains("admin.listen"));
    let bad_key = format!("{}\n[admin]\nkey_sha256 = \"xyz\"\n", with_user(""));
    assert!(error(&bad_key).contains("admin.key_sha256"));
}

#[test]
fn expires_at_is_rfc_3339_with_any_offset_and_a_bad_one_names_the_user() {
    let at = |text: &str| {
        settings(&with_user(&format!(
            "[[users]]\nname = \"bob\"\nkey_sha256 = \"{}\"\nexpires_at = \"{text}\"",
            "a".repeat(64)
        )))
    };
    let utc = at("2030-01-01T00:00:00Z").unwrap().policy.users[0]
        .expires_at
        .unwrap();
    let offset = at("2030-01-01T02:00:00+02:00").unwrap().policy.users[0]
        .expires_at
        .unwrap();
    assert_eq!(utc, offset);
    assert!(at("2999-12-31T23:59:59Z").is_ok(), "far future");
    let message = at("next tuesday").unwrap_err().to_string();
    assert!(message.starts_with("users[0].expires_at"), "{message}");
}

fn with_fleet(keys: &str) -> String {
    format!("{}\n[fleet]\n{keys}\n", with_user(""))
}

const FLEET_KEY: &str =
    "session_keys = [\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"]";

#[test]
fn a_fleet_section_gets_documented_defaults_and_hides_its_password() {
    assert!(settings(&with_user("")).unwrap().node.fleet.is_none());
    let fleet = settings(&with_fleet(&format!(
        "redis_url = \"redis://10.0.0.5:6380/2\"\nusername = \"edge\"\npassword = \"s3cret\"\n{FLEET_KEY}"
    )))
    .unwrap()
    .node
    .fleet
    .expect("fleet settings");
    assert_eq!(fleet.key_prefix, "mcp-gateway");
    assert_eq!(fleet.timeout, Duration::from_millis(50));
    assert_eq!(fleet.on_unavailable, OnUnavailable::Local);
    assert!(!fleet.node_name.is_empty(), "the host name by default");
    assert_eq!(fleet.redis_shown, "redis://10.0.0.5:6380/2");
    assert_eq!(fleet.redis.redis_settings().username(), Some("edge"));
    assert_eq!(fleet.redis.redis_settings().password(), Some("s3cret"));
    assert_eq!(fleet.session_keys.len(), 1);
    let shown = format!("{fleet:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("0001020304"),
        "{shown}"
    );
    let tls = settings(&with_fleet(&format!(
        "redis_url = \"rediss://redis.internal:6379\"\non_unavailable = \"refuse\"\n{FLEET_KEY}"
    )))
    .unwrap()
    .node
    .fleet
    .unwrap();
    assert_eq!(tls.redis_shown, "rediss://redis.internal:6379/0");
    assert_eq!(tls.on_unavailable, OnUnavailable::Refuse);
}

#[test]
fn fleet_errors_name_their_field() {
    let cases = [
        ("redis_url = \"http://x\"", "fleet.redis_url"),
        (
            "redis_url = \"redis+unix:///run/redis.sock\"",
            "fleet.redis_url",
        ),
        (
            "redis_url = \"redis://h\"\nkey_prefix = \"a b\"",
            "fleet.key_prefix",
        ),
        (
            "redis_url = \"redis://h\"\nnode_name = \"edge/1\"",
            "fleet.node_name",
        ),
        (
            "redis_url = \"redis://h\"\ntimeout_ms = 0",
            "fleet.timeout_ms",
        ),
        (
            "redis_url = \"redis://h\"\nca_file = \"/etc/ca.pem\"",
            "fleet.ca_file",
        ),
        (
            "redis_url = \"rediss://h\"\nca_file = \"/nonexistent/ca.pem\"",
            "fleet.ca_file",
        ),
    ];
    for (keys, field) in cases {
        let message = error(&with_fleet(&format!("{keys}\n{FLEET_KEY}")));
        assert!(message.starts_with(field), "{keys}: {message}");
    }
    let no_keys = error(&with_fleet("redis_url = \"redis://h\""));
    assert!(no_keys.starts_with("fleet.session_keys"), "{no_keys}");
    let bad_key = error(&with_fleet(
        "redis_url = \"redis://h\"\nsession_keys = [\"00\"]",
    ));
    assert!(bad_key.starts_with("fleet.session_keys[0]"), "{bad_key}");
}
