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
use std::ptr;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple, PyType};
use pyo3::{ffi, intern};

use crate::replay::{Key, ReplayGuard, Seen};
use crate::wire::{self, FLAG_BATCH, HEADER_FIXED};
use crate::{open_all, OpenJob, Outcome, RootCache, Session, VerifyingKey};

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
    epoch: u32,
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

/// The fields of the opener's `OpenedMessage`, in the order `OpenTable::open` gives them.
const FIELDS: [&str; 12] = [
    "body",
    "headers",
    "topic",
    "sender",
    "epoch",
    "sequence",
    "sent_at",
    "content_type",
    "expires_at",
    "session",
    "scope",
    "subject_key_id",
];

/// How a field of the message type is set: its name and, when the attribute the type's MRO
/// holds under that name is a data descriptor (a slot's member descriptor), that descriptor
/// and its setter, which `PyObject_GenericSetAttr` would find and call for every instance.
struct Setter {
    name: Py<PyString>,
    descriptor: Option<(Py<PyAny>, ffi::descrsetfunc)>,
}

/// The senders and sessions of one opener that may take the fast path, and its settings.
#[pyclass(frozen, module = "sealedbus.core._native")]
pub struct OpenTable {
    message_type: Py<PyType>, // the opener's OpenedMessage (a frozen dataclass with slots)
    // how `object.__new__(message_type)` allocates (None: ask `object.__new__` itself)
    alloc: Option<ffi::allocfunc>,
    setters: Vec<Setter>, // one per name of FIELDS
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
        py: Python<'_>,
        message_type: Py<PyType>,
        skew_ms: i64,
        max_age_ms: Option<i64>,
        max_envelope: usize,
        capacity: usize,
        decode_headers: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let cls = message_type.bind(py);
        let setters = FIELDS
            .iter()
            .map(|name| setter(cls, name))
            .collect::<PyResult<_>>()?;
        Ok(OpenTable {
            alloc: allocator(cls),
            setters,
            message_type,
            decode_headers,
            topics: Mutex::new(HashMap::new()),
            entries: Mutex::new(0),
            floors: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            skew_ms: skew_ms.into(),
            max_age_ms: max_age_ms.map(i128::from),
            max_envelope,
        })
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
            epoch,
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
        // the senders and sessions the accepted envelopes use, each run of envelopes of the
        // same sender and session sharing one (references taken once per run, not per envelope)
        let mut entries: Vec<Entry> = Vec::new();
        {
            let Ok(topics) = self.topics.lock() else {
                return Ok((vec![None; items.len()], false));
            };
            let mut topic_seen: Option<(&str, &Topic)> = None;
            let mut last: Option<Last> = None;
            let mut run: Option<(&Sender, &Joined)> = None; // of the last entry
            for (i, item) in items.iter().enumerate() {
                let Some((topic_obj, topic, data, scope)) = unpack(item) else {
                    continue;
                };
                let t = match topic_seen {
                    Some((name, t)) if name == &*topic => t,
                    _ => {
                        let Some((name, t)) = topics.get_key_value(&*topic) else {
                            continue;
                        };
                        topic_seen = Some((name.as_str(), t));
                        t
                    }
                };
                let Some((sender, joined, fields)) = self.check(t, &data, now_ms.into(), &mut last)
                else {
                    continue;
                };
                if !matches!(run, Some((s, j)) if ptr::eq(s, sender) && ptr::eq(j, joined)) {
                    entries.push(Entry::new(py, &topic, sender, joined)?);
                    run = Some((sender, joined));
                }
                let entry = entries.len() - 1;
                accepted.push(Taken {
                    i,
                    entry,
                    fields,
                    topic_obj,
                    scope,
                    topic,
                    data,
                });
            }
        }
        let mut results: Vec<Option<Bound<'py, PyAny>>> = vec![None; items.len()];
        if accepted.is_empty() {
            return Ok((results, false));
        }
        let jobs: Vec<OpenJob> = accepted
            .iter()
            .map(|a| {
                let e = &entries[a.entry];
                (&e.session.get().keys, &e.verifier.get().0, &*a.data)
            })
            .collect();
        let outcomes = py.allow_threads(|| open_all(&jobs, cache));
        drop(jobs);
        let floors = Some(crate::replay::lock(py, &self.floors)).filter(|f| !f.is_empty());
        let mut finished = 0; // results[..finished] are final (admitted or refused here)
        for (a, outcome) in accepted.into_iter().zip(outcomes) {
            let Outcome::Opened(mut plain, at) = outcome else {
                continue; // refused: the Python opener names the reason
            };
            let (i, f, data) = (a.i, &a.fields, &*a.data);
            let e = &mut entries[a.entry];
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
            crate::wipe(&mut plain);
            let expires_at = if f.ttl_ms == 0 {
                py.None().into_bound(py)
            } else {
                ((f.sent_at_ms as f64 + f64::from(f.ttl_ms)) / 1000.0)
                    .into_pyobject(py)?
                    .into_any()
            };
            // in the order of FIELDS
            let values: [Bound<'py, PyAny>; 12] = [
                body.into_any(),
                match &decoded {
                    Some(d) => d.clone(),
                    None => PyDict::new(py).into_any(),
                },
                a.topic_obj,
                e.member.bind(py).clone().into_any(),
                e.epoch.bind(py).clone(),
                f.seq.into_pyobject(py)?.into_any(),
                (f.sent_at_ms as f64 / 1000.0).into_pyobject(py)?.into_any(),
                PyString::new(py, content_type).into_any(),
                expires_at,
                // certificate id and session id, adjacent in the header
                PyBytes::new(py, &data[9..57]).into_any(),
                a.scope.clone(),
                // never sealed for a subject: the fast path refuses every flag but batch
                py.None().into_bound(py),
            ];
            let message = self.new_message(py, values)?;
            if let Some(guard) = guard.filter(|_| inline && (at == 2 || decoded.is_some())) {
                if let Ok(scope) = Key::new(&a.scope) {
                    let floor = floors.as_ref().map_or(-1, |fl| {
                        floor_of(fl, &a.topic, &scope, &data[9..25], f.epoch, &data[25..57])
                    });
                    e.admitted = true;
                    let seen = guard.admit_keys(
                        py,
                        &e.sender_replay,
                        &e.session_replay,
                        f.seq.into(),
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
                    e.sender_key.bind(py).clone().into_any(),
                    e.session_key.bind(py).clone().into_any(),
                ],
            )?;
            results[i] = Some(tuple.into_any());
        }
        if let Some(guard) = guard {
            self.hold_guard_keys(py, guard, entries.iter().filter(|e| e.admitted));
        }
        let all = guard.is_some() && finished == results.len();
        Ok((results, all))
    }
}

