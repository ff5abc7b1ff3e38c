//! sealedbus.core._native: the per-message hot path of SPEC.md behind a few batch-shaped
//! functions. Python keeps every policy decision (which keys, which checks, what to refuse);
//! this module only builds, signs, verifies, encrypts and decrypts, and crosses the boundary
//! once per batch with the GIL released for the cryptography.
//!
//! Opaque handles only (a session, a signing key, a verifying key, a cache of verified roots);
//! no class per wire struct. Failures come back as the reason codes of SPEC.md section 8.

mod crypto;
mod fast;
mod replay;
mod seal;
mod subject;
mod trees;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crypto::{SessionKeys, Signer, Verifier};
use wire::Reason;

fn array<const N: usize>(b: &[u8], what: &str) -> PyResult<[u8; N]> {
    b.try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be {N} bytes")))
}

/// Session keys of one producer or consumer session, zeroized on drop. Sealing refuses a
/// session made in another process: a forked child must never continue its parent's nonces.
#[pyclass(frozen, module = "sealedbus.core._native")]
struct Session {
    keys: SessionKeys,
    pid: u32,
}

#[pymethods]
impl Session {
    #[getter]
    fn session_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.keys.session_id)
    }
}

/// Producer side, suite 1: session id = public key of `seed`; ikm = X25519(seed, epoch public).
#[pyfunction]
fn session_x25519_start(
    topic: &[u8],
    context: &[u8],
    seed: &[u8],
    epoch_public: &[u8],
) -> PyResult<Session> {
    let seed = zeroize::Zeroizing::new(array::<32>(seed, "seed")?);
    let session_id = crypto::x25519_public(&seed);
    let ikm = crypto::x25519(&seed, &array(epoch_public, "epoch public key")?)
        .ok_or_else(|| PyValueError::new_err("all-zero X25519 shared secret"))?;
    Ok(Session {
        keys: SessionKeys::derive(topic, context, session_id, ikm.as_ref()),
        pid: std::process::id(),
    })
}

/// Consumer side, suite 1: ikm = X25519(epoch private, session id).
#[pyfunction]
fn session_x25519_join(
    topic: &[u8],
    context: &[u8],
    epoch_private: &[u8],
    session_id: &[u8],
) -> PyResult<Session> {
    let private = zeroize::Zeroizing::new(array::<32>(
        &epoch_private[..32.min(epoch_private.len())],
        "epoch private key",
    )?);
    let session_id = array::<32>(session_id, "session id")?;
    let ikm = crypto::x25519(&private, &session_id)
        .ok_or_else(|| PyValueError::new_err("all-zero X25519 shared secret"))?;
    Ok(Session {
        keys: SessionKeys::derive(topic, context, session_id, ikm.as_ref()),
        pid: std::process::id(),
    })
}

/// Any suite, from the session's input keying material (suite 2: the HPKE-opened secret).
#[pyfunction]
fn session_from_secret(
    topic: &[u8],
    context: &[u8],
    session_id: &[u8],
    ikm: &[u8],
) -> PyResult<Session> {
    let session_id = array::<32>(session_id, "session id")?;
    Ok(Session {
        keys: SessionKeys::derive(topic, context, session_id, ikm),
        pid: std::process::id(),
    })
}

/// An Ed25519 signing key held in native memory and zeroized on drop.
#[pyclass(frozen, module = "sealedbus.core._native")]
struct SigningKey(Signer);

#[pymethods]
impl SigningKey {
    #[new]
    fn new(seed: &[u8]) -> PyResult<Self> {
        Ok(SigningKey(Signer::new(array(seed, "Ed25519 seed")?)))
    }
    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.public())
    }
}

/// An Ed25519 public key, checked once against SPEC.md 5.4.
#[pyclass(frozen, module = "sealedbus.core._native")]
struct VerifyingKey(Verifier);

#[pymethods]
impl VerifyingKey {
    #[new]
    fn new(public: &[u8]) -> PyResult<Self> {
        Ok(VerifyingKey(Verifier::new(array(
            public,
            "Ed25519 public key",
        )?)))
    }
}

/// Batch trees whose root signature verified, by (key, size, signature): their known nodes by
/// position (`trees::VerifiedTrees`, as the pure core's `merkle.VerifiedTrees`), bounded.
#[pyclass(frozen, module = "sealedbus.core._native")]
struct RootCache {
    inner: Mutex<trees::VerifiedTrees>,
}

