//! The one-shot commands the README documents: `gen-key`, `hash-key`, `check-config`.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use e2e_tests::gateway_bin;

fn gateway(args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run the gateway binary")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {text:?}"))
}

const KEY_SHA256: &str = "7930c20ef53b95c3642ae44f496a6bef15d8b1f60fe3304fbfcaf750c425da11";

fn good_config() -> String {
    format!(
        "listen = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:9000/mcp\"\n\
         [[users]]\nname = \"alice\"\nkey_sha256 = \"{KEY_SHA256}\"\n"
    )
}

#[test]
fn gen_key_prints_a_fresh_key_and_the_hash_that_hash_key_gives_it() {
    let first = stdout(&gateway(&["gen-key"]));
    let second = stdout(&gateway(&["gen-key"]));
    let key = field(&first, "key:");
    let hash = field(&first, "key_sha256:");
    // 256 random bits, URL-safe base64 without padding.
    assert_eq!(key.len(), 43, "{key}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_ne!(key, field(&second, "key:"));

    let mut hash_key = Command::new(gateway_bin())
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hash-key");
    hash_key
        .stdin
        .take()
        .expect("stdin")
        .write_all(key.as_bytes())
        .expect("write the key");
    let hashed = stdout(&hash_key.wait_with_output().expect("hash-key output"));
    assert_eq!(hashed.trim(), hash);
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_field_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, good_config()).unwrap();
    let checked = stdout(&gateway(&["check-config", good.to_str().unwrap()]));
    assert!(checked.contains("ok (1 users"), "{checked}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, good_config().replace(KEY_SHA256, &KEY_SHA256[..10])).unwrap();
    let refused = gateway(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("users[0].key_sha256"), "{message}");
}

/// `gateway gen-key | head -1` and the like: a reader that has gone is no reason to crash.
#[test]
fn one_shot_commands_exit_quietly_when_their_reader_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, good_config()).unwrap();
    for args in [
        &["gen-key"][..],
        &["check-config", config.to_str().unwrap()],
    ] {
        // A pipe whose reader is gone before the command starts: its write gets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(gateway_bin())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run the gateway binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?}: {stderr}",
            output.status
        );
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
