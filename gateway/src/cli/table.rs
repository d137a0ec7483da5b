//! The CLI's tables: the API's JSON laid out in columns for people.

use std::fmt::Write as _;

use serde_json::Value;

/// Columns padded to their widest cell; `rows` are already strings.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn rows(value: &Value, cells: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    value
        .as_array()
        .map_or_else(Vec::new, |items| items.iter().map(cells).collect())
}

pub fn blocks(value: &Value) -> String {
    let rows = rows(value, |block| {
        vec![
            text(&block["target"]),
            text(&block["reason"]),
            text(&block["origin"]),
            block["remaining_secs"]
                .as_u64()
                .map_or_else(|| "until removed".to_owned(), |secs| format!("{secs} s")),
        ]
    });
    columns(&["TARGET", "REASON", "DECIDED BY", "REMAINING"], &rows)
}

pub fn allowlist(value: &Value) -> String {
    let rows = rows(value, |entry| vec![text(entry)]);
    columns(&["ALLOWED"], &rows)
}

pub fn users(value: &Value) -> String {
    let rows = rows(value, |user| {
        let limit = match (&user["limit"]["requests"], &user["limit"]["window_secs"]) {
            (Value::Number(requests), Value::Number(window)) => format!("{requests}/{window}s"),
            _ => "default".to_owned(),
        };
        let auth = match (user["key"].as_bool(), user["tls_subject"].as_bool()) {
            (Some(true), Some(true)) => "key+certificate",
            (_, Some(true)) => "certificate",
            _ => "key",
        };
        let state = if user["disabled"].as_bool() == Some(true) {
            "disabled"
        } else if user["in_force"].as_bool() == Some(false) {
            "expired"
        } else {
            "active"
        };
        vec![
            text(&user["name"]),
            auth.to_owned(),
            limit,
            text(&user["expires_at"]),
            state.to_owned(),
        ]
    });
    columns(&["USER", "AUTH", "LIMIT", "EXPIRES", "STATE"], &rows)
}

pub fn callers(value: &Value) -> String {
    let rows = rows(value, |caller| {
        vec![
            text(&caller["caller"]),
            format!("{}/{}", text(&caller["used"]), text(&caller["limit"])),
            format!("{} s", text(&caller["window_secs"])),
        ]
    });
    columns(&["CALLER", "USED/LIMIT", "WINDOW"], &rows)
}

pub fn reload(value: &Value) -> String {
    let dry_run = value["dry_run"].as_bool() == Some(true);
    let mut out = format!(
        "{}: {} users, policy sha256 {} (from {})\n",
        if dry_run {
            "a reload would read"
        } else {
            "reloaded"
        },
        text(&value["users"]),
        text(&value["policy_sha256"]),
        text(&value["config"]),
    );
    let keys = |field: &str| -> String {
        match value[field].as_array().filter(|keys| !keys.is_empty()) {
            Some(keys) => keys.iter().map(text).collect::<Vec<_>>().join(", "),
            None => "nothing".to_owned(),
        }
    };
    let (applied, restart) = if dry_run {
        ("would apply", "would need a restart")
    } else {
        ("applied", "changed but needs a restart")
    };
    let _ = writeln!(out, "{applied}: {}", keys("applied"));
    let _ = writeln!(out, "{restart}: {}", keys("restart_needed"));
    out
}

pub fn status(value: &Value) -> String {
    let ready = &value["ready"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ready:     {} (upstream: {}, audit: {}, xdp: {}, draining: {})",
        text(&ready["ready"]),
        text(&ready["upstream"]),
        text(&ready["audit"]),
        text(&ready["xdp"]),
        text(&ready["draining"])
    );
    let status = &value["status"];
    if status.is_object() {
        let _ = writeln!(
            out,
            "gateway:   {} (pid {}), up {} s, listening on {}{}\nupstream:  {}\nusers:     {}\nblocks:    {}, allowlist: {}",
            text(&status["version"]),
            text(&status["pid"]),
            text(&status["uptime_secs"]),
            text(&status["listen"]),
            if status["tls"].as_bool() == Some(true) {
                " (TLS)"
            } else {
                ""
            },
            text(&status["upstream"]),
            text(&status["users"]),
            text(&status["blocks"]),
            text(&status["allowlist"]),
        );
        if let Some(packets) = status["xdp_packets"].as_object() {
            let counts: Vec<String> = packets
                .iter()
                .filter(|(_, count)| count.as_u64() != Some(0))
                .map(|(verdict, count)| format!("{verdict} {count}"))
                .collect();
            let _ = writeln!(out, "xdp:       {}", counts.join(", "));
        }
    } else {
        let _ = writeln!(out, "(no admin token: set GATEWAY_ADMIN_TOKEN for details)");
    }
    if let Some(requests) = value["requests"].as_object() {
        let counts: Vec<String> = requests
            .iter()
            .map(|(decision, count)| format!("{decision} {}", count.as_f64().unwrap_or(0.0)))
            .collect();
        let _ = writeln!(out, "requests:  {}", counts.join(", "));
    }
    out
}
