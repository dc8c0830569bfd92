//! HTTPS served directly (SPEC §12): rustls (ring, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`), the certificate re-read when its files change or on SIGHUP, and client
//! certificates checked against a CA.
//!
//! The certificate is handed to rustls per handshake by [`CurrentCertificate`], so a new
//! pair swaps in for the next connection while open ones keep the session they have.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuthMode, ConfigError, TlsSettings};
use crate::server::{ConnectionInfo, Handshake};

const TLS_CERT_PATH: &str = "TLS_CERT_PATH";
const TLS_KEY_PATH: &str = "TLS_KEY_PATH";
const TLS_CLIENT_CA_PATH: &str = "TLS_CLIENT_CA_PATH";

/// The TLS side of the server: the rustls configuration and the certificate in use.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCertificate>,
    cert_path: PathBuf,
    key_path: PathBuf,
    reload_interval: Duration,
    /// What the last check of the files found, so that a change is acted on (and a bad file
    /// warned about) once, not at every check.
    last_seen: Mutex<Option<Seen>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Seen {
    /// SHA-256 of the two files' contents.
    Contents([u8; 32]),
    /// Why they could not be read.
    Unreadable(String),
}

/// What a check of the certificate files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last seen.
    Unchanged,
    /// A new valid pair is in use for new connections.
    Replaced,
    /// The files changed but are not a valid pair (the reason, which names the variable):
    /// the certificate in use stays.
    Kept(String),
}

impl ServerTls {
    /// Reads and checks the certificate, key and client CA; the error names the variable.
    pub fn load(settings: &TlsSettings) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(&settings.cert_path, &settings.key_path)?;
        let certified = certified_key(&cert_pem, &key_pem, &settings.cert_path, &provider)?;
        let current = Arc::new(CurrentCertificate {
            key: RwLock::new(Arc::new(certified)),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError::new(TLS_CERT_PATH, format!("TLS setup failed: {e}")))?;
        let builder = match &settings.client_auth {
            None => builder.with_no_client_auth(),
            Some(client_auth) => {
                let roots = client_roots(&client_auth.ca_path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                );
                let verifier = match client_auth.mode {
                    ClientAuthMode::Required => verifier,
                    ClientAuthMode::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| {
                    ConfigError::new(
                        TLS_CLIENT_CA_PATH,
                        format!("{}: {e}", client_auth.ca_path.display()),
                    )
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&current) as _);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert_path: settings.cert_path.clone(),
            key_path: settings.key_path.clone(),
            reload_interval: settings.reload_interval,
            last_seen: Mutex::new(Some(Seen::Contents(fingerprint(&cert_pem, &key_pem)))),
        })
    }

    /// The [`Handshake`] the accept loop runs on each connection.
    pub fn handshake(&self) -> TlsHandshake {
        TlsHandshake {
            acceptor: self.acceptor.clone(),
        }
    }

    /// Reads the two files; a new valid pair replaces the certificate for new connections,
    /// anything else leaves it in place (and is logged once, without the files' contents).
    pub fn reload(&self) -> Reload {
        let read = read_pair(&self.cert_path, &self.key_path);
        let seen = match &read {
            Ok((cert, key)) => Seen::Contents(fingerprint(cert, key)),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        {
            let mut last = self
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.as_ref() == Some(&seen) {
                return Reload::Unchanged;
            }
            *last = Some(seen);
        }
        let provider = rustls::crypto::ring::default_provider();
        let loaded =
            read.and_then(|(cert, key)| certified_key(&cert, &key, &self.cert_path, &provider));
        match loaded {
            Ok(certified) => {
                *self
                    .current
                    .key
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                tracing::info!(
                    cert = %self.cert_path.display(),
                    "TLS certificate reloaded; new connections use it"
                );
                Reload::Replaced
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "TLS certificate files changed but were not loaded; the current certificate stays"
                );
                Reload::Kept(e.to_string())
            }
        }
    }

