//! This node's certificate, and the mutual TLS every agent speaks with it.
//!
//! At join the agent makes (or reuses) a key pair — a serving agent keeps it in
//! `ROOT/.depot/node-key.pem`, mode 0600; a fetch/verify run keeps it in memory only — and sends
//! a CSR; the coordinator's CA signs it (see `depot serve`'s `cluster` module). [`Identity`]
//! holds the current certificate behind a lock: a renewal swaps it, new handshakes use the new
//! one, connections already open (and the transfers on them) carry on.
//!
//! Agents serve TLS 1.3 only and require a client certificate from the same CA; they call each
//! other with theirs and check that the peer's certificate names the node they meant to call.
//! Expiry is checked at every handshake; revocation (the serials the coordinator sends with
//! every heartbeat and peer list) at every call. Cipher suites: AES-128-GCM, then AES-256-GCM
//! (both run on AES-NI); ChaCha20 is not offered.

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The node key's file under the root's `.depot/`.
pub const KEY_FILE: &str = "node-key.pem";

/// Why an identity could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file cannot be read or written.
    #[error("node key {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Key or CSR generation failed, or the key file is not a usable key.
    #[error("node key: {0}")]
    Key(#[from] rcgen::Error),
    /// The coordinator sent an unusable certificate or CA.
    #[error("the coordinator sent an unusable {what}: {reason}")]
    BadCertificate {
        /// Which.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Who is on the other end of a connection, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node id (a fetch/verify run: `NODE#RUN`).
    pub node_id: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Reads the node id (URI SAN `depot://node/<id>` or `depot://run/<node>/<run>`), serial and
    /// expiry of a certificate issued by a Depot CA.
    #[must_use]
    pub fn of(cert: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let node_id = san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                if let Some(id) = uri.strip_prefix("depot://node/") {
                    Some(id.to_owned())
                } else {
                    uri.strip_prefix("depot://run/").and_then(|r| r.split_once('/')).map(|(n, r)| format!("{n}#{r}"))
                }
            }
            _ => None,
        })?;
        Some(Self { node_id, serial: hex::encode(cert.raw_serial()), not_after: cert.validity().not_after.timestamp() })
    }
}

/// The crypto provider of agent-to-agent TLS: ring, AES-GCM suites only.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    Arc::new(CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_AES_256_GCM_SHA384],
        ..default_provider()
    })
}

