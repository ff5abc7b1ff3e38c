//! Session keys (SPEC.md section 4) and Ed25519 under the rule of SPEC.md section 5.4.
//! Every secret lives in a type that zeroizes itself on drop.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::VerifyingKey;
use ed25519_zebra::{batch, Signature, VerificationKeyBytes};
use hkdf::Hkdf;
use sha2::Sha256 as HkdfHash;
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
    // kept for subject sessions (SPEC.md 4.5, subject.rs): the session secret and context
    pub(crate) secret: Zeroizing<[u8; 32]>,
    pub(crate) context: Vec<u8>,
}

impl SessionKeys {
    /// The key schedule of SPEC.md 4.3 from the session's input keying material.
    pub fn derive(topic: &[u8], context: &[u8], session_id: [u8; 32], ikm: &[u8]) -> Self {
        let mut info = Vec::with_capacity(LABEL_SESSION.len() + context.len() + 32);
        info.extend_from_slice(LABEL_SESSION);
        info.extend_from_slice(context);
        info.extend_from_slice(&session_id);
        let mut secret = Zeroizing::new([0u8; 32]);
        Hkdf::<HkdfHash>::new(None, ikm)
            .expand(&info, secret.as_mut())
            .expect("32 bytes is a valid HKDF length");
        Self::from_secret(topic, context, session_id, secret)
    }

    /// Section 4.3's expansion of a session secret (or a subject secret, 4.5).
    pub(crate) fn from_secret(
        topic: &[u8],
        context: &[u8],
        session_id: [u8; 32],
        secret: Zeroizing<[u8; 32]>,
    ) -> Self {
        let expand = Hkdf::<HkdfHash>::from_prk(secret.as_ref()).expect("32-byte PRK");
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
            secret,
            context: context.to_vec(),
        }
    }

    /// The topic this session is on (the AAD prefix without its length).
    pub(crate) fn topic(&self) -> &[u8] {
        &self.aad_prefix[2..]
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
    #[cfg(test)]
    pub fn encrypt(&self, seq: u32, header: &[u8], prefix: &[u8], body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(prefix.len() + body.len() + wire::TAG_LEN);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(body);
        let tag = self.encrypt_in_place(seq, header, &mut Vec::new(), &mut buf);
        buf.extend_from_slice(&tag);
        buf
    }

    /// Encrypt `plain` where it lies (SPEC.md 4.4) and return the tag; `aad` is scratch space
    /// the caller may reuse across messages.
    pub fn encrypt_in_place(
        &self,
        seq: u32,
        header: &[u8],
        aad: &mut Vec<u8>,
        plain: &mut [u8],
    ) -> [u8; wire::TAG_LEN] {
        aad.clear();
        aad.extend_from_slice(&self.aad_prefix);
        aad.extend_from_slice(header);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(self.nonce(seq)), // one sequence number, one nonce
                Aad::from(&aad[..]),
                plain,
            )
            .expect("AES-GCM encryption of under 64 GiB cannot fail");
        tag.as_ref().try_into().expect("16-byte tag")
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
        let mut v = Vec::new();
        self.message_signing_input_into(&mut v, header, ciphertext);
        v
    }

    /// `message_signing_input` written into `v` (cleared first): a buffer reused from one
    /// envelope to the next.
    pub fn message_signing_input_into(&self, v: &mut Vec<u8>, header: &[u8], ciphertext: &[u8]) {
        v.clear();
        v.reserve(
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
    }

    /// Merkle leaf hash of the signed content (5.3), without building it.
    pub fn leaf_hash(&self, header: &[u8], ciphertext: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&[0u8]);
        h.update(&self.leaf_prefix);
        h.update(header);
        h.update(self.commitment.as_ref());
        h.update(ciphertext);
        h.finish()
    }
}

