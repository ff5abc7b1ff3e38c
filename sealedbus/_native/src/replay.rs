//! The replay windows of SPEC.md section 7 step 10 for the native core: the counterpart of
//! `sealedbus.core.replay.ReplayGuard`, same API, same decisions, same bounds (the tests run
//! both). The opener's fast path admits through it in the call that opened the envelopes, and
//! the Python steps (the slow path, `Opener.release`) call the same object, so one window per
//! session and scope holds whichever path opened a message.
//!
//! Senders, sessions and scopes are any hashable Python objects, compared as a dict compares
//! keys (hash, then `==`); every method runs with the GIL held.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A Python object as a map key: its hash, computed once, and dict equality.
pub struct Key {
    hash: isize,
    obj: Py<PyAny>,
}

impl Key {
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
        Ok(Key {
            hash: obj.hash()?,
            obj: obj.clone().unbind(),
        })
    }

    fn is_none(&self) -> bool {
        // SAFETY: comparing pointers only
        self.obj.as_ptr() == unsafe { ffi::Py_None() }
    }

    /// The Python object.
    pub fn object(&self) -> &Py<PyAny> {
        &self.obj
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Key {
        Key {
            hash: self.hash,
            obj: self.obj.clone_ref(py),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_isize(self.hash);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        if self.hash != other.hash {
            return false;
        }
        // SAFETY: keys are only compared inside the methods below, which hold the GIL (they take
        // a `Python` token); an error in `__eq__` counts as "not equal" and is cleared.
        unsafe {
            match ffi::PyObject_RichCompareBool(self.obj.as_ptr(), other.obj.as_ptr(), ffi::Py_EQ) {
                1 => true,
                0 => false,
                _ => {
                    ffi::PyErr_Clear();
                    false
                }
            }
        }
    }
}

impl Eq for Key {}

/// Keys carry Python's hash (already mixed for tuples, str and bytes; ints are themselves):
/// one multiplication spreads it over the bits hashbrown uses, instead of SipHash per lookup.
/// Only keys of envelopes whose signature verified (or the caller's own) ever get here.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_isize(&mut self, i: isize) {
        self.0 = (self.0 ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// `ReplayWindow`: the highest sequence number seen and a bitmap of the `size` below it, kept
/// as a ring (bit `seq % size`); sequence numbers at or below `floor` count as seen (not exact).
struct Window {
    highest: i64,
    floor: i64,
    bits: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Seen {
    New = 0,
    Duplicate = 1,
    TooOld = 2,
}

impl Window {
    fn new(size: i64, floor: i64) -> Window {
        Window {
            highest: floor,
            floor,
            bits: vec![0; (size as usize).div_ceil(64)],
        }
    }

    fn slot(seq: i64, size: i64) -> (usize, u64) {
        let at = seq.rem_euclid(size) as usize;
        (at / 64, 1u64 << (at % 64))
    }

    fn bit(&self, seq: i64, size: i64) -> bool {
        let (w, m) = Window::slot(seq, size);
        self.bits[w] & m != 0
    }

    fn check(&self, seq: i64, size: i64, exact: bool) -> Seen {
        if seq > self.highest {
            return Seen::New;
        }
        if self.highest - seq >= size {
            return Seen::TooOld;
        }
        if self.bit(seq, size) || (!exact && seq <= self.floor) {
            return Seen::Duplicate;
        }
        Seen::New
    }

    /// Move the highest to `seq` (> highest): the slots of the numbers passed are emptied.
    fn advance(&mut self, seq: i64, size: i64) {
        if seq - self.highest >= size {
            self.bits.iter_mut().for_each(|w| *w = 0);
        } else {
            for s in self.highest + 1..=seq {
                let (w, m) = Window::slot(s, size);
                self.bits[w] &= !m;
            }
        }
        self.highest = seq;
    }

    fn mark(&mut self, seq: i64, size: i64) {
        if seq > self.highest {
            self.advance(seq, size);
        } else if self.highest - seq >= size {
            return; // below the window: nothing to remember
        }
        let (w, m) = Window::slot(seq, size);
        self.bits[w] |= m;
    }

    fn unmark(&mut self, seq: i64, size: i64) {
        let offset = self.highest - seq;
        if (0..size).contains(&offset) {
            let (w, m) = Window::slot(seq, size);
            self.bits[w] &= !m;
        }
    }

    fn lift(&mut self, floor: i64, size: i64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        if floor > self.highest {
            self.advance(floor, size);
        }
    }
}

struct Scopes {
    own: Vec<(Key, Window)>, // one per scope (a Kafka partition, or None)
    every: Option<Window>,   // over every scope of the session (only with a scope not None)
    tick: u64,               // when last used: the sender's least recently used go first
}

impl Scopes {
    fn windows(&self) -> usize {
        self.own.len() + usize::from(self.every.is_some())
    }

    fn find(&mut self, scope: &Key) -> Option<&mut Window> {
        self.own
            .iter_mut()
            .find(|(k, _)| k == scope)
            .map(|(_, w)| w)
    }
}

struct Sessions {
    by_key: KeyMap<Scopes>,
    // tick -> session, each session once, at or before its last use (`touch` only moves its
    // tick; `evict` puts a stale entry back at its last use and looks again)
    lru: BTreeMap<u64, Key>,
    order: u64, // when the sender came (ties of the global bound: oldest first)
}

#[derive(Default)]
struct Inner {
    senders: KeyMap<Sessions>,
    count: usize, // windows held, over every sender, session and scope
    clock: u64,
}

/// `sealedbus.core.replay.ReplayGuard` in Rust (see there for the bounds and the scopes).
#[pyclass(frozen, module = "sealedbus.core._native")]
pub struct ReplayGuard {
    inner: Mutex<Inner>,
    seen: [Py<PyAny>; 3], // what check and admit return: Seen.NEW, DUPLICATE, TOO_OLD
    #[pyo3(get)]
    window: i64,
    #[pyo3(get)]
    max_sessions: usize,
    #[pyo3(get)]
    max_sessions_per_sender: usize,
}

#[pymethods]
impl ReplayGuard {
    #[new]
    #[pyo3(signature = (seen, window = 4096, max_sessions = 100_000, max_sessions_per_sender = 1024))]
    fn new(
        seen: [Py<PyAny>; 3],
        window: i64,
        max_sessions: i64,
        max_sessions_per_sender: i64,
    ) -> PyResult<Self> {
        if window < 1 || max_sessions < 1 || max_sessions_per_sender < 1 {
            return Err(PyValueError::new_err(
                "window and session limits must be positive",
            ));
        }
        Ok(ReplayGuard {
            inner: Mutex::new(Inner::default()),
            seen,
            window,
            max_sessions: max_sessions as usize,
            max_sessions_per_sender: max_sessions_per_sender as usize,
        })
    }

    #[pyo3(signature = (sender, session, seq, scope = None, floor = -1))]
    fn check(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        session: &Bound<'_, PyAny>,
        seq: i64,
        scope: Option<&Bound<'_, PyAny>>,
        floor: i64,
    ) -> PyResult<Py<PyAny>> {
        let (sender, session, scope) = keys(py, sender, session, scope)?;
        let seen = self
            .lock(py)
            .check(self.window, &sender, &session, seq, &scope, floor);
        Ok(self.seen[seen as usize].clone_ref(py))
    }

    #[pyo3(signature = (sender, session, seq, scope = None, floor = -1))]
    fn mark(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        session: &Bound<'_, PyAny>,
        seq: i64,
        scope: Option<&Bound<'_, PyAny>>,
        floor: i64,
    ) -> PyResult<()> {
        let (sender, session, scope) = keys(py, sender, session, scope)?;
        self.lock(py)
            .mark(self, py, sender, session, seq, scope, floor);
        Ok(())
    }

    #[pyo3(signature = (sender, session, seq, scope = None, floor = -1))]
    fn admit(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        session: &Bound<'_, PyAny>,
        seq: i64,
        scope: Option<&Bound<'_, PyAny>>,
        floor: i64,
    ) -> PyResult<Py<PyAny>> {
        let (sender, session, scope) = keys(py, sender, session, scope)?;
        let seen = self.admit_keys(py, &sender, &session, seq, &scope, floor);
        Ok(self.seen[seen as usize].clone_ref(py))
    }

    #[pyo3(signature = (sender, session, seq, scope = None))]
    fn unmark(
        &self,
        py: Python<'_>,
        sender: &Bound<'_, PyAny>,
        session: &Bound<'_, PyAny>,
        seq: i64,
        scope: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (sender, session, scope) = keys(py, sender, session, scope)?;
        let mut inner = self.lock(py);
        let Some(scopes) = inner
            .senders
            .get_mut(&sender)
            .and_then(|s| s.by_key.get_mut(&session))
        else {
            return Ok(());
        };
        if let Some(w) = scopes.find(&scope) {
            w.unmark(seq, self.window);
        }
        if !scope.is_none() {
            if let Some(w) = scopes.every.as_mut() {
                w.unmark(seq, self.window);
            }
        }
        Ok(())
    }

    /// Windows held (as `ReplayGuard._count`).
    #[getter(_count)]
    fn count(&self, py: Python<'_>) -> usize {
        self.lock(py).count
    }
}

/// A lock held around Python calls (a key's `__eq__` may let another thread run): taken with
/// the GIL released when another thread holds it, so that no thread ever waits for it while
/// holding the GIL the holder may be waiting for.
pub fn lock<'a, T: Send>(py: Python<'_>, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match mutex.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.allow_threads(|| {
                drop(mutex.lock()); // wait for it without the GIL, then try again
            }),
        }
    }
}

