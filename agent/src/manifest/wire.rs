//! A look at raw protobuf bytes before decoding them, to tell a cut-off `backupmeta` from one
//! that is not plaintext protobuf at all (an encrypted one, or some other file).
//!
//! `prost` reports both as a bare `DecodeError`, and also accepts many random byte strings as
//! messages full of unknown fields. A BR `backupmeta` is neither: its top-level fields are the
//! ones kvproto's `BackupMeta` defines, each with a known wire type. So the scan walks the
//! top-level fields and stops at the first one that breaks that shape.

/// Wire types, as protobuf numbers them.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Highest field number accepted as a possible future `BackupMeta` field.
const MAX_FIELD: u64 = 128;

/// The wire type of each `BackupMeta` field kvproto defines (field 3 is reserved).
fn known_wire_type(field: u64) -> Option<u8> {
    match field {
        1 | 5 | 6 | 8 | 12 | 18 | 21 | 23 | 25 => Some(VARINT),
        2 | 4 | 7 | 9 | 10 | 11 | 13..=17 | 19 | 20 | 22 | 24 => Some(LEN),
        _ => None,
    }
}

/// What the scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Every top-level field is well formed.
    Whole,
    /// Well formed up to `at`, where a field of the right type runs past the end of the data:
    /// the file was cut off.
    Truncated {
        /// Offset of the field that runs past the end.
        at: usize,
    },
    /// Not a `BackupMeta` from `at` on (a bad tag, an unknown wire type, a field of the wrong
    /// type): encrypted, or not a backupmeta at all.
    Foreign {
        /// Offset of the first byte that does not fit.
        at: usize,
        /// What does not fit.
        what: String,
    },
}

/// Reads a varint at `*pos`; `None` when the data ends inside it, `Some(Err)` when it is longer
/// than ten bytes.
fn varint(data: &[u8], pos: &mut usize) -> Option<Result<u64, ()>> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *data.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(Ok(value));
        }
    }
    Some(Err(()))
}

/// Scans the top-level fields of a would-be `BackupMeta`.
pub fn scan_backup_meta(data: &[u8]) -> Shape {
    let mut pos = 0;
    let mut known_fields = 0usize;
    while pos < data.len() {
        let start = pos;
        let foreign = |what: String| Shape::Foreign { at: start, what };
        let truncated_or_foreign = |known: bool, what: &str| {
            // A cut inside a field we recognise, after others we recognised, is a truncation;
            // the same cut anywhere else is more likely noise that happens to parse a little.
            if known && known_fields > 0 {
                Shape::Truncated { at: start }
            } else {
                Shape::Foreign { at: start, what: what.to_owned() }
            }
        };
        let tag = match varint(data, &mut pos) {
            Some(Ok(tag)) => tag,
            Some(Err(())) => return foreign("an over-long field tag".into()),
            None => return truncated_or_foreign(false, "a field tag cut off"),
        };
        let field = tag >> 3;
        let wire = (tag & 7) as u8;
        if field == 0 || field > MAX_FIELD {
            return foreign(format!("field number {field}, which BackupMeta does not have"));
        }
        let expected = known_wire_type(field);
        if let Some(expected) = expected
            && expected != wire
        {
            return foreign(format!("field {field} with wire type {wire} (BackupMeta's has type {expected})"));
        }
        let known = expected.is_some();
        match wire {
            VARINT => match varint(data, &mut pos) {
                Some(Ok(_)) => {}
                Some(Err(())) => return foreign(format!("an over-long varint in field {field}")),
                None => return truncated_or_foreign(known, "a varint cut off"),
            },
            FIXED64 | FIXED32 => {
                let width = if wire == FIXED64 { 8 } else { 4 };
                if data.len() - pos < width {
                    return truncated_or_foreign(known, "a fixed-width field cut off");
                }
                pos += width;
            }
            LEN => {
                let len = match varint(data, &mut pos) {
                    Some(Ok(len)) => len,
                    Some(Err(())) => return foreign(format!("an over-long length in field {field}")),
                    None => return truncated_or_foreign(known, "a length cut off"),
                };
                let remaining = (data.len() - pos) as u64;
                if len > remaining {
                    return truncated_or_foreign(known, "a length past the end of the data");
                }
                pos += len as usize;
            }
            other => return foreign(format!("wire type {other} (groups or invalid) in field {field}")),
        }
        if known {
            known_fields += 1;
        }
    }
    Shape::Whole
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_whole_truncated_and_foreign_data() {
        // cluster_id = 7, br_version = "v8", files = [ File { name = "a.sst" } ]
        let whole = [0x08, 7, 0x5a, 2, b'v', b'8', 0x22, 7, 0x0a, 5, b'a', b'.', b's', b's', b't'];
        assert_eq!(scan_backup_meta(&whole), Shape::Whole);
        assert_eq!(scan_backup_meta(&[]), Shape::Whole);
        assert_eq!(scan_backup_meta(&whole[..10]), Shape::Truncated { at: 6 });
        // A cluster_id with a length-delimited wire type: not a BackupMeta.
        assert!(matches!(scan_backup_meta(&[0x0a, 1, 0]), Shape::Foreign { at: 0, .. }));
        // Wire type 7 does not exist.
        assert!(matches!(scan_backup_meta(&[0x0f]), Shape::Foreign { .. }));
        // JSON text.
        assert!(matches!(scan_backup_meta(b"{\"name\":1}"), Shape::Foreign { .. }));
    }

    #[test]
    fn random_bytes_are_foreign() {
        // A deterministic pseudo-random stream standing in for AES-CTR output.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut foreign = 0;
        for _ in 0..200 {
            let data: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            if matches!(scan_backup_meta(&data), Shape::Foreign { .. }) {
                foreign += 1;
            }
        }
        assert_eq!(foreign, 200);
    }
}
