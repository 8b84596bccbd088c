//! The credentials of one `depot serve` run: bucket, access key, secret key, join token.
//!
//! Generated from the OS CSPRNG on every start unless given, alphanumeric so they survive a
//! BR/TiKV URL or a shell line unescaped. They live only in memory: the banner is the one
//! place that shows the secrets ([`SecretKey::expose`]); `Debug` redacts them.

use rand::TryRngCore;
use rand::distr::{Alphanumeric, Distribution, SampleString, Uniform};
use rand::rngs::OsRng;
use s3s::auth::SecretKey;

/// Everything a client needs besides the endpoint.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The bucket (single-bucket mode); `None` in `--multi-bucket` mode, where buckets are the
    /// archive's top-level directories.
    pub bucket: Option<String>,
    /// S3 access key id.
    pub access_key: String,
    /// S3 secret access key.
    pub secret_key: SecretKey,
    /// Token agents present to the registry.
    pub join_token: SecretKey,
}

/// Values given on the command line or in the environment; `None` means "generate".
#[derive(Debug, Default, Clone)]
pub struct Given {
    /// `--bucket` / `DEPOT_BUCKET`.
    pub bucket: Option<String>,
    /// `--access-key` / `DEPOT_ACCESS_KEY`.
    pub access_key: Option<String>,
    /// `--secret-key` / `DEPOT_SECRET_KEY`.
    pub secret_key: Option<String>,
    /// `--join-token` / `DEPOT_JOIN_TOKEN`.
    pub join_token: Option<String>,
}

/// A given credential that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Too short to resist guessing.
    #[error("{what} must be at least {min} characters long")]
    TooShort {
        /// Which credential.
        what: &'static str,
        /// The minimum length.
        min: usize,
    },
    /// Contains characters that would need escaping in a URL or a shell line (beyond the ones
    /// AWS's own secret keys use).
    #[error("{what} may only contain letters, digits, {allowed}")]
    BadCharacters {
        /// Which credential.
        what: &'static str,
        /// The other characters it may hold, as the message lists them.
        allowed: &'static str,
    },
    /// Not a valid S3 bucket name.
    #[error("bucket {name:?} is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '-' and '.')")]
    BadBucket {
        /// The name given.
        name: String,
    },
}

impl Credentials {
    /// Uses what is given and generates the rest.
    ///
    /// # Errors
    /// [`CredentialError`] for a given value that is unsafe or malformed.
    pub fn resolve(given: Given, multi_bucket: bool) -> Result<Self, CredentialError> {
        let bucket = if multi_bucket {
            None
        } else {
            Some(match given.bucket {
                Some(name) => check_bucket(name)?,
                None => format!("depot-{}", random_lower_alnum(10)),
            })
        };
        let access_key = match given.access_key {
            Some(key) => check_token("access key", key, 3, TOKEN)?,
            None => random_upper_alnum(20),
        };
        let secret_key = match given.secret_key {
            Some(key) => check_token("secret key", key, 8, SECRET_KEY)?,
            None => Alphanumeric.sample_string(&mut os_rng(), 40),
        };
        let join_token = match given.join_token {
            Some(token) => check_token("join token", token, 16, TOKEN)?,
            None => Alphanumeric.sample_string(&mut os_rng(), 32),
        };
        Ok(Self { bucket, access_key, secret_key: secret_key.into(), join_token: join_token.into() })
    }
}

/// A fresh random token of `len` alphanumerics from the OS CSPRNG (join tokens, node secrets,
/// the admin token).
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut os_rng(), len)
}

/// The operating system's CSPRNG; a failure to read it is not recoverable.
fn os_rng() -> impl rand::RngCore {
    OsRng.unwrap_err()
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    let pick = Uniform::new(0, alphabet.len()).expect("non-empty alphabet");
    let mut rng = os_rng();
    (0..len).map(|_| char::from(alphabet[pick.sample(&mut rng)])).collect()
}

fn random_upper_alnum(len: usize) -> String {
    random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", len)
}

fn random_lower_alnum(len: usize) -> String {
    random_from(b"abcdefghijklmnopqrstuvwxyz0123456789", len)
}

/// Besides letters and digits, what a given credential may hold: (the characters, how the
/// error message lists them).
type Extra = (&'static [u8], &'static str);
/// Access keys and join tokens: nothing that needs escaping anywhere.
const TOKEN: Extra = (b"-_.", "'-', '_' and '.'");
/// Secret keys may also use the base64 characters of the keys AWS issues (`wJalr.../K7MDENG/...`),
/// so a key already used elsewhere can be reused. (In a URL's query, `+` must be written `%2B`.)
const SECRET_KEY: Extra = (b"-_./+=", "'-', '_', '.', '/', '+' and '='");

fn check_token(what: &'static str, value: String, min: usize, extra: Extra) -> Result<String, CredentialError> {
    if value.len() < min {
        return Err(CredentialError::TooShort { what, min });
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || extra.0.contains(&b)) {
        return Err(CredentialError::BadCharacters { what, allowed: extra.1 });
    }
    Ok(value)
}

pub use depot_s3::archive::is_valid_bucket_name;

fn check_bucket(name: String) -> Result<String, CredentialError> {
    if is_valid_bucket_name(&name) { Ok(name) } else { Err(CredentialError::BadBucket { name }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_fresh_and_alphanumeric() {
        let a = Credentials::resolve(Given::default(), false).unwrap();
        let b = Credentials::resolve(Given::default(), false).unwrap();
        assert_ne!(a.secret_key.expose(), b.secret_key.expose());
        assert_ne!(a.bucket, b.bucket);
        assert_eq!(a.secret_key.expose().len(), 40);
        assert!(a.secret_key.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(a.access_key.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        let bucket = a.bucket.unwrap();
        assert!(bucket.starts_with("depot-") && is_valid_bucket_name(&bucket), "{bucket}");
        assert!(!format!("{:?}", a.secret_key).contains(a.secret_key.expose()));
    }

    #[test]
    fn given_values_are_kept_and_checked() {
        let given = Given {
            bucket: Some("backups".into()),
            access_key: Some("AKID".into()),
            secret_key: Some("s3cr3t-value".into()),
            join_token: None,
        };
        let creds = Credentials::resolve(given, false).unwrap();
        assert_eq!(creds.bucket.as_deref(), Some("backups"));
        assert_eq!(creds.secret_key.expose(), "s3cr3t-value");

        let aws_style =
            Given { secret_key: Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE+KEY=".into()), ..Given::default() };
        assert!(Credentials::resolve(aws_style, false).is_ok(), "AWS's secret key alphabet is accepted");
        let bad = Given { access_key: Some("AK/ID".into()), ..Given::default() };
        let err = Credentials::resolve(bad, false).unwrap_err().to_string();
        assert!(err.contains("access key may only contain letters, digits, '-', '_' and '.'"), "{err}");
        let bad = Given { secret_key: Some("has space in it".into()), ..Given::default() };
        let err = Credentials::resolve(bad, false).unwrap_err().to_string();
        assert!(err.contains("secret key may only contain"), "{err}");
        let bad = Given { bucket: Some("Bad_Bucket".into()), ..Given::default() };
        assert!(Credentials::resolve(bad, false).unwrap_err().to_string().contains("not a valid S3 bucket name"));
    }

    #[test]
    fn multi_bucket_mode_has_no_fixed_bucket() {
        assert!(Credentials::resolve(Given::default(), true).unwrap().bucket.is_none());
    }
}
