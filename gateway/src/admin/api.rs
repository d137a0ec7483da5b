//! `/api/v1/...`: JSON in, JSON out.
//!
//! | method and path                 | what                                             |
//! |---------------------------------|--------------------------------------------------|
//! | `GET /api/v1/status`            | version, uptime, listeners, XDP, counts          |
//! | `GET /api/v1/blocks`            | blocks: target, reason, who decided, time left   |
//! | `POST /api/v1/blocks`           | `{"target", "ttl_secs"?, "reason"?}`: block      |
//! | `DELETE /api/v1/blocks/TARGET`  | unblock an address or prefix                     |
//! | `GET /api/v1/allow`             | the allowlist                                    |
//! | `POST /api/v1/allow`            | `{"target", "reason"?}`: allowlist               |
//! | `DELETE /api/v1/allow/TARGET`   | take off the allowlist                           |
//! | `GET /api/v1/users`             | users: name, limit, expiry, state (never keys)   |
//! | `GET /api/v1/callers`           | callers' use of their limit in the current window|
//! | `POST /api/v1/reload`           | reload the configuration file: what it applied,  |
//! |                                 | what needs a restart (`?dry_run=true`: would)    |
//! | `POST /api/v1/upgrade`          | hand over to the binary at the started path      |

use std::time::Duration;

use bytes::Bytes;
use gateway_ebpf::BlockReason;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, body::Incoming, header};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Admin;
use crate::{
    app::ReloadError,
    audit::{self, BlockTarget},
    config::parse_prefix,
    policy::Sha256Digest,
    protection::{Block, Command, Origin, Snapshot},
};

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest operator reason kept in the audit line.
const MAX_REASON_CHARS: usize = 200;

pub fn json(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    ApiError::new(status, message).into_response()
}

/// Every refusal of the admin API, as one answer: its status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json(self.status, &json!({"error": self.message}));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"mcp-gateway-admin\""),
            );
        }
        response
    }
}

/// The admin token, checked in constant time (the digests are compared, as for user keys).
pub fn check_token(token: Option<&Sha256Digest>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no admin token is configured ([admin] key_sha256): only /healthz, /readyz and /metrics are served",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| Sha256Digest::of(token.trim().as_bytes()));
    match presented {
        Some(digest) if digest == *expected => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin token required: send it as `Authorization: Bearer <token>`",
        )),
    }
}

