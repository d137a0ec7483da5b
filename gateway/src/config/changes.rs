//! What a reload of a file would do: the settings it applies, and the ones that need a restart.
//!
//! Every setting lives in exactly one of three types: [`NodeSettings`] (a restart or an upgrade
//! applies it), [`ServingSettings`] and [`PolicySettings`] (a reload swaps them whole, so a
//! request sees the new value from the next request on; the policy is compared by its
//! [`PolicySummary`]). A reload compares each type whole,
//! field by field, with [`Diff`]; each `impl` of it is written by `settings_diff!`, which
//! destructures its struct without `..`: a field added to a settings type and not named in its
//! diff does not compile. So no setting can change in the file and be neither applied nor
//! reported, which a hand-kept list of "settings that need a restart" allowed (issue 38).
//!
//! The names are the configuration's own keys (`upstream.timeout_secs`, `xdp.mode`); a field
//! that several keys make names each of them. [`restart_needed`] and [`reload_applies`] list
//! them all, for the README (a test keeps its lists equal to these).

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use hyper::StatusCode;
use serde::Serialize;

use super::settings::{
    AdminSettings, AuditSettings, ConnectionLimits, NodeSettings, PolicySettings, RateLimit,
    RequestLimits, ServingSettings, Settings, UpstreamSettings, User, XdpAttachment, XdpPolicy,
};
use crate::tls::TlsSettings;

/// A comparison of two values of one settings type, by configuration key.
pub trait Diff {
    /// Appends the keys (after `prefix`) whose settings differ between `self` and `other`.
    fn diff(&self, other: &Self, prefix: &str, changed: &mut Vec<String>);
    /// Appends every key the type holds (after `prefix`).
    fn keys(prefix: &str, keys: &mut Vec<String>);
}

/// `impl Diff` for a struct: each field with the configuration keys that make it
/// (`field: ["key", ...]`), or with the prefix of a struct of its own (`field: {"key": Type}`).
macro_rules! settings_diff {
    ($Struct:ident { $($field:ident: $keys:tt),* $(,)? }) => {
        impl Diff for $Struct {
            fn diff(&self, other: &Self, prefix: &str, changed: &mut Vec<String>) {
                // No `..`: a field missing below is a compile error here.
                let $Struct { $($field: _),* } = self;
                $( settings_diff!(@diff $keys, &self.$field, &other.$field, prefix, changed); )*
            }

            fn keys(prefix: &str, keys: &mut Vec<String>) {
                $( settings_diff!(@keys $keys, prefix, keys); )*
            }
        }
    };
    (@diff [$($key:literal),+], $a:expr, $b:expr, $prefix:expr, $changed:expr) => {
        if $a != $b {
            $( $changed.push(format!("{}{}", $prefix, $key)); )+
        }
    };
    (@diff {$key:literal: $Nested:ty}, $a:expr, $b:expr, $prefix:expr, $changed:expr) => {
        <$Nested as Diff>::diff($a, $b, &format!("{}{}.", $prefix, $key), $changed)
    };
    (@keys [$($key:literal),+], $prefix:expr, $keys:expr) => {
        $( $keys.push(format!("{}{}", $prefix, $key)); )+
    };
    (@keys {$key:literal: $Nested:ty}, $prefix:expr, $keys:expr) => {
        <$Nested as Diff>::keys(&format!("{}{}.", $prefix, $key), $keys)
    };
}

settings_diff!(NodeSettings {
    listen: ["listen"],
    plain_listen: ["plain_listen"],
    tls: ["tls"],
    proxy_protocol: ["proxy_protocol", "proxy_protocol_from"],
    max_body_bytes: ["max_body_bytes"],
    audit: {"audit": AuditSettings},
    xdp: {"xdp": XdpAttachment},
    limits: {"limits": ConnectionLimits},
    admin: {"admin": Option<AdminSettings>},
    fleet: ["fleet"],
});

settings_diff!(AuditSettings {
    path: ["path"],
    fsync: ["fsync"],
});

settings_diff!(XdpAttachment {
    interfaces: ["enabled", "interface"],
    mode: ["mode"],
    pin_dir: ["pin_path"],
    log: ["log"],
});

settings_diff!(ConnectionLimits {
    max_headers: ["max_headers"],
    max_header_bytes: ["max_header_bytes"],
    max_streams_per_connection: ["max_streams_per_connection"],
    max_sessions: ["max_sessions"],
    max_sessions_per_caller: ["max_sessions_per_caller"],
});