/// SHA-256 through AWS-LC's low-level interface: the context lives on the stack (an FFI digest
/// context allocates one and dispatches through EVP on every call, a third of the cost of a
/// 65-byte Merkle node), the blocks go through AWS-LC's assembly (the SHA extensions where the
/// CPU has them, else AVX2 or SSSE3: what OpenSSL does for the pure core).
pub struct Sha256(aws_lc_sys::SHA256_CTX);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        let mut ctx = std::mem::MaybeUninit::<aws_lc_sys::SHA256_CTX>::uninit();
        // SAFETY: SHA256_Init initializes the whole context; it cannot fail
        unsafe {
            aws_lc_sys::SHA256_Init(ctx.as_mut_ptr());
            Sha256(ctx.assume_init())
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        // SAFETY: an initialized context and a valid slice; SHA256_Update cannot fail
        unsafe { aws_lc_sys::SHA256_Update(&mut self.0, data.as_ptr().cast(), data.len()) };
    }

    pub fn finish(mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // SAFETY: an initialized context and a 32-byte output
        unsafe { aws_lc_sys::SHA256_Final(out.as_mut_ptr(), &mut self.0) };
        out
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

/// An Ed25519 signing key (AWS-LC's: about half the time of curve25519-dalek's here, and
/// Ed25519 is deterministic, so the signatures are the same bytes; the vectors pin them). AWS-LC
/// holds the key in its own allocation and wipes it when freeing it.
pub struct Signer(Ed25519KeyPair);

impl Signer {
    pub fn new(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        Signer(
            Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
                .expect("every 32-byte seed is an Ed25519 key"),
        )
    }
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).as_ref().try_into().expect("64 bytes")
    }
    pub fn public(&self) -> [u8; 32] {
        self.0.public_key().as_ref().try_into().expect("32 bytes")
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

/// Whether a point encoding (already through `acceptable_point`) decodes to a point of the
/// prime-order subgroup, where the cofactored and the cofactorless equations agree
/// (curve25519-dalek's `is_torsion_free`: `[L]P` is the identity).
fn torsion_free(p: &[u8; 32]) -> bool {
    CompressedEdwardsY(*p)
        .decompress()
        .is_some_and(|point| point.is_torsion_free())
}

/// A verification key checked once against SPEC.md 5.4; `None` inside: every signature fails.
pub struct Verifier {
    pub bytes: [u8; 32],
    key: Option<VerifyingKey>,
}

impl Verifier {
    pub fn new(bytes: [u8; 32]) -> Self {
        let key = if acceptable_point(&bytes) {
            VerifyingKey::from_bytes(&bytes).ok()
        } else {
            None
        };
        Verifier { bytes, key }
    }

    /// Rules 1 and 2 of SPEC.md 5.4 (`S` canonical is checked by both equations' decoders).
    fn precheck(&self, sig: &[u8; 64]) -> Option<&VerifyingKey> {
        let r: &[u8; 32] = sig[..32].try_into().ok()?;
        if !acceptable_point(r) {
            return None;
        }
        self.key.as_ref()
    }

    /// Single verification: rules 1 and 2, then the cofactorless equation `[S]B = R + [k]A`
    /// with `S < L` and `R` compared as the bytes received (ed25519-dalek's `verify`, as
    /// OpenSSL). After rules 1 and 2 this is exactly `verify_strict`, which would decompress
    /// `R` only to refuse small-order points again (a fifth of the cost; the tests compare).
    pub fn verify(&self, sig: &[u8; 64], msg: &[u8]) -> bool {
        match self.precheck(sig) {
            Some(key) => ed25519_dalek::Verifier::verify(
                key,
                msg,
                &ed25519_dalek::Signature::from_bytes(sig),
            )
            .is_ok(),
            None => false,
        }
    }

    /// May this signature go into a batch: rules 1 and 2 hold and both `A` and `R` are
    /// torsion-free, so that the cofactored batch equation decides as the single one does.
    fn batchable(&self, sig: &[u8; 64]) -> bool {
        self.precheck(sig).is_some()
            && torsion_free(&self.bytes)
            && torsion_free(sig[..32].try_into().expect("32 bytes"))
    }
}

/// The batch path alone, without the one-by-one fallback: true when every signature may go
/// into a batch (`Verifier::batchable`) and the cofactored batch equation (random 128-bit
/// coefficients) accepts them all. For proving that batch and single verification agree.
pub fn batch_equation(jobs: &[(&Verifier, [u8; 64], &[u8])]) -> bool {
    jobs.iter().all(|(v, sig, _)| v.batchable(sig)) && zebra_batch(jobs.iter())
}

fn zebra_batch<'a, 'b: 'a>(
    jobs: impl Iterator<Item = &'a (&'b Verifier, [u8; 64], &'b [u8])>,
) -> bool {
    let mut batch = batch::Verifier::new();
    for (v, sig, msg) in jobs {
        batch.queue((
            VerificationKeyBytes::from(v.bytes),
            Signature::from_bytes(sig),
            msg,
        ));
    }
    batch.verify(rand_core::OsRng).is_ok()
}

