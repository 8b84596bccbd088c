//! The one access key a server accepts.

use s3s::auth::{S3Auth, SecretKey};

/// A server's one access key. Unlike s3s's `SimpleAuth` it answers an unknown key the way S3
/// does (`InvalidAccessKeyId`), which is what tools print and users search for.
pub struct OneKey {
    access_key: String,
    secret_key: SecretKey,
    /// Named in the error, e.g. "the AWS_ACCESS_KEY_ID `depot serve` printed".
    hint: &'static str,
}

impl OneKey {
    /// Accepts `access_key` signed with `secret_key`; `hint` tells a client with another key
    /// where the right one is.
    pub fn new(access_key: String, secret_key: SecretKey, hint: &'static str) -> Self {
        Self { access_key, secret_key, hint }
    }
}

#[async_trait::async_trait]
impl S3Auth for OneKey {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<SecretKey> {
        if access_key == self.access_key {
            Ok(self.secret_key.clone())
        } else {
            Err(s3s::s3_error!(InvalidAccessKeyId, "the access key {access_key:?} is not this server's; {}", self.hint))
        }
    }
}
