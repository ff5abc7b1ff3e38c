//! The opener's fast path (issue 12): one call per batch parses the envelopes, runs the checks
//! of SPEC.md section 7 steps 1-7 against senders and sessions the Python opener already checked
//! and handed over, then verifies and decrypts them (`open_all`).
//!
//! It only ever *accepts*. Whatever it cannot accept (any parse defect, a check that fails, a
//! sender or session it was not given, a flag bit, kind or suite it does not know, a bad
//! signature) it hands back as `None`, and the Python opener runs every step again on that
//! envelope and names the refusal. So the reasons and their order stay those of the reference
//! path by construction; this path must only never accept what that path refuses.
//!
//! Given the opener's replay guard (`replay.rs`, the one its Python steps use too), it also runs
//! step 10 for the envelopes it opened, in order, up to the first one it hands back unfinished
//! (left to the Python opener, or sealed headers that do not decode): those and all after them
//! the Python opener admits, in order, so the window sees the batch's order whichever path
//! opened each envelope.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};
use pyo3::{ffi, intern};

use crate::replay::{Key, ReplayGuard, Seen};
use crate::wire::{self, FLAG_BATCH, HEADER_FIXED};
use crate::{open_all, OpenItem, Outcome, RootCache, Session, VerifyingKey};

const SUITE_X25519: u8 = 1;

/// A sender the opener checked for a topic: certified to produce to it, neither revoked nor
/// withdrawn under the revocation list the opener holds (it clears the table when that changes).
struct Sender {
    verifier: Py<VerifyingKey>,
    member: Py<PyString>,
    key: Py<PyTuple>, // (topic, certificate id): the opener's replay key of the sender
    replay: Key,      // the same, hashed once
    cert_id: [u8; 16],
    not_before_ms: i128,
    not_after_ms: i128,
}

/// A session whose first envelope's signature verified, with its epoch's time limits.
struct Joined {
    session: Py<Session>,
    key: Py<PyTuple>, // (epoch, session id): the opener's replay key of the session
    replay: Key,
    not_before_ms: i128,
    not_after_ms: i128,
    max_age_ms: i128, // the topic's maximum message age, 0: none
    destroy_after_ms: i128,
}

#[derive(Default)]
struct Topic {
    senders: HashMap<[u8; 16], Sender>,
    sessions: HashMap<(u32, [u8; 32]), Joined>,
}

/// Replay state carried over (`Opener.restore_replay`): topic -> scope -> session digest -> the
/// highest sequence number handled.
type Floors = HashMap<String, Vec<(Key, HashMap<[u8; 8], i64>)>>;

/// The senders and sessions of one opener that may take the fast path, and its settings.
#[pyclass(frozen, module = "sealedbus.core._native")]
pub struct OpenTable {
    message_type: Py<PyType>, // the opener's OpenedMessage (a frozen dataclass with slots)
    // `backend.decode_headers`: sealed headers of a message admitted here are decoded first
    decode_headers: Option<Py<PyAny>>,
    topics: Mutex<HashMap<String, Topic>>,
    entries: Mutex<usize>,
    floors: Mutex<Floors>, // kept by `clear`: replay state, not trust
    capacity: usize,
    skew_ms: i128,
    max_age_ms: Option<i128>,
    max_envelope: usize,
}

