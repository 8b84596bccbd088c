//! Credentials: the join token an agent shows the coordinator, and the peer token agents show
//! each other.
//!
//! Both travel as `authorization: Bearer <token>` gRPC metadata. The coordinator hands out the
//! peer token (in `RegisterResponse` and `ListPeersResponse`); a serving agent accepts calls
//! carrying the token it last received and refuses everything else with `UNAUTHENTICATED`, so a
//! node's backup files are not readable by anyone who can merely reach its port.

use std::fmt;
use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key both credentials travel in.
const AUTHORIZATION: &str = "authorization";

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

/// The peer token a serving agent currently accepts, shared between the registration loop
/// (which learns it from the coordinator and replaces it after a coordinator restart) and the
/// gRPC interceptor (which checks every call against it).
#[derive(Debug, Clone, Default)]
pub struct TokenSlot(Arc<RwLock<Option<Secret>>>);

impl TokenSlot {
    /// A slot already holding `token` (tests and embedders without a coordinator).
    #[must_use]
    pub fn fixed(token: Secret) -> Self {
        Self(Arc::new(RwLock::new(Some(token))))
    }

    /// Replaces the accepted token.
    pub fn set(&self, token: Secret) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token);
    }

    /// The accepted token, if the agent has one yet.
    #[must_use]
    pub fn get(&self) -> Option<Secret> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Checks the `authorization` metadata of an incoming call.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for a missing, malformed or wrong credential; `UNAVAILABLE` while the
    /// agent has not yet registered (it does not know the token yet; a caller may retry).
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(value) = metadata.get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "missing credential: calls to a depot agent must carry `authorization: Bearer <peer token>` \
                 (the token comes from the coordinator's ListPeers)",
            ));
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return Err(Status::unauthenticated("malformed credential: expected `authorization: Bearer <peer token>`"));
        };
        let Some(expected) = self.get() else {
            return Err(Status::unavailable(
                "this agent has not registered with its coordinator yet, so it cannot check credentials; retry shortly",
            ));
        };
        if expected.matches(token) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong peer credential: it is not the token this agent's coordinator issued"))
        }
    }
}

/// Server-side interceptor: refuses calls whose credential [`TokenSlot::check`] rejects.
#[derive(Debug, Clone)]
pub struct RequireToken(pub TokenSlot);

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.check(request.metadata())?;
        Ok(request)
    }
}

/// Client-side interceptor: puts `authorization: Bearer <token>` on every call.
#[derive(Debug, Clone)]
pub struct Bearer(pub Secret);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.bearer()?;
        request.metadata_mut().insert(AUTHORIZATION, value);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        if let Some(value) = value {
            map.insert(AUTHORIZATION, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn accepts_only_the_issued_token() {
        let slot = TokenSlot::fixed(Secret::new("s3cret-token"));
        assert!(slot.check(&metadata(Some("Bearer s3cret-token"))).is_ok());
        for (value, needle) in [
            (None, "missing credential"),
            (Some("s3cret-token"), "malformed"),
            (Some("Basic s3cret-token"), "malformed"),
            (Some("Bearer s3cret-tokeN"), "wrong peer credential"),
            (Some("Bearer s3cret-token-and-more"), "wrong peer credential"),
            (Some("Bearer "), "wrong peer credential"),
        ] {
            let err = slot.check(&metadata(value)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{value:?}");
            assert!(err.message().contains(needle), "{value:?}: {}", err.message());
        }
    }

    #[test]
    fn an_unregistered_agent_asks_to_retry() {
        let slot = TokenSlot::default();
        let err = slot.check(&metadata(Some("Bearer x"))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        slot.set(Secret::new("x"));
        assert!(slot.check(&metadata(Some("Bearer x"))).is_ok());
        slot.set(Secret::new("y"));
        assert!(slot.check(&metadata(Some("Bearer x"))).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("do-not-log-me");
        assert!(!format!("{secret:?}").contains("do-not-log-me"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
