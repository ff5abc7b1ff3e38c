//! Subject sessions (SPEC.md 4.5): an envelope sealed for a data subject is encrypted and
//! committed with keys expanded from
//! `HKDF-SHA256(salt = session secret, ikm = subject_ikm, info = PROTO || " subject" ||
//! context || session id || subject key id || subject encapsulation)`. The parent session's
//! secret never leaves native memory; the subject secret is zeroized on drop like any other.

use hkdf::Hkdf;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::SessionKeys;
use crate::{array, Session};

pub const LABEL_SUBJECT: &[u8] = b"sealedbus/1 subject";

/// The subject secret of SPEC.md 4.5 from the parent session's keys.
pub fn subject_keys(
    parent: &SessionKeys,
    subject_key_id: &[u8; 16],
    encapsulation: &[u8; 32],
    ikm: &[u8],
) -> SessionKeys {
    let mut info = Vec::with_capacity(LABEL_SUBJECT.len() + parent.context.len() + 32 + 48);
    info.extend_from_slice(LABEL_SUBJECT);
    info.extend_from_slice(&parent.context);
    info.extend_from_slice(&parent.session_id);
    info.extend_from_slice(subject_key_id);
    info.extend_from_slice(encapsulation);
    let mut secret = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(parent.secret.as_ref()), ikm)
        .expand(&info, secret.as_mut())
        .expect("32 bytes is a valid HKDF length");
    SessionKeys::from_secret(parent.topic(), &parent.context, parent.session_id, secret)
}

/// A subject session of `parent` (same session id and sequence counter, the subject's keys).
#[pyfunction]
pub fn session_subject(
    parent: &Session,
    subject_key_id: &[u8],
    encapsulation: &[u8],
    ikm: &[u8],
) -> PyResult<Session> {
    let subject_key_id = array::<16>(subject_key_id, "subject key id")?;
    let encapsulation = array::<32>(encapsulation, "subject encapsulation")?;
    if ikm.len() != 32 {
        return Err(PyValueError::new_err("subject ikm must be 32 bytes"));
    }
    Ok(Session {
        keys: subject_keys(&parent.keys, &subject_key_id, &encapsulation, ikm),
        pid: parent.pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keys_depend_on_every_input() {
        let parent = SessionKeys::derive(b"orders", b"context", [7u8; 32], &[1u8; 32]);
        let a = subject_keys(&parent, &[1u8; 16], &[2u8; 32], &[3u8; 32]);
        let same = subject_keys(&parent, &[1u8; 16], &[2u8; 32], &[3u8; 32]);
        assert_eq!(*a.commitment, *same.commitment);
        assert_ne!(*a.commitment, *parent.commitment);
        for other in [
            subject_keys(&parent, &[9u8; 16], &[2u8; 32], &[3u8; 32]),
            subject_keys(&parent, &[1u8; 16], &[9u8; 32], &[3u8; 32]),
            subject_keys(&parent, &[1u8; 16], &[2u8; 32], &[9u8; 32]),
        ] {
            assert_ne!(*a.commitment, *other.commitment);
        }
        assert_eq!(a.session_id, parent.session_id);
        assert_eq!(a.topic(), b"orders");
    }
}
