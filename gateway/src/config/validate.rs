//! From the file as written to the settings the gateway runs with: each section checked by its
//! own function, in the order the file documents them, so the first error reported is the first
//! a reader of the file would meet.

use std::{collections::HashMap, sync::Arc, time::Duration};

use hyper::{
    StatusCode, Uri,
    header::{AUTHORIZATION, HOST, HeaderName, HeaderValue},
};

use super::{
    ConfigError,
    authorization::assign_grants,
    file::{
        AdminSection, ClientAuthMode, Config, DefaultDecision, FleetSection, IdentityConfig, Limit,
        Limits, RateLimitConfig, TlsSection, UpstreamConfig,
    },
    invalid,
    oauth::oauth_settings,
    protection::{blocking_policy, parse_prefix, xdp_settings},
    settings::{
        AdminAddress, AdminSettings, AuditSettings, FleetSettings, NodeSettings, PolicySettings,
        RateLimit, ServingSettings, Settings, UpstreamSettings,
    },
    users::users,
};
use redis::IntoConnectionInfo;

use crate::{
    digest::Sha256Digest,
    mcp::{origin::AllowedOrigins, sealed::SessionKey},
    server::ProxyProtocol,
    tls::{
        CertificateFiles, Certificates, ClientAuth, TlsSettings, read_chain, read_key, read_roots,
    },
    upstream::{ClientIdentity, IdentitySigner, UpstreamTls},
};

impl Config {
    /// Checks every field and adds the users from `MCP_API_KEY` / `MCP_USER_KEYS` (given as
    /// arguments so tests need not touch the process environment).
    pub fn validate(
        self,
        mcp_api_key: Option<&str>,
        mcp_user_keys: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        if !self.mcp_path.starts_with('/') {
            return Err(invalid("mcp_path", "must start with '/'"));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be at least 1"));
        }
        if self.idle_timeout_secs == 0 {
            return Err(invalid("idle_timeout_secs", "must be at least 1"));
        }
        let allowed_origins =
            AllowedOrigins::from_list(&self.allowed_origins).map_err(|index| {
                invalid(
                    format!("allowed_origins[{index}]"),
                    "an origin is scheme://host[:port] (http or https), or \"*\"",
                )
            })?;
        let resource = self.oauth.as_ref().map(|oauth| oauth.resource.as_str());
        let upstream = upstream(&self.upstream, &self.mcp_path, resource)?;
        let (default_limit, tool_limits, rate_limit_status) = limits(&self.rate_limit)?;
        if self.audit.path.as_os_str().is_empty() {
            return Err(invalid("audit.path", "must not be empty"));
        }
        let tls = self.tls.as_ref().map(tls_settings).transpose()?;
        let plain_listen = match (self.plain_listen, &tls) {
            (Some(_), None) => {
                return Err(invalid(
                    "plain_listen",
                    "serves plain HTTP beside a TLS listener: it needs a [tls] section (without one, `listen` is plain HTTP already)",
                ));
            }
            (Some(plain), Some(_)) if plain == self.listen => {
                return Err(invalid("plain_listen", "must differ from listen"));
            }
            (plain, _) => plain,
        };
        let proxy_protocol = proxy_protocol(self.proxy_protocol, &self.proxy_protocol_from)?;
        let (xdp_attachment, xdp) = xdp_settings(&self.xdp, self.listen.port())?;
        let blocking = blocking_policy(&self.blocking)?;
        check_limits(&self.limits)?;
        let mut users = users(&self.users, mcp_api_key, mcp_user_keys)?;
        match &self.oauth {
            None if users.is_empty() => {
                return Err(invalid(
                    "users",
                    "no users: add [[users]] entries, set MCP_API_KEY or MCP_USER_KEYS, or accept access tokens ([oauth])",
                ));
            }
            Some(oauth) if !oauth.keys_alongside && !users.is_empty() => {
                return Err(invalid(
                    "oauth.keys_alongside",
                    "[[users]] keys and certificates are accepted beside access tokens only with keys_alongside = true (clients that see OAuth metadata may ignore a static header: mix them deliberately)",
                ));
            }
            _ => {}
        }
        if let Some(index) = self
            .users
            .iter()
            .position(|user| user.tls_subject.is_some())
            && tls.as_ref().is_none_or(|tls| tls.client_auth.is_none())
        {
            return Err(invalid(
                format!("users[{index}].tls_subject"),
                "needs [tls] client_ca: without it no client presents a certificate",
            ));
        }
        let group_rules = assign_grants(&self, &mut users)?;
        let oauth = self
            .oauth
            .as_ref()
            .map(|section| {
                let default_deny = self.authorization.default == DefaultDecision::Deny;
                oauth_settings(section, group_rules, default_deny).map(Arc::new)
            })
            .transpose()?;
        let admin = admin(&self.admin)?;
        let fleet = self.fleet.as_ref().map(fleet).transpose()?;
        if self.shutdown_grace_secs == 0 {
            return Err(invalid("shutdown_grace_secs", "must be at least 1"));
        }
        let (connection_limits, request_limits) = self.limits.into();
        Ok(Settings {
            node: NodeSettings {
                listen: self.listen,
                plain_listen,
                tls: tls.is_some(),
                proxy_protocol,
                max_body_bytes: self.max_body_bytes,
                audit: AuditSettings {
                    path: self.audit.path,
                    fsync: self.audit.fsync,
                },
                xdp: xdp_attachment,
                limits: connection_limits,
                admin,
                fleet,
            },
            serving: ServingSettings {
                mcp_path: self.mcp_path,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                allowed_origins,
                tls,
                upstream: Arc::new(upstream),
                limits: request_limits,
                xdp,
                blocking,
                shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            },
            policy: PolicySettings {
                users,
                default_limit,
                tool_limits,
                rate_limit_status,
                oauth,
            },
        })
    }
}

