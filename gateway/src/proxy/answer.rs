//! The upstream's answer on its way back, where the caller's grants change it: the results of the
//! list methods filtered (`authz/`), whether the answer is JSON or an SSE stream; and where the
//! gateway learns from it: tool hints from `tools/list`, the tasks a call starts (`mcp/tasks.rs`).
//!
//! A JSON answer is read whole (within [`MAX_JSON_LIST_ANSWER`]), rewritten and sent with its new
//! length; an SSE answer streams through [`FilteredEvents`]. An answer that cannot be filtered is
//! never passed on unfiltered: it becomes a 502. (The request went without `Accept-Encoding`, so a
//! compressed answer is the upstream's mistake.) A list answer read only to learn tool hints keeps
//! the client's `Accept-Encoding`, and passes as it came when compressed.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Response, StatusCode, header};
use serde_json::Value;

use super::{ProxyBody, Refusal, call::Call};
use crate::{
    audit::Decision,
    authz::{FilteredEvents, ListFilter, ListKind, ToolCatalog},
    mcp::{
        jsonrpc::{Message, code},
        tasks::{TaskOwners, TaskWatch},
    },
    policy::{Caller, Policy},
};

/// The largest JSON list answer the gateway reads to filter it.
pub const MAX_JSON_LIST_ANSWER: usize = 16 * 1024 * 1024;

/// The filter the answer to `call` needs, if any. Every answer to a list request is read, so that
/// the tools' annotations (for rules that read them) and mirrored arguments (for `Mcp-Param-*`
/// checks) are learned from any caller's `tools/list`, and it is filtered when the caller has
/// grants; those are filtered by request id. So is the answer to a call that may start a task,
/// and to `tasks/list`. GET streams (legacy SSE, resumed streams) are read only when the caller
/// has grants or some rule reads annotations, by the shape of each result.
pub fn list_filter(
    policy: &Policy,
    caller: &Caller,
    call: &Call<'_>,
    catalog: &Arc<ToolCatalog>,
    tasks: &Arc<TaskOwners>,
) -> Option<ListFilter> {
    let learn = Some(Arc::clone(catalog));
    let mut watch = None;
    let expected = match &call.body {
        Some(body) => {
            let ids = |keep: fn(&Message) -> bool| -> Vec<Value> {
                body.messages
                    .iter()
                    .filter(|message| keep(message))
                    .filter_map(|message| message.id.clone())
                    .collect()
            };
            watch = TaskWatch::new(
                tasks,
                &caller.name,
                ids(|message| message.may_start_task),
                ids(|message| message.method.as_deref() == Some("tasks/list")),
            );
            let lists: Vec<_> = body
                .messages
                .iter()
                .filter_map(|message| {
                    let kind = ListKind::of_method(message.method.as_deref()?)?;
                    Some((message.id.clone()?, kind))
                })
                .collect();
            if lists.is_empty() && watch.is_none() {
                return None;
            }
            lists
        }
        // A stream the client opened: any list result on it is filtered.
        None if call.context.http_method == hyper::Method::GET
            && (caller.grants.is_some() || policy.reads_annotations()) =>
        {
            Vec::new()
        }
        None => return None,
    };
    Some(
        ListFilter::new(caller.grants.clone(), learn, expected)
            .read_always(policy.reads_annotations())
            .watching_tasks(watch),
    )
}

fn unfilterable(why: &str) -> Refusal {
    tracing::warn!(
        why,
        "a list answer of the upstream could not be filtered; answering 502"
    );
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        Decision::Forwarded,
        code::UPSTREAM_UNAVAILABLE,
        format!("the MCP server's list answer could not be filtered for this caller: {why}"),
    )
}

/// `response` with its list results filtered.
pub async fn filter_lists(
    response: Response<ProxyBody>,
    filter: ListFilter,
) -> Result<Response<ProxyBody>, Refusal> {
    if !response.status().is_success() {
        return Ok(response);
    }
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|encoding| encoding != "identity");
    if encoded {
        if filter.restricts() {
            return Err(unfilterable("it is compressed (Content-Encoding)"));
        }
        // Only there to learn from, and the request allowed compression: passed as it came.
        return Ok(response);
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        return Ok(response.map(|body| FilteredEvents::new(body, filter).boxed()));
    }
    if !content_type.starts_with("application/json") {
        return Ok(response);
    }
    let too_large = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|length| length > MAX_JSON_LIST_ANSWER);
    if too_large && !filter.restricts() {
        // Only there to learn from: a large tool result passes unread.
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_JSON_LIST_ANSWER)
        .collect()
        .await
        .map_err(|err| {
            unfilterable(&format!(
                "it could not be read (at most {MAX_JSON_LIST_ANSWER} bytes): {err}"
            ))
        })?
        .to_bytes();
    let rewritten = filter.rewrite_json(&body);
    filter.tasks_shared().await;
    let body = match rewritten {
        Ok(rewritten) => rewritten.unwrap_or(body),
        Err(err) if filter.restricts() => {
            return Err(unfilterable(&format!("it is not JSON ({err})")));
        }
        // Only read to learn annotations: passed as it came.
        Err(_) => body,
    };
    // The length changed; hyper sets the new one from the body.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        Full::new(body).map_err(|never| match never {}).boxed(),
    ))
}
