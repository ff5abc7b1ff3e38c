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
    // each envelope is a bytes object laid out here, under the GIL (header, batch index and
    // size, sealed headers and body in clear), then sealed in place without it
    let n = items.len();
    let mut layouts = Vec::with_capacity(n);
    let mut envelopes = Vec::with_capacity(n);
    for (i, item) in items.iter().enumerate() {
        let layout = Layout::of(item, i, n, batch);
        envelopes.push(PyBytes::new_with(py, layout.len, |e| {
            layout.write_clear(item, i, n, e);
            Ok(())
        })?);
        layouts.push(layout);
    }
    let buffers: Vec<Buffer> = envelopes
        .iter()
        .zip(&layouts)
        .map(|(e, layout)| {
            // SAFETY: a bytes object just created and held in `envelopes`
            Buffer(
                unsafe { ffi::PyBytes_AsString(e.as_ptr()) }.cast(),
                layout.len,
            )
        })
        .collect();
    let (signer, sealing, laid_out) = (&signer.0, &items, &layouts);
    py.allow_threads(move || {
        let mut buffers: Vec<&mut [u8]> = buffers
            .into_iter()
            // SAFETY: each buffer is the content of a distinct bytes object created above, alive
            // as long as `envelopes`, and seen by no other code until this returns
            .map(|b| unsafe { std::slice::from_raw_parts_mut(b.0, b.1) })
            .collect();
        seal_in_place(signer, sealing, laid_out, &mut buffers);
    });
    let Some(cls) = sealed_type else {
        return Ok(envelopes.into_iter().map(Bound::into_any).collect());
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
                e.into_any(),
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

/// The content of a bytes object under construction, to fill in without the GIL.
struct Buffer(*mut u8, usize);

// SAFETY: the bytes object stays alive and unshared while another thread fills it in
unsafe impl Send for Buffer {}

/// Where the parts of one envelope lie: header, signature (filled in last), batch index, size
/// and inclusion path, then `u16 len(headers) || headers || body` encrypted in place and its
/// tag.
struct Layout {
    header_end: usize,
    ciphertext: usize,
    len: usize,
    batch: bool,
}

impl Layout {
    fn of(item: &SealItem, i: usize, n: usize, batch: bool) -> Self {
        let (_, _, _, _, _, content_type, tail, headers, body, _, _) = item;
        let header_end = HEADER_FIXED + content_type.len() + tail.len();
        let proof = if batch {
            4 + 32 * wire::path_length(i, n).expect("index < size")
        } else {
            0
        };
        let ciphertext = header_end + SIGNATURE_LEN + proof;
        Layout {
            header_end,
            ciphertext,
            len: ciphertext + 2 + headers.len() + body.len() + TAG_LEN,
            batch,
        }
    }

    /// Everything but the signature, the inclusion path and the encryption.
    fn write_clear(&self, item: &SealItem, i: usize, n: usize, e: &mut [u8]) {
        let (_, head, seq, sent_at, ttl, content_type, tail, headers, body, _, _) = item;
        let mut at = 0;
        for part in [
            &head[..],
            &seq.to_be_bytes(),
            &sent_at.to_be_bytes(),
            &ttl.to_be_bytes(),
            &[content_type.len() as u8],
            content_type,
            tail,
        ] {
            e[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        if self.batch {
            let proof = self.header_end + SIGNATURE_LEN;
            e[proof..proof + 2].copy_from_slice(&(i as u16).to_be_bytes());
            e[proof + 2..proof + 4].copy_from_slice(&(n as u16).to_be_bytes());
        }
        let plain = self.ciphertext;
        e[plain..plain + 2].copy_from_slice(&(headers.len() as u16).to_be_bytes());
        e[plain + 2..plain + 2 + headers.len()].copy_from_slice(headers);
        e[plain + 2 + headers.len()..self.len - TAG_LEN].copy_from_slice(body);
    }
}

/// Encrypt every envelope in place, then sign each, or one Merkle root over all of them whose
/// signature and inclusion paths go into every envelope.
fn seal_in_place(
    signer: &crate::crypto::Signer,
    items: &[SealItem],
    layouts: &[Layout],
    envelopes: &mut [&mut [u8]],
) {
    let n = items.len();
    let batch = layouts[0].batch;
    let mut aad = Vec::new();
    let mut leaves = Vec::with_capacity(if batch { n } else { 0 });
    for ((item, layout), e) in items.iter().zip(layouts).zip(envelopes.iter_mut()) {
        let keys = &item.0.get().keys;
        let (h, c) = (layout.header_end, layout.ciphertext);
        let (front, rest) = e.split_at_mut(c);
        let (plain, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        tag.copy_from_slice(&keys.encrypt_in_place(item.2, &front[..h], &mut aad, plain));
        if batch {
            leaves.push(keys.leaf_hash(&e[..h], &e[c..]));
        } else {
            let sig = signer.sign(&keys.message_signing_input(&e[..h], &e[c..]));
            e[h..h + SIGNATURE_LEN].copy_from_slice(&sig);
        }
    }
    if !batch {
        return;
    }
    let root = wire::tree(&leaves, 0, 0, &mut |i, k, node| {
        // the sibling k levels below the top of the tree is the last but k on the path
        let at = layouts[i].ciphertext - 32 * (k + 1);
        envelopes[i][at..at + 32].copy_from_slice(node);
    });
    let size = (n as u16).to_be_bytes();
    let sig = signer.sign(&[wire::SIGN_BATCH_ROOT, &size, &root].concat());
    for (e, layout) in envelopes.iter_mut().zip(layouts) {
        e[layout.header_end..layout.header_end + SIGNATURE_LEN].copy_from_slice(&sig);
    }
}
