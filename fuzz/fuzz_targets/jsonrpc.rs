//! The JSON-RPC inspection of a request body, on arbitrary bytes (seeded with MCP messages): it
//! never panics, keeps within its limits, its error answers are valid JSON-RPC, and what it takes
//! as a message's target (what authorization judges) is the member the server reads.
#![no_main]

use gateway::mcp::jsonrpc::{self, Kind, ParseLimits};
use serde_json::Value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let limits = ParseLimits {
        max_batch_messages: 8,
        max_json_depth: 16,
        max_argument_keys: 4,
    };
    match jsonrpc::inspect_within(body, &limits) {
        Ok(parsed) => {
            assert!(!parsed.messages.is_empty());
            assert!(parsed.messages.len() <= limits.max_batch_messages);
            assert!(parsed.is_batch || parsed.messages.len() == 1);
            for message in &parsed.messages {
                assert!(message.arg_keys.len() <= limits.max_argument_keys);
                if let Some(id) = &message.id {
                    assert!(id.is_string() || id.is_number(), "{id}");
                }
            }
            // What the gateway took is UTF-8 and JSON by the grammar. (Not necessarily a
            // `Value`: a number like 1e999 is valid JSON that serde_json cannot hold.)
            assert!(std::str::from_utf8(body).is_ok());
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok());
            if let Ok(value) = serde_json::from_slice::<Value>(body) {
                let values: Vec<&Value> = match &value {
                    Value::Array(messages) => messages.iter().collect(),
                    message => vec![message],
                };
                for (message, value) in parsed.messages.iter().zip(values) {
                    let member = match message.kind {
                        Kind::ToolCall | Kind::PromptGet => "name",
                        Kind::ResourceRead | Kind::ResourceSubscription => "uri",
                        _ => continue,
                    };
                    let read = value.get("params").and_then(|p| p.get(member));
                    assert_eq!(message.target.as_deref(), read.and_then(Value::as_str), "{value}");
                }
            }
            let answer = jsonrpc::error_body(Some(&parsed), -31029, "x", None);
            let answer: serde_json::Value = serde_json::from_slice(&answer).expect("error body");
            assert!(answer.is_object() || answer.is_array());
        }
        Err(err) => {
            let code = err.code();
            assert!(code == jsonrpc::code::PARSE_ERROR || code == jsonrpc::code::INVALID_REQUEST);
        }
    }
});