#[pymethods]
impl RootCache {
    #[new]
    #[pyo3(signature = (capacity = 4096))]
    fn new(capacity: usize) -> Self {
        RootCache {
            inner: Mutex::new(trees::VerifiedTrees::new(capacity)),
        }
    }
}

impl RootCache {
    fn contains(&self, tree: &[u8], index: u16, size: u16, leaf: [u8; 32], path: &[u8]) -> bool {
        self.inner
            .lock()
            .map(|mut g| g.contains(tree, index, size, leaf, path))
            .unwrap_or(false)
    }
    fn insert(&self, tree: Vec<u8>, index: u16, size: u16, leaf: [u8; 32], path: &[u8]) {
        if let Ok(mut g) = self.inner.lock() {
            g.add(tree, index, size, leaf, path);
        }
    }
}

type OpenItem = (Py<Session>, Py<VerifyingKey>, PyBackedBytes);
/// What `open_all` opens: session keys, the sender's verifier, the envelope (borrowed from the
/// Python objects the caller holds, so that no reference is counted per envelope).
type OpenJob<'a> = (&'a SessionKeys, &'a Verifier, &'a [u8]);

enum Outcome {
    Opened(Vec<u8>, usize), // plaintext, offset of the body
    Refused(Reason),
}

/// What a signature signs: a batch root's signed bytes, or an envelope's signed content
/// (session keys, header, ciphertext), built only when checked, into one buffer reused.
enum Signed<'a> {
    Root(Vec<u8>),
    Message(&'a SessionKeys, &'a [u8], &'a [u8]),
}

/// A signature to check: verifier, signature, what it signs, the envelope it decides (and, for
/// a batch root, the others of its tree in this call).
type Job<'a> = (&'a Verifier, [u8; 64], Signed<'a>, usize, Vec<usize>);
/// A batch root to remember once its signature verified: tree, index, size, leaf, path.
type Learn<'a> = (Vec<u8>, u16, u16, [u8; 32], &'a [u8]);

/// Signatures to check and what each decides, planned envelope by envelope.
#[derive(Default)]
struct Plan<'a> {
    jobs: Vec<Job<'a>>,
    roots: HashMap<Vec<u8>, usize>, // tree and root -> job index
    learn: Vec<Option<Learn<'a>>>,  // per job
}

impl<'a> Plan<'a> {
    /// A batch envelope whose tree is not known verified: its root, checked once per call.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        i: usize,
        verifier: &'a Verifier,
        sig: [u8; 64],
        tree: Vec<u8>,
        (index, size, leaf, path): (u16, u16, [u8; 32], &'a [u8]),
        refused: &mut [Option<Reason>],
    ) {
        let Some(root) = wire::root_from_path(index as usize, size as usize, leaf, path) else {
            refused[i] = Some(Reason::BadSignature);
            return;
        };
        let key = [&tree[..], &root].concat();
        match self.roots.get(&key) {
            Some(j) => self.jobs[*j].4.push(i),
            None => {
                self.roots.insert(key, self.jobs.len());
                let msg = [wire::SIGN_BATCH_ROOT, &size.to_be_bytes(), &root].concat();
                self.jobs
                    .push((verifier, sig, Signed::Root(msg), i, Vec::new()));
                self.learn.push(Some((tree, index, size, leaf, path)));
            }
        }
    }

    /// Check every signature planned; remember the verified trees, refuse the envelopes of
    /// the others.
    fn run(self, cache: &RootCache, refused: &mut [Option<Reason>]) {
        let mut signed = Vec::new();
        // one by one, as `crypto::verify_many`
        let verdicts: Vec<bool> = self
            .jobs
            .iter()
            .map(|(v, sig, what, _, _)| match what {
                Signed::Root(m) => v.verify(sig, m),
                Signed::Message(keys, header, ct) => {
                    keys.message_signing_input_into(&mut signed, header, ct);
                    v.verify(sig, &signed)
                }
            })
            .collect();
        for ((good, job), key) in verdicts.iter().zip(&self.jobs).zip(self.learn) {
            if *good {
                if let Some((tree, index, size, leaf, path)) = key {
                    cache.insert(tree, index, size, leaf, path);
                }
            } else {
                for i in std::iter::once(&job.3).chain(&job.4) {
                    refused[*i] = Some(Reason::BadSignature);
                }
            }
        }
    }
}

/// An envelope of a tree whose root is being checked in this call: looked up again after.
type Later<'a> = (
    usize,
    &'a Verifier,
    [u8; 64],
    Vec<u8>,
    (u16, u16, [u8; 32], &'a [u8]),
);

