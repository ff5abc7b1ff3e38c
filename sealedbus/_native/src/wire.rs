//! Envelope layout (SPEC.md section 2) and the Merkle tree of batch signatures (section 5.3).
//! Parsing never trusts a length it has not checked against the bytes present.

use crate::crypto::Sha256;

pub const MAGIC: [u8; 2] = [0x53, 0xB1];
pub const VERSION: u8 = 1;
pub const FLAG_BATCH: u8 = 0x01;
pub const FLAG_SUBJECT: u8 = 0x02;
pub const SUBJECT_FIELDS_LEN: usize = 48; // subject key id (16) || subject encapsulation (32)
pub const HEADER_FIXED: usize = 74;
pub const SIGNATURE_LEN: usize = 64;
pub const TAG_LEN: usize = 16;
pub const HYBRID_ENCAPSULATION_LEN: usize = 1168;
pub const SIGN_ENVELOPE: &[u8] = b"sealedbus/1 envelope\x00";
pub const SIGN_MESSAGE: &[u8] = b"sealedbus/1 message\x00";
pub const SIGN_BATCH_ROOT: &[u8] = b"sealedbus/1 batch root\x00";
pub const SEQ_OFFSET: usize = 57;
pub const HEADER_HEAD: usize = SEQ_OFFSET; // magic through session id: fixed for a session

/// The reason codes of SPEC.md section 8 that the native core can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NotEnvelope,
    Malformed,
    Version,
    Suite,
    BadSignature,
    DecryptFailed,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotEnvelope => "not_envelope",
            Reason::Malformed => "malformed",
            Reason::Version => "unsupported_version",
            Reason::Suite => "suite_not_allowed",
            Reason::BadSignature => "bad_signature",
            Reason::DecryptFailed => "decrypt_failed",
        }
    }
}

/// Offsets into one envelope; slices are taken from the caller's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub header_end: usize,
    pub signature: usize,
    pub batch: Option<(u16, u16, usize)>, // index, size, offset of the path
    pub ciphertext: usize,
}

impl Layout {
    pub fn seq(data: &[u8]) -> u32 {
        u32::from_be_bytes(
            data[SEQ_OFFSET..SEQ_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        )
    }
}

pub fn parse(data: &[u8]) -> Result<Layout, Reason> {
    if data.len() < 2 || data[..2] != MAGIC {
        return Err(Reason::NotEnvelope);
    }
    if data.len() < HEADER_FIXED {
        return Err(Reason::Malformed);
    }
    if data[2] != VERSION {
        return Err(Reason::Version);
    }
    let encapsulation = match data[3] {
        1 => 0,
        2 => HYBRID_ENCAPSULATION_LEN,
        _ => return Err(Reason::Suite),
    };
    let flags = data[4];
    if flags & !(FLAG_BATCH | FLAG_SUBJECT) != 0 {
        return Err(Reason::Malformed);
    }
    let ct_len = data[73] as usize;
    let ct_end = (HEADER_FIXED + ct_len).min(data.len());
    if std::str::from_utf8(&data[HEADER_FIXED..ct_end]).is_err() {
        return Err(Reason::Malformed);
    }
    let subject = if flags & FLAG_SUBJECT != 0 {
        if data.len() < HEADER_FIXED + ct_len + SUBJECT_FIELDS_LEN {
            return Err(Reason::Malformed);
        }
        SUBJECT_FIELDS_LEN
    } else {
        0
    };
    let header_end = HEADER_FIXED + ct_len + subject + encapsulation;
    let mut pos = header_end + SIGNATURE_LEN;
    let mut batch = None;
    if flags & FLAG_BATCH != 0 {
        if data.len() < pos + 4 {
            return Err(Reason::Malformed);
        }
        let index = u16::from_be_bytes([data[pos], data[pos + 1]]);
        let size = u16::from_be_bytes([data[pos + 2], data[pos + 3]]);
        pos += 4;
        let depth = path_length(index as usize, size as usize).ok_or(Reason::Malformed)?;
        batch = Some((index, size, pos));
        pos += 32 * depth;
    }
    if data.len() < pos + TAG_LEN {
        return Err(Reason::Malformed);
    }
    Ok(Layout {
        header_end,
        signature: header_end,
        batch,
        ciphertext: pos,
    })
}

pub fn leaf_prefix(topic: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIGN_ENVELOPE.len() + 2 + topic.len());
    v.extend_from_slice(SIGN_ENVELOPE);
    v.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    v.extend_from_slice(topic);
    v
}

