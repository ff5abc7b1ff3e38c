//! Session keys (SPEC.md section 4) and Ed25519 under the rule of SPEC.md section 5.4.
//! Every secret lives in a type that zeroizes itself on drop.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest;
use ed25519_zebra::{batch, Signature, SigningKey, VerificationKey, VerificationKeyBytes};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::wire::{self, Reason};

pub const LABEL_SESSION: &[u8] = b"sealedbus/1 session";
pub const LABEL_AEAD_KEY: &[u8] = b"sealedbus/1 aead key";
pub const LABEL_NONCE: &[u8] = b"sealedbus/1 nonce";
pub const LABEL_COMMITMENT: &[u8] = b"sealedbus/1 commitment";

/// One session on one topic: what every message of it is sealed or opened with.
pub struct SessionKeys {
    pub session_id: [u8; 32],
    // AWS-LC holds the key schedule in its own allocation and wipes it when freeing it
    cipher: LessSafeKey,
    nonce_base: Zeroizing<[u8; 12]>,
    pub commitment: Zeroizing<[u8; 32]>,
    aad_prefix: Vec<u8>,  // u16 len(topic) || topic
    leaf_prefix: Vec<u8>, // SIGN_ENVELOPE || aad_prefix
}

impl SessionKeys {
    /// The key schedule of SPEC.md 4.3 from the session's input keying material.
    pub fn derive(topic: &[u8], context: &[u8], session_id: [u8; 32], ikm: &[u8]) -> Self {
        let mut info = Vec::with_capacity(LABEL_SESSION.len() + context.len() + 32);
        info.extend_from_slice(LABEL_SESSION);
        info.extend_from_slice(context);
        info.extend_from_slice(&session_id);
        let mut secret = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, ikm)
            .expand(&info, secret.as_mut())
            .expect("32 bytes is a valid HKDF length");
        let expand = Hkdf::<Sha256>::from_prk(secret.as_ref()).expect("32-byte PRK");
        let mut key = Zeroizing::new([0u8; 32]);
        let mut nonce_base = Zeroizing::new([0u8; 12]);
        let mut commitment = Zeroizing::new([0u8; 32]);
        expand.expand(LABEL_AEAD_KEY, key.as_mut()).expect("length");
        expand
            .expand(LABEL_NONCE, nonce_base.as_mut())
            .expect("length");
        expand
            .expand(LABEL_COMMITMENT, commitment.as_mut())
            .expect("length");
        let mut aad_prefix = Vec::with_capacity(2 + topic.len());
        aad_prefix.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        aad_prefix.extend_from_slice(topic);
        SessionKeys {
            session_id,
            cipher: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key.as_ref()).expect("a 32-byte AES-256 key"),
            ),
            nonce_base,
            commitment,
            leaf_prefix: wire::leaf_prefix(topic),
            aad_prefix,
        }
    }

    fn nonce(&self, seq: u32) -> [u8; 12] {
        let mut n = *self.nonce_base;
        for (i, b) in seq.to_be_bytes().iter().enumerate() {
            n[8 + i] ^= b;
        }
        n
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.aad_prefix.len() + header.len());
        aad.extend_from_slice(&self.aad_prefix);
        aad.extend_from_slice(header);
        aad
    }

    /// `header || signature placeholder`-free ciphertext of `prefix || body` (SPEC.md 4.4).
    pub fn encrypt(&self, seq: u32, header: &[u8], prefix: &[u8], body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(prefix.len() + body.len() + wire::TAG_LEN);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(body);
        self.cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(self.nonce(seq)), // one sequence number, one nonce
                Aad::from(self.aad(header)),
                &mut buf,
            )
            .expect("AES-GCM encryption of under 64 GiB cannot fail");
        buf
    }

    pub fn decrypt(&self, seq: u32, header: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, Reason> {
        let mut buf = ciphertext.to_vec();
        let nonce = Nonce::assume_unique_for_key(self.nonce(seq));
        match self
            .cipher
            .open_in_place(nonce, Aad::from(self.aad(header)), &mut buf)
        {
            Ok(plain) => {
                let n = plain.len();
                buf.truncate(n);
                Ok(buf)
            }
            Err(_) => {
                buf.zeroize();
                Err(Reason::DecryptFailed)
            }
        }
    }

    /// SPEC.md 5.1 signed content, prefixed for a per-message signature (5.2).
    pub fn message_signing_input(&self, header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            wire::SIGN_MESSAGE.len()
                + self.leaf_prefix.len()
                + header.len()
                + 32
                + ciphertext.len(),
        );
        v.extend_from_slice(wire::SIGN_MESSAGE);
        v.extend_from_slice(&self.leaf_prefix);
        v.extend_from_slice(header);
        v.extend_from_slice(self.commitment.as_ref());
        v.extend_from_slice(ciphertext);
        v
    }

    /// Merkle leaf hash of the signed content (5.3), without building it.
    pub fn leaf_hash(&self, header: &[u8], ciphertext: &[u8]) -> [u8; 32] {
        let mut h = digest::Context::new(&digest::SHA256);
        h.update(&[0u8]);
        h.update(&self.leaf_prefix);
        h.update(header);
        h.update(self.commitment.as_ref());
        h.update(ciphertext);
        h.finish().as_ref().try_into().expect("32 bytes")
    }
}