settings_diff!(AdminSettings {
    listen: ["listen"],
    token: ["key_sha256"],
    caller_labels: ["caller_labels"],
});

settings_diff!(ServingSettings {
    mcp_path: ["mcp_path"],
    idle_timeout: ["idle_timeout_secs"],
    allowed_origins: ["allowed_origins"],
    tls: {"tls": Option<TlsSettings>},
    upstream: {"upstream": Arc<UpstreamSettings>},
    limits: {"limits": RequestLimits},
    xdp: {"xdp": XdpPolicy},
    blocking: ["blocking"],
    shutdown_grace: ["shutdown_grace_secs"],
});

settings_diff!(TlsSettings {
    certificates: ["cert", "key", "certificates"],
    client_auth: ["client_ca", "client_auth"],
    handshake_timeout: ["handshake_timeout_secs"],
});

settings_diff!(UpstreamSettings {
    url: ["url"],
    tls: ["ca", "client_cert", "client_key"],
    caller_header: ["caller_header"],
    timeout: ["timeout_secs"],
    authorization: ["authorization"],
    legacy_sse_path: ["sse_path"],
    identity: ["identity"],
});

settings_diff!(RequestLimits {
    max_batch_messages: ["max_batch_messages"],
    max_json_depth: ["max_json_depth"],
    max_argument_keys: ["max_argument_keys"],
    max_uri_bytes: ["max_uri_bytes"],
    max_connections_per_source: ["max_connections_per_source"],
    max_in_flight_per_caller: ["max_in_flight_per_caller"],
    max_listen_streams_per_caller: ["max_listen_streams_per_caller"],
    sse_keepalive: ["sse_keepalive_secs"],
});

settings_diff!(XdpPolicy {
    allow: ["allow"],
    program: ["ports", "dry_run", "rate"],
});

/// What a policy's diff needs of it: hashes of its users and of their grants, rather than a
/// second copy of them (100,000 users take about 10 MiB). Kept with the policy in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    users: u64,
    grants: u64,
    default_limit: RateLimit,
    tool_limits: BTreeMap<String, RateLimit>,
    rate_limit_status: StatusCode,
    /// `[oauth]` as written.
    oauth: u64,
}

impl PolicySummary {
    pub fn of(policy: &PolicySettings) -> Self {
        let PolicySettings {
            users,
            default_limit,
            tool_limits,
            rate_limit_status,
            oauth,
        } = policy;
        let (mut users_hash, mut grants_hash) = (DefaultHasher::new(), DefaultHasher::new());
        for user in users {
            let User {
                name,
                key_digest,
                tls_subject,
                limit,
                grants,
                expires_at,
                disabled,
            } = user;
            (name, key_digest, tls_subject, limit, expires_at, disabled).hash(&mut users_hash);
            (name, grants).hash(&mut grants_hash);
        }
        Self {
            users: users_hash.finish(),
            grants: grants_hash.finish(),
            default_limit: *default_limit,
            tool_limits: tool_limits.clone().into_iter().collect(),
            rate_limit_status: *rate_limit_status,
            oauth: {
                let mut hash = DefaultHasher::new();
                oauth.as_ref().map(|oauth| &oauth.section).hash(&mut hash);
                hash.finish()
            },
        }
    }
}

settings_diff!(PolicySummary {
    users: ["users"],
    // What callers may use: `[groups.*]`, `[authorization]` and the users' own rules.
    grants: ["groups", "authorization"],
    default_limit: ["rate_limit.requests", "rate_limit.window_secs"],
    tool_limits: ["rate_limit.tools"],
    rate_limit_status: ["rate_limit.status"],
    oauth: ["oauth"],
});

/// An optional section: its keys when both have it, the section's own name when one lacks it.
impl<T: Diff + PartialEq> Diff for Option<T> {
    fn diff(&self, other: &Self, prefix: &str, changed: &mut Vec<String>) {
        match (self, other) {
            (Some(a), Some(b)) => a.diff(b, prefix, changed),
            (a, b) if a != b => changed.push(prefix.trim_end_matches('.').to_owned()),
            _ => {}
        }
    }

    fn keys(prefix: &str, keys: &mut Vec<String>) {
        T::keys(prefix, keys);
    }
}

impl<T: Diff> Diff for Arc<T> {
    fn diff(&self, other: &Self, prefix: &str, changed: &mut Vec<String>) {
        T::diff(self, other, prefix, changed);
    }

