//! Cluster membership: the certificates the archive's CA issues to nodes, who is joined, and
//! what is revoked.
//!
//! A node joins with the join token and a CSR; it gets a certificate naming it (subject CN and
//! URI SAN `depot://node/<id>`, its advertised host and the loopback names `127.0.0.1`, `::1`,
//! `localhost` as DNS/IP SANs, the last for its S3 view) and a node secret for its
//! later registry calls. Joined nodes (id, address, newest certificate, hash of the secret) and
//! revoked serials are kept in `DIR/.depot/cluster/nodes.json`, so a restarted coordinator
//! (same archive, same CA) still knows them: their heartbeats and renewals go on without the
//! join token, which can therefore be rotated freely.
//!
//! Revocation travels as a list of serials with every heartbeat answer and `ListPeers` (a CRL
//! in all but format): certificates live 24 h by default, far longer than "refused within one
//! heartbeat" allows, and shortening them to seconds would make every node depend on the
//! coordinator every few seconds. A serial leaves the list once its certificate expires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::tls::{Ca, TlsError};

/// Longest accepted node id.
pub const MAX_NODE_ID: usize = 128;
/// Lifetime cap of a fetch/verify run's client-only certificate.
const CLIENT_LIFETIME_CAP: Duration = Duration::from_secs(3600);
/// Certificates start this far in the past, so a node whose clock is a little behind can use
/// its certificate at once.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why a join, renewal or removal was refused. Each message names the node and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node id is not usable.
    #[error("node id {0:?} is not usable: use 1 to {MAX_NODE_ID} letters, digits, '.', '_' or '-' (--node-id)")]
    BadNodeId(String),
    /// The advertised address is not HOST:PORT.
    #[error("node {node}: address {address:?} is not HOST:PORT; pass --advertise HOST:PORT to depot-agent serve")]
    BadAddress {
        /// The node.
        node: String,
        /// What it sent.
        address: String,
    },
    /// The CSR cannot be parsed or its signature is wrong.
    #[error(
        "node {node}: the certificate signing request is unusable ({reason}); restart the agent (it makes a new one)"
    )]
    BadCsr {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The CSR names another node.
    #[error(
        "node {node}: the certificate signing request is for node {csr_node:?}; a node may only ask for its own id (delete ROOT/.depot/node-key.pem if the root was copied from another node)"
    )]
    CsrForAnotherNode {
        /// The node id of the request.
        node: String,
        /// The node id in the CSR.
        csr_node: String,
    },
    /// The node id is held by another live agent.
    #[error(
        "node {node} is already joined and live at {address}; give this agent another --node-id, or stop the other one first"
    )]
    Taken {
        /// The node.
        node: String,
        /// Where the live one is.
        address: String,
    },
    /// The node is not joined (never was, or was removed).
    #[error(
        "node {0} is not joined to this coordinator (it was removed with `depot nodes remove`, or the archive is another one); restart the agent with the join token to join again"
    )]
    NotJoined(String),
    /// Signing failed.
    #[error("cannot sign a certificate: {0}")]
    Sign(#[from] rcgen::Error),
    /// The state file cannot be written.
    #[error("cannot save the cluster state {}: {source}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub pem: String,
    /// Serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// What is remembered about a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// `host:port` of its service (empty for client-only runs).
    pub address: String,
    /// Serials (hex) of its certificates not yet expired, newest last.
    pub serials: Vec<(String, i64)>,
    /// sha256 (hex) of its node secret.
    pub secret_sha256: String,
    /// A fetch/verify run, not a serving agent.
    pub client_only: bool,
}

impl NodeState {
    /// The newest certificate: (serial, expiry).
    #[must_use]
    pub fn newest(&self) -> Option<&(String, i64)> {
        self.serials.last()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    nodes: BTreeMap<String, NodeState>,
    /// serial (hex) -> expiry (Unix seconds).
    revoked: BTreeMap<String, i64>,
}

/// The cluster's membership and its CA.
pub struct Cluster {
    ca: Ca,
    lifetime: Duration,
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("path", &self.path).field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster of the archive whose state directory is `state_dir` (`DIR/.depot`).
    ///
    /// # Errors
    /// [`TlsError`] when the CA cannot be loaded or created.
    pub fn open(state_dir: &Path, lifetime: Duration) -> Result<Self, TlsError> {
        let ca = Ca::load_or_create(&state_dir.join("tls"))?;
        let path = state_dir.join("cluster").join("nodes.json");
        let state = match std::fs::read(&path) {
            Ok(raw) => serde_json::from_slice(&raw).unwrap_or_else(|err| {
                tracing::warn!(%err, path = %path.display(), "cluster state unreadable; starting empty (nodes join again)");
                State::default()
            }),
            Err(_) => State::default(),
        };
        Ok(Self { ca, lifetime, path, state: Mutex::new(state) })
    }

