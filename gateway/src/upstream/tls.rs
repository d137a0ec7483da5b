//! HTTPS to the MCP server: MCP servers are often on another host or a managed service, and the
//! caller's identity header and arguments must not cross that network in clear.
//!
//! The server's certificate is verified against the configured CA bundle (`[upstream] ca`), or
//! else the system's trust store; the name checked, and sent as SNI, is the URL's host. ALPN
//! offers `h2` first: a server that takes it gets one multiplexed HTTP/2 connection per worker
//! (`pool.rs`), one that does not gets pooled HTTP/1.1 connections as over plain TCP. Sessions
//! resume from rustls's client cache, so reconnects after an idle close skip the full handshake.

use std::{fmt, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// A client certificate the gateway presents to the upstream: the chain, leaf first, and its key.
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// How the worker pools open TLS connections to the upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// SHA-256 over the name, the CAs and the client identity it was made from: two are equal
    /// when they would connect alike (a reload keeps the pools of an unchanged upstream).
    fingerprint: [u8; 32],
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl UpstreamTls {
    /// `host` is the URL's host: a DNS name, or an IP address checked against the certificate's
    /// IP addresses.
    pub fn new(
        host: &str,
        roots: RootCertStore,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, rustls::Error> {
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|err| rustls::Error::General(format!("{host}: not a server name: {err}")))?;
        let fingerprint = fingerprint(host, &roots, identity.as_ref());
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(ClientIdentity { chain, key }) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            fingerprint,
        })
    }

    /// The system's trust store (`/etc/ssl/certs` and the like), for an upstream without `ca`.
    pub fn system_roots() -> RootCertStore {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system CA certificate could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system CA certificates for the upstream");
        roots
    }

    /// The TLS handshake on a connected stream.
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

fn fingerprint(host: &str, roots: &RootCertStore, identity: Option<&ClientIdentity>) -> [u8; 32] {
    let mut hash = Sha256::new();
    // Each part with its length, so no two lists hash alike.
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(host.as_bytes());
    for root in &roots.roots {
        part(&root.subject);
        part(&root.subject_public_key_info);
        part(root.name_constraints.as_deref().unwrap_or_default());
    }
    if let Some(identity) = identity {
        for certificate in &identity.chain {
            part(certificate);
        }
        part(identity.key.secret_der());
    }
    hash.finalize().into()
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
