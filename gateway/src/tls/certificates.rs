//! The server's certificates: loaded from PEM files and chosen per connection by the name the
//! client asks for (SNI). A reload loads them anew with the rest of the file and hands them to the
//! listener (`Tls::replace`), without touching connections already made.
//!
//! Each `[[tls.certificates]]` entry (and `[tls] cert`/`key`, the first) is a chain and its key;
//! the names a certificate serves are the DNS names of its subject alternative names, so nothing is
//! configured twice. A name the client asks for is looked up exactly, then as a wildcard
//! (`*.example.com` serves `a.example.com`, not `a.b.example.com`), and a client that asks for no
//! name, or an unknown one, gets the first certificate.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Where one certificate and its key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert}: the key in {key} does not belong to this certificate ({message})")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

fn file_error(path: &Path, message: impl fmt::Display) -> CertificateError {
    CertificateError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The PEM certificates in `path`, in order; at least one.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(path, err))?
        .collect::<Result<_, _>>()
        .map_err(|err| file_error(path, err))?;
    if chain.is_empty() {
        return Err(file_error(path, "no PEM certificate in this file"));
    }
    Ok(chain)
}

/// The PEM private key in `path` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| file_error(path, err))
}

/// The CA certificates in the PEM bundle at `path`, as trust anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, CertificateError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_chain(path)? {
        roots
            .add(certificate)
            .map_err(|err| file_error(path, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

/// One certificate ready to serve, and the names it serves.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Reads a PEM chain (leaf first) and its key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or
/// Ed25519), and checks that they belong together.
fn load(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Loaded, CertificateError> {
    let chain = read_chain(&files.cert)?;
    let leaf = &chain[0];
    let names = webpki::EndEntityCert::try_from(leaf)
        .map_err(|err| file_error(&files.cert, format!("not a usable certificate: {err}")))?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let key = read_key(&files.key)?;
    let key =
        CertifiedKey::from_der(chain, key, provider).map_err(|err| CertificateError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: err.to_string(),
        })?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
    })
}

/// The certificates in force: the first is the default.
struct Selection {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl Selection {
    fn load(
        sources: &[CertificateFiles],
        provider: &CryptoProvider,
    ) -> Result<Self, CertificateError> {
        let mut loaded = Vec::with_capacity(sources.len());
        for files in sources {
            loaded.push(load(files, provider)?);
        }
        let mut by_name = HashMap::new();
        for certificate in &loaded {
            for name in &certificate.names {
                // The first certificate to name a host serves it.
                by_name
                    .entry(name.clone())
                    .or_insert_with(|| Arc::clone(&certificate.key));
            }
        }
        let default = loaded
            .first()
            .map(|certificate| Arc::clone(&certificate.key))
            .ok_or_else(|| file_error(Path::new("tls"), "no certificate configured"))?;
        Ok(Self { default, by_name })
    }

    fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.by_name.get(&format!("*.{parent}"))
        };
        Arc::clone(
            self.by_name
                .get(&name)
                .or_else(wildcard)
                .unwrap_or(&self.default),
        )
    }
}

/// The certificates the TLS listener serves, as read from their files.
pub struct Certificates {
    sources: Vec<CertificateFiles>,
    selection: Selection,
}

impl Certificates {
    /// Loads every certificate; the first error names its file.
    pub fn load(
        sources: Vec<CertificateFiles>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertificateError> {
        let selection = Selection::load(&sources, &provider)?;
        Ok(Self { sources, selection })
    }

    /// The files, as configured.
    pub fn sources(&self) -> &[CertificateFiles] {
        &self.sources
    }
}

/// The same files (which a reload reads again either way).
impl PartialEq for Certificates {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.selection.for_name(client_hello.server_name()))
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}
