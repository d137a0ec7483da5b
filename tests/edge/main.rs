//! At the edge (issue 17), with the real gateway binary and real TLS peers: TLS ending in the
//! gateway ([`tls_listener`]), client certificates ([`client_certificates`]), HTTPS upstreams
//! ([`https_upstream`]), and the PROXY protocol behind a load balancer ([`proxy_protocol`]). One
//! test binary: each links the TLS crates, which take a while to link.

mod client_certificates;
mod https_upstream;
mod pki;
mod proxy_protocol;
mod tls_listener;