    /// The CA certificate (PEM).
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// Signs `csr_pem` for `node_id` (and `address`'s host), remembering the node with the hash
    /// of `secret`. `live_address` is where a live agent with that id is, if any.
    ///
    /// # Errors
    /// [`ClusterError`].
    pub fn join(
        &self,
        node_id: &str,
        address: &str,
        csr_pem: &str,
        client_only: bool,
        secret: &str,
        live_address: Option<&str>,
    ) -> Result<Issued, ClusterError> {
        check_node_id(node_id, client_only)?;
        let host = if client_only { None } else { Some(host_of(node_id, address)?) };
        if let Some(live) = live_address.filter(|live| *live != address) {
            return Err(ClusterError::Taken { node: node_id.to_owned(), address: live.to_owned() });
        }
        let issued = self.sign(node_id, host, csr_pem, client_only)?;
        let mut state = self.state.lock().expect("cluster lock");
        prune(&mut state);
        let serials = match state.nodes.remove(node_id) {
            // Re-joining (a restart): the earlier certificates stay valid until they expire.
            Some(old) => old.serials,
            None => Vec::new(),
        };
        let mut node =
            NodeState { address: address.to_owned(), serials, secret_sha256: sha256_hex(secret), client_only };
        node.serials.push((issued.serial.clone(), issued.not_after));
        state.nodes.insert(node_id.to_owned(), node);
        self.save(&state)?;
        Ok(issued)
    }

    /// Signs a renewal CSR for a joined node.
    ///
    /// # Errors
    /// [`ClusterError`].
    pub fn renew(&self, node_id: &str, csr_pem: &str) -> Result<Issued, ClusterError> {
        let (address, client_only) = {
            let state = self.state.lock().expect("cluster lock");
            let node = state.nodes.get(node_id).ok_or_else(|| ClusterError::NotJoined(node_id.to_owned()))?;
            (node.address.clone(), node.client_only)
        };
        let host = if client_only { None } else { Some(host_of(node_id, &address)?) };
        let issued = self.sign(node_id, host, csr_pem, client_only)?;
        let mut state = self.state.lock().expect("cluster lock");
        prune(&mut state);
        let node = state.nodes.get_mut(node_id).ok_or_else(|| ClusterError::NotJoined(node_id.to_owned()))?;
        node.serials.push((issued.serial.clone(), issued.not_after));
        self.save(&state)?;
        Ok(issued)
    }

    /// Whether `secret` is `node_id`'s node secret.
    #[must_use]
    pub fn check_secret(&self, node_id: &str, secret: &str) -> bool {
        let state = self.state.lock().expect("cluster lock");
        state
            .nodes
            .get(node_id)
            .is_some_and(|n| bool::from(n.secret_sha256.as_bytes().ct_eq(sha256_hex(secret).as_bytes())))
    }

    /// Forgets a client-only run that ended (its certificate simply expires).
    ///
    /// # Errors
    /// [`ClusterError::Save`].
    pub fn forget_client(&self, node_id: &str) -> Result<(), ClusterError> {
        let mut state = self.state.lock().expect("cluster lock");
        if state.nodes.get(node_id).is_some_and(|n| n.client_only) {
            state.nodes.remove(node_id);
            self.save(&state)?;
        }
        Ok(())
    }

    /// Revokes every certificate of `node_id` and of its fetch/verify runs, and forgets them.
    /// Returns how many certificates were revoked.
    ///
    /// # Errors
    /// [`ClusterError::NotJoined`] for an unknown node.
    pub fn remove(&self, node_id: &str) -> Result<usize, ClusterError> {
        let mut state = self.state.lock().expect("cluster lock");
        let run_prefix = format!("{node_id}#");
        let ids: Vec<String> =
            state.nodes.keys().filter(|id| *id == node_id || id.starts_with(&run_prefix)).cloned().collect();
        if !ids.iter().any(|id| id == node_id) {
            return Err(ClusterError::NotJoined(node_id.to_owned()));
        }
        let mut revoked = 0;
        for id in ids {
            if let Some(node) = state.nodes.remove(&id) {
                for (serial, not_after) in node.serials {
                    state.revoked.insert(serial, not_after);
                    revoked += 1;
                }
            }
        }
        self.save(&state)?;
        Ok(revoked)
    }

    /// Serials (hex) of revoked certificates that have not expired yet.
    #[must_use]
    pub fn revoked(&self) -> Vec<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let state = self.state.lock().expect("cluster lock");
        state.revoked.iter().filter(|(_, exp)| **exp >= now).map(|(s, _)| s.clone()).collect()
    }

    /// Every remembered node.
    #[must_use]
    pub fn nodes(&self) -> Vec<(String, NodeState)> {
        let state = self.state.lock().expect("cluster lock");
        state.nodes.iter().map(|(id, n)| (id.clone(), n.clone())).collect()
    }

    /// A node's address, if it is joined.
    #[must_use]
    pub fn address(&self, node_id: &str) -> Option<String> {
        self.state.lock().expect("cluster lock").nodes.get(node_id).map(|n| n.address.clone())
    }

