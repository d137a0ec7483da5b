//! Header decoding: `Authorization: Bearer` and MCP's `Mcp-Method` / `Mcp-Name` (plain or
//! `=?base64?...?=`), on arbitrary bytes. The input is split at 0xff bytes into the Authorization
//! value, the Mcp-Method value, the Mcp-Name value, and the tool name the body calls.
#![no_main]

use std::sync::OnceLock;

use gateway::{
    config::Config,
    mcp::{headers::check_mcp_headers, jsonrpc},
    policy::Policy,
};
use hyper::{HeaderMap, header::HeaderValue};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzz-key-0123456789abcdef";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let config =
            Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n").expect("config");
        Policy::new(config.validate(Some(KEY), None).expect("valid").policy)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff);
    let (authorization, method, name) = (parts.next(), parts.next(), parts.next());
    let tool = String::from_utf8_lossy(parts.next().unwrap_or(b"echo")).into_owned();
    let mut headers = HeaderMap::new();
    for (header, value) in [
        ("authorization", authorization),
        ("mcp-method", method),
        ("mcp-name", name),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(header, value);
        }
    }

    if policy().authenticate(&headers, None).is_ok() {
        let value = headers["authorization"].as_bytes();
        assert!(value[..6].eq_ignore_ascii_case(b"bearer"));
        assert_eq!(
            value[7..].trim_ascii(),
            KEY.as_bytes(),
            "only the key authenticates"
        );
    }

    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}
    })
    .to_string();
    let Ok(body) = jsonrpc::inspect(body.as_bytes()) else {
        return;
    };
    if check_mcp_headers(&headers, &body).is_ok() {
        if let Some(method) = headers.get("mcp-method") {
            assert_eq!(method.as_bytes(), b"tools/call");
        }
        if let Some(name) = headers.get("mcp-name").and_then(|n| n.to_str().ok())
            && !name.starts_with("=?base64?")
        {
            assert_eq!(name, tool, "a plain Mcp-Name must equal the body's name");
        }
    }
});