pub async fn handle(
    admin: &Admin,
    peer: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let by = format!("admin {peer}");
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").splitn(2, '/').collect();
    if !path.starts_with("/api/v1/") {
        return error(StatusCode::NOT_FOUND, "not found: see /api/v1/status");
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => status(admin).await,
        (&Method::GET, ["blocks"]) => with_snapshot(admin, |snapshot| blocks_json(&snapshot)).await,
        (&Method::POST, ["blocks"]) => {
            answer(async { block(admin, &by, read_change(request).await?).await }).await
        }
        (&Method::DELETE, ["blocks", target]) => answer(unblock(admin, &by, target)).await,
        (&Method::GET, ["allow"]) => {
            with_snapshot(admin, |snapshot| {
                json!(
                    snapshot
                        .allow
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                )
            })
            .await
        }
        (&Method::POST, ["allow"]) => {
            answer(async { allow(admin, &by, read_change(request).await?).await }).await
        }
        (&Method::DELETE, ["allow", target]) => answer(disallow(admin, &by, target)).await,
        (&Method::GET, ["users"]) => {
            let in_force = admin.gateway.in_force();
            let users: Vec<Value> = in_force
                .policy
                .callers()
                .map(|caller| caller.view())
                .collect();
            json(StatusCode::OK, &Value::Array(users))
        }
        (&Method::GET, ["callers"]) => {
            let callers: Vec<Value> = admin
                .gateway
                .caller_usage()
                .into_iter()
                .map(|(name, used, limit)| {
                    json!({
                        "caller": &*name,
                        "used": used,
                        "limit": limit.requests.get(),
                        "window_secs": limit.window.as_secs(),
                    })
                })
                .collect();
            json(StatusCode::OK, &Value::Array(callers))
        }
        (&Method::POST, ["reload"]) => {
            let dry_run = request
                .uri()
                .query()
                .is_some_and(|query| query.split('&').any(|pair| pair == "dry_run=true"));
            let result = if dry_run {
                admin.reloader.dry_run().await
            } else {
                admin.reloader.reload(&by).await
            };
            match result {
                Ok(report) => json(StatusCode::OK, &json!(report)),
                Err(err @ ReloadError::NoFile) => error(StatusCode::CONFLICT, err),
                Err(err) => error(StatusCode::UNPROCESSABLE_ENTITY, err),
            }
        }
        (&Method::POST, ["upgrade"]) => upgrade(admin, &by).await,
        (
            _,
            [
                "status" | "blocks" | "allow" | "users" | "callers" | "reload" | "upgrade",
                ..,
            ],
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

async fn answer(handler: impl Future<Output = Answer>) -> Response<Full<Bytes>> {
    handler.await.unwrap_or_else(ApiError::into_response)
}

async fn with_snapshot(
    admin: &Admin,
    render: impl FnOnce(Snapshot) -> Value,
) -> Response<Full<Bytes>> {
    answer(async { Ok(json(StatusCode::OK, &render(snapshot(admin).await?))) }).await
}

fn blocks_json(snapshot: &Snapshot) -> Value {
    Value::Array(
        snapshot
            .blocks
            .iter()
            .map(|block| {
                json!({
                    "target": BlockTarget::from(block.target).to_string(),
                    "reason": block.reason.as_str(),
                    "origin": block.origin.as_str(),
                    "node": block.node.as_deref(),
                    "remaining_secs": block.remaining.map(|left| left.as_secs()),
                })
            })
            .collect(),
    )
}

async fn status(admin: &Admin) -> Response<Full<Bytes>> {
    let gateway = &admin.gateway;
    let (settings, in_force) = (gateway.settings(), gateway.in_force());
    let snapshot = gateway.protection().snapshot().await.unwrap_or_default();
    json(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_secs": admin.started.elapsed().as_secs(),
            "listen": settings.listen.to_string(),
            "tls": settings.tls,
            "upstream": in_force.serving.upstream.url.to_string(),
            "xdp": admin.xdp_mode,
            "draining": admin.draining.is_cancelled(),
            "users": in_force.policy.callers().count(),
            "blocks": snapshot.blocks.len(),
            "allowlist": snapshot.allow.len(),
            "fleet": settings.fleet.as_ref().map(|fleet| json!({
                "node": &*fleet.node_name,
                "redis": gateway.fleet().is_some_and(|health| health.is_up()),
            })),
            "xdp_packets": snapshot.xdp.map(|stats| stats
                .iter()
                .map(|(verdict, count)| (verdict.as_str().to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>()),
        }),
    )
}

/// A block or allowlist change as posted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    target: String,
    /// Blocks only: how long; absent: until unblocked.
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// The operator's reason, for the audit log.
    #[serde(default)]
    reason: Option<String>,
}

async fn read_change(request: Request<Incoming>) -> Result<Change, ApiError> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"target\": \"ADDRESS or CIDR\", \"ttl_secs\": N, \"reason\": \"...\"}}: {err}"),
        )
    })
}

fn target_of(text: &str) -> Result<IpNet, ApiError> {
    parse_prefix(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not an address or a CIDR prefix"),
        )
    })
}

fn overlaps(allow: &[IpNet], target: IpNet) -> bool {
    allow
        .iter()
        .any(|allowed| allowed.contains(&target) || target.contains(allowed))
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

async fn snapshot(admin: &Admin) -> Result<Snapshot, ApiError> {
    admin
        .gateway
        .protection()
        .snapshot()
        .await
        .map_err(|err| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err))
}

/// Audits an operator's change, then hands it to the enforcer: an action that cannot be
/// audited is not carried out.
async fn carry_out(
    admin: &Admin,
    action: &str,
    by: &str,
    target: IpNet,
    detail: Option<String>,
    command: Command,
) -> Result<(), ApiError> {
    audit_action(admin, action, by, "applied", &target, detail).await?;
    admin
        .gateway
        .protection()
        .command(command)
        .await
        .map_err(|err| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err))
}