fn keys(
    py: Python<'_>,
    sender: &Bound<'_, PyAny>,
    session: &Bound<'_, PyAny>,
    scope: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Key, Key, Key)> {
    let none = py.None().into_bound(py);
    Ok((
        Key::new(sender)?,
        Key::new(session)?,
        Key::new(scope.unwrap_or(&none))?,
    ))
}

impl ReplayGuard {
    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Inner> {
        lock(py, &self.inner)
    }

    /// The keys held for the window of `session` of `sender`, when either is an equal object
    /// but not the one given (a window made by the Python steps, which build their own key
    /// tuples): a caller that uses them from then on is found by identity, not by `==`.
    pub fn held_keys(&self, py: Python<'_>, sender: &Key, session: &Key) -> Option<(Key, Key)> {
        let inner = self.lock(py);
        let (held_sender, sessions) = inner.senders.get_key_value(sender)?;
        let (held_session, _) = sessions.by_key.get_key_value(session)?;
        if held_sender.obj.is(&sender.obj) && held_session.obj.is(&session.obj) {
            return None;
        }
        Some((held_sender.clone_ref(py), held_session.clone_ref(py)))
    }

    /// `check`, then `mark` when NEW: the opener's step 10 in one step.
    pub fn admit_keys(
        &self,
        py: Python<'_>,
        sender: &Key,
        session: &Key,
        seq: i64,
        scope: &Key,
        floor: i64,
    ) -> Seen {
        let mut inner = self.lock(py);
        if inner.admit_usual(self, sender, session, seq, scope, floor) {
            return Seen::New;
        }
        let seen = inner.check(self.window, sender, session, seq, scope, floor);
        if seen == Seen::New {
            inner.mark(
                self,
                py,
                sender.clone_ref(py),
                session.clone_ref(py),
                seq,
                scope.clone_ref(py),
                floor,
            );
        }
        seen
    }
}