    fn keys(prefix: &str, keys: &mut Vec<String>) {
        T::keys(prefix, keys);
    }
}

/// What a reload from `running` to `file` changes, by configuration key (in the order the
/// settings types hold them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Applied by the reload: in force from the next request (or connection) on.
    pub applied: Vec<String>,
    /// Different in the file but kept as they are until a restart or an upgrade.
    pub restart_needed: Vec<String>,
}

impl Changes {
    /// From the settings in force (the policy's by its summary) to those of a file.
    pub fn between(
        running: (&NodeSettings, &ServingSettings, &PolicySummary),
        file: &Settings,
    ) -> Self {
        let (node, serving, policy) = running;
        let mut changes = Self::default();
        node.diff(&file.node, "", &mut changes.restart_needed);
        serving.diff(&file.serving, "", &mut changes.applied);
        policy.diff(&PolicySummary::of(&file.policy), "", &mut changes.applied);
        // Turning TLS on or off is the listener's (a restart's), not the certificates'.
        let Self {
            applied,
            restart_needed,
        } = &mut changes;
        applied.retain(|key| !restart_needed.contains(key));
        changes
    }
}

/// Every key a restart (or an upgrade) applies, and no reload.
pub fn restart_needed() -> Vec<String> {
    let mut keys = Vec::new();
    NodeSettings::keys("", &mut keys);
    keys
}

