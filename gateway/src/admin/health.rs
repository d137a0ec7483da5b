//! `/healthz` (the process answers), `/readyz` (it can do its job: send traffic here) and
//! `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::json;

use super::{Admin, api::json};

/// How long `/readyz` waits for a TCP connection to the upstream.
const UPSTREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub fn alive() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &json!({"alive": true}))
}

/// Ready when the upstream accepts a connection, the audit log can be written, XDP is attached
/// (or configured off), and the gateway is not draining. 503 otherwise, with each check's answer.
pub async fn ready(admin: &Admin) -> Response<Full<Bytes>> {
    let gateway = &admin.gateway;
    let upstream = upstream_reachable(&gateway.in_force().serving.upstream).await;
    let audit = audit_writable(gateway);
    let xdp_ok = admin.xdp_mode != "failed";
    let draining = admin.draining.is_cancelled();
    let fleet = fleet_state(gateway);
    let refusing = fleet
        .as_ref()
        .is_some_and(|fleet| fleet["mode"] == "refusing");
    let (oauth, keys_ok) = oauth_state(gateway);
    let ready = upstream.is_ok() && audit.is_ok() && xdp_ok && !draining && !refusing && keys_ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let answer = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.clone(),
    };
    json(
        status,
        &json!({
            "ready": ready,
            "upstream": answer(&upstream),
            "audit": answer(&audit),
            "xdp": admin.xdp_mode,
            "draining": draining,
            "fleet": fleet,
            "oauth": oauth,
        }),
    )
}

/// Each issuer's signing keys: how many, when last fetched, the last refresh's error. Ready while
/// every issuer that verifies JWTs has some key (known keys keep working when the IdP is away).
fn oauth_state(gateway: &crate::proxy::Gateway) -> (Option<serde_json::Value>, bool) {
    let in_force = gateway.in_force();
    let Some(oauth) = in_force.policy.oauth() else {
        return (None, true);
    };
    let mut ready = true;
    let issuers: Vec<_> = oauth
        .key_status()
        .into_iter()
        .zip(&oauth.settings().issuers)
        .map(|((issuer, status), settings)| {
            if status.keys == 0 && settings.introspection.is_none() {
                ready = false;
            }
            json!({
                "issuer": issuer,
                "keys_from": status.source,
                "keys": status.keys,
                "refreshed_at": status.refreshed_at.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
                "error": status.error,
            })
        })
        .collect();
    (Some(json!({"issuers": issuers})), ready)
}

/// The fleet's Redis and what the node does about it: `shared` (Redis answers), `local` (counting
/// alone while it does not) or `refusing`. `None` for a node on its own.
fn fleet_state(gateway: &crate::proxy::Gateway) -> Option<serde_json::Value> {
    let (settings, health) = (gateway.settings().fleet.as_ref()?, gateway.fleet()?);
    let (redis, mode) = match health.down_for() {
        None => ("ok".to_owned(), "shared"),
        Some(down) => (
            format!("unavailable for {} s", down.as_secs()),
            match settings.on_unavailable {
                crate::config::OnUnavailable::Local => "local",
                crate::config::OnUnavailable::Refuse => "refusing",
            },
        ),
    };
    Some(json!({
        "node": &*settings.node_name,
        "redis": redis,
        "redis_url": health.redis_shown,
        "mode": mode,
    }))
}

async fn upstream_reachable(settings: &crate::config::UpstreamSettings) -> Result<(), String> {
    let address = settings.address();
    match tokio::time::timeout(
        UPSTREAM_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect(&address),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("cannot connect to {address}: {err}")),
        Err(_) => Err(format!(
            "no connection to {address} within {UPSTREAM_CHECK_TIMEOUT:?}"
        )),
    }
}

fn audit_writable(gateway: &crate::proxy::Gateway) -> Result<(), String> {
    if gateway.audit().is_failing() {
        return Err("the last audit write failed".to_owned());
    }
    let path = &gateway.settings().audit.path;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|err| format!("cannot open {} for appending: {err}", path.display()))
}

/// The OpenMetrics text, with the enforcer's blocks and the kernel's counters as of now.
pub async fn metrics(admin: &Admin) -> Response<Full<Bytes>> {
    let metrics = admin.gateway.metrics();
    if let Some(health) = admin.gateway.fleet() {
        metrics.fleet.update(health);
    }
    let in_force = admin.gateway.in_force();
    metrics.oauth.update(
        in_force
            .policy
            .oauth()
            .map(crate::oauth::OAuth::key_status)
            .unwrap_or_default(),
    );
    match admin.gateway.protection().snapshot().await {
        Ok(snapshot) => metrics.kernel.update(&snapshot, admin.xdp_mode),
        Err(err) => tracing::warn!(error = %err, "metrics without blocks: {err}"),
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