impl Inner {
    /// `ReplayGuard.admit`'s shortcut: a window held, `seq` past everything seen, no floor to
    /// lift, nothing to evict: marked (true), else nothing done (false).
    fn admit_usual(
        &mut self,
        g: &ReplayGuard,
        sender: &Key,
        session: &Key,
        seq: i64,
        scope: &Key,
        floor: i64,
    ) -> bool {
        if self.count > g.max_sessions {
            return false;
        }
        let Some(scopes) = self
            .senders
            .get_mut(sender)
            .and_then(|s| s.by_key.get_mut(session))
        else {
            return false;
        };
        let scoped = !scope.is_none();
        let every_ok = match &scopes.every {
            None => !scoped,
            Some(every) => seq > every.highest,
        };
        if !every_ok {
            return false;
        }
        let Some(own) = scopes.find(scope) else {
            return false;
        };
        if floor > own.floor || seq <= own.highest {
            return false;
        }
        own.mark(seq, g.window);
        if scoped {
            if let Some(every) = scopes.every.as_mut() {
                every.mark(seq, g.window);
            }
        }
        self.clock += 1;
        scopes.tick = self.clock;
        true
    }

    fn check(
        &mut self,
        size: i64,
        sender: &Key,
        session: &Key,
        seq: i64,
        scope: &Key,
        floor: i64,
    ) -> Seen {
        let fresh = || {
            if floor >= 0 {
                fresh_check(floor, seq, size)
            } else {
                Seen::New
            }
        };
        let Some(scopes) = self
            .senders
            .get_mut(sender)
            .and_then(|s| s.by_key.get_mut(session))
        else {
            return fresh();
        };
        let seen = match scopes.find(scope) {
            Some(own) => {
                own.lift(floor, size);
                own.check(seq, size, false)
            }
            None => fresh(),
        };
        if seen == Seen::New {
            if let Some(every) = &scopes.every {
                if every.check(seq, size, true) == Seen::Duplicate {
                    return Seen::Duplicate; // opened in another scope: a copy moved there
                }
            }
        }
        seen
    }