/// Verify many signatures with exactly the verdicts of `Verifier::verify` (SPEC.md 5.4): one by
/// one. A cofactored batch decides like the single check only once `R` is known torsion-free,
/// and that check is a scalar multiplication per signature: with it, the batch costs more than
/// the single verification it replaces (measured: `ed25519_timing`, SPEC.md 5.4), so this
/// never forms one. `batch_equation` is that batch, kept for the agreement tests.
pub fn verify_many(jobs: &[(&Verifier, [u8; 64], &[u8])]) -> Vec<bool> {
    jobs.iter()
        .map(|(v, sig, msg)| v.verify(sig, msg))
        .collect()
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

    /// speccheck cases 3, 4 and 5 (tests/vectors/ed25519_speccheck.json): mixed-order `A`
    /// and `R`; only case 3 satisfies the cofactorless equation.
    const MIXED_ORDER: [(&str, &str, &str); 3] = [
        (
            "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
            "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
            "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009",
        ),
        (
            "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
            "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
            "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09",
        ),
        (
            "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
            "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
            "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405",
        ),
    ];

    fn bytes(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn mixed_order_points_get_the_cofactorless_verdict_in_and_out_of_batches() {
        let signer = Signer::new([7u8; 32]);
        let honest = Verifier::new(signer.public());
        let (m0, m1) = (b"a".as_slice(), b"b".as_slice());
        for (i, (msg, public, sig)) in MIXED_ORDER.iter().enumerate() {
            let v = Verifier::new(bytes(public).try_into().unwrap());
            let sig: [u8; 64] = bytes(sig).try_into().unwrap();
            let msg = bytes(msg);
            let expected = i == 0;
            assert_eq!(v.verify(&sig, &msg), expected, "case {}", i + 3);
            let strict = v
                .key
                .as_ref()
                .unwrap()
                .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig));
            assert_eq!(strict.is_ok(), expected);
            assert!(!batch_equation(&[(&v, sig, msg.as_slice())]));
            for _ in 0..8 {
                let jobs = [
                    (&honest, signer.sign(m0), m0),
                    (&v, sig, msg.as_slice()),
                    (&honest, signer.sign(m1), m1),
                ];
                assert_eq!(verify_many(&jobs), vec![true, expected, true]);
            }
        }
    }

    #[test]
    fn a_small_order_component_makes_a_point_not_torsion_free() {
        for seed in 1..4u8 {
            let public = Signer::new([seed; 32]).public();
            let p = CompressedEdwardsY(public).decompress().unwrap();
            for (i, t) in SMALL_ORDER.iter().enumerate() {
                let q = p + CompressedEdwardsY(*t).decompress().unwrap();
                // only the identity adds no torsion
                assert_eq!(torsion_free(&q.compress().to_bytes()), i == 0);
            }
        }
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
    fn the_aws_lc_signer_gives_rfc_8032_signatures() {
        // RFC 8032 7.1, TEST 1 (empty message)
        let seed = bytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let signer = Signer::new(seed.try_into().unwrap());
        assert_eq!(
            signer.public().to_vec(),
            bytes("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            signer.sign(b"").to_vec(),
            bytes(concat!(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555",
                "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ))
        );
        // and the same bytes as the signer it replaced (curve25519-dalek's, via ed25519-zebra)
        let zebra = ed25519_zebra::SigningKey::from([7u8; 32]);
        let signer = Signer::new([7u8; 32]);
        for msg in [&b""[..], b"m", &[9u8; 1200]] {
            assert_eq!(signer.sign(msg), zebra.sign(msg).to_bytes());
        }
        assert_eq!(
            signer.public(),
            <[u8; 32]>::from(VerificationKeyBytes::from(&zebra))
        );
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
        // Ed25519's building blocks: `ed25519_timing` below
    }
}

#[cfg(test)]
mod ed25519_timing {
    use super::*;
    use aws_lc_rs::signature::{ParsedPublicKey, ED25519};
    use curve25519_dalek::edwards::EdwardsPoint;

    /// Prints what each Ed25519 building block costs on this machine (best of 30 rounds of 64,
    /// microseconds per operation): `cargo test --release ed25519_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn print_ed25519_costs() {
        let seed = [7u8; 32];
        let signer = Signer::new(seed);
        let v = Verifier::new(signer.public());
        let aws_pub = ParsedPublicKey::new(&ED25519, signer.public()).unwrap();
        let zebra_key = ed25519_zebra::SigningKey::from(seed);
        let zebra = ed25519_zebra::VerificationKey::try_from(v.bytes).unwrap();
        let msgs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1200]).collect();
        let jobs: Vec<(&Verifier, [u8; 64], &[u8])> = msgs
            .iter()
            .map(|m| (&v, signer.sign(m), m.as_slice()))
            .collect();
        for (_, sig, m) in &jobs {
            assert_eq!(zebra_key.sign(m).to_bytes(), *sig);
        }
        let points: Vec<EdwardsPoint> = jobs
            .iter()
            .map(|(_, s, _)| {
                CompressedEdwardsY(s[..32].try_into().unwrap())
                    .decompress()
                    .unwrap()
            })
            .collect();
        let names = [
            "dalek verify (Verifier::verify)",
            "zebra single verify",
            "aws-lc verify (ParsedPublicKey)",
            "zebra batch n=64, per signature",
            "R torsion_free (decompress, is_torsion_free)",
            "R decompressed: is_torsion_free (constant time)",
            "R decompressed: [L-1]R = -R (variable time)",
            "R decompress",
            "verify_many n=64",
            "zebra sign",
            "aws-lc sign (Signer)",
            "sha2 SHA-512 of 1.2 KB",
            "aws-lc SHA-512 of 1.2 KB",
            "dalek verify of an empty message",
        ];
        let mut best = vec![f64::MAX; names.len()];
        for _ in 0..30 {
            let mut at = std::time::Instant::now();
            let mut lap = |k: usize| {
                let us = at.elapsed().as_secs_f64() * 1e6 / 64.0;
                best[k] = best[k].min(us);
                at = std::time::Instant::now();
            };
            for (v, sig, m) in &jobs {
                assert!(v.verify(sig, m));
            }
            lap(0);
            for (_, sig, m) in &jobs {
                assert!(zebra.verify(&Signature::from_bytes(sig), m).is_ok());
            }
            lap(1);
            for (_, sig, m) in &jobs {
                assert!(aws_pub.verify_sig(m, sig).is_ok());
            }
            lap(2);
            assert!(zebra_batch(jobs.iter()));
            lap(3);
            for (_, sig, _) in &jobs {
                assert!(torsion_free(sig[..32].try_into().unwrap()));
            }
            lap(4);
            for p in &points {
                assert!(p.is_torsion_free());
            }
            lap(5);
            for p in &points {
                let minus_one = -curve25519_dalek::Scalar::ONE;
                let zero = curve25519_dalek::Scalar::ZERO;
                let l_minus_1 =
                    EdwardsPoint::vartime_double_scalar_mul_basepoint(&minus_one, p, &zero);
                assert_eq!(l_minus_1, -p);
            }
            lap(6);
            for (_, sig, _) in &jobs {
                assert!(CompressedEdwardsY(sig[..32].try_into().unwrap())
                    .decompress()
                    .is_some());
            }
            lap(7);
            assert!(verify_many(&jobs).iter().all(|b| *b));
            lap(8);
            for m in &msgs {
                std::hint::black_box(zebra_key.sign(m));
            }
            lap(9);
            for m in &msgs {
                std::hint::black_box(signer.sign(m));
            }
            lap(10);
            for m in &msgs {
                use sha2::Digest;
                std::hint::black_box(sha2::Sha512::digest(m));
            }
            lap(11);
            for m in &msgs {
                std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, m));
            }
            lap(12);
            let empty = signer.sign(b"");
            for _ in &msgs {
                assert!(v.verify(&empty, b""));
            }
            lap(13);
        }
        for (name, us) in names.iter().zip(best) {
            println!("{name}: {us:.1} us");
        }
    }
}