/// `[fleet]`: where Redis is, who this node is, and the keys that seal session ids.
fn fleet(section: &FleetSection) -> Result<FleetSettings, ConfigError> {
    let mut redis = section
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|err| invalid("fleet.redis_url", format!("not a Redis URL: {err}")))?;
    if !matches!(
        redis.addr(),
        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. }
    ) {
        return Err(invalid(
            "fleet.redis_url",
            "must be redis://host:port/db or rediss://host:port/db",
        ));
    }
    let redis_ca = match &section.ca_file {
        None => None,
        Some(_) if !matches!(redis.addr(), redis::ConnectionAddr::TcpTls { .. }) => {
            return Err(invalid("fleet.ca_file", "only for rediss:// URLs"));
        }
        Some(path) => Some(std::fs::read(path).map_err(|err| {
            invalid(
                "fleet.ca_file",
                format!("cannot read {}: {err}", path.display()),
            )
        })?),
    };
    let mut credentials = redis.redis_settings().clone();
    if let Some(username) = &section.username {
        credentials = credentials.set_username(username);
    }
    if let Some(password) = &section.password {
        credentials = credentials.set_password(password);
    }
    redis = redis.set_redis_settings(credentials);
    let redis_shown = format!(
        "{}/{}{}",
        match redis.addr() {
            redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}"),
            other => format!("redis://{other}"),
        },
        redis.redis_settings().db(),
        if section.cluster { " (cluster)" } else { "" }
    );
    if section.key_prefix.is_empty()
        || !section
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(invalid(
            "fleet.key_prefix",
            "letters, digits and - _ . : only, not empty",
        ));
    }
    let node_name = match &section.node_name {
        Some(name) => name.clone(),
        None => host_name()
            .ok_or_else(|| invalid("fleet.node_name", "cannot read the host name: set a name"))?,
    };
    if node_name.is_empty()
        || node_name.len() > 64
        || !node_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "fleet.node_name",
            format!("{node_name:?}: 1 to 64 letters, digits, - _ ."),
        ));
    }
    if !(1..=10_000).contains(&section.timeout_ms) {
        return Err(invalid("fleet.timeout_ms", "must be 1 to 10000"));
    }
    let session_keys = section
        .session_keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            SessionKey::from_hex(key).ok_or_else(|| {
                invalid(
                    format!("fleet.session_keys[{index}]"),
                    "must be 64 hex digits (openssl rand -hex 32)",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if session_keys.is_empty() {
        return Err(invalid(
            "fleet.session_keys",
            "needs at least one key, the same on every node (openssl rand -hex 32): sessions \
             opened through one node are checked by the others with it",
        ));
    }
    if section.cluster && redis.redis_settings().db() != 0 {
        return Err(invalid(
            "fleet.redis_url",
            "a Redis Cluster has database 0 only",
        ));
    }
    Ok(FleetSettings {
        redis,
        cluster: section.cluster,
        redis_ca,
        redis_shown,
        key_prefix: section.key_prefix.clone(),
        node_name: node_name.into(),
        timeout: Duration::from_millis(section.timeout_ms),
        on_unavailable: section.on_unavailable,
        session_keys,
    })
}

/// The machine's host name, the default node name.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buffer[..end]).ok()?;
    // The short name: a node is named within its fleet.
    Some(name.split('.').next().unwrap_or(name).to_owned())
}

/// `[admin]`: `None` for `listen = ""`. Without a token the listener serves health and metrics
/// only, and only on loopback or a Unix socket (whose file permissions guard it).
fn admin(section: &AdminSection) -> Result<Option<AdminSettings>, ConfigError> {
    if section.listen.is_empty() {
        return Ok(None);
    }
    let listen: AdminAddress = section.listen.parse().map_err(|_| {
        invalid(
            "admin.listen",
            "must be host:port (\"127.0.0.1:7390\"), a Unix socket path, or \"\" for none",
        )
    })?;
    let token = section
        .key_sha256
        .as_deref()
        .map(|hex| {
            Sha256Digest::from_hex(hex).ok_or_else(|| {
                invalid(
                    "admin.key_sha256",
                    "must be 64 hex characters (SHA-256 of the token: `gateway hash-key`)",
                )
            })
        })
        .transpose()?;
    if let AdminAddress::Tcp(addr) = &listen
        && !addr.ip().is_loopback()
        && token.is_none()
    {
        return Err(invalid(
            "admin.key_sha256",
            format!("needed to listen on {addr}, which is not a loopback address"),
        ));
    }
    Ok(Some(AdminSettings {
        listen,
        token,
        caller_labels: section.caller_labels,
    }))
}

fn upstream(
    section: &UpstreamConfig,
    mcp_path: &str,
    issuer: Option<&str>,
) -> Result<UpstreamSettings, ConfigError> {
    let url: Uri = section
        .url
        .parse()
        .map_err(|err| invalid("upstream.url", format!("not a URL: {err}")))?;
    let host = match (url.scheme_str(), url.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => host,
        _ => {
            return Err(invalid(
                "upstream.url",
                "must be http://host:port/path or https://host:port/path",
            ));
        }
    };
    let tls = upstream_tls(section, host, url.scheme_str() == Some("https"))?;
    let legacy_sse_path = match &section.sse_path {
        None => None,
        Some(path)
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path.parse::<Uri>().is_err() =>
        {
            return Err(invalid(
                "upstream.sse_path",
                "must be a path starting with '/', without query",
            ));
        }
        Some(path) if path == mcp_path => {
            return Err(invalid(
                "upstream.sse_path",
                "must differ from mcp_path (the gateway serves both)",
            ));
        }
        Some(path) => Some(Arc::from(path.as_str())),
    };
    let caller_header = HeaderName::from_bytes(section.caller_header.as_bytes())
        .map_err(|_| invalid("upstream.caller_header", "not a valid HTTP header name"))?;
    if caller_header == AUTHORIZATION || caller_header == HOST {
        return Err(invalid(
            "upstream.caller_header",
            "must not be Authorization or Host",
        ));
    }
    if section.timeout_secs == 0 {
        return Err(invalid("upstream.timeout_secs", "must be at least 1"));
    }
    let authorization = section
        .authorization
        .as_deref()
        .map(|value| {
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| invalid("upstream.authorization", "not a valid header value"))?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()?;
    let identity = section
        .identity
        .as_ref()
        .map(|identity| identity_signer(identity, &url, &caller_header, issuer))
        .transpose()?;
    Ok(UpstreamSettings {
        url,
        tls,
        caller_header,
        timeout: Duration::from_secs(section.timeout_secs),
        authorization,
        legacy_sse_path,
        identity,
    })
}

/// `[upstream.identity]`: the key read (or the process's own made), the header checked.
fn identity_signer(
    section: &IdentityConfig,
    url: &Uri,
    caller_header: &HeaderName,
    issuer: Option<&str>,
) -> Result<Arc<IdentitySigner>, ConfigError> {
    let header = HeaderName::from_bytes(section.header.as_bytes())
        .map_err(|_| invalid("upstream.identity.header", "not a valid HTTP header name"))?;
    if header == AUTHORIZATION || header == HOST || header == *caller_header {
        return Err(invalid(
            "upstream.identity.header",
            "must not be Authorization, Host or the caller header",
        ));
    }
    if !(10..=3600).contains(&section.lifetime_secs) {
        return Err(invalid(
            "upstream.identity.lifetime_secs",
            "between 10 and 3600 (an assertion is reused for half of it)",
        ));
    }
    let pkcs8 = match &section.key_file {
        Some(path) => match read_key(path) {
            Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(key)) => key.secret_pkcs8_der().to_vec(),
            Ok(_) => {
                return Err(invalid(
                    "upstream.identity.key_file",
                    "must be a PKCS#8 key (BEGIN PRIVATE KEY): `openssl genpkey -algorithm ed25519`",
                ));
            }
            Err(err) => return Err(invalid("upstream.identity.key_file", err.to_string())),
        },
        None => process_identity_key()
            .ok_or_else(|| invalid("upstream.identity.key_file", "no key could be made"))?
            .to_vec(),
    };
    IdentitySigner::new(
        &pkcs8,
        header,
        section
            .issuer
            .clone()
            .or_else(|| issuer.map(str::to_owned))
            .unwrap_or_else(|| "mcp-gateway".to_owned()),
        section.audience.clone().unwrap_or_else(|| url.to_string()),
        Duration::from_secs(section.lifetime_secs),
    )
    .map(Arc::new)
    .map_err(|message| invalid("upstream.identity.key_file", message))
}

/// The Ed25519 key this process signs with when no key file is configured: made once, so a
/// reload keeps it (and the upstream's cached JWKS stays right).
fn process_identity_key() -> Option<&'static [u8]> {
    static KEY: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .ok()
            .map(|pair| pair.serialize_der())
    })
    .as_deref()
}

