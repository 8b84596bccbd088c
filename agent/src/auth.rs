//! Credentials: the join token and node secret an agent shows the coordinator ([`Secret`]), and
//! the check a serving agent makes on every caller ([`RequirePeer`]).
//!
//! Agents do not share a token any more: each holds its own certificate (see
//! [`crate::identity`]), and a node's backup files are readable only by holders of an
//! unrevoked certificate from the same coordinator.

use std::fmt;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::identity::{Identity, PeerIdentity};

/// A credential: redacted in `Debug`, compared in constant time, read only through
/// [`Secret::expose`] (so a `grep expose` finds every place a token leaves memory).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for putting it on the wire.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    #[must_use]
    pub fn matches(&self, candidate: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate)
    }

    /// The `Bearer <token>` metadata value.
    ///
    /// # Errors
    /// When the token holds characters that cannot appear in an HTTP header.
    pub fn bearer(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
        format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| Status::invalid_argument("the token holds characters that cannot be sent in a header"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compares two byte strings without an early exit on the first difference, so the time a
/// refusal takes does not tell an attacker how much of a guessed token was right. (The length
/// may leak; tokens have a fixed length anyway.)
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Server-side interceptor: every call must come over mutual TLS with a certificate from the
/// cluster's CA (the connection loop puts the caller's [`PeerIdentity`] into the request), and
/// that certificate must not be revoked. Revocation is checked per call, so a removed node is
/// refused on connections it opened before its removal too.
#[derive(Debug, Clone)]
pub struct RequirePeer(pub Arc<Identity>);

impl RequirePeer {
    /// Checks one call's caller.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` without a caller certificate; `PERMISSION_DENIED` for a revoked one.
    pub fn check(&self, caller: Option<&PeerIdentity>) -> Result<(), Status> {
        let Some(caller) = caller else {
            return Err(Status::unauthenticated(
                "no client certificate: depot agents accept only callers holding a certificate from their coordinator (join with the join token)",
            ));
        };
        if self.0.is_revoked(&caller.serial) {
            tracing::warn!(
                node = caller.node_id,
                serial = caller.serial,
                "refused a call: the caller's certificate is revoked"
            );
            return Err(Status::permission_denied(format!(
                "node {}'s certificate is revoked (the node was removed with `depot nodes remove {}`); it must re-join with the join token",
                caller.node_id,
                caller.node_id.split('#').next().unwrap_or_default()
            )));
        }
        Ok(())
    }
}

impl Interceptor for RequirePeer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = request.extensions().get::<PeerIdentity>().cloned();
        self.check(caller.as_ref())?;
        if let Some(caller) = caller {
            request.extensions_mut().insert(Standing { peer: self.clone(), caller });
        }
        Ok(request)
    }
}

/// A call's caller, checked again while a long stream runs: a node removed mid-transfer has
/// its `ReadFile` streams cut within a heartbeat, not only its next calls refused.
#[derive(Debug, Clone)]
pub struct Standing {
    peer: RequirePeer,
    caller: PeerIdentity,
}

impl Standing {
    /// Whether the caller may still be served.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` once its certificate is revoked.
    pub fn check(&self) -> Result<(), Status> {
        self.peer.check(Some(&self.caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("do-not-log-me");
        assert!(!format!("{secret:?}").contains("do-not-log-me"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