async fn block(admin: &Admin, by: &str, change: Change) -> Answer {
    let target = target_of(&change.target)?;
    if overlaps(&snapshot(admin).await?.allow, target) {
        let message = format!("{target} overlaps the allowlist: take it off the allowlist first");
        let detail = Some(message.clone());
        let _ = audit_action(admin, "block.add", by, "rejected", &target, detail).await;
        return Err(ApiError::new(StatusCode::CONFLICT, message));
    }
    let block = Block {
        target,
        duration: change.ttl_secs.map(Duration::from_secs),
        reason: BlockReason::Manual,
        origin: Origin::Operator,
        node: None,
    };
    let detail = reason(change.reason);
    carry_out(
        admin,
        "block.add",
        by,
        target,
        detail,
        Command::Block(block),
    )
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"blocked": BlockTarget::from(target).to_string(), "ttl_secs": change.ttl_secs}),
    ))
}

async fn unblock(admin: &Admin, by: &str, text: &str) -> Answer {
    let target = target_of(text)?;
    if !snapshot(admin)
        .await?
        .blocks
        .iter()
        .any(|block| block.target == target)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{target} is not blocked"),
        ));
    }
    let origin = Origin::Operator;
    carry_out(
        admin,
        "block.rm",
        by,
        target,
        None,
        Command::Unblock {
            target,
            origin,
            node: None,
        },
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"unblocked": BlockTarget::from(target).to_string()}),
    ))
}

async fn allow(admin: &Admin, by: &str, change: Change) -> Answer {
    let target = target_of(&change.target)?;
    if change.ttl_secs.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ttl_secs: allowlist entries last until removed or the next reload",
        ));
    }
    let (detail, origin) = (reason(change.reason), Origin::Operator);
    carry_out(
        admin,
        "allow.add",
        by,
        target,
        detail,
        Command::Allow { target, origin },
    )
    .await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"allowed": target.to_string()}),
    ))
}

async fn disallow(admin: &Admin, by: &str, text: &str) -> Answer {
    let target = target_of(text)?;
    if !snapshot(admin).await?.allow.contains(&target) {
        let message = format!("{target} is not on the allowlist");
        return Err(ApiError::new(StatusCode::NOT_FOUND, message));
    }
    let origin = Origin::Operator;
    carry_out(
        admin,
        "allow.rm",
        by,
        target,
        None,
        Command::Disallow { target, origin },
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"disallowed": target.to_string()}),
    ))
}

async fn upgrade(admin: &Admin, by: &str) -> Response<Full<Bytes>> {
    tracing::info!(by, "upgrade requested");
    let (reply, answer) = tokio::sync::oneshot::channel();
    if admin.upgrades.send(reply).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down",
        );
    }
    match answer.await {
        Ok(Ok(pid)) => json(
            StatusCode::OK,
            &json!({"new_pid": pid, "old_pid": std::process::id()}),
        ),
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down",
        ),
    }
}

/// The operator's reason, cut to a bounded length.
fn reason(reason: Option<String>) -> Option<String> {
    reason.map(|text| text.chars().take(MAX_REASON_CHARS).collect())
}

/// Audits an action before it is carried out: an action that cannot be audited is refused.
async fn audit_action(
    admin: &Admin,
    action: &str,
    by: &str,
    outcome: &str,
    target: &IpNet,
    detail: Option<String>,
) -> Result<(), ApiError> {
    let target = BlockTarget::from(*target).to_string();
    let line = audit::operator_line(&audit::OperatorRecord {
        event: "admin",
        action,
        by,
        outcome,
        target: Some(&target),
        policy_sha256: None,
        detail,
    });
    tracing::info!(action, by, %target, outcome, "admin action");
    admin.gateway.audit().write(line).await.map_err(|err| {
        tracing::error!(error = %err, "could not audit an admin action; not carried out");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{err}: nothing was changed"),
        )
    })
}