fn open_all(items: &[OpenJob], cache: &RootCache) -> Vec<Outcome> {
    let mut refused: Vec<Option<Reason>> = vec![None; items.len()];
    let mut layouts = Vec::with_capacity(items.len());
    let mut plan = Plan::default();
    // trees whose root this call checks: their other envelopes wait for the verdict, then
    // take the cache's short walk instead of hashing their whole path twice
    let mut checking: HashSet<Vec<u8>> = HashSet::new();
    let mut later: Vec<Later> = Vec::new();
    for (i, &(keys, verifier, data)) in items.iter().enumerate() {
        let layout = match wire::parse(data) {
            Ok(l) => l,
            Err(r) => {
                refused[i] = Some(r);
                layouts.push(None);
                continue;
            }
        };
        layouts.push(Some(layout));
        let header = &data[..layout.header_end];
        let sig: [u8; 64] = data[layout.signature..layout.signature + 64]
            .try_into()
            .expect("64");
        let ct = &data[layout.ciphertext..];
        match layout.batch {
            None => {
                plan.jobs.push((
                    verifier,
                    sig,
                    Signed::Message(keys, header, ct),
                    i,
                    Vec::new(),
                ));
                plan.learn.push(None);
            }
            Some((index, size, path_at)) => {
                let leaf = keys.leaf_hash(header, ct);
                let path = &data[path_at..layout.ciphertext];
                let tree = [&verifier.bytes[..], &size.to_be_bytes(), &sig].concat();
                if cache.contains(&tree, index, size, leaf, path) {
                    continue; // a verified tree: no signature to check
                }
                if checking.contains(&tree) {
                    later.push((i, verifier, sig, tree, (index, size, leaf, path)));
                    continue;
                }
                checking.insert(tree.clone());
                plan.batch(
                    i,
                    verifier,
                    sig,
                    tree,
                    (index, size, leaf, path),
                    &mut refused,
                );
            }
        }
    }
    plan.run(cache, &mut refused);
    if !later.is_empty() {
        let mut again = Plan::default();
        for (i, verifier, sig, tree, (index, size, leaf, path)) in later {
            if !cache.contains(&tree, index, size, leaf, path) {
                again.batch(
                    i,
                    verifier,
                    sig,
                    tree,
                    (index, size, leaf, path),
                    &mut refused,
                );
            }
        }
        again.run(cache, &mut refused);
    }
    items
        .iter()
        .zip(layouts)
        .zip(refused)
        .map(|(((keys, _, data), layout), refused)| {
            if let Some(r) = refused {
                return Outcome::Refused(r);
            }
            let layout = layout.expect("parsed");
            let header = &data[..layout.header_end];
            match keys.decrypt(wire::Layout::seq(data), header, &data[layout.ciphertext..]) {
                Err(r) => Outcome::Refused(r),
                Ok(plain) => {
                    if plain.len() < 2 {
                        return Outcome::Refused(Reason::Malformed);
                    }
                    let n = u16::from_be_bytes([plain[0], plain[1]]) as usize;
                    if plain.len() < 2 + n {
                        return Outcome::Refused(Reason::Malformed);
                    }
                    Outcome::Opened(plain, 2 + n)
                }
            }
        })
        .collect()
}

/// Zeroize a plaintext buffer, its spare capacity too (what `Zeroize` for `Vec` does), with
/// the zeroize crate's bulk fill of slices (one `memset` behind an optimization barrier), not
/// its element-by-element volatile writes of `Vec`'s iterator (two instructions a byte).
fn wipe(plain: &mut Vec<u8>) {
    use zeroize::Zeroize;
    plain.spare_capacity_mut().zeroize();
    plain.as_mut_slice().zeroize();
    plain.clear();
}

/// Verify and decrypt a batch of `(session, sender key, envelope)`: per-message signatures
/// checked one by one (SPEC.md 5.4), batch roots once each (and then cached).
/// Each result, in order, is `(sealed headers, body)` or the reason code of its refusal.
#[pyfunction]
fn open_many<'py>(
    py: Python<'py>,
    items: Vec<OpenItem>,
    cache: &RootCache,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let jobs: Vec<OpenJob> = items
        .iter()
        .map(|(s, v, data)| (&s.get().keys, &v.get().0, &**data))
        .collect();
    let outcomes = py.allow_threads(|| open_all(&jobs, cache));
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Opened(mut plain, at) => {
                let t = PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, &plain[2..at]),
                        PyBytes::new(py, &plain[at..]),
                    ],
                )?;
                wipe(&mut plain);
                Ok(t.into_any())
            }
            Outcome::Refused(r) => Ok(PyString::new(py, r.code()).into_any()),
        })
        .collect()
}