#[pymethods]
impl OpenTable {
    #[new]
    #[pyo3(signature = (
        message_type, skew_ms, max_age_ms, max_envelope, capacity = 100_000, decode_headers = None
    ))]
    fn new(
        message_type: Py<PyType>,
        skew_ms: i64,
        max_age_ms: Option<i64>,
        max_envelope: usize,
        capacity: usize,
        decode_headers: Option<Py<PyAny>>,
    ) -> Self {
        OpenTable {
            message_type,
            decode_headers,
            topics: Mutex::new(HashMap::new()),
            entries: Mutex::new(0),
            floors: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            skew_ms: skew_ms.into(),
            max_age_ms: max_age_ms.map(i128::from),
            max_envelope,
        }
    }

    /// A sender the opener checked for `topic` (see `Sender`).
    #[allow(clippy::too_many_arguments)]
    fn add_sender(
        &self,
        py: Python<'_>,
        topic: &str,
        cert_id: &[u8],
        verifier: Py<VerifyingKey>,
        member: Py<PyString>,
        not_before_ms: i64,
        not_after_ms: i64,
    ) -> PyResult<()> {
        let cert_id: [u8; 16] = crate::array(cert_id, "certificate id")?;
        let key = PyTuple::new(
            py,
            [
                PyString::new(py, topic).into_any(),
                PyBytes::new(py, &cert_id).into_any(),
            ],
        )?
        .unbind();
        let sender = Sender {
            verifier,
            member,
            replay: Key::new(key.bind(py).as_any())?,
            key,
            cert_id,
            not_before_ms: not_before_ms.into(),
            not_after_ms: not_after_ms.into(),
        };
        self.with_topic(topic, |t| t.senders.insert(cert_id, sender).is_none());
        Ok(())
    }

    /// A session of suite 1 whose signature verified, with its epoch description's limits.
    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &self,
        py: Python<'_>,
        topic: &str,
        epoch: u32,
        session: Py<Session>,
        not_before_ms: i64,
        not_after_ms: i64,
        max_age_ms: i64,
        destroy_after_ms: i64,
    ) -> PyResult<()> {
        let session_id = session.get().keys.session_id;
        let key = PyTuple::new(
            py,
            [
                epoch.into_pyobject(py)?.into_any(),
                PyBytes::new(py, &session_id).into_any(),
            ],
        )?
        .unbind();
        let joined = Joined {
            session,
            replay: Key::new(key.bind(py).as_any())?,
            key,
            not_before_ms: not_before_ms.into(),
            not_after_ms: not_after_ms.into(),
            max_age_ms: max_age_ms.into(),
            destroy_after_ms: destroy_after_ms.into(),
        };
        self.with_topic(topic, |t| {
            t.sessions.insert((epoch, session_id), joined).is_none()
        });
        Ok(())
    }

    /// Forget every sender and session (the revocation list changed, or epochs were swept).
    fn clear(&self) {
        if let (Ok(mut topics), Ok(mut n)) = (self.topics.lock(), self.entries.lock()) {
            topics.clear();
            *n = 0;
        }
    }

    /// The floors of `topic` in `scope` (`Opener.restore_replay`), replacing those held.
    fn set_floors(
        &self,
        py: Python<'_>,
        topic: &str,
        scope: &Bound<'_, PyAny>,
        floors: HashMap<Vec<u8>, i64>,
    ) -> PyResult<()> {
        let scope = Key::new(scope)?;
        let floors: HashMap<[u8; 8], i64> = floors
            .into_iter()
            .filter_map(|(d, seq)| Some((d.as_slice().try_into().ok()?, seq)))
            .collect();
        let mut held = crate::replay::lock(py, &self.floors);
        let scopes = held.entry(topic.to_owned()).or_default();
        match scopes.iter_mut().find(|(k, _)| *k == scope) {
            Some((_, f)) => *f = floors,
            None => scopes.push((scope, floors)),
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.entries.lock().map(|n| *n).unwrap_or(0)
    }

    /// `open` of the one item `(topic, envelope, scope)`: its result alone.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (topic, envelope, scope, now_ms, cache, guard = None))]
    fn open_one<'py>(
        &self,
        py: Python<'py>,
        topic: Bound<'py, PyAny>,
        envelope: Bound<'py, PyAny>,
        scope: Bound<'py, PyAny>,
        now_ms: i64,
        cache: &RootCache,
        guard: Option<&ReplayGuard>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let item = PyTuple::new(py, [topic, envelope, scope])?.into_any();
        let (mut results, _) = self.open(py, vec![item], now_ms, cache, guard)?;
        Ok(results.pop().flatten())
    }

    /// Open what may take the fast path among `items` (`(topic, envelope)` or `(topic,
    /// envelope, scope)`). Each result, in order, is None (left to the Python opener), or
    /// `(message, sealed headers, sender key, session key)`: the message built as the opener
    /// builds it but with no headers yet (the opener decodes the packed sealed headers, if any,
    /// then checks the replay window under the two keys before handing it on). With `guard`,
    /// the leading results the fast path finished are instead the message itself (its sealed
    /// headers decoded, admitted by the replay window) or 1 (a duplicate) or 2 (too old). Also
    /// returned: whether every result is finished so.
    #[pyo3(signature = (items, now_ms, cache, guard = None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        items: Vec<Bound<'py, PyAny>>,
        now_ms: i64,
        cache: &RootCache,
        guard: Option<&ReplayGuard>,
    ) -> PyResult<(Vec<Option<Bound<'py, PyAny>>>, bool)> {
        let mut accepted: Vec<Taken<'py>> = Vec::new();
        let mut jobs: Vec<OpenItem> = Vec::new();
        {
            let Ok(topics) = self.topics.lock() else {
                return Ok((vec![None; items.len()], false));
            };
            for (i, item) in items.iter().enumerate() {
                let Some((topic_obj, topic, data, scope)) = unpack(item) else {
                    continue;
                };
                let Some(t) = topics.get(&*topic) else {
                    continue;
                };
                if let Some(a) = self.check(py, t, &data, now_ms.into()) {
                    jobs.push((a.session.clone_ref(py), a.verifier.clone_ref(py), data));
                    accepted.push((i, a.fields, topic_obj, scope, topic));
                }
            }
        }
        let mut results: Vec<Option<Bound<'py, PyAny>>> = vec![None; items.len()];
        if jobs.is_empty() {
            return Ok((results, false));
        }
        let outcomes = py.allow_threads(|| open_all(&jobs, cache));
        let message_type = self.message_type.bind(py);
        let floors = Some(crate::replay::lock(py, &self.floors)).filter(|f| !f.is_empty());
        let mut finished = 0; // results[..finished] are final (admitted or refused here)
        for ((i, a, topic, scope, topic_str), (outcome, job)) in
            accepted.into_iter().zip(outcomes.into_iter().zip(&jobs))
        {
            let Outcome::Opened(mut plain, at) = outcome else {
                continue; // refused: the Python opener names the reason
            };
            let data: &[u8] = &job.2;
            let ct_end = HEADER_FIXED + data[73] as usize;
            let content_type = std::str::from_utf8(&data[HEADER_FIXED..ct_end]).unwrap_or("");
            let body = PyBytes::new(py, &plain[at..]);
            let headers = PyBytes::new(py, &plain[2..at]);
            // admitted here only in order: then sealed headers are decoded here first (a
            // failure leaves the message to the Python opener, which decodes and refuses it)
            let inline = guard.is_some() && finished == i;
            let decoded = match &self.decode_headers {
                Some(decode) if inline && at > 2 => decode.bind(py).call1((&headers,)).ok(),
                _ => None,
            };
            zeroize::Zeroize::zeroize(&mut plain);
            let epoch = a.session_key.bind(py).get_item(0)?;
            let scope_obj = scope.clone();
            let session = [&data[9..25], &data[25..57]].concat();
            let expires_at = if a.ttl_ms == 0 {
                py.None().into_bound(py)
            } else {
                ((a.sent_at_ms as f64 + f64::from(a.ttl_ms)) / 1000.0)
                    .into_pyobject(py)?
                    .into_any()
            };
            let fields: [(&Bound<'py, PyString>, Bound<'py, PyAny>); 12] = [
                (intern!(py, "body"), body.into_any()),
                (
                    intern!(py, "headers"),
                    match &decoded {
                        Some(d) => d.clone(),
                        None => PyDict::new(py).into_any(),
                    },
                ),
                (intern!(py, "topic"), topic),
                (intern!(py, "sender"), a.member.into_bound(py).into_any()),
                (intern!(py, "epoch"), epoch),
                (intern!(py, "sequence"), a.seq.into_pyobject(py)?.into_any()),
                (
                    intern!(py, "sent_at"),
                    (a.sent_at_ms as f64 / 1000.0).into_pyobject(py)?.into_any(),
                ),
                (
                    intern!(py, "content_type"),
                    PyString::new(py, content_type).into_any(),
                ),
                (intern!(py, "expires_at"), expires_at),
                (
                    intern!(py, "session"),
                    PyBytes::new(py, &session).into_any(),
                ),
                (intern!(py, "scope"), scope),
                // never sealed for a subject: the fast path refuses every flag but batch
                (intern!(py, "subject_key_id"), py.None().into_bound(py)),
            ];
            let message = new_frozen(message_type, &fields)?;
            if let Some(guard) = guard.filter(|_| inline && (at == 2 || decoded.is_some())) {
                if let Ok(scope) = Key::new(&scope_obj) {
                    let floor = floors.as_ref().map_or(-1, |f| {
                        floor_of(f, &topic_str, &scope, &data[9..25], a.epoch, &data[25..57])
                    });
                    let seen = guard.admit_keys(
                        py,
                        &a.sender_replay,
                        &a.session_replay,
                        a.seq.into(),
                        &scope,
                        floor,
                    );
                    results[i] = Some(match seen {
                        Seen::New => message,
                        refused => (refused as u8).into_pyobject(py)?.into_any(),
                    });
                    finished = i + 1;
                    continue;
                }
            }
            let tuple = PyTuple::new(
                py,
                [
                    message,
                    headers.into_any(),
                    a.sender_key.into_bound(py).into_any(),
                    a.session_key.into_bound(py).into_any(),
                ],
            )?;
            results[i] = Some(tuple.into_any());
        }
        let all = guard.is_some() && finished == results.len();
        Ok((results, all))
    }
}