    /// Checks the files every `TLS_RELOAD_INTERVAL_SECS` and on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.reload_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the files were just loaded.
        every.tick().await;
        let mut hangup = hangups();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                Some(()) = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP: checking the TLS certificate files");
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                    continue;
                }
            }
            let _ = self.reload();
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS files are still checked periodically");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    match hangups {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

/// Hands rustls the certificate in use, per handshake.
struct CurrentCertificate {
    key: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCertificate")
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.key.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

fn read_file(variable: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", path.display())))
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), ConfigError> {
    Ok((
        read_file(TLS_CERT_PATH, cert)?,
        read_file(TLS_KEY_PATH, key)?,
    ))
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(cert);
    hash.update(key);
    hash.finalize().into()
}

fn certificates(
    variable: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new(variable, format!("{}: malformed PEM: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            variable,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The pair as rustls serves it, once the key is known to be the certificate's. Errors say
/// which file is wrong and never quote the key.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConfigError> {
    let chain = certificates(TLS_CERT_PATH, cert_path, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        ConfigError::new(
            TLS_KEY_PATH,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let key = provider.key_provider.load_private_key(key).map_err(|_| {
        ConfigError::new(
            TLS_KEY_PATH,
            "the private key is malformed or of an unsupported type",
        )
    })?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(ConfigError::new(
            TLS_KEY_PATH,
            "the private key does not match the certificate of TLS_CERT_PATH",
        )),
        Err(e) => Err(ConfigError::new(
            TLS_CERT_PATH,
            format!("{}: not a usable certificate: {e}", cert_path.display()),
        )),
    }
}

fn client_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let pem = read_file(TLS_CLIENT_CA_PATH, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(TLS_CLIENT_CA_PATH, path, &pem)? {
        roots.add(cert).map_err(|e| {
            ConfigError::new(
                TLS_CLIENT_CA_PATH,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(roots)
}

/// The TLS handshake of each connection, in the accept loop's connection task.
#[derive(Clone)]
pub struct TlsHandshake {
    acceptor: TlsAcceptor,
}

impl Handshake for TlsHandshake {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, tcp: TcpStream) -> io::Result<Self::Io> {
        self.acceptor.accept(tcp).await
    }

    fn info(io: &Self::Io) -> ConnectionInfo {
        let (_, session) = io.get_ref();
        ConnectionInfo {
            http2: session.alpn_protocol() == Some(b"h2"),
            client_certificate: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| ClientCertificate {
                    subject: subject_of(cert.as_ref()).into(),
                }),
        }
    }
}

/// A client certificate the handshake verified against `TLS_CLIENT_CA_PATH`: in the
/// extensions of every request of its connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    subject: Arc<str>,
}

impl ClientCertificate {
    /// The subject's distinguished name, e.g. `CN=ops-laptop, O=Example` (printable ASCII
    /// only: anything else is shown as `?`, so it is safe in a log line).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// The subject of a DER certificate as RFC 4514 text (`CN=ops laptop,O=Example`); `?` when
/// it cannot be read. Only printable ASCII is kept (anything else shows as `?`), so it is
/// safe in a log line.
fn subject_of(der: &[u8]) -> String {
    use x509_cert::der::Decode;
    match x509_cert::Certificate::from_der(der) {
        Ok(cert) => cert
            .tbs_certificate
            .subject
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect(),
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_reads_as_a_distinguished_name() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CountryName, "FR");
        name.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        name.push(rcgen::DnType::CommonName, "ops laptop\n");
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        let subject = subject_of(&der);
        // RFC 4514 escapes: the newline cannot forge a log line.
        assert!(subject.contains(r"CN=ops laptop\0a,"), "{subject}");
        assert!(subject.contains("O=Example\\, Inc."), "{subject}");
        assert!(subject.contains("C=FR"), "{subject}");
        assert_eq!(subject_of(&der[..der.len() - 3]), "?");
        assert_eq!(subject_of(b"not der"), "?");
    }
}
