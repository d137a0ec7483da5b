//! Client certificates (mTLS): who a client is by the certificate it presented, for users
//! identified by `tls_subject` instead of, or in addition to, a bearer key.
//!
//! rustls verifies the chain against `[tls] client_ca` during the handshake; what is left here is
//! naming the client. A certificate's names are written as OpenSSL prints them, which is what an
//! operator copies into `tls_subject`: `CN=<common name>` for the subject, and `DNS:`, `email:` and
//! `URI:` for the subject alternative names (a SPIFFE ID is a `URI:`). They are read once per
//! connection (x509-parser), not per request.

use std::sync::Arc;

use rustls::{
    RootCertStore,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// The kinds of names a `tls_subject` may be.
pub const NAME_KINDS: [&str; 4] = ["CN=", "DNS:", "email:", "URI:"];

/// `[tls] client_ca` and `client_auth`.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub roots: Arc<RootCertStore>,
    /// `client_auth = "required"`: the handshake fails without a valid certificate. Otherwise a
    /// client may present none (and authenticate with a key).
    pub required: bool,
}

impl PartialEq for ClientAuth {
    /// The same CAs (`RootCertStore` has no `PartialEq`) and the same mode.
    fn eq(&self, other: &Self) -> bool {
        let Self { roots, required } = self;
        roots.roots == other.roots.roots && *required == other.required
    }
}

impl ClientAuth {
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), super::provider());
        let builder = if self.required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))
    }
}

/// The names of the certificate a client presented, verified by the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    names: Box<[Box<str>]>,
}

impl ClientCertificate {
    /// The names in a DER certificate; `None` if it cannot be parsed (it was verified, so it
    /// parses in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, certificate) = X509Certificate::from_der(der).ok()?;
        let mut names: Vec<Box<str>> = certificate
            .subject()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok())
            .map(|name| format!("CN={name}").into())
            .collect();
        if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
            for name in &alternative.value.general_names {
                let name = match name {
                    GeneralName::DNSName(name) => format!("DNS:{name}"),
                    GeneralName::RFC822Name(name) => format!("email:{name}"),
                    GeneralName::URI(name) => format!("URI:{name}"),
                    _ => continue,
                };
                names.push(name.into());
            }
        }
        Some(Self {
            names: names.into(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|name| &**name)
    }
}

/// Whether `text` is a name a certificate can carry, as written in `tls_subject`.
pub fn is_name(text: &str) -> bool {
    NAME_KINDS
        .iter()
        .any(|kind| text.strip_prefix(kind).is_some_and(|rest| !rest.is_empty()))
}