/// Loads the node key in `ROOT/.depot/node-key.pem`, or creates it (mode 0600).
///
/// # Errors
/// [`IdentityError`].
pub fn node_key(state_dir: &Path) -> Result<KeyPair, IdentityError> {
    let path = state_dir.join(KEY_FILE);
    let err = |source| IdentityError::KeyFile { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(pem) => return Ok(KeyPair::from_pem(&pem)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let key = KeyPair::generate()?;
    let temp = state_dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).map_err(err)?;
    file.write_all(key.serialize_pem().as_bytes()).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::rename(&temp, &path).map_err(err)?;
    std::fs::File::open(state_dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(key)
}

struct Current {
    certified: Arc<CertifiedKey>,
    issued: SystemTime,
    not_after: SystemTime,
}

/// This node's key, its current certificate, the CA and the revoked serials.
pub struct Identity {
    node_id: String,
    key: KeyPair,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    ca_pem: String,
    current: RwLock<Current>,
    revoked: RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Identity {
    /// A CSR for `node_id` with `key` (subject CN = the node id).
    ///
    /// # Errors
    /// [`IdentityError::Key`].
    pub fn csr(node_id: &str, key: &KeyPair) -> Result<String, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, node_id);
        Ok(params.serialize_request(key)?.pem()?)
    }

    /// The identity from a signed certificate and the CA that signed it.
    ///
    /// # Errors
    /// [`IdentityError::BadCertificate`].
    pub fn new(node_id: &str, key: KeyPair, cert_pem: &str, ca_pem: &str) -> Result<Self, IdentityError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| IdentityError::BadCertificate { what: "CA", reason: e.to_string() })?;
            roots.add(ca).map_err(|e| IdentityError::BadCertificate { what: "CA", reason: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(IdentityError::BadCertificate { what: "CA", reason: "no certificate".into() });
        }
        let current = certified(&provider, &key, cert_pem)?;
        Ok(Self {
            node_id: node_id.to_owned(),
            key,
            provider,
            roots: Arc::new(roots),
            ca_pem: ca_pem.to_owned(),
            current: RwLock::new(current),
            revoked: RwLock::new(HashSet::new()),
        })
    }

    /// This node's id.
    #[must_use]
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A CSR for a renewal (same key).
    ///
    /// # Errors
    /// [`IdentityError::Key`].
    pub fn renewal_csr(&self) -> Result<String, IdentityError> {
        Self::csr(&self.node_id, &self.key)
    }

    /// Installs a renewed certificate: new handshakes use it, open connections carry on.
    ///
    /// # Errors
    /// [`IdentityError::BadCertificate`].
    pub fn install(&self, cert_pem: &str) -> Result<(), IdentityError> {
        let next = certified(&self.provider, &self.key, cert_pem)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// When the current certificate expires.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).not_after
    }

    /// Why this node cannot call peers now, when its own certificate has expired (renewal
    /// kept failing): said before connecting, since peers answer only with a TLS alert.
    #[must_use]
    pub fn expired(&self) -> Option<String> {
        let ago = SystemTime::now().duration_since(self.not_after()).ok()?;
        Some(format!(
            "this node's certificate expired {}s ago and has not been renewed (the agent renews it from the coordinator \
             at two thirds of its lifetime: is the coordinator reachable, and is this machine's clock right?); \
             peers refuse it until it is renewed",
            ago.as_secs()
        ))
    }

    /// When to renew: two thirds into the current certificate's lifetime.
    #[must_use]
    pub fn renew_at(&self) -> SystemTime {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lifetime = current.not_after.duration_since(current.issued).unwrap_or_default();
        current.issued + lifetime * 2 / 3
    }

    /// How far this machine's clock is from the coordinator's, judged from when the current
    /// certificate was issued (its start is backdated by a minute).
    #[must_use]
    pub fn clock_skew(&self) -> Duration {
        let issued = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).issued;
        let now = SystemTime::now();
        match now.duration_since(issued) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        }
    }

    /// Replaces the revoked serials (from a heartbeat or peer list).
    pub fn set_revoked(&self, serials: impl IntoIterator<Item = String>) {
        let serials: HashSet<String> = serials.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        *self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner) = serials;
    }

    /// Whether a serial is revoked.
    #[must_use]
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(serial)
    }

    /// Server TLS: this node's certificate; callers must present one from the same CA.
    ///
    /// # Panics
    /// Never: the provider and roots are known good.
    #[must_use]
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
            .build()
            .expect("the CA roots are valid");
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .with_client_cert_verifier(Arc::new(LoggingClientVerifier { inner }))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// The cluster's CA (PEM), which S3 clients of the view trust.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Server TLS for the S3 view: this node's certificate (the coordinator adds the loopback
    /// names a local client dials), no client certificate (S3 clients sign requests instead),
    /// HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and 1.3 with rustls' default suites (clients we do
    /// not control). A renewed certificate serves new handshakes at once, as for peers.
    ///
    /// # Panics
    /// Never: the default protocol versions are supported.
    #[must_use]
    pub fn view_server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default versions are supported")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Client TLS to the peer `expected_node`: its certificate must come from the CA, name its
    /// address, name that node, and not be revoked.
    ///
    /// # Panics
    /// Never: the provider and roots are known good.
    #[must_use]
    pub fn client_config(self: &Arc<Self>, expected_node: Option<&str>) -> Arc<rustls::ClientConfig> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .expect("the CA roots are valid");
        let verifier = PeerVerifier { inner, identity: self.clone(), expected: expected_node.map(str::to_owned) };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// The current certificate (DER).
    #[must_use]
    pub fn certified_der(&self) -> Vec<u8> {
        self.certified().cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).certified.clone()
    }
}

fn certified(provider: &CryptoProvider, key: &KeyPair, cert_pem: &str) -> Result<Current, IdentityError> {
    let bad = |reason: String| IdentityError::BadCertificate { what: "certificate", reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let first = chain.first().ok_or_else(|| bad("no certificate".into()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first).map_err(|e| bad(e.to_string()))?;
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    // The coordinator backdates the start by a minute.
    let issued = at(parsed.validity().not_before.timestamp() + 60);
    let not_after = at(parsed.validity().not_after.timestamp());
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| bad(e.to_owned()))?;
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| bad(e.to_string()))?;
    Ok(Current { certified: Arc::new(CertifiedKey::new(chain, signing)), issued, not_after })
}

/// Hands out the current certificate, as server and as client.
#[derive(Debug)]
struct Resolver(Arc<Identity>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The CA check of rustls, plus a log line naming the refused node and why.
#[derive(Debug)]
struct LoggingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for LoggingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).inspect_err(|err| {
            let who = PeerIdentity::of(end_entity);
            let node = who.as_ref().map_or("(not a Depot node certificate)", |w| w.node_id.as_str());
            match &who {
                Some(w) if w.not_after < i64::try_from(now.as_secs()).unwrap_or(i64::MAX) => tracing::warn!(
                    node,
                    %err,
                    expired_secs_ago = i64::try_from(now.as_secs()).unwrap_or(0) - w.not_after,
                    "refused a caller: its certificate has expired (is its agent renewing? if it just renewed, compare the clocks of both machines)"
                ),
                _ => tracing::warn!(node, %err, "refused a caller's certificate (not issued by this cluster's coordinator?)"),
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The CA and host-name check of rustls, plus: the certificate names the node we meant to call
/// and is not revoked.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    identity: Arc<Identity>,
    expected: Option<String>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let who = PeerIdentity::of(end_entity)
            .ok_or_else(|| rustls::Error::General("the peer's certificate names no Depot node".into()))?;
        if let Some(expected) = &self.expected
            && &who.node_id != expected
        {
            return Err(rustls::Error::General(format!(
                "the agent at this address is node {}, not node {expected}",
                who.node_id
            )));
        }
        if self.identity.is_revoked(&who.serial) {
            return Err(rustls::Error::General(format!(
                "node {}'s certificate is revoked (removed with `depot nodes remove`)",
                who.node_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
