//! Which relative names may address a file under a root.
//!
//! The rules are S3's key limits plus what keeps a name from aliasing or escaping: a name is
//! at most [`MAX_NAME_BYTES`] long, is relative, has no empty, `.` or `..` segments, no NUL or
//! backslash, and does not start with Depot's own state directory [`STATE_DIR`].

use std::fmt;

/// Longest accepted name in bytes (S3's object key limit).
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest accepted segment in bytes (the usual file-system `NAME_MAX`).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Depot's private directory under every root; never addressable by a name.
pub const STATE_DIR: &str = ".depot";

/// The rule a name broke. The `Display` text completes "the name ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameRule {
    /// The name is the empty string.
    #[error("is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("is {len} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// One `/`-separated segment is longer than [`MAX_SEGMENT_BYTES`].
    #[error("has a segment of {len} bytes; a segment can be at most {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong {
        /// Length of the segment in bytes.
        len: usize,
    },
    /// The name starts with `/`.
    #[error("starts with '/'; names are relative to the root")]
    Absolute,
    /// The name contains `//` or ends with `/`.
    #[error("has an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    /// A segment is `.` or `..`.
    #[error("has a '.' or '..' segment")]
    DotSegment,
    /// The name contains a NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// The name contains `\`.
    #[error("contains a backslash")]
    Backslash,
    /// The name is inside [`STATE_DIR`].
    #[error("is under {STATE_DIR}/, which holds Depot's own state")]
    Reserved,
    /// An existing segment is a symbolic link whose target is outside the root (or missing).
    #[error("leads through a symbolic link out of the root directory")]
    EscapesRoot,
}

/// A name that was refused, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe name {}: it {rule}", Shown(.name))]
pub struct UnsafeName {
    /// The refused name.
    pub name: String,
    /// Why it was refused.
    pub rule: NameRule,
}

/// Quotes a name for an error message, cutting very long ones so the message stays readable.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LIMIT: usize = 120;
        if self.0.len() <= LIMIT {
            return write!(f, "{:?}", self.0);
        }
        let mut end = LIMIT;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}... ({} bytes)", &self.0[..end], self.0.len())
    }
}

/// Checks `name` against every rule that does not need the file system.
///
/// # Errors
/// The first [`NameRule`] the name breaks.
pub fn validate(name: &str) -> Result<(), NameRule> {
    if name.is_empty() {
        return Err(NameRule::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameRule::TooLong { len: name.len() });
    }
    if name.starts_with('/') {
        return Err(NameRule::Absolute);
    }
    if name.contains('\0') {
        return Err(NameRule::Nul);
    }
    if name.contains('\\') {
        return Err(NameRule::Backslash);
    }
    for segment in name.split('/') {
        match segment {
            "" => return Err(NameRule::EmptySegment),
            "." | ".." => return Err(NameRule::DotSegment),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(NameRule::SegmentTooLong { len: s.len() }),
            _ => {}
        }
    }
    if name == STATE_DIR || name.starts_with(".depot/") {
        return Err(NameRule::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["a", "a/b/c.sst", "1/2_3_default.sst", "backupmeta", ".hidden", "a..b", "é/ü"] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_each_rule() {
        let long = "a".repeat(1025);
        let long_segment = format!("x/{}", "b".repeat(256));
        let cases: &[(&str, NameRule)] = &[
            ("", NameRule::Empty),
            (&long, NameRule::TooLong { len: 1025 }),
            (&long_segment, NameRule::SegmentTooLong { len: 256 }),
            ("/etc/passwd", NameRule::Absolute),
            ("a//b", NameRule::EmptySegment),
            ("a/", NameRule::EmptySegment),
            ("../x", NameRule::DotSegment),
            ("a/./b", NameRule::DotSegment),
            ("a/..", NameRule::DotSegment),
            ("a\0b", NameRule::Nul),
            ("a\\b", NameRule::Backslash),
            (".depot", NameRule::Reserved),
            (".depot/tmp/x", NameRule::Reserved),
        ];
        for (name, rule) in cases {
            assert_eq!(validate(name), Err(*rule), "{name:?}");
        }
    }

    #[test]
    fn message_names_the_key_and_the_rule() {
        let err = UnsafeName { name: "../etc/passwd".into(), rule: NameRule::DotSegment };
        assert_eq!(err.to_string(), r#"unsafe name "../etc/passwd": it has a '.' or '..' segment"#);
        let long = UnsafeName { name: "é".repeat(700), rule: NameRule::TooLong { len: 1400 } };
        assert!(long.to_string().contains("(1400 bytes)"), "{long}");
    }
}