/// The setter of field `name` of `cls` (see `Setter`): the attribute the MRO holds under that
/// name, as `PyObject_GenericSetAttr` looks it up, kept when its type has a `__set__`.
fn setter(cls: &Bound<'_, PyType>, name: &str) -> PyResult<Setter> {
    let py = cls.py();
    let name = PyString::intern(py, name);
    let mut descriptor = None;
    for base in cls.getattr(intern!(py, "__mro__"))?.try_iter()? {
        let namespace = base?.getattr(intern!(py, "__dict__"))?;
        if namespace.contains(&name)? {
            let raw = namespace.get_item(&name)?;
            // SAFETY: a valid type object; a null slot means no `__set__`
            let set =
                unsafe { ffi::PyType_GetSlot(ffi::Py_TYPE(raw.as_ptr()), ffi::Py_tp_descr_set) };
            if !set.is_null() {
                // SAFETY: the slot Py_tp_descr_set holds a `descrsetfunc`
                let set: ffi::descrsetfunc = unsafe { std::mem::transmute(set) };
                descriptor = Some((raw.unbind(), set));
            }
            break;
        }
    }
    Ok(Setter {
        name: name.unbind(),
        descriptor,
    })
}

/// What `object.__new__(cls)` calls to make the instance, `cls`'s `tp_alloc` (the class is
/// not abstract, so that is all `object.__new__` does without arguments); None: an abstract
/// class, or no such slot (`object.__new__` is asked, and says why not).
fn allocator(cls: &Bound<'_, PyType>) -> Option<ffi::allocfunc> {
    let tp = cls.as_type_ptr();
    // SAFETY: a valid type object
    let (flags, alloc) = unsafe {
        (
            ffi::PyType_GetFlags(tp),
            ffi::PyType_GetSlot(tp, ffi::Py_tp_alloc),
        )
    };
    if flags & ffi::Py_TPFLAGS_IS_ABSTRACT != 0 || alloc.is_null() {
        return None;
    }
    // SAFETY: the slot Py_tp_alloc holds an `allocfunc`
    Some(unsafe { std::mem::transmute::<*mut std::ffi::c_void, ffi::allocfunc>(alloc) })
}

/// A sender and a session of the table, as the envelopes of one run of them use them.
struct Entry {
    topic: String,
    cert_id: [u8; 16],
    epoch_number: u32,
    session_id: [u8; 32],
    admitted: bool, // an envelope of it went through the replay window here
    session: Py<Session>,
    verifier: Py<VerifyingKey>,
    member: Py<PyString>,
    epoch: Py<PyAny>,
    sender_key: Py<PyTuple>,
    session_key: Py<PyTuple>,
    sender_replay: Key,
    session_replay: Key,
}

impl Entry {
    fn new(py: Python<'_>, topic: &str, sender: &Sender, joined: &Joined) -> PyResult<Self> {
        Ok(Entry {
            topic: topic.to_string(),
            cert_id: sender.cert_id,
            epoch_number: joined.epoch,
            session_id: joined.session.get().keys.session_id,
            admitted: false,
            session: joined.session.clone_ref(py),
            verifier: sender.verifier.clone_ref(py),
            member: sender.member.clone_ref(py),
            epoch: joined.key.bind(py).get_item(0)?.unbind(),
            sender_key: sender.key.clone_ref(py),
            session_key: joined.key.clone_ref(py),
            sender_replay: sender.replay.clone_ref(py),
            session_replay: joined.replay.clone_ref(py),
        })
    }
}

