//! At the edge (issue 17), with the real gateway binary and real TLS peers: TLS ending in the
//! gateway ([`tls_listener`]), client certificates ([`client_certificates`]), HTTPS upstreams
//! ([`https_upstream`]), and the PROXY protocol behind a load balancer ([`proxy_protocol`]). One
//! test binary: each links the TLS crates, which take a while to link.

mod client_certificates;
mod https_upstream;
mod pki;
mod proxy_protocol;
mod tls_listener;

/// What `gateway check-config` prints of a config with one user, `top` before its `[upstream]`
/// table (with `url` and then `upstream`) and `rest` after; the config must be refused.
fn refused_config(top: &str, url: &str, upstream: &str, rest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let config = format!(
        "{top}\n[upstream]\nurl = \"{url}\"\n{upstream}\n[[users]]\nname = \"a\"\nkey_sha256 = \"{}\"\n{rest}\n",
        "0".repeat(64)
    );
    std::fs::write(&path, &config).unwrap();
    let output = std::process::Command::new(e2e_tests::gateway_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "accepted: {config}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
