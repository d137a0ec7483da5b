//! TLS ending in the gateway itself, where the client's address is still known: audit lines,
//! limits, offenses and blocks keep working per source, which a TLS terminator in front would
//! hide behind 127.0.0.1.
//!
//! rustls with the aws-lc-rs provider (rustls's default): maintained by AWS, constant-time,
//! FIPS-validatable, and the fastest provider rustls has for the handshakes an edge node does most
//! (ECDHE with X25519 or the post-quantum hybrid, ECDSA and RSA signatures). TLS 1.3 and 1.2 only;
//! ALPN offers `h2` and `http/1.1`; sessions resume by ticket (TLS 1.3, and 1.2) or from a cache.
//! The handshake runs in the connection's own task with its own timeout (`server/accept.rs`).

mod certificates;
mod client_auth;

use std::{sync::Arc, time::Duration};

use rustls::{ServerConfig, server::ServerSessionMemoryCache};
use tokio_rustls::TlsAcceptor;

pub use certificates::{
    CertificateError, CertificateFiles, Certificates, read_chain, read_key, read_roots,
};
pub use client_auth::{ClientAuth, ClientCertificate, NAME_KINDS, is_name};

/// Sessions the server remembers for resumption without a ticket (about 100 bytes each).
const SESSION_CACHE: usize = 16 * 1024;

/// The provider every TLS context of the gateway uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Validated `[tls]` settings: the certificates, loaded, and how long a handshake may take.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificates: Arc<Certificates>,
    /// Client certificates are asked for (mTLS).
    pub client_auth: Option<ClientAuth>,
    pub handshake_timeout: Duration,
}

/// What the listener needs to make a TLS connection of a TCP one.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl Tls {
    pub fn new(settings: &TlsSettings) -> Result<Self, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &settings.client_auth {
            Some(client_auth) => builder.with_client_cert_verifier(client_auth.verifier()?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&settings.certificates) as _);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: settings.handshake_timeout,
        })
    }
}