/// The header fields of an envelope the checks passed.
struct Accepted {
    epoch: u32,
    seq: u32,
    sent_at_ms: u64,
    ttl_ms: u32,
}

/// The sender and session the last envelope that passed the checks used, in topic `.0`: the
/// next one of the same sender or session needs no lookup.
type Last<'a> = (&'a Topic, &'a Sender, &'a Joined);

/// An envelope the checks passed: its index, its sender and session (in `entries`), fields,
/// topic object, scope, topic and bytes.
struct Taken<'py> {
    i: usize,
    entry: usize,
    fields: Accepted,
    topic_obj: Bound<'py, PyAny>,
    scope: Bound<'py, PyAny>,
    topic: PyBackedStr,
    data: PyBackedBytes,
}

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
    /// An instance of the message type (a frozen dataclass with slots) with `values` for
    /// FIELDS, made as `object.__new__` makes it and its fields set as its generated
    /// `__init__` sets them (`object.__setattr__`), without a Python call per field.
    fn new_message<'py>(
        &self,
        py: Python<'py>,
        values: [Bound<'py, PyAny>; 12],
    ) -> PyResult<Bound<'py, PyAny>> {
        let cls = self.message_type.bind(py);
        let obj = match self.alloc {
            // SAFETY: the type's own allocator; null means a Python error is set
            Some(alloc) => unsafe {
                Bound::from_owned_ptr_or_err(py, alloc(cls.as_type_ptr(), 0))?
            },
            None => py
                .get_type::<pyo3::types::PyAny>()
                .call_method1(intern!(py, "__new__"), (cls,))?,
        };
        for (setter, value) in self.setters.iter().zip(&values) {
            // SAFETY: valid object pointers held by the GIL; -1 means a Python error is set
            let rc = unsafe {
                match &setter.descriptor {
                    Some((descriptor, set)) => {
                        set(descriptor.as_ptr(), obj.as_ptr(), value.as_ptr())
                    }
                    None => ffi::PyObject_GenericSetAttr(
                        obj.as_ptr(),
                        setter.name.as_ptr(),
                        value.as_ptr(),
                    ),
                }
            };
            if rc != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj)
    }

    /// For the senders and sessions of `entries`: the replay guard's own key objects, when it
    /// holds equal ones (the Python steps made the window), so that its lookups for the next
    /// envelopes find them by identity instead of comparing tuples.
    fn hold_guard_keys<'e>(
        &self,
        py: Python<'_>,
        guard: &ReplayGuard,
        entries: impl Iterator<Item = &'e Entry>,
    ) {
        for e in entries {
            let Some((sender, session)) = guard.held_keys(py, &e.sender_replay, &e.session_replay)
            else {
                continue;
            };
            let Ok(mut topics) = self.topics.lock() else {
                return;
            };
            let Some(t) = topics.get_mut(&*e.topic) else {
                continue;
            };
            if let Some(s) = t.senders.get_mut(&e.cert_id) {
                if let Ok(key) = sender.object().bind(py).downcast::<PyTuple>() {
                    s.key = key.clone().unbind();
                    s.replay = sender;
                }
            }
            if let Some(j) = t.sessions.get_mut(&(e.epoch_number, e.session_id)) {
                if let Ok(key) = session.object().bind(py).downcast::<PyTuple>() {
                    j.key = key.clone().unbind();
                    j.replay = session;
                }
            }
        }
    }

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
    /// pass" (Some: the sender and session it uses, and its fields) or "let the Python opener
    /// decide" (None). `last`: the sender and session of the last one that passed (the same
    /// entries as the lookups would give, when the keys are equal), updated.
    fn check<'a>(
        &self,
        t: &'a Topic,
        data: &[u8],
        now: i128,
        last: &mut Option<Last<'a>>,
    ) -> Option<(&'a Sender, &'a Joined, Accepted)> {
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
        let held = last.filter(|(lt, _, _)| ptr::eq(*lt, t));
        let sender = match held {
            Some((_, s, _)) if s.cert_id == cert_id => s,
            _ => t.senders.get(&cert_id)?,
        };
        if sender.cert_id != cert_id
            || !(sender.not_before_ms <= sent && sent <= sender.not_after_ms)
        {
            return None;
        }
        // 7: a joined session of an epoch not destroyed, sent within the epoch, young enough
        let joined = match held {
            Some((_, _, j))
                if j.epoch == epoch && j.session.get().keys.session_id == session_id =>
            {
                j
            }
            _ => t.sessions.get(&(epoch, session_id))?,
        };
        if now >= joined.destroy_after_ms
            || !(joined.not_before_ms - skew <= sent && sent <= joined.not_after_ms + skew)
            || (joined.max_age_ms != 0 && now > sent + joined.max_age_ms + skew)
        {
            return None;
        }
        *last = Some((t, sender, joined));
        let fields = Accepted {
            epoch,
            seq,
            sent_at_ms,
            ttl_ms,
        };
        Some((sender, joined, fields))
    }
}
