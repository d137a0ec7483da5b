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

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions},
};
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
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub certificates: Arc<Certificates>,
    /// Client certificates are asked for (mTLS).
    pub client_auth: Option<ClientAuth>,
    pub handshake_timeout: Duration,
}

/// What the listener needs to make a TLS connection of a TCP one. Its clones share one
/// [`Handshakes`], which a reload replaces ([`Tls::replace`]): handshakes from then on use the
/// new certificates and client CAs; connections made before keep theirs.
#[derive(Clone)]
pub struct Tls {
    current: Arc<RwLock<Arc<Handshakes>>>,
    /// Kept across replacements, so sessions resume after a reload.
    session_storage: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

/// How new TLS connections are accepted.
pub struct Handshakes {
    pub acceptor: TlsAcceptor,
    pub timeout: Duration,
}

impl Tls {
    pub fn new(settings: &TlsSettings) -> Result<Self, rustls::Error> {
        let session_storage: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE);
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        let handshakes = handshakes(settings, &session_storage, &ticketer)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(handshakes))),
            session_storage,
            ticketer,
        })
    }

    /// The way new connections are accepted now.
    pub fn handshakes(&self) -> Arc<Handshakes> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// From now on, handshakes follow `settings`. On an error nothing changes.
    pub fn replace(&self, settings: &TlsSettings) -> Result<(), rustls::Error> {
        let handshakes = handshakes(settings, &self.session_storage, &self.ticketer)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(handshakes);
        Ok(())
    }
}

fn handshakes(
    settings: &TlsSettings,
    session_storage: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<Handshakes, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &settings.client_auth {
        Some(client_auth) => builder.with_client_cert_verifier(client_auth.verifier()?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(&settings.certificates) as _);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::clone(session_storage);
    config.ticketer = Arc::clone(ticketer);
    Ok(Handshakes {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        timeout: settings.handshake_timeout,
    })
}