/// An instance of a frozen dataclass with slots, its fields set as its generated `__init__`
/// sets them (`object.__setattr__`), without the Python call per field.
fn new_frozen<'py>(
    cls: &Bound<'py, PyType>,
    fields: &[(&Bound<'py, PyString>, Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let obj = py
        .get_type::<pyo3::types::PyAny>()
        .call_method1(intern!(py, "__new__"), (cls,))?;
    for (name, value) in fields {
        // SAFETY: three valid object pointers held by the GIL; -1 means a Python error is set
        let rc =
            unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) };
        if rc != 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(obj)
}

struct Accepted {
    sender_key: Py<PyTuple>,
    session_key: Py<PyTuple>,
    sender_replay: Key,
    session_replay: Key,
    epoch: u32,
    member: Py<PyString>,
    seq: u32,
    sent_at_ms: u64,
    ttl_ms: u32,
}

struct Checked<'a> {
    session: &'a Py<Session>,
    verifier: &'a Py<VerifyingKey>,
    fields: Accepted,
}

/// An envelope the checks passed: its index, fields, topic object, scope and topic.
type Taken<'py> = (
    usize,
    Accepted,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    PyBackedStr,
);

/// (topic object, topic, envelope, scope) of an item; None for anything else (the Python
/// opener then deals with it).
type Unpacked<'py> = (
    Bound<'py, PyAny>,
    PyBackedStr,
    PyBackedBytes,
    Bound<'py, PyAny>,
);