/// Every key a reload applies.
pub fn reload_applies() -> Vec<String> {
    let mut keys = Vec::new();
    ServingSettings::keys("", &mut keys);
    PolicySummary::keys("", &mut keys);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const DIGEST: &str = "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90";

    /// `toml` (top-level keys, then tables) with an upstream where it has none, and a user.
    fn settings(toml: &str) -> Settings {
        let upstream = if toml.contains("[upstream]") {
            ""
        } else {
            "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n"
        };
        let text =
            format!("{toml}\n{upstream}[[users]]\nname = \"alice\"\nkey_sha256 = \"{DIGEST}\"\n");
        Config::from_toml(&text)
            .unwrap_or_else(|err| panic!("{err}\n{text}"))
            .validate(None, None)
            .unwrap_or_else(|err| panic!("{err}\n{text}"))
    }

    fn changes(before: &str, after: &str) -> Changes {
        let (running, file) = (settings(before), settings(after));
        let policy = PolicySummary::of(&running.policy);
        Changes::between((&running.node, &running.serving, &policy), &file)
    }

    /// A self-signed certificate and its key, written as `name`.pem and `name`.key.
    fn certificate(dir: &std::path::Path, name: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(changes("", ""), Changes::default());
    }

    #[test]
    fn origin_rules_and_the_idle_timeout_are_applied() {
        let changes = changes(
            "allowed_origins = [\"https://a.example\"]\nidle_timeout_secs = 30",
            "allowed_origins = [\"https://b.example\"]\nidle_timeout_secs = 5",
        );
        assert_eq!(changes.applied, ["idle_timeout_secs", "allowed_origins"]);
        assert!(changes.restart_needed.is_empty());
    }

    #[test]
    fn a_new_listen_address_and_xdp_mode_need_a_restart() {
        let changes = changes(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8081\"\n[xdp]\nmode = \"skb\"",
        );
        assert_eq!(changes.restart_needed, ["listen", "xdp.mode"]);
        // The port the XDP program protects follows `listen`: the attached program gets it.
        assert_eq!(changes.applied, ["xdp.ports", "xdp.dry_run", "xdp.rate"]);
    }

    #[test]
    fn limits_split_between_the_two() {
        let changes = changes(
            "",
            "[limits]\nmax_headers = 50\nmax_in_flight_per_caller = 3",
        );
        assert_eq!(changes.restart_needed, ["limits.max_headers"]);
        assert_eq!(changes.applied, ["limits.max_in_flight_per_caller"]);
    }

    /// For every key of the configuration: a change of it (from `before` to `after`) is named by
    /// the reload's answer, in the list it belongs to. Every key the two lists hold has its row.
    #[test]
    fn every_setting_changed_is_named_as_applied_or_as_needing_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path(), "a");
        let (other_cert, other_key) = certificate(dir.path(), "b");
        let tls = format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n");
        let other_tls = format!("[tls]\ncert = \"{other_cert}\"\nkey = \"{other_key}\"\n");
        let https = "[upstream]\nurl = \"https://localhost:3443/mcp\"\n";
        let fleet = format!(
            "[fleet]\nredis_url = \"redis://127.0.0.1:6379/0\"\nnode_name = \"a\"\nsession_keys = [\"{DIGEST}\"]\n"
        );
        let rows: Vec<(&str, String, String)> = vec![
            ("listen", "".into(), "listen = \"127.0.0.1:8081\"".into()),
            ("plain_listen", tls.clone(), format!("plain_listen = \"127.0.0.1:8082\"\n{tls}")),
            ("tls", "".into(), tls.clone()),
            ("proxy_protocol", "".into(), "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]".into()),
            ("proxy_protocol_from", "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]".into(), "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2\"]".into()),
            ("max_body_bytes", "".into(), "max_body_bytes = 1000".into()),
            ("audit.path", "".into(), "[audit]\npath = \"other.jsonl\"".into()),
            ("audit.fsync", "".into(), "[audit]\nfsync = true".into()),
            ("xdp.enabled", "".into(), "[xdp]\nenabled = true\ninterface = \"lo\"".into()),
            ("xdp.interface", "[xdp]\nenabled = true\ninterface = \"lo\"".into(), "[xdp]\nenabled = true\ninterface = \"eth0\"".into()),
            ("xdp.mode", "".into(), "[xdp]\nmode = \"driver\"".into()),
            ("xdp.pin_path", "".into(), "[xdp]\npin_path = \"\"".into()),
            ("xdp.log", "".into(), "[xdp]\nlog = true".into()),
            ("limits.max_headers", "".into(), "[limits]\nmax_headers = 50".into()),
            ("limits.max_header_bytes", "".into(), "[limits]\nmax_header_bytes = 20000".into()),
            ("limits.max_streams_per_connection", "".into(), "[limits]\nmax_streams_per_connection = 10".into()),
            ("limits.max_sessions", "".into(), "[limits]\nmax_sessions = 10".into()),
            ("limits.max_sessions_per_caller", "".into(), "[limits]\nmax_sessions_per_caller = 10".into()),
            ("admin.listen", "".into(), "[admin]\nlisten = \"127.0.0.1:9999\"".into()),
            ("admin.key_sha256", "".into(), format!("[admin]\nkey_sha256 = \"{DIGEST}\"")),
            ("admin.caller_labels", "".into(), "[admin]\ncaller_labels = false".into()),
            ("fleet", "".into(), fleet.clone()),
            ("mcp_path", "".into(), "mcp_path = \"/v2/mcp\"".into()),
            ("idle_timeout_secs", "".into(), "idle_timeout_secs = 5".into()),
            ("allowed_origins", "".into(), "allowed_origins = [\"https://a.example\"]".into()),
            ("tls.cert", tls.clone(), other_tls.clone()),
            ("tls.key", tls.clone(), other_tls.clone()),
            ("tls.certificates", tls.clone(), format!("{tls}[[tls.certificates]]\ncert = \"{other_cert}\"\nkey = \"{other_key}\"\n")),
            ("tls.client_ca", tls.clone(), format!("{tls}client_ca = \"{cert}\"\n")),
            ("tls.client_auth", format!("{tls}client_ca = \"{cert}\"\n"), format!("{tls}client_ca = \"{cert}\"\nclient_auth = \"optional\"\n")),
            ("tls.handshake_timeout_secs", tls.clone(), format!("{tls}handshake_timeout_secs = 3\n")),
            ("upstream.url", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3001/mcp\"".into()),
            ("upstream.ca", https.into(), format!("{https}ca = \"{cert}\"")),
            ("upstream.client_cert", format!("{https}ca = \"{cert}\""), format!("{https}ca = \"{cert}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"")),
            ("upstream.client_key", format!("{https}ca = \"{cert}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\""), format!("{https}ca = \"{cert}\"\nclient_cert = \"{other_cert}\"\nclient_key = \"{other_key}\"")),
            ("upstream.caller_header", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\ncaller_header = \"X-Who\"".into()),
            ("upstream.timeout_secs", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\ntimeout_secs = 5".into()),
            ("upstream.authorization", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\nauthorization = \"Bearer upstream\"".into()),
            ("upstream.sse_path", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\nsse_path = \"/sse\"".into()),
            ("upstream.identity", "".into(), "[upstream]\nurl = \"http://127.0.0.1:3000/mcp\"\n[upstream.identity]\nlifetime_secs = 30".into()),
            ("limits.max_batch_messages", "".into(), "[limits]\nmax_batch_messages = 5".into()),
            ("limits.max_json_depth", "".into(), "[limits]\nmax_json_depth = 5".into()),
            ("limits.max_argument_keys", "".into(), "[limits]\nmax_argument_keys = 5".into()),
            ("limits.max_uri_bytes", "".into(), "[limits]\nmax_uri_bytes = 500".into()),
            ("limits.max_connections_per_source", "".into(), "[limits]\nmax_connections_per_source = 5".into()),
            ("limits.max_in_flight_per_caller", "".into(), "[limits]\nmax_in_flight_per_caller = 5".into()),
            ("limits.max_listen_streams_per_caller", "".into(), "[limits]\nmax_listen_streams_per_caller = 2".into()),
            ("limits.sse_keepalive_secs", "".into(), "[limits]\nsse_keepalive_secs = 0".into()),
            ("xdp.allow", "".into(), "[xdp]\nallow = [\"192.0.2.0/24\"]".into()),
            ("xdp.ports", "".into(), "[xdp]\nports = [8443]".into()),
            ("xdp.dry_run", "".into(), "[xdp]\ndry_run = true".into()),
            ("xdp.rate", "".into(), "[xdp.rate]\npackets_per_sec = 10".into()),
            ("blocking", "".into(), "[blocking]\nauth_failures = 3".into()),
            ("shutdown_grace_secs", "".into(), "shutdown_grace_secs = 5".into()),
            ("users", "".into(), format!("[[users]]\nname = \"bob\"\nkey_sha256 = \"{}\"", "ab".repeat(32))),
            ("groups", "".into(), "[groups.readers]\nmembers = [\"alice\"]\ntools = [\"read_*\"]".into()),
            ("authorization", "".into(), "[authorization]\ndefault = \"deny\"".into()),
            ("rate_limit.requests", "".into(), "[rate_limit]\nrequests = 5".into()),
            ("rate_limit.window_secs", "".into(), "[rate_limit]\nwindow_secs = 5".into()),
            ("rate_limit.tools", "".into(), "[rate_limit.tools]\nsearch = { requests = 5, window_secs = 60 }".into()),
            ("rate_limit.status", "".into(), "[rate_limit]\nstatus = 200".into()),
            ("oauth", "".into(), "[oauth]\nresource = \"https://mcp.example.com/mcp\"\nkeys_alongside = true\n[[oauth.issuers]]\nissuer = \"https://idp.example.com\"\njwks_uri = \"https://idp.example.com/jwks\"".into()),
        ];
        let (restart, reload) = (restart_needed(), reload_applies());
        for key in restart.iter().chain(&reload) {
            assert!(
                rows.iter().any(|(row, _, _)| row == key),
                "{key} has no row in this table"
            );
        }
        for (key, before, after) in &rows {
            let changes = changes(before, after);
            let (named_in, not_in) = if restart.iter().any(|k| k == key) {
                (&changes.restart_needed, &changes.applied)
            } else {
                assert!(reload.iter().any(|k| k == key), "{key} is in neither list");
                (&changes.applied, &changes.restart_needed)
            };
            assert!(named_in.iter().any(|k| k == key), "{key}: {changes:?}");
            assert!(!not_in.iter().any(|k| k == key), "{key}: {changes:?}");
        }
    }

    #[test]
    fn every_key_is_either_applied_or_needs_a_restart_never_both() {
        let (restart, reload) = (restart_needed(), reload_applies());
        for key in &restart {
            assert!(!reload.contains(key), "{key} is in both lists");
        }
        let mut all: Vec<_> = restart.iter().chain(&reload).collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "a key named twice: {all:?}");
    }

    /// The README's reload section lists the keys as the code has them.
    #[test]
    fn the_readme_lists_what_a_reload_applies_and_what_needs_a_restart() {
        let readme = include_str!("../../../README.md");
        let listed = |marker: &str| -> Vec<String> {
            let start = readme
                .find(marker)
                .unwrap_or_else(|| panic!("README has no line {marker:?}"));
            let line = readme[start + marker.len()..].lines().next().unwrap_or("");
            line.split(", ")
                .map(|key| {
                    key.trim()
                        .trim_end_matches('.')
                        .trim_matches('`')
                        .to_owned()
                })
                .filter(|key| !key.is_empty())
                .collect()
        };
        assert_eq!(listed("A reload applies: "), reload_applies());
        assert_eq!(
            listed("Only a restart or an upgrade applies: "),
            restart_needed()
        );
    }
}
