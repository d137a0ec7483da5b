//! Inspecting JSON-RPC bodies: what is kept, what is refused, and within which bounds.

use super::*;

#[test]
fn a_completion_is_classified_by_what_it_completes() {
    let body = inspect(
        br#"[{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_prompt"},"argument":{"name":"a","value":"x"}}},
            {"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///private/{path}"}}},
            {"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}]"#,
    )
    .unwrap();
    let seen: Vec<_> = body
        .messages
        .iter()
        .map(|m| (m.kind, m.target.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (Kind::PromptCompletion, Some("admin_prompt")),
            (Kind::ResourceCompletion, Some("file:///private/{path}")),
            (Kind::OtherRequest, None),
        ]
    );
    assert!(inspect(br#"{"id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","name":"b"}}}"#).is_err());
}

#[test]
fn the_target_is_the_member_the_method_reads_whatever_else_params_holds() {
    let body = inspect(
        br#"[{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"allowed","uri":"file:///secret"}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"uri":"file:///x","name":"echo"}},
            {"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"name":"n"}}]"#,
    )
    .unwrap();
    let targets: Vec<_> = body.messages.iter().map(|m| m.target.as_deref()).collect();
    assert_eq!(targets, [Some("file:///secret"), Some("echo"), None]);
}

#[test]
fn tool_call_gives_method_tool_and_argument_keys_only() {
    let body = inspect(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"s3cret","nested":{"token":"x"}}}}"#,
    )
    .unwrap();
    assert!(!body.is_batch);
    let message = &body.messages[0];
    assert_eq!(message.id, Some(json!(7)));
    assert_eq!(message.method.as_deref(), Some("tools/call"));
    assert_eq!(message.tool(), Some("echo"));
    assert_eq!(message.arg_keys, ["message", "nested"]);
    assert!(!format!("{body:?}").contains("s3cret"));
}

#[test]
fn batches_give_one_message_per_element() {
    let body = inspect(
        br#"[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p","arguments":{"k":1}}}]"#,
    )
    .unwrap();
    assert!(body.is_batch);
    assert_eq!(body.messages.len(), 3);
    assert_eq!(body.messages[1].id, None);
    assert_eq!(body.messages[2].tool(), Some("p"));
    assert_eq!(body.ids().collect::<Vec<_>>(), [&json!("a"), &json!(2)]);
}

#[test]
fn resources_read_target_is_not_a_tool() {
    let body = inspect(
        br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#,
    )
    .unwrap();
    assert_eq!(body.messages[0].target.as_deref(), Some("file:///x"));
    assert_eq!(body.messages[0].tool(), None);
    assert_eq!(body.messages[0].kind, Kind::ResourceRead);
}

#[test]
fn each_message_is_classified_once_by_method_and_id() {
    let body = inspect(
        br#"[{"id":1,"method":"tools/call","params":{"name":"t"}},{"id":2,"method":"prompts/get"},{"id":3,"method":"resources/subscribe"},{"id":4,"method":"tools/list"},{"id":5,"method":"initialize"},{"method":"notifications/initialized"},{"id":6,"result":{}},{"id":7,"method":"server/discover"},{"id":8,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["file:///a","file:///b"]}}},{"id":9,"method":"tasks/get","params":{"taskId":"t-1"}},{"id":10,"method":"ping"}]"#,
    )
    .unwrap();
    let kinds: Vec<Kind> = body.messages.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::ToolCall,
            Kind::PromptGet,
            Kind::ResourceSubscription,
            Kind::List,
            Kind::Negotiation,
            Kind::Notification,
            Kind::Response,
            Kind::Negotiation,
            Kind::Listen,
            Kind::TaskFollowUp,
            Kind::OtherRequest,
        ]
    );
    assert_eq!(body.messages[8].subscriptions, ["file:///a", "file:///b"]);
    assert_eq!(body.messages[9].target.as_deref(), Some("t-1"));
    assert_eq!(body.messages[0].called_tool(), Some("t"));
    assert_eq!(
        body.messages[1].called_tool(),
        None,
        "a prompt is not a tool call"
    );
    assert_eq!(body.messages[3].argument_keys(), None);
}