fn unpack<'py>(item: &Bound<'py, PyAny>) -> Option<Unpacked<'py>> {
    let t = item.downcast::<PyTuple>().ok()?;
    let scope = match t.len() {
        2 => item.py().None().into_bound(item.py()),
        3 => t.get_item(2).ok()?,
        _ => return None,
    };
    let topic_obj = t.get_item(0).ok()?;
    let topic: PyBackedStr = topic_obj.extract().ok()?;
    Some((topic_obj, topic, t.get_item(1).ok()?.extract().ok()?, scope))
}

/// The floor carried over for a session in `scope` of `topic`, or -1 (as `Opener._admit` looks
/// it up, by `replay.session_digest`).
fn floor_of(
    floors: &Floors,
    topic: &str,
    scope: &Key,
    cert_id: &[u8],
    epoch: u32,
    session_id: &[u8],
) -> i64 {
    let Some(held) = floors
        .get(topic)
        .and_then(|scopes| scopes.iter().find(|(k, _)| k == scope))
        .map(|(_, f)| f)
        .filter(|f| !f.is_empty())
    else {
        return -1;
    };
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(b"sealedbus/1 replay session\x00");
    h.update(cert_id);
    h.update(&u64::from(epoch).to_be_bytes());
    h.update(session_id);
    let digest: [u8; 8] = h.finish().as_ref()[..8].try_into().expect("8 bytes");
    held.get(&digest).copied().unwrap_or(-1)
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().expect("4 bytes"))
}