/// X25519 with an all-zero result refused (SPEC.md 4.2).
pub fn x25519(private: &[u8; 32], public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let secret = x25519_dalek::StaticSecret::from(*private);
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    let out = Zeroizing::new(*shared.as_bytes());
    if out.iter().all(|b| *b == 0) {
        None
    } else {
        Some(out)
    }
}

pub fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).as_bytes()
}

/// An Ed25519 signing key that is wiped when dropped.
pub struct Signer(SigningKey);

impl Signer {
    pub fn new(seed: [u8; 32]) -> Self {
        let mut seed = Zeroizing::new(seed);
        let key = SigningKey::from(*seed);
        seed.zeroize();
        Signer(key)
    }
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
    pub fn public(&self) -> [u8; 32] {
        VerificationKeyBytes::from(&self.0).into()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The eight small-order points of edwards25519 in every encoding a decoder may accept
/// ("Taming the many EdDSAs", table 6b); with the y < p check this also covers every
/// non-canonical encoding (only y = 1 and y = -1 have x = 0).
const SMALL_ORDER: [[u8; 32]; 8] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
];
const NON_CANONICAL_ZERO_X: [[u8; 32]; 2] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000080"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
];

const fn hex32(s: &str) -> [u8; 32] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("hex"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nib(b[2 * i]) << 4 | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// SPEC.md 5.4: a point encoding accepted for A or R: y < p, and not of small order.
pub fn acceptable_point(p: &[u8; 32]) -> bool {
    // y >= p = 2^255 - 19 exactly when bytes 1..31 are 0xff, byte 31 (sign cleared) is 0x7f
    // and byte 0 is at least 0xed
    let y_non_canonical =
        p[0] >= 0xed && p[1..31].iter().all(|b| *b == 0xff) && p[31] & 0x7f == 0x7f;
    !y_non_canonical && !SMALL_ORDER.contains(p) && !NON_CANONICAL_ZERO_X.contains(p)
}

/// A verification key checked once against SPEC.md 5.4; `None` inside: every signature fails.
pub struct Verifier {
    pub bytes: [u8; 32],
    key: Option<VerificationKey>,
}

impl Verifier {
    pub fn new(bytes: [u8; 32]) -> Self {
        let key = if acceptable_point(&bytes) {
            VerificationKey::try_from(bytes).ok()
        } else {
            None
        };
        Verifier { bytes, key }
    }

    fn precheck(&self, sig: &[u8; 64]) -> Option<(&VerificationKey, Signature)> {
        let r: &[u8; 32] = sig[..32].try_into().ok()?;
        if !acceptable_point(r) {
            return None;
        }
        Some((self.key.as_ref()?, Signature::from_bytes(sig)))
    }

    pub fn verify(&self, sig: &[u8; 64], msg: &[u8]) -> bool {
        match self.precheck(sig) {
            Some((key, sig)) => key.verify(&sig, msg).is_ok(),
            None => false,
        }
    }
}

/// Verify many signatures: one cofactored batch equation, then one by one if it fails, so
/// the result per signature is exactly what `Verifier::verify` says (SPEC.md 5.4).
/// The cofactored batch equation alone (after the same prechecks as single verification).
pub fn batch_equation(jobs: &[(&Verifier, [u8; 64], &[u8])]) -> bool {
    let mut batch = batch::Verifier::new();
    for (v, sig, msg) in jobs {
        if v.precheck(sig).is_none() {
            return false;
        }
        batch.queue((
            VerificationKeyBytes::from(v.bytes),
            Signature::from_bytes(sig),
            msg,
        ));
    }
    batch.verify(rand_core::OsRng).is_ok()
}

pub fn verify_many(jobs: &[(&Verifier, [u8; 64], &[u8])]) -> Vec<bool> {
    let mut ok: Vec<bool> = jobs
        .iter()
        .map(|(v, sig, _)| v.precheck(sig).is_some())
        .collect();
    let candidates = ok.iter().filter(|b| **b).count();
    if candidates >= 2 {
        let mut batch = batch::Verifier::new();
        for ((v, sig, msg), good) in jobs.iter().zip(&ok) {
            if *good {
                let vk = VerificationKeyBytes::from(v.bytes);
                batch.queue((vk, Signature::from_bytes(sig), msg));
            }
        }
        if batch.verify(rand_core::OsRng).is_ok() {
            return ok;
        }
    }
    for ((v, sig, msg), good) in jobs.iter().zip(ok.iter_mut()) {
        if *good {
            *good = v.verify(sig, msg);
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_and_single_agree_and_a_bad_one_is_found() {
        let signer = Signer::new([7u8; 32]);
        let v = Verifier::new(signer.public());
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let mut jobs: Vec<(&Verifier, [u8; 64], &[u8])> = msgs
            .iter()
            .map(|m| (&v, signer.sign(m), m.as_slice()))
            .collect();
        assert!(verify_many(&jobs).iter().all(|b| *b));
        jobs[3].1[40] ^= 1;
        let got = verify_many(&jobs);
        assert_eq!(got.iter().filter(|b| !**b).count(), 1);
        assert!(!got[3]);
    }

    #[test]
    fn small_order_and_non_canonical_points_are_refused() {
        for p in SMALL_ORDER.iter().chain(NON_CANONICAL_ZERO_X.iter()) {
            assert!(!acceptable_point(p));
        }
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(!acceptable_point(&p));
        assert!(acceptable_point(&Signer::new([1u8; 32]).public()));
    }

    #[test]
    fn session_round_trip_and_tamper() {
        let s = SessionKeys::derive(b"orders", b"ctx", [3u8; 32], b"ikm");
        let header = [9u8; 74];
        let ct = s.encrypt(5, &header, &[0, 0], b"hello");
        assert_eq!(s.decrypt(5, &header, &ct).unwrap(), b"\0\0hello");
        assert_eq!(s.decrypt(6, &header, &ct), Err(Reason::DecryptFailed));
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn print_costs() {
        let s = SessionKeys::derive(b"orders", b"ctx", [3u8; 32], b"ikm");
        let header = [9u8; 74];
        let body = vec![7u8; 16384];
        let t = std::time::Instant::now();
        let mut ct = Vec::new();
        for _ in 0..1000 {
            ct = s.encrypt(5, &header, &[0, 0], &body);
        }
        println!("encrypt 16K: {:?}", t.elapsed() / 1000);
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(s.leaf_hash(&header, &ct));
        }
        println!("leaf hash 16K: {:?}", t.elapsed() / 1000);
    }
}
