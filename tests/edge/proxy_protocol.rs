//! Behind an L4 load balancer: PROXY protocol v1 and v2 headers on the real gateway binary's
//! listener, sent over loopback from 127.0.0.2 (the balancer of the test's config) and from
//! 127.0.0.1 (anyone else). The client a header names is the one audited, forwarded as
//! `X-Forwarded-For`, counted for offenses and refused once blocked.

use std::{net::IpAddr, sync::Arc};

use e2e_tests::{
    ALICE, CALL, Gateway, Options, RecordingUpstream, connect_from, eventually, exchange,
    ok_upstream, raw_post,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pki;

const BALANCER: [u8; 4] = [127, 0, 0, 2];
const STRANGER: [u8; 4] = [127, 0, 0, 1];

fn balanced_gateway(upstream: &RecordingUpstream, extra: &str) -> Gateway {
    Gateway::start_with(
        &upstream.url(),
        Options {
            top: "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2/32\"]",
            sections: extra,
            ..Options::default()
        },
    )
}

/// A v2 header (PROXY command, TCP over IPv4) naming `client`:`port`.
fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&8443u16.to_be_bytes());
    header
}

fn v1_header(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40001 8443\r\n").into_bytes()
}

/// Sends `header` and then a tool call with `authorization` from `from`; the answer's status
/// line, or the error if the gateway closed the connection without answering.
async fn call_through(
    gateway: &Gateway,
    from: [u8; 4],
    header: &[u8],
    authorization: &str,
) -> std::io::Result<String> {
    let mut stream = connect_from(IpAddr::from(from), gateway.addr).await?;
    stream.write_all(header).await?;
    let answer = exchange(stream, &raw_post(gateway.addr, authorization, CALL)).await?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_client_a_v1_or_v2_header_names_is_audited_and_forwarded() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = balanced_gateway(&upstream, "");
    for (header, client) in [
        (v1_header("198.51.100.7"), "198.51.100.7"),
        (v2_header([203, 0, 113, 9], 50000), "203.0.113.9"),
    ] {
        let status = call_through(&gateway, BALANCER, &header, ALICE).await;
        assert_eq!(status.unwrap(), "HTTP/1.1 200 OK", "{}", gateway.logs());
        assert_eq!(upstream.last().headers["x-forwarded-for"], client);
        let audited = gateway.audit_lines();
        assert_eq!(audited.last().unwrap()["ip"], client, "{audited:?}");
    }
}

#[tokio::test]
async fn connections_without_a_header_or_from_anyone_but_the_balancer_are_refused() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = balanced_gateway(&upstream, "");
    // The balancer, without a header: the request itself is no header.
    let absent = call_through(&gateway, BALANCER, b"", ALICE).await;
    assert!(absent.is_err(), "{absent:?}");
    // Anyone else, with a header that would make them someone else.
    let forged = call_through(&gateway, STRANGER, &v1_header("198.51.100.7"), ALICE).await;
    assert!(forged.is_err(), "{forged:?}");
    // And without one.
    let direct = call_through(&gateway, STRANGER, b"", ALICE).await;
    assert!(direct.is_err(), "{direct:?}");
    assert_eq!(upstream.count(), 0);
    assert!(
        gateway
            .logs()
            .contains("connection from a load balancer refused"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test]
async fn a_client_blocked_behind_the_balancer_is_refused_while_others_get_through() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let gateway = balanced_gateway(&upstream, "[blocking]\nauth_failures = 2\n");
    let abuser = v2_header([198, 51, 100, 66], 50001);
    for _ in 0..2 {
        let status = call_through(&gateway, BALANCER, &abuser, "Bearer wrong-key").await;
        assert_eq!(status.unwrap(), "HTTP/1.1 401 Unauthorized");
    }
    eventually("the abuser's block", || {
        gateway
            .audit_lines()
            .iter()
            .any(|line| line["event"] == "block" && line["ip"] == "198.51.100.66")
    });
    let refused = call_through(&gateway, BALANCER, &abuser, ALICE).await;
    assert!(refused.is_err(), "closed at accept: {refused:?}");
    let other = call_through(
        &gateway,
        BALANCER,
        &v2_header([198, 51, 100, 67], 50002),
        ALICE,
    )
    .await
    .unwrap();
    assert_eq!(
        other, "HTTP/1.1 200 OK",
        "the balancer itself is not blocked"
    );
}

#[tokio::test]
async fn the_header_comes_before_the_tls_handshake() {
    let upstream = RecordingUpstream::start(ok_upstream()).await;
    let pki = pki::Pki::new();
    let (cert, key) = pki.leaf("gateway", "gateway", &["localhost"]);
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gateway = balanced_gateway(&upstream, &tls);

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = connect_from(IpAddr::from(BALANCER), gateway.addr)
        .await
        .unwrap();
    tcp.write_all(&v2_header([192, 0, 2, 44], 50003))
        .await
        .unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(raw_post(gateway.addr, ALICE, CALL).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(upstream.last().headers["x-forwarded-for"], "192.0.2.44");
}

#[test]
fn proxy_protocol_config_errors_name_the_field() {
    for (top, expected) in [
        ("proxy_protocol = true", "proxy_protocol_from: needed"),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]",
            "proxy_protocol_from: only with proxy_protocol = true",
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"balancer\"]",
            "proxy_protocol_from[1]",
        ),
    ] {
        let stderr = crate::refused_config(top, "http://127.0.0.1:9/mcp", "", "");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
