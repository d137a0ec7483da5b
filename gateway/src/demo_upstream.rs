//! A small MCP server (streamable HTTP, JSON answers) for `cargo xtask run` and the benchmarks:
//! tools `echo` and `add`. Not a production server: it exists so the gateway can be tried at once.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const PROTOCOL_VERSION: &str = "2025-06-18";

/// Serves the demo MCP server on `listener` forever.
pub async fn serve(listener: TcpListener) {
    let sessions = std::sync::Arc::new(AtomicU64::new(1));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sessions = std::sync::Arc::clone(&sessions);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let sessions = std::sync::Arc::clone(&sessions);
                async move { Ok::<_, Infallible>(handle(request, &sessions).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds `addr` and serves there; returns the bound address (port 0 picks a free one).
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(bound)
}

async fn handle(request: Request<Incoming>, sessions: &AtomicU64) -> Response<Full<Bytes>> {
    match *request.method() {
        Method::POST => {}
        Method::DELETE => return reply(StatusCode::OK, None, None),
        // No server-to-client stream in this demo.
        _ => return reply(StatusCode::METHOD_NOT_ALLOWED, None, None),
    }
    let Ok(body) = Limited::new(request.into_body(), 1 << 20).collect().await else {
        return reply(StatusCode::BAD_REQUEST, None, None);
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            Some(error(Value::Null, -32700, "parse error")),
            None,
        );
    };
    let Some(id) = message.get("id").cloned() else {
        // Notifications and responses.
        return reply(StatusCode::ACCEPTED, None, None);
    };
    let method = message["method"].as_str().unwrap_or_default();
    let params = &message["params"];
    let (answer, session) = match method {
        "initialize" => {
            let session = format!("demo-{}", sessions.fetch_add(1, Ordering::Relaxed));
            let result = json!({
                "protocolVersion": params["protocolVersion"].as_str().unwrap_or(PROTOCOL_VERSION),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-gateway-demo", "version": env!("CARGO_PKG_VERSION")},
            });
            (ok(id, result), Some(session))
        }
        "ping" => (ok(id, json!({})), None),
        "tools/list" => (ok(id, json!({"tools": tools()})), None),
        "tools/call" => (call_tool(id, params), None),
        _ => (error(id, -32601, "method not found"), None),
    };
    reply(StatusCode::OK, Some(answer), session)
}

fn tools() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns its message",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
        },
        {
            "name": "add",
            "description": "Adds two numbers",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
        },
    ])
}

fn call_tool(id: Value, params: &Value) -> Value {
    let args = &params["arguments"];
    let text = match params["name"].as_str() {
        Some("echo") => match args["message"].as_str() {
            Some(message) => message.to_owned(),
            None => return error(id, -32602, "echo needs a string `message`"),
        },
        Some("add") => match (args["a"].as_f64(), args["b"].as_f64()) {
            (Some(a), Some(b)) => (a + b).to_string(),
            _ => return error(id, -32602, "add needs numbers `a` and `b`"),
        },
        _ => return error(id, -32602, "unknown tool"),
    };
    ok(id, json!({"content": [{"type": "text", "text": text}]}))
}

fn ok(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn reply(
    status: StatusCode,
    body: Option<Value>,
    session: Option<String>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(
        body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(session) = session.and_then(|s| header::HeaderValue::from_str(&s).ok()) {
        headers.insert("mcp-session-id", session);
    }
    response
}