/// An interior node (RFC 9162): SHA-256(0x01 || left || right).
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&[1u8]);
    h.update(left);
    h.update(right);
    h.finish()
}

/// Siblings on the inclusion path of leaf `index` in a tree of `size` leaves (RFC 9162).
pub fn path_length(index: usize, size: usize) -> Option<usize> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn, mut count) = (index, size - 1, 0);
    while sn > 0 {
        count += 1;
        if fn_ == sn && fn_ & 1 == 0 {
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    Some(count)
}

/// The root an inclusion path leads to (RFC 9162 section 2.1.3.2); None if it does not fit.
pub fn root_from_path(index: usize, size: usize, leaf: [u8; 32], path: &[u8]) -> Option<[u8; 32]> {
    if index >= size || !path.len().is_multiple_of(32) {
        return None;
    }
    let (mut fn_, mut sn, mut r) = (index, size - 1, leaf);
    for chunk in path.chunks_exact(32) {
        let sibling: &[u8; 32] = chunk.try_into().ok()?;
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(sibling, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, sibling);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return None;
    }
    Some(r)
}

/// Root and every inclusion path (concatenated siblings, bottom-up) of a non-empty tree.
pub fn build(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<u8>>) {
    let n = leaves.len();
    let mut paths: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![0u8; 32 * path_length(i, n).unwrap_or(0)])
        .collect();
    let root = tree(leaves, 0, 0, &mut |i, k, node| {
        let at = paths[i].len() - 32 * (k + 1);
        paths[i][at..at + 32].copy_from_slice(node);
    });
    (root, paths)
}

/// The root of `leaves` (leaf `start` onwards of a tree, `depth` levels below its root), calling
/// `put(leaf, k, sibling)` for each node on each leaf's inclusion path, where `k` counts the
/// levels from the top of the path (its last sibling). No allocation: the sealer writes the
/// siblings straight into the envelopes.
pub fn tree(
    leaves: &[[u8; 32]],
    start: usize,
    depth: usize,
    put: &mut impl FnMut(usize, usize, &[u8; 32]),
) -> [u8; 32] {
    let n = leaves.len();
    if n == 1 {
        return leaves[0];
    }
    let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros()); // largest power of two < n
    let left = tree(&leaves[..k], start, depth + 1, put);
    let right = tree(&leaves[k..], start + k, depth + 1, put);
    for i in start..start + k {
        put(i, depth, &right);
    }
    for i in start + k..start + n {
        put(i, depth, &left);
    }
    node_hash(&left, &right)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn every_path_leads_to_the_root() {
        for n in 1..40usize {
            let leaves: Vec<[u8; 32]> = (0..n as u8).map(leaf).collect();
            let (root, paths) = build(&leaves);
            for (i, p) in paths.iter().enumerate() {
                assert_eq!(p.len() / 32, path_length(i, n).unwrap());
                assert_eq!(root_from_path(i, n, leaves[i], p), Some(root));
                let mut bad = p.clone();
                if !bad.is_empty() {
                    bad[0] ^= 1;
                    assert_ne!(root_from_path(i, n, leaves[i], &bad), Some(root));
                }
            }
        }
    }

    #[test]
    fn parse_refuses_what_spec_refuses() {
        assert_eq!(parse(b"hello"), Err(Reason::NotEnvelope));
        let mut e = vec![0u8; 200];
        e[0] = 0x53;
        e[1] = 0xB1;
        e[2] = 1;
        e[3] = 1;
        assert!(parse(&e).is_ok());
        e[2] = 2;
        assert_eq!(parse(&e), Err(Reason::Version));
        e[2] = 1;
        e[3] = 9;
        assert_eq!(parse(&e), Err(Reason::Suite));
        e[3] = 1;
        e[4] = 4;
        assert_eq!(parse(&e), Err(Reason::Malformed));
        e[4] = 2; // sealed for a subject: 48 more header bytes
        e.resize(300, 0);
        assert_eq!(parse(&e[..74 + 48 + 64 + 15]), Err(Reason::Malformed));
        assert_eq!(parse(&e[..74 + 47]), Err(Reason::Malformed));
        assert_eq!(parse(&e).map(|l| l.header_end), Ok(74 + 48));
        e[4] = 1; // batch: index 0 of size 0
        assert_eq!(parse(&e), Err(Reason::Malformed));
        assert_eq!(parse(&e[..100]), Err(Reason::Malformed));
    }
}