    fn sign(
        &self,
        node_id: &str,
        host: Option<&str>,
        csr_pem: &str,
        client_only: bool,
    ) -> Result<Issued, ClusterError> {
        let bad = |reason: String| ClusterError::BadCsr { node: node_id.to_owned(), reason };
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| bad(e.to_string()))?;
        let csr_node = match csr.params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(cn)) => cn.clone(),
            Some(rcgen::DnValue::PrintableString(cn)) => cn.as_str().to_owned(),
            Some(rcgen::DnValue::Ia5String(cn)) => cn.as_str().to_owned(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        if csr_node != node_id {
            return Err(ClusterError::CsrForAnotherNode { node: node_id.to_owned(), csr_node });
        }
        let lifetime = if client_only { self.lifetime.min(CLIENT_LIFETIME_CAP) } else { self.lifetime };
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.distinguished_name.push(DnType::OrganizationName, "Depot node");
        let uri = if client_only {
            let (node, run) = node_id.split_once('#').unwrap_or((node_id, ""));
            format!("depot://run/{node}/{run}")
        } else {
            format!("depot://node/{node_id}")
        };
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        if let Some(host) = host {
            let mut sans = vec![match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.to_owned().try_into()?),
            }];
            // The names a client on the node's own machine uses for its S3 view (TiKV and BR
            // reach it at 127.0.0.1). They give no one a way to pose as another node: peers
            // accept a certificate only if its URI SAN names the node they dialled, and a
            // loopback name only ever leads to the client's own machine.
            sans.extend([
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
                SanType::DnsName("localhost".to_owned().try_into()?),
            ]);
            for san in sans {
                if !params.subject_alt_names.contains(&san) {
                    params.subject_alt_names.push(san);
                }
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if client_only {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x10; // no leading zero byte: the hex form is the DER form
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = CertificateSigningRequestParams { params, public_key: csr.public_key }.signed_by(&self.ca.issuer)?;
        Ok(Issued { pem: cert.pem(), serial: hex::encode(serial), not_after: (now + lifetime).unix_timestamp() })
    }

    fn save(&self, state: &State) -> Result<(), ClusterError> {
        let err = |source| ClusterError::Save { path: self.path.clone(), source };
        let dir = self.path.parent().expect("nodes.json has a parent");
        std::fs::create_dir_all(dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(state).expect("serializable");
        crate::tls::write_file(&self.path, &json, 0o600).map_err(|e| err(std::io::Error::other(e.to_string())))
    }
}

/// Drops expired serials and client runs whose certificates all expired.
fn prune(state: &mut State) {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    state.revoked.retain(|_, exp| *exp >= now);
    for node in state.nodes.values_mut() {
        node.serials.retain(|(_, exp)| *exp >= now);
    }
    state.nodes.retain(|_, n| !(n.client_only && n.serials.is_empty()));
}

/// Node ids: letters, digits, `.`, `_`, `-`; a client-only run appends `#<run>`.
///
/// # Errors
/// [`ClusterError::BadNodeId`].
pub fn check_node_id(node_id: &str, client_only: bool) -> Result<(), ClusterError> {
    let ok_part =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok = node_id.len() <= MAX_NODE_ID
        && match node_id.split_once('#') {
            Some((node, run)) => client_only && ok_part(node) && ok_part(run),
            None => ok_part(node_id),
        };
    if ok { Ok(()) } else { Err(ClusterError::BadNodeId(node_id.to_owned())) }
}

fn host_of<'a>(node_id: &str, address: &'a str) -> Result<&'a str, ClusterError> {
    let bad = || ClusterError::BadAddress { node: node_id.to_owned(), address: address.to_owned() };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(host)
}

/// sha256 of a secret, hex.
#[must_use]
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::KeyPair;

    fn csr(cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn joins_renews_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let issued = cluster.join("n1", "127.0.0.1:7000", &csr("n1"), false, "s1", None).unwrap();
        assert!(issued.pem.contains("BEGIN CERTIFICATE"));
        assert!(cluster.check_secret("n1", "s1") && !cluster.check_secret("n1", "s2"));
        let err = cluster.join("n2", "127.0.0.1:7001", &csr("n1"), false, "s", None).unwrap_err();
        assert!(err.to_string().contains("for node \"n1\""), "{err}");
        let err = cluster.join("n1", "127.0.0.1:7002", &csr("n1"), false, "s", Some("127.0.0.1:7000")).unwrap_err();
        assert!(err.to_string().contains("already joined"), "{err}");
        assert!(cluster.join("bad/id", "127.0.0.1:1", &csr("bad/id"), false, "s", None).is_err());
        let renewed = cluster.renew("n1", &csr("n1")).unwrap();
        assert_ne!(renewed.serial, issued.serial);
        cluster.join("n1#run1", "", &csr("n1#run1"), true, "r", None).unwrap();

        // State survives a restart.
        let again = Cluster::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert!(again.check_secret("n1", "s1"));
        assert_eq!(again.remove("n1").unwrap(), 3);
        let revoked = again.revoked();
        assert!(revoked.contains(&issued.serial) && revoked.contains(&renewed.serial));
        assert!(!again.check_secret("n1", "s1"));
        assert!(matches!(again.renew("n1", &csr("n1")), Err(ClusterError::NotJoined(_))));
        assert!(matches!(again.remove("n1"), Err(ClusterError::NotJoined(_))));
    }
}