#[test]
fn a_call_that_may_start_a_task_is_told_by_its_task_member_or_its_clients_extension() {
    let body = inspect(
        br#"[{"id":1,"method":"tools/call","params":{"name":"t","task":{"ttl":6000}}},{"id":2,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{"extensions":{"io.modelcontextprotocol/tasks":{}}}}}},{"id":3,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{"extensions":{"other":{}}}}}},{"id":4,"method":"prompts/get","params":{"name":"p","task":{}}},{"id":5,"method":"tasks/list"}]"#,
    )
    .unwrap();
    let starts: Vec<bool> = body.messages.iter().map(|m| m.may_start_task).collect();
    assert_eq!(starts, [true, true, false, false, false]);
    assert_eq!(body.messages[4].kind, Kind::List);
    assert!(
        inspect(br#"{"id":1,"method":"tools/call","params":{"name":"t","task":{},"task":{}}}"#)
            .is_err(),
        "a member given twice is refused"
    );
}

#[test]
fn malformed_and_invalid_bodies_are_told_apart() {
    for bad in [&b"{"[..], b"", b"{\"id\":1,}", b"nul", b"[{]"] {
        assert_eq!(
            inspect(bad).unwrap_err().code(),
            code::PARSE_ERROR,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for invalid in [&b"42"[..], b"\"x\"", b"[]", b"[1]", br#"{"method": 5}"#] {
        assert_eq!(
            inspect(invalid).unwrap_err().code(),
            code::INVALID_REQUEST,
            "{:?}",
            String::from_utf8_lossy(invalid)
        );
    }
}

fn batch_of(count: usize) -> Vec<u8> {
    let message = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    format!("[{}]", vec![message; count].join(",")).into_bytes()
}

#[test]
fn a_batch_over_max_batch_messages_is_invalid_and_its_parse_stops_there() {
    assert_eq!(inspect(&batch_of(100)).unwrap().messages.len(), 100);
    let error = inspect(&batch_of(101)).unwrap_err();
    assert_eq!(error.code(), code::INVALID_REQUEST);
    assert!(
        error.to_string().contains("max_batch_messages (100)"),
        "{error}"
    );
    let limits = ParseLimits {
        max_batch_messages: 3,
        ..ParseLimits::default()
    };
    assert!(inspect_within(&batch_of(3), &limits).is_ok());
    assert!(inspect_within(&batch_of(20_000), &limits).is_err());
}

#[test]
fn nesting_beyond_max_json_depth_is_invalid_and_brackets_in_strings_do_not_count() {
    let nested = |depth: usize| {
        format!(
            r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{}1{}}}}}}}"#,
            "[".repeat(depth - 3),
            "]".repeat(depth - 3)
        )
    };
    assert!(inspect(nested(64).as_bytes()).is_ok());
    let error = inspect(nested(65).as_bytes()).unwrap_err();
    assert_eq!(error.code(), code::INVALID_REQUEST);
    assert!(error.to_string().contains("max_json_depth"), "{error}");
    let in_strings = format!(
        r#"{{"id":1,"method":"tools/call","params":{{"name":"{}","arguments":{{"k":"\"{}"}}}}}}"#,
        "[".repeat(500),
        "{".repeat(500)
    );
    assert!(inspect(in_strings.as_bytes()).is_ok());
    assert!(inspect(&vec![b'['; 1_000_000]).is_err(), "a million levels");
}

#[test]
fn only_the_first_max_argument_keys_are_kept() {
    let keys: Vec<String> = (0..10_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let body = format!(
        r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{{}}}}}}}"#,
        keys.join(",")
    );
    let message = &inspect(body.as_bytes()).unwrap().messages[0];
    assert_eq!(message.arg_keys.len(), 64);
    assert_eq!(message.arg_keys[63], "k63");
}

#[test]
fn a_member_given_twice_is_invalid_so_the_upstream_cannot_read_another_value() {
    for body in [
        &br#"{"id":1,"id":2,"method":"ping"}"#[..],
        br#"{"id":1,"method":"ping","method":"tools/call"}"#,
        br#"{"id":1,"method":"tools/call","params":{"name":"safe","name":"danger"}}"#,
        br#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{},"arguments":{"k":1}}}"#,
    ] {
        let error = inspect(body).unwrap_err();
        assert_eq!(error.code(), code::INVALID_REQUEST, "{error}");
        assert!(error.to_string().contains("duplicate"), "{error}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_a_parse_error_even_in_a_member_nobody_reads() {
    let body = b"{\"id\":1,\"method\":\"ping\",\"x\":{\"n\xab\xab\":1}}";
    let error = inspect(body).unwrap_err();
    assert_eq!(error.code(), code::PARSE_ERROR);
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[test]
fn only_string_and_number_ids_are_kept() {
    let body = inspect(
        br#"[{"id":[1,[2]],"method":"a"},{"id":{"x":1},"method":"b"},{"id":true,"method":"c"},{"id":null,"method":"d"},{"id":1.5,"method":"e"},{"id":"s","method":"f"}]"#,
    )
    .unwrap();
    let ids: Vec<Option<Value>> = body.messages.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        ids,
        [None, None, None, None, Some(json!(1.5)), Some(json!("s"))]
    );
}

#[test]
fn non_object_arguments_have_no_keys() {
    let body =
        inspect(br#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":[1,2]}}"#)
            .unwrap();
    assert!(body.messages[0].arg_keys.is_empty());
}

#[test]
fn error_bodies_echo_ids() {
    let single = inspect(br#"{"jsonrpc":"2.0","id":"req-1","method":"ping"}"#).unwrap();
    let answer: Value = serde_json::from_slice(&error_body(
        Some(&single),
        -31029,
        "slow down",
        Some(json!({"retryAfterSeconds": 3})),
    ))
    .unwrap();
    assert_eq!(answer["id"], "req-1");
    assert_eq!(answer["error"]["code"], -31029);
    assert_eq!(answer["error"]["data"]["retryAfterSeconds"], 3);

    let batch =
        inspect(br#"[{"id":1,"method":"a"},{"method":"n"},{"id":2,"method":"b"}]"#).unwrap();
    let answer: Value =
        serde_json::from_slice(&error_body(Some(&batch), -31029, "x", None)).unwrap();
    assert_eq!(answer.as_array().unwrap().len(), 2);
    assert_eq!(answer[1]["id"], 2);

    let answer: Value = serde_json::from_slice(&error_body(None, -32700, "parse", None)).unwrap();
    assert_eq!(answer["id"], Value::Null);
}