    #[allow(clippy::too_many_arguments)]
    fn mark(
        &mut self,
        g: &ReplayGuard,
        py: Python<'_>,
        sender: Key,
        session: Key,
        seq: i64,
        scope: Key,
        floor: i64,
    ) {
        let size = g.window;
        self.clock += 1;
        let tick = self.clock;
        let sessions = self
            .senders
            .entry(sender.clone_ref(py))
            .or_insert(Sessions {
                by_key: KeyMap::default(),
                lru: BTreeMap::new(),
                order: tick,
            });
        if let Some(scopes) = sessions.by_key.get_mut(&session) {
            scopes.tick = tick;
        } else {
            sessions.lru.insert(tick, session.clone_ref(py));
            sessions.by_key.insert(
                session.clone_ref(py),
                Scopes {
                    own: Vec::new(),
                    every: None,
                    tick,
                },
            );
            if sessions.by_key.len() > g.max_sessions_per_sender {
                self.evict(&sender);
            }
        }
        let Some(scopes) = self
            .senders
            .get_mut(&sender)
            .and_then(|s| s.by_key.get_mut(&session))
        else {
            return; // cannot happen: the sender holds two sessions or more when it evicts
        };
        let scoped = !scope.is_none();
        match scopes.find(&scope) {
            Some(w) => {
                w.lift(floor, size);
                w.mark(seq, size);
            }
            None => {
                let mut w = Window::new(size, floor);
                w.mark(seq, size);
                scopes.own.push((scope, w));
                self.count += 1;
            }
        }
        if scoped {
            if scopes.every.is_none() {
                scopes.every = Some(Window::new(size, -1));
                self.count += 1;
            }
            if let Some(every) = scopes.every.as_mut() {
                every.mark(seq, size);
            }
        }
        if self.count > g.max_sessions {
            // the sender holding the most sessions (the one that came first among equals)
            let most = self
                .senders
                .iter()
                .max_by(|a, b| {
                    (a.1.by_key.len(), std::cmp::Reverse(a.1.order))
                        .cmp(&(b.1.by_key.len(), std::cmp::Reverse(b.1.order)))
                })
                .map(|(k, _)| k.clone_ref(py));
            if let Some(most) = most {
                self.evict(&most);
            }
        }
    }

    /// Drop the least recently used session of `sender` (and the sender when it was the last).
    fn evict(&mut self, sender: &Key) {
        let Some(sessions) = self.senders.get_mut(sender) else {
            return;
        };
        while let Some((at, oldest)) = sessions.lru.pop_first() {
            match sessions.by_key.get(&oldest).map(|s| s.tick) {
                Some(used) if used != at => {
                    sessions.lru.insert(used, oldest); // used since: not the oldest
                }
                Some(_) => {
                    if let Some(scopes) = sessions.by_key.remove(&oldest) {
                        self.count -= scopes.windows();
                    }
                    break;
                }
                None => {} // cannot happen: each session held has one entry
            }
        }
        if sessions.by_key.is_empty() {
            self.senders.remove(sender);
        }
    }
}

/// `ReplayWindow(size, floor).check(seq)` of a window that holds nothing yet.
fn fresh_check(floor: i64, seq: i64, size: i64) -> Seen {
    if seq > floor {
        Seen::New
    } else if floor - seq >= size {
        Seen::TooOld
    } else {
        Seen::Duplicate
    }
}