impl OpenTable {
    fn with_topic(&self, topic: &str, add: impl FnOnce(&mut Topic) -> bool) {
        let (Ok(mut topics), Ok(mut n)) = (self.topics.lock(), self.entries.lock()) else {
            return;
        };
        if *n >= self.capacity {
            topics.clear(); // bounded: what goes comes back through the Python opener
            *n = 0;
        }
        if add(topics.entry(topic.to_owned()).or_default()) {
            *n += 1;
        }
    }

    /// SPEC.md 7 steps 1-7 for one envelope, as the Python opener runs them, reduced to "all
    /// pass" (Some) or "let the Python opener decide" (None).
    fn check<'a>(
        &self,
        py: Python<'_>,
        t: &'a Topic,
        data: &[u8],
        now: i128,
    ) -> Option<Checked<'a>> {
        // 1-2: size and layout; only the kinds this path knows (suite 1, no flag but batch)
        if data.len() > self.max_envelope || data.len() < HEADER_FIXED {
            return None;
        }
        if data[3] != SUITE_X25519 || data[4] & !FLAG_BATCH != 0 {
            return None;
        }
        wire::parse(data).ok()?;
        let epoch = u32_at(data, 5);
        let cert_id: [u8; 16] = data[9..25].try_into().expect("16 bytes");
        let session_id: [u8; 32] = data[25..57].try_into().expect("32 bytes");
        let seq = u32_at(data, 57);
        let sent_at_ms = u64::from_be_bytes(data[61..69].try_into().expect("8 bytes"));
        let ttl_ms = u32_at(data, 69);
        let (sent, ttl, skew) = (i128::from(sent_at_ms), i128::from(ttl_ms), self.skew_ms);
        // 3-4: time
        if sent > now + skew || (ttl != 0 && now > sent + ttl + skew) {
            return None;
        }
        if matches!(self.max_age_ms, Some(max_age) if now > sent + max_age + skew) {
            return None;
        }
        // 5-6: a sender checked for this topic, its certificate valid when the envelope was sent
        let sender = t.senders.get(&cert_id)?;
        if sender.cert_id != cert_id
            || !(sender.not_before_ms <= sent && sent <= sender.not_after_ms)
        {
            return None;
        }
        // 7: a joined session of an epoch not destroyed, sent within the epoch, young enough
        let joined = t.sessions.get(&(epoch, session_id))?;
        if now >= joined.destroy_after_ms
            || !(joined.not_before_ms - skew <= sent && sent <= joined.not_after_ms + skew)
            || (joined.max_age_ms != 0 && now > sent + joined.max_age_ms + skew)
        {
            return None;
        }
        Some(Checked {
            session: &joined.session,
            verifier: &sender.verifier,
            fields: Accepted {
                sender_key: sender.key.clone_ref(py),
                session_key: joined.key.clone_ref(py),
                sender_replay: sender.replay.clone_ref(py),
                session_replay: joined.replay.clone_ref(py),
                epoch,
                member: sender.member.clone_ref(py),
                seq,
                sent_at_ms,
                ttl_ms,
            },
        })
    }
}
