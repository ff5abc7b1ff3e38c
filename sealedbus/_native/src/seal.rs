//! The sealer's hot path: one call per batch builds each envelope's header (SPEC.md 2.1) from
//! the per-message fields, encrypts its sealed headers and body in place (4.4), and signs
//! each envelope (5.2) or one Merkle root over all of them (5.3), writing the signature and
//! the inclusion paths straight into the envelopes. Every policy decision (which session,
//! which sequence number, what time, what to refuse) stays with the Python sealer.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString, PyType};
use pyo3::{ffi, intern};

use crate::wire::{self, HEADER_FIXED, HEADER_HEAD, SIGNATURE_LEN, TAG_LEN};
use crate::{Session, SigningKey};

/// `(session, header head, sequence, sent at ms, ttl ms, content type, header tail, packed
/// sealed headers, body, topic, context)`: `backend.SealItem`. The head is the header through
/// the session id; the tail is what follows the content type (subject fields, encapsulation).
pub type SealItem = (
    Py<Session>,
    PyBackedBytes,
    u32,
    u64,
    u32,
    PyBackedBytes,
    PyBackedBytes,
    PyBackedBytes,
    PyBackedBytes,
    PyObject,
    PyObject,
);

/// Seal `items` with one signature each, or with `batch` one signature over their Merkle root.
/// Returns the envelopes in order, as bytes, or with `sealed_type` (a frozen dataclass with
/// slots: the sealer's `Sealed`) as `sealed_type(topic, envelope, context)` instances.
#[pyfunction]
#[pyo3(signature = (signer, items, batch, sealed_type = None))]
pub fn seal<'py>(
    py: Python<'py>,
    signer: &SigningKey,
    items: Vec<SealItem>,
    batch: bool,
    sealed_type: Option<&Bound<'py, PyType>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if items.is_empty() || items.len() > 0xFFFF {
        return Err(PyValueError::new_err("a batch holds 1 to 65535 envelopes"));
    }
    let pid = std::process::id();
    for (s, head, _, _, _, content_type, _, headers, _, _, _) in &items {
        if s.get().pid != pid {
            return Err(PyValueError::new_err(
                "session belongs to another process (fork)",
            ));
        }
        if head.len() != HEADER_HEAD {
            return Err(PyValueError::new_err("header head must be 57 bytes"));
        }
        if content_type.len() > 0xFF || headers.len() > 0xFFFF {
            return Err(PyValueError::new_err(
                "content type over 255 bytes or sealed headers over 65535 bytes",
            ));
        }
    }
    let envelopes = py.allow_threads(|| seal_all(&signer.0, &items, batch));
    let Some(cls) = sealed_type else {
        return Ok(envelopes
            .iter()
            .map(|e| PyBytes::new(py, e).into_any())
            .collect());
    };
    let new = py.get_type::<PyAny>().getattr(intern!(py, "__new__"))?;
    let names = [
        intern!(py, "topic"),
        intern!(py, "envelope"),
        intern!(py, "context"),
    ];
    items
        .iter()
        .zip(envelopes)
        .map(|(item, e)| {
            let values = [
                item.9.bind(py).clone(),
                PyBytes::new(py, &e).into_any(),
                item.10.bind(py).clone(),
            ];
            let obj = new.call1((cls,))?;
            for (name, value) in names.iter().zip(values) {
                set_field(&obj, name, &value)?;
            }
            Ok(obj)
        })
        .collect()
}

/// Set a field of a frozen dataclass with slots as its generated `__init__` does
/// (`object.__setattr__`), without a Python call.
fn set_field(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: three valid object pointers held under the GIL; -1 means a Python error is set
    let rc = unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) };
    if rc != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(())
}

/// Every envelope, laid out once: header, signature (filled in last), batch index, size and
/// inclusion path, then `u16 len(headers) || headers || body` encrypted in place and its tag.
fn seal_all(signer: &crate::crypto::Signer, items: &[SealItem], batch: bool) -> Vec<Vec<u8>> {
    let n = items.len();
    let size = (n as u16).to_be_bytes();
    let mut aad = Vec::new();
    let mut envelopes = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n); // (end of the header, start of the ciphertext)
    let mut leaves = Vec::with_capacity(if batch { n } else { 0 });
    for (i, (s, head, seq, sent_at, ttl, content_type, tail, headers, body, _, _)) in
        items.iter().enumerate()
    {
        let keys = &s.get().keys;
        let header_end = HEADER_FIXED + content_type.len() + tail.len();
        let proof = if batch {
            4 + 32 * wire::path_length(i, n).expect("index < size")
        } else {
            0
        };
        let ct_at = header_end + SIGNATURE_LEN + proof;
        let mut e = Vec::with_capacity(ct_at + 2 + headers.len() + body.len() + TAG_LEN);
        e.extend_from_slice(head);
        e.extend_from_slice(&seq.to_be_bytes());
        e.extend_from_slice(&sent_at.to_be_bytes());
        e.extend_from_slice(&ttl.to_be_bytes());
        e.push(content_type.len() as u8);
        e.extend_from_slice(content_type);
        e.extend_from_slice(tail);
        e.resize(ct_at, 0); // signature and proof: written once the tree is signed
        if batch {
            e[header_end + SIGNATURE_LEN..][..2].copy_from_slice(&(i as u16).to_be_bytes());
            e[header_end + SIGNATURE_LEN + 2..][..2].copy_from_slice(&size);
        }
        e.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        e.extend_from_slice(headers);
        e.extend_from_slice(body);
        let (front, plain) = e.split_at_mut(ct_at);
        let tag = keys.encrypt_in_place(*seq, &front[..header_end], &mut aad, plain);
        e.extend_from_slice(&tag);
        let (header, ct) = (&e[..header_end], &e[ct_at..]);
        if batch {
            leaves.push(keys.leaf_hash(header, ct));
        } else {
            let sig = signer.sign(&keys.message_signing_input(header, ct));
            e[header_end..header_end + SIGNATURE_LEN].copy_from_slice(&sig);
        }
        offsets.push((header_end, ct_at));
        envelopes.push(e);
    }
    if batch {
        // where each path ends: the sibling k levels below the top of the tree is the path's
        // (depth - 1 - k)th, bottom-up
        let root = wire::tree(&leaves, 0, 0, &mut |i, k, node| {
            let at = offsets[i].1 - 32 * (k + 1);
            envelopes[i][at..at + 32].copy_from_slice(node);
        });
        let sig = signer.sign(&[wire::SIGN_BATCH_ROOT, &size, &root].concat());
        for (e, (h, _)) in envelopes.iter_mut().zip(&offsets) {
            e[*h..*h + SIGNATURE_LEN].copy_from_slice(&sig);
        }
    }
    envelopes
}