/// Ed25519 verification under SPEC.md 5.4, one signature.
#[pyfunction]
fn ed25519_verify(
    py: Python<'_>,
    public: &[u8],
    signature: &[u8],
    message: &[u8],
) -> PyResult<bool> {
    let v = Verifier::new(array(public, "public key")?);
    let sig = array::<64>(signature, "signature")?;
    Ok(py.allow_threads(|| v.verify(&sig, message)))
}

fn parse_triples(items: &[(Vec<u8>, Vec<u8>, Vec<u8>)]) -> PyResult<Vec<(Verifier, [u8; 64])>> {
    items
        .iter()
        .map(|(p, s, _)| {
            Ok((
                Verifier::new(array(p, "public key")?),
                array::<64>(s, "signature")?,
            ))
        })
        .collect()
}

/// The batch path alone over `(public, signature, message)` triples (no one-by-one fallback):
/// True when every `A` and `R` may go into a batch and the batch equation accepts them all.
/// For proving that batch and single verification agree.
#[pyfunction]
fn ed25519_batch_equation(items: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> PyResult<bool> {
    let parsed = parse_triples(&items)?;
    let jobs: Vec<(&Verifier, [u8; 64], &[u8])> = parsed
        .iter()
        .zip(&items)
        .map(|((v, s), (_, _, m))| (v, *s, m.as_slice()))
        .collect();
    Ok(crypto::batch_equation(&jobs))
}

/// What `open_many` decides for the signatures of many envelopes: one verdict per
/// `(public, signature, message)` triple (one by one: `crypto::verify_many`).
#[pyfunction]
fn ed25519_verify_many(items: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> PyResult<Vec<bool>> {
    let parsed = parse_triples(&items)?;
    let jobs: Vec<(&Verifier, [u8; 64], &[u8])> = parsed
        .iter()
        .zip(&items)
        .map(|((v, s), (_, _, m))| (v, *s, m.as_slice()))
        .collect();
    Ok(crypto::verify_many(&jobs))
}

/// Merkle root and inclusion paths (concatenated siblings) over leaf hashes (SPEC.md 5.3).
#[pyfunction]
fn merkle_build<'py>(
    py: Python<'py>,
    leaves: Vec<Vec<u8>>,
) -> PyResult<(Bound<'py, PyBytes>, Vec<Bound<'py, PyBytes>>)> {
    if leaves.is_empty() {
        return Err(PyValueError::new_err(
            "a Merkle tree needs at least one leaf",
        ));
    }
    let leaves: Vec<[u8; 32]> = leaves
        .iter()
        .map(|l| array(l, "leaf"))
        .collect::<PyResult<_>>()?;
    let (root, paths) = wire::build(&leaves);
    Ok((
        PyBytes::new(py, &root),
        paths.iter().map(|p| PyBytes::new(py, p)).collect(),
    ))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Session>()?;
    m.add_class::<SigningKey>()?;
    m.add_class::<VerifyingKey>()?;
    m.add_class::<RootCache>()?;
    m.add_class::<fast::OpenTable>()?;
    m.add_class::<replay::ReplayGuard>()?;
    m.add_function(wrap_pyfunction!(session_x25519_start, m)?)?;
    m.add_function(wrap_pyfunction!(session_x25519_join, m)?)?;
    m.add_function(wrap_pyfunction!(session_from_secret, m)?)?;
    m.add_function(wrap_pyfunction!(subject::session_subject, m)?)?;
    m.add_function(wrap_pyfunction!(seal::seal, m)?)?;
    m.add_function(wrap_pyfunction!(open_many, m)?)?;
    m.add_function(wrap_pyfunction!(ed25519_verify, m)?)?;
    m.add_function(wrap_pyfunction!(ed25519_batch_equation, m)?)?;
    m.add_function(wrap_pyfunction!(ed25519_verify_many, m)?)?;
    m.add_function(wrap_pyfunction!(merkle_build, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wipe_zeroes_the_plaintext_and_the_spare_capacity() {
        let mut plain = Vec::with_capacity(64);
        plain.extend_from_slice(&[7u8; 40]);
        super::wipe(&mut plain);
        assert!(plain.is_empty());
        let all = plain.spare_capacity_mut();
        assert!(all.len() >= 64);
        // SAFETY: every byte of the capacity was written (zeroed) by `wipe`
        assert!(all.iter().all(|b| unsafe { b.assume_init() } == 0));
    }
}