/// `proxy_protocol` and the balancers it is accepted from: both or neither.
fn proxy_protocol(on: bool, from: &[String]) -> Result<Option<ProxyProtocol>, ConfigError> {
    let balancers = from
        .iter()
        .enumerate()
        .map(|(index, text)| {
            parse_prefix(text).ok_or_else(|| {
                invalid(
                    format!("proxy_protocol_from[{index}]"),
                    "not an address or CIDR prefix",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match (on, balancers.is_empty()) {
        (false, true) => Ok(None),
        (false, false) => Err(invalid(
            "proxy_protocol_from",
            "only with proxy_protocol = true",
        )),
        (true, true) => Err(invalid(
            "proxy_protocol_from",
            "needed with proxy_protocol = true: the load balancers' addresses, the only ones \
             allowed to say who the client is",
        )),
        (true, false) => Ok(Some(ProxyProtocol::new(balancers))),
    }
}

/// The TLS client of an `https://` upstream; the TLS settings are refused for `http://`.
fn upstream_tls(
    section: &UpstreamConfig,
    host: &str,
    https: bool,
) -> Result<Option<UpstreamTls>, ConfigError> {
    let client_files = match (&section.client_cert, &section.client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("upstream.client_key", "needed with client_cert")),
        (None, Some(_)) => return Err(invalid("upstream.client_cert", "needed with client_key")),
    };
    if !https {
        if section.ca.is_some() {
            return Err(invalid("upstream.ca", "only for an https:// url"));
        }
        if client_files.is_some() {
            return Err(invalid("upstream.client_cert", "only for an https:// url"));
        }
        return Ok(None);
    }
    let roots = match &section.ca {
        Some(path) => read_roots(path).map_err(|err| invalid("upstream.ca", err.to_string()))?,
        None => UpstreamTls::system_roots(),
    };
    if roots.is_empty() {
        return Err(invalid(
            "upstream.ca",
            "needed: the system trust store has no CA certificate to verify the https:// upstream",
        ));
    }
    let identity = client_files
        .map(|(cert, key)| {
            Ok(ClientIdentity {
                chain: read_chain(cert)
                    .map_err(|err| invalid("upstream.client_cert", err.to_string()))?,
                key: read_key(key)
                    .map_err(|err| invalid("upstream.client_key", err.to_string()))?,
            })
        })
        .transpose()?;
    UpstreamTls::new(host, roots, identity)
        .map(Some)
        .map_err(|err| invalid("upstream.client_cert", err.to_string()))
}

/// The `[rate_limit]` section: the default limit, the per-tool limits and the refusal status.
fn limits(
    section: &RateLimitConfig,
) -> Result<(RateLimit, HashMap<String, RateLimit>, StatusCode), ConfigError> {
    let default_limit = rate_limit(
        "rate_limit",
        Limit {
            requests: section.requests,
            window_secs: section.window_secs,
        },
    )?;
    let tool_limits = section
        .tools
        .iter()
        .map(|(tool, limit)| {
            Ok((
                tool.clone(),
                rate_limit(&format!("rate_limit.tools.{tool}"), *limit)?,
            ))
        })
        .collect::<Result<_, ConfigError>>()?;
    let status = match section.status {
        429 => StatusCode::TOO_MANY_REQUESTS,
        200 => StatusCode::OK,
        other => {
            return Err(invalid(
                "rate_limit.status",
                format!("must be 429 or 200, not {other}"),
            ));
        }
    };
    Ok((default_limit, tool_limits, status))
}

pub(super) fn rate_limit(field: &str, limit: Limit) -> Result<RateLimit, ConfigError> {
    let requests = std::num::NonZeroU32::new(limit.requests)
        .ok_or_else(|| invalid(format!("{field}.requests"), "must be at least 1"))?;
    if limit.window_secs == 0 || limit.window_secs > 86_400 {
        return Err(invalid(
            format!("{field}.window_secs"),
            "must be between 1 and 86400",
        ));
    }
    Ok(RateLimit {
        requests,
        window: Duration::from_secs(limit.window_secs),
    })
}

/// hyper's smallest HTTP/1.1 read buffer, which bounds a request head.
const MIN_HEADER_BYTES: usize = 8192;

/// Every bound in `[limits]` admits at least one of what it bounds.
fn check_limits(limits: &Limits) -> Result<(), ConfigError> {
    let Limits {
        max_batch_messages,
        max_json_depth,
        max_argument_keys,
        max_headers,
        max_header_bytes,
        max_uri_bytes,
        max_connections_per_source,
        max_streams_per_connection,
        max_in_flight_per_caller,
        max_listen_streams_per_caller,
        // 0 turns keep-alives off.
        sse_keepalive_secs: _,
        max_sessions,
        max_sessions_per_caller,
    } = *limits;
    for (name, value) in [
        ("max_batch_messages", max_batch_messages),
        ("max_json_depth", max_json_depth),
        ("max_argument_keys", max_argument_keys),
        ("max_headers", max_headers),
        ("max_header_bytes", max_header_bytes),
        ("max_uri_bytes", max_uri_bytes),
        ("max_connections_per_source", max_connections_per_source),
        (
            "max_streams_per_connection",
            max_streams_per_connection as usize,
        ),
        ("max_in_flight_per_caller", max_in_flight_per_caller),
        (
            "max_listen_streams_per_caller",
            max_listen_streams_per_caller,
        ),
        ("max_sessions", max_sessions),
        ("max_sessions_per_caller", max_sessions_per_caller),
    ] {
        if value == 0 {
            return Err(invalid(format!("limits.{name}"), "must be at least 1"));
        }
    }
    if max_header_bytes < MIN_HEADER_BYTES {
        return Err(invalid(
            "limits.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES} (HTTP/1.1's smallest read buffer)"),
        ));
    }
    Ok(())
}

/// `[tls]`: every certificate is read and checked against its key now, so a bad file stops the
/// start (or a reload) with its name.
fn tls_settings(section: &TlsSection) -> Result<TlsSettings, ConfigError> {
    let first = match (&section.cert, &section.key) {
        (Some(cert), Some(key)) => Some(CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (Some(_), None) => return Err(invalid("tls.key", "needed with tls.cert")),
        (None, Some(_)) => return Err(invalid("tls.cert", "needed with tls.key")),
        (None, None) => None,
    };
    let sources: Vec<CertificateFiles> = first
        .into_iter()
        .chain(section.certificates.iter().map(|c| CertificateFiles {
            cert: c.cert.clone(),
            key: c.key.clone(),
        }))
        .collect();
    if sources.is_empty() {
        return Err(invalid(
            "tls",
            "no certificate: set cert and key, or add [[tls.certificates]]",
        ));
    }
    if section.handshake_timeout_secs == 0 {
        return Err(invalid("tls.handshake_timeout_secs", "must be at least 1"));
    }
    let certificates = Certificates::load(sources, crate::tls::provider())
        .map_err(|err| invalid("tls", err.to_string()))?;
    let client_auth = match (&section.client_ca, section.client_auth) {
        (None, None) => None,
        (None, Some(_)) => return Err(invalid("tls.client_auth", "needs tls.client_ca")),
        (Some(path), mode) => Some(ClientAuth {
            roots: Arc::new(
                read_roots(path).map_err(|err| invalid("tls.client_ca", err.to_string()))?,
            ),
            required: mode != Some(ClientAuthMode::Optional),
        }),
    };
    Ok(TlsSettings {
        certificates: Arc::new(certificates),
        client_auth,
        handshake_timeout: Duration::from_secs(section.handshake_timeout_secs),
    })
}
