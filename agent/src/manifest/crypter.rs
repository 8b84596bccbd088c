//! Decrypting a backupmeta written by BR with `--crypter.method aes{128,192,256}-ctr`.
//!
//! BR's layout (`br/pkg/metautil`): the top-level `backupmeta` is a 16-byte random IV followed
//! by the AES-CTR ciphertext of the protobuf; each `backupmeta.datafile.*` is ciphertext alone,
//! its IV kept in the `cipher_iv` of the index entry that names it, and that entry's `sha256`
//! is the digest of the plaintext. The counter is the whole IV as a big-endian 128-bit number
//! (Go's `cipher.NewCTR`). The key is given as hex, as BR's `--crypter.key` takes it; its length
//! picks AES-128, -192 or -256.

use aes::cipher::{KeyIvInit, StreamCipher};

/// Length of the IV BR puts in front of an encrypted `backupmeta`.
pub const IV_LEN: usize = 16;

/// A key for BR's AES-CTR backup encryption.
#[derive(Clone)]
pub struct CrypterKey(Vec<u8>);

impl std::fmt::Debug for CrypterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CrypterKey(AES-{}, <redacted>)", self.0.len() * 8)
    }
}

/// Why a key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not hex.
    #[error("the backup encryption key must be hex, as for BR's --crypter.key: {0}")]
    NotHex(hex::FromHexError),
    /// Not 16, 24 or 32 bytes.
    #[error("the backup encryption key is {0} bytes; AES-CTR keys are 16, 24 or 32 bytes (32, 48 or 64 hex digits)")]
    Length(usize),
}

impl CrypterKey {
    /// Parses a hex key (surrounding white space ignored, as in a key file).
    ///
    /// # Errors
    /// [`KeyError`] for non-hex text or a length AES does not have.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let key = hex::decode(text.trim()).map_err(KeyError::NotHex)?;
        match key.len() {
            16 | 24 | 32 => Ok(Self(key)),
            n => Err(KeyError::Length(n)),
        }
    }

    /// Decrypts (or encrypts: CTR is symmetric) `data` in place with `iv`; `false` when `iv` is
    /// not 16 bytes.
    #[must_use]
    pub fn apply(&self, iv: &[u8], data: &mut [u8]) -> bool {
        if iv.len() != IV_LEN {
            return false;
        }
        match self.0.len() {
            16 => {
                ctr::Ctr128BE::<aes::Aes128>::new_from_slices(&self.0, iv).map(|mut c| c.apply_keystream(data)).is_ok()
            }
            24 => {
                ctr::Ctr128BE::<aes::Aes192>::new_from_slices(&self.0, iv).map(|mut c| c.apply_keystream(data)).is_ok()
            }
            32 => {
                ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&self.0, iv).map(|mut c| c.apply_keystream(data)).is_ok()
            }
            _ => false,
        }
    }

    /// Decrypts a top-level `backupmeta` (IV prefix + ciphertext); `None` if shorter than the IV.
    #[must_use]
    pub fn decrypt_prefixed(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < IV_LEN {
            return None;
        }
        let (iv, body) = data.split_at(IV_LEN);
        let mut plain = body.to_vec();
        self.apply(iv, &mut plain).then_some(plain)
    }

    /// Encrypts like BR does for a top-level `backupmeta` (for tests and tools).
    #[must_use]
    pub fn encrypt_prefixed(&self, iv: [u8; IV_LEN], plain: &[u8]) -> Vec<u8> {
        let mut out = iv.to_vec();
        let mut body = plain.to_vec();
        let applied = self.apply(&iv, &mut body);
        debug_assert!(applied, "a 16-byte IV always applies");
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt), first two blocks: proves the counter layout
    /// is the big-endian whole-IV one Go's `cipher.NewCTR` uses.
    #[test]
    fn matches_the_nist_ctr_vector() {
        let key = CrypterKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let iv = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").unwrap();
        let mut data = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51").unwrap();
        assert!(key.apply(&iv, &mut data));
        assert_eq!(hex::encode(&data), "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff");
    }

    #[test]
    fn round_trips_and_checks_lengths() {
        let key = CrypterKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealed = key.encrypt_prefixed([7; 16], b"backupmeta bytes");
        assert_eq!(key.decrypt_prefixed(&sealed).unwrap(), b"backupmeta bytes");
        assert!(key.decrypt_prefixed(&sealed[..5]).is_none());
        assert!(matches!(CrypterKey::from_hex("abcd"), Err(KeyError::Length(2))));
        assert!(matches!(CrypterKey::from_hex("zz"), Err(KeyError::NotHex(_))));
        assert!(!format!("{key:?}").contains("abab"));
    }
}
