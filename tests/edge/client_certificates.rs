//! Client certificates (mTLS) on the real gateway binary, with curl as the client: users
//! identified by a certificate alone, by a key and a certificate both, or by a key, and the audit
//! saying which; certificates the client CA did not sign refused in the handshake.

use e2e_tests::{ALICE, CALL, Gateway, Options, RecordingUpstream, ok_upstream};

use crate::{pki::Pki, tls_listener::curl};

/// A TLS gateway that asks for client certificates signed by the test CA (`mode`: "optional" or
/// "required"), with carol identified by her certificate alone and dave by his key and his
/// certificate both (alice and bob have keys only).
fn mtls_gateway(pki: &Pki, upstream_url: &str, mode: &str) -> Gateway {
    let (cert, key) = pki.leaf("server", "server", &["localhost"]);
    let sections = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"{mode}\"\n\
         [[users]]\nname = \"carol\"\ntls_subject = \"CN=carol-agent\"\n\
         [[users]]\nname = \"dave\"\nkey_sha256 = \"{}\"\ntls_subject = \"URI:spiffe://test/dave\"\n",
        cert.display(),
        key.display(),
        pki.ca().display(),
        e2e_tests::sha256_hex(DAVE_KEY),
    );
    Gateway::start_with(
        upstream_url,
        Options {
            sections: &sections,
            ..Options::default()
        },
    )
}

const DAVE_KEY: &str = "dave-test-key-0123456789abcdef";

/// curl's arguments for one tool call to `gateway` over TLS, trusting the test CA, with `extra`
/// arguments (a client certificate, an Authorization header); prints the status last.
fn mtls_call(gateway: &Gateway, pki: &Pki, extra: &[&str]) -> (String, String) {
    let url = format!("https://localhost:{}/mcp", gateway.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", gateway.addr.port());
    let ca = pki.ca();
    let base = [
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Accept: application/json, text/event-stream",
        "-d",
        CALL,
        "-w",
        "\n%{http_code}",
    ];
    curl(&[&base[..], extra, &[&url]].concat())
}

// Two threads: curl blocks one while the in-process upstream answers on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_by_certificate_key_or_both_as_their_user_says_and_the_audit_says_which()
 {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let pki = Pki::new();
    let gateway = mtls_gateway(&pki, &upstream.url(), "optional");
    let (carol_cert, carol_key) = pki.leaf("carol", "carol-agent", &["carol.test"]);
    let (dave_cert, dave_key) = pki.leaf_with("dave", "dave", &[], |params| {
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://test/dave".try_into().unwrap(),
        ));
    });
    let carol = [
        "--cert",
        carol_cert.to_str().unwrap(),
        "--key",
        carol_key.to_str().unwrap(),
    ];
    let dave = [
        "--cert",
        dave_cert.to_str().unwrap(),
        "--key",
        dave_key.to_str().unwrap(),
    ];
    let alice_key = format!("Authorization: {ALICE}");
    let dave_bearer = format!("Authorization: Bearer {DAVE_KEY}");

    for (case, args, status) in [
        ("carol's certificate alone", carol.to_vec(), "200"),
        (
            "dave's key and certificate",
            [&dave[..], &["-H", &dave_bearer]].concat(),
            "200",
        ),
        ("alice's key, no certificate", vec!["-H", &alice_key], "200"),
        (
            "dave's key without his certificate",
            vec!["-H", &dave_bearer],
            "401",
        ),
        ("dave's certificate without his key", dave.to_vec(), "401"),
        (
            "carol's certificate with alice's key",
            [&carol[..], &["-H", &alice_key]].concat(),
            "401",
        ),
    ] {
        let (out, err) = mtls_call(&gateway, &pki, &args);
        assert!(
            out.ends_with(&format!("\n{status}")),
            "{case}: {out}\n{err}\n{}",
            gateway.logs()
        );
    }
    let authenticated: Vec<(String, String)> = gateway
        .audit_lines()
        .into_iter()
        .filter(|line| line["event"] == "request" && line["decision"] == "forwarded")
        .map(|line| {
            (
                line["caller"].as_str().unwrap().to_owned(),
                line["auth"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        authenticated,
        [
            ("carol".to_owned(), "certificate".to_owned()),
            ("dave".to_owned(), "key+certificate".to_owned()),
            ("alice".to_owned(), "key".to_owned()),
        ]
    );
    assert_eq!(upstream.count(), 3);

    // A certificate from another CA is refused in the handshake, even where one is optional.
    let other = Pki::new();
    let (stranger_cert, stranger_key) = other.leaf("stranger", "carol-agent", &["x.test"]);
    let (out, err) = mtls_call(
        &gateway,
        &pki,
        &[
            "--cert",
            stranger_cert.to_str().unwrap(),
            "--key",
            stranger_key.to_str().unwrap(),
        ],
    );
    assert!(out.ends_with("\n000"), "{out}\n{err}");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_auth_required_a_client_without_a_certificate_gets_no_connection() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let pki = Pki::new();
    let gateway = mtls_gateway(&pki, &upstream.url(), "required");
    let alice_key = format!("Authorization: {ALICE}");
    let (out, err) = mtls_call(&gateway, &pki, &["-H", &alice_key]);
    assert!(out.ends_with("\n000"), "{out}\n{err}");
    assert!(
        err.contains("alert") || err.contains("certificate"),
        "refused in the handshake: {err}"
    );
    let (carol_cert, carol_key) = pki.leaf("carol", "carol-agent", &[]);
    let (out, err) = mtls_call(
        &gateway,
        &pki,
        &[
            "--cert",
            carol_cert.to_str().unwrap(),
            "--key",
            carol_key.to_str().unwrap(),
        ],
    );
    assert!(out.ends_with("\n200"), "{out}\n{err}");
    assert_eq!(upstream.count(), 1);
}
