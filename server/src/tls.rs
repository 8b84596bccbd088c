//! TLS for `depot serve`: a generated CA and server certificate, or the operator's own.
//!
//! The generated CA lives in `<archive>/.depot/tls/` and is reused across runs (nodes that
//! were given `ca.pem` keep trusting the server); its key is readable by the owner only. The
//! server certificate is made afresh each start for the hosts that run advertises, plus
//! `localhost`/`127.0.0.1`/`::1`. `bundle.pem` is the system roots plus the CA: TiKV and
//! most tools take it as `SSL_CERT_FILE` without losing the public roots.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A ready server TLS configuration and the files clients need.
#[derive(Debug)]
pub struct Tls {
    /// rustls server configuration (ALPN h2 and http/1.1).
    pub config: Arc<rustls::ServerConfig>,
    /// The generated CA certificate; `None` with the operator's own certificate.
    pub ca_file: Option<PathBuf>,
    /// System roots + the generated CA, for `SSL_CERT_FILE`.
    pub bundle_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("{what} {}: {source}", path.display())]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file has no usable certificate or key.
    #[error("{}: {problem}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Certificate generation failed (e.g. an advertised host that is not a valid DNS name).
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider used everywhere (ring: no C toolchain beyond `cc` needed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates (or reuses) the CA under `tls_dir` and a server certificate for `hosts`.
///
/// # Errors
/// [`TlsError`].
pub fn generated(tls_dir: &Path, hosts: &[String]) -> Result<Tls, TlsError> {
    let ca = Ca::load_or_create(tls_dir)?;
    let ca_pem = ca.pem.clone();
    let ca_path = tls_dir.join("ca.pem");
    let issuer = &ca.issuer;

    let mut names: Vec<String> = hosts.to_vec();
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.to_owned());
        }
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "depot serve");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;

    let mut bundle = String::new();
    let native = rustls_native_certs::load_native_certs();
    for root in native.certs {
        bundle.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", root.to_vec())));
    }
    bundle.push_str(&ca_pem);
    let bundle_path = tls_dir.join("bundle.pem");
    write_file(&bundle_path, bundle.as_bytes(), 0o644)?;

    let chain = vec![cert.der().clone()];
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|problem| TlsError::Pem { path: tls_dir.into(), problem: problem.to_owned() })?;
    Ok(Tls { config: server_config(chain, key_der)?, ca_file: Some(ca_path), bundle_file: Some(bundle_path) })
}

/// The archive's CA: created once under `DIR/.depot/tls/` and reused, so certificates it
/// issued (the server's, the nodes') stay trusted across restarts.
pub struct Ca {
    /// Signs certificates.
    pub issuer: Issuer<'static, KeyPair>,
    /// `ca.pem`'s contents.
    pub pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA in `tls_dir`, or creates it (key mode 0600).
    ///
    /// # Errors
    /// [`TlsError`].
    pub fn load_or_create(tls_dir: &Path) -> Result<Self, TlsError> {
        std::fs::create_dir_all(tls_dir).map_err(|source| TlsError::File {
            what: "cannot create",
            path: tls_dir.into(),
            source,
        })?;
        let ca_key_path = tls_dir.join("ca-key.pem");
        let ca_path = tls_dir.join("ca.pem");
        let ca_key = match std::fs::read_to_string(&ca_key_path) {
            Ok(pem) if ca_path.exists() => KeyPair::from_pem(&pem)?,
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params().self_signed(&key)?;
                write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_file(&ca_path, cert.pem().as_bytes(), 0o644)?;
                key
            }
        };
        let pem = std::fs::read_to_string(&ca_path).map_err(|source| TlsError::File {
            what: "cannot read",
            path: ca_path.clone(),
            source,
        })?;
        Ok(Self { issuer: Issuer::new(ca_params(), ca_key), pem })
    }
}

/// Serves the operator's certificate chain and key (PEM files).
///
/// # Errors
/// [`TlsError`].
pub fn operator(cert_path: &Path, key_path: &Path) -> Result<Tls, TlsError> {
    let pem_error = |path: &Path, problem: String| TlsError::Pem { path: path.into(), problem };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| pem_error(key_path, format!("no usable private key: {e}")))?;
    Ok(Tls { config: server_config(chain, key)?, ca_file: None, bundle_file: None })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // gRPC (the registry) needs h2; S3 clients mostly speak http/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA's parameters: the same every run, so a reused key yields a CA clients already trust.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Depot archive CA");
    params.distinguished_name.push(DnType::OrganizationName, "Depot");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Writes a file atomically with the given mode.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = path.parent().expect("files live in the tls directory");
    let err = |source| TlsError::File { what: "cannot write", path: path.into(), source };
    let mut temp = depot_fs::TempFile::create_in(dir).map_err(err)?;
    temp.file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(err)?;
    temp.write_all(contents).map_err(err)?;
    temp.commit(path).map_err(|e| err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_reused_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = generated(dir.path(), &["depot.example".into()]).unwrap();
        let ca = std::fs::read(first.ca_file.as_ref().unwrap()).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = generated(dir.path(), &["10.0.0.7".into()]).unwrap();
        assert_eq!(std::fs::read(second.ca_file.unwrap()).unwrap(), ca);
        let bundle = std::fs::read_to_string(second.bundle_file.unwrap()).unwrap();
        assert!(bundle.ends_with(std::str::from_utf8(&ca).unwrap()));
    }

    #[test]
    fn operator_files_without_pem_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = operator(&cert, &cert).unwrap_err().to_string();
        assert!(err.contains("cert.pem") && err.contains("no CERTIFICATE"), "{err}");
    }
}
