"""Two implementations of the per-message hot path, one behaviour; this module picks one.

``native``: the Rust extension ``sealedbus.core._native`` (built from ``sealedbus/_native`` when
cargo is there; keys in native memory, zeroized on drop; the GIL released for cryptography).
``pure``: the Python reference (``wire``, ``envelope``, ``merkle``). ``import sealedbus`` uses
the native core when it is built; ``SEALEDBUS_NATIVE=0`` forces the pure one.

Both offer the same few batch-shaped operations, and Sealer and Opener call only these: start or
join a session, ``seal`` a batch of messages, ``open_many`` a batch of parsed envelopes. Every
policy decision (which keys, which checks, in which order) stays with the caller.

Ed25519 (SPEC.md 5.4): both refuse a public key or R that is a small-order point or a
non-canonical encoding before any equation runs, then both check the cofactorless equation: the
pure core through ``cryptography`` (OpenSSL), the native core through ed25519-dalek's
``verify``. The native core batches (cofactored) only signatures whose A and R are
torsion-free, where the two equations agree, and checks every other one singly.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import envelope, merkle, suites, wire
from sealedbus.core.envelope import HeaderValue
from sealedbus.core.replay import ReplayGuard, Seen
from sealedbus.core.suites import Suite
from sealedbus.errors import (
    InvalidEnvelope,
    MalformedEnvelope,
    Reason,
    UnauthenticEnvelope,
    UnopenableEnvelope,
)

_native: Any
try:
    from sealedbus.core import _native  # type: ignore[attr-defined, no-redef, unused-ignore]
except ImportError:  # not built (no cargo at install time): the pure core serves
    _native = None

Opened = tuple[dict[str, HeaderValue], bytes]
# One message to seal, as the sealer drafts it: CoreSession.handle, header head (magic through
# session id, ``wire.header_head``), sequence number, sent at (ms), ttl (ms, 0: none), content
# type, header tail (subject fields || encapsulation), packed sealed headers
# (``envelope.pack_headers``), body; then the topic and the caller's context, which the cores
# only hand back (``seal``'s ``sealed_type``). The cores build the header (``wire.header_tail``).
SealItem = tuple[Any, bytes, int, int, int, bytes, bytes, bytes, bytes, str, Any]


@dataclass(frozen=True, slots=True)
class CoreSession:
    """A session as the sealer and opener see it; ``handle`` belongs to the core that made it."""

    session_id: bytes
    encapsulation: bytes
    handle: Any


@dataclass(frozen=True, slots=True)
class OpenJob:
    """One envelope to verify and decrypt, already parsed and through every policy check."""

    session: CoreSession
    verifier: Any  # Core.verifier(...) of the sender's identity key
    parsed: wire.Parsed
    data: bytes
    topic: str  # the cores read only the fields above; these are the caller's
    member: str
    scope: Hashable = None  # where in the topic it was read (replay windows, SPEC.md 7.10)
    joined: Any = None  # the opener's session-cache entry, added once the signature verified


class Core(Protocol):
    name: str

    def start_session(
        self, suite: Suite, topic: bytes, epoch: int, epoch_public: bytes, seed: bytes
    ) -> CoreSession: ...

    def join_session(
        self,
        suite: Suite,
        topic: bytes,
        epoch: int,
        epoch_keys: suites.KeyPair,
        session_id: bytes,
        encapsulation: bytes,
    ) -> CoreSession: ...

    def subject_session(
        self, parent: CoreSession, subject_key_id: bytes, encapsulation: bytes, ikm: bytes
    ) -> CoreSession:
        """The session a subject-sealed envelope of ``parent`` uses (SPEC.md 4.5): keys expanded
        from ``HKDF(salt = parent's session secret, ikm, info)``; same session id and counter."""
        ...

    def signer(self, key: Ed25519PrivateKey) -> Any: ...

    def verifier(self, key: Ed25519PublicKey) -> Any: ...

    def seal(
        self, signer: Any, items: Sequence[SealItem], batch: bool, sealed_type: Any = None
    ) -> list[Any]:
        """The envelopes of ``items`` in order: each signed (per-message), or with ``batch`` one
        signature over their Merkle root. As bytes, or with ``sealed_type`` (a frozen dataclass
        with slots) as ``sealed_type(topic, envelope, context)``."""
        ...

    def new_cache(self) -> Any: ...

    def open_many(self, jobs: Sequence[OpenJob], cache: Any) -> list[Opened | InvalidEnvelope]: ...

    def new_open_table(
        self, message_type: type, skew_ms: int, max_age_ms: int | None, max_envelope: int
    ) -> Any: ...

    def new_replay_guard(
        self, window: int, max_sessions: int, max_sessions_per_sender: int = 1024
    ) -> Any: ...


# The eight points of order dividing 8, canonically encoded (the identity first) ...
SMALL_ORDER_POINTS = tuple(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)
# ... and in every encoding a decoder may accept ("Taming the many EdDSAs", table 6b). With the
# y < p check below this covers every non-canonical encoding too.
_SMALL_ORDER = frozenset(
    SMALL_ORDER_POINTS
    + tuple(
        bytes.fromhex(h)
        for h in (
            "0100000000000000000000000000000000000000000000000000000000000080",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        )
    )
)
_P = 2**255 - 19


def acceptable_point(encoding: bytes) -> bool:
    """SPEC.md 5.4: an encoding of A or R that may enter the equation (y < p, not small order)."""
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    return len(encoding) == 32 and y < _P and encoding not in _SMALL_ORDER


def pure_ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """The pure core's Ed25519 rule: SPEC.md 5.4's prechecks, then OpenSSL (cofactorless)."""
    if not (acceptable_point(public) and acceptable_point(signature[:32])):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _precheck(key_ok: bool, signature: bytes) -> None:
    """SPEC.md 5.4 rules 1-2 for the key (checked once per sender) and R."""
    if not key_ok or not acceptable_point(signature[:32]):
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE)


_LEN16 = wire.INNER_HEADERS_LEN


class PureCore:
    """The reference: ``envelope`` and ``merkle`` over ``cryptography``."""

    name = "pure"

    def start_session(
        self, suite: Suite, topic: bytes, epoch: int, epoch_public: bytes, seed: bytes
    ) -> CoreSession:
        keys = suites.start_session(suite, topic, epoch, epoch_public, seed)
        ctx = envelope.SessionContext(topic, keys)
        return CoreSession(keys.session_id, keys.encapsulation, ctx)

    def join_session(
        self,
        suite: Suite,
        topic: bytes,
        epoch: int,
        epoch_keys: suites.KeyPair,
        session_id: bytes,
        encapsulation: bytes,
    ) -> CoreSession:
        keys = suites.join_session(suite, topic, epoch, epoch_keys, session_id, encapsulation)
        return CoreSession(session_id, encapsulation, envelope.SessionContext(topic, keys))

    def subject_session(
        self, parent: CoreSession, subject_key_id: bytes, encapsulation: bytes, ikm: bytes
    ) -> CoreSession:
        ctx: envelope.SessionContext = parent.handle
        keys = suites.subject_session(ctx.keys, subject_key_id, encapsulation, ikm)
        return CoreSession(
            parent.session_id, parent.encapsulation, envelope.SessionContext(ctx.topic, keys)
        )

    def signer(self, key: Ed25519PrivateKey) -> Any:
        return key

    def verifier(self, key: Ed25519PublicKey) -> Any:
        return (key, acceptable_point(key.public_bytes_raw()))

    def seal(
        self, signer: Any, items: Sequence[SealItem], batch: bool, sealed_type: Any = None
    ) -> list[Any]:
        drafts = []
        for ctx, head, seq, sent_at_ms, ttl_ms, content_type, tail, headers, body, _, _ in items:
            header_bytes = head + wire.header_tail(seq, sent_at_ms, ttl_ms, content_type, tail)
            plaintext = _LEN16.pack(len(headers)) + headers + body
            ciphertext = ctx.encrypt(seq, header_bytes, plaintext)
            signed = (ctx.leaf_hash if batch else ctx.signed_content)(header_bytes, ciphertext)
            drafts.append(envelope.Draft(header_bytes, ciphertext, signed))
        if batch:
            envelopes = envelope.finish_batch(signer, drafts)
        else:
            envelopes = [envelope.finish_single(signer, d) for d in drafts]
        if sealed_type is None:
            return envelopes
        return [sealed_type(i[9], e, i[10]) for i, e in zip(items, envelopes, strict=True)]

    def new_cache(self) -> Any:
        return merkle.VerifiedTrees()

    def new_open_table(
        self, message_type: type, skew_ms: int, max_age_ms: int | None, max_envelope: int
    ) -> Any:
        return None  # no fast path: the opener runs every step itself

    def new_replay_guard(
        self, window: int, max_sessions: int, max_sessions_per_sender: int = 1024
    ) -> Any:
        return ReplayGuard(window, max_sessions, max_sessions_per_sender)

    def open_many(self, jobs: Sequence[OpenJob], cache: Any) -> list[Opened | InvalidEnvelope]:
        out: list[Opened | InvalidEnvelope] = []
        for job in jobs:
            try:
                out.append(self._open(job, cache))
            except InvalidEnvelope as exc:
                out.append(exc)
        return out

    def _open(self, job: OpenJob, trees: merkle.VerifiedTrees) -> Opened:
        identity, key_ok = job.verifier
        parsed, ctx = job.parsed, job.session.handle
        if parsed.proof is None:
            _precheck(key_ok, parsed.signature)
            envelope.verify_single(identity, parsed, ctx)
        else:  # one signature per batch: envelopes of a verified tree need no Ed25519
            proof = parsed.proof
            tree = (parsed.header.cert_id, proof.size, parsed.signature)
            leaf = ctx.leaf_hash(parsed.header_bytes, parsed.ciphertext)
            if not trees.contains(tree, proof.index, proof.size, leaf, proof.path):
                root = envelope.batch_root(parsed, leaf)
                _precheck(key_ok, parsed.signature)
                envelope.verify_root(identity, parsed, root)
                trees.add(tree, proof.index, proof.size, leaf, proof.path)
        return envelope.open_body(ctx, parsed)


class NativeCore:
    """The Rust extension; handles are native objects, secrets never come back to Python."""

    name = "native"

    def __init__(self, module: Any) -> None:
        self._n = module
        self._signers: dict[int, tuple[Ed25519PrivateKey, Any]] = {}
        self._lock = threading.Lock()

    def start_session(
        self, suite: Suite, topic: bytes, epoch: int, epoch_public: bytes, seed: bytes
    ) -> CoreSession:
        context = suites.session_context(suite, topic, epoch, epoch_public)
        if suite is Suite.X25519:
            if len(epoch_public) != 32:
                raise ValueError("X25519 public key must be 32 bytes")
            try:
                handle = self._n.session_x25519_start(topic, context, seed, epoch_public)
            except ValueError as exc:
                raise suites.WeakSharedSecret(str(exc)) from None
            return CoreSession(handle.session_id, b"", handle)
        encapsulation = suites.hpke_seal(suite, epoch_public, seed, suites.LABEL_HYBRID + context)
        session_id = hashlib.sha256(encapsulation).digest()
        handle = self._n.session_from_secret(topic, context, session_id, seed)
        return CoreSession(session_id, encapsulation, handle)

    def join_session(
        self,
        suite: Suite,
        topic: bytes,
        epoch: int,
        epoch_keys: suites.KeyPair,
        session_id: bytes,
        encapsulation: bytes,
    ) -> CoreSession:
        context = suites.session_context(suite, topic, epoch, epoch_keys.public)
        if suite is Suite.X25519:
            handle = self._n.session_x25519_join(topic, context, epoch_keys.private, session_id)
            return CoreSession(session_id, b"", handle)
        if hashlib.sha256(encapsulation).digest() != session_id:
            raise ValueError("session id does not match the encapsulation")
        label = suites.LABEL_HYBRID + context
        secret = suites.hpke_open(suite, epoch_keys.private, encapsulation, label)
        handle = self._n.session_from_secret(topic, context, session_id, secret)
        return CoreSession(session_id, encapsulation, handle)

    def subject_session(
        self, parent: CoreSession, subject_key_id: bytes, encapsulation: bytes, ikm: bytes
    ) -> CoreSession:
        handle = self._n.session_subject(parent.handle, subject_key_id, encapsulation, ikm)
        return CoreSession(parent.session_id, parent.encapsulation, handle)

    def signer(self, key: Ed25519PrivateKey) -> Any:
        held = self._signers.get(id(key))
        if held is None or held[0] is not key:
            with self._lock:
                if len(self._signers) > 16:
                    self._signers.clear()
                held = (key, self._n.SigningKey(key.private_bytes_raw()))
                self._signers[id(key)] = held
        return held[1]

    def verifier(self, key: Ed25519PublicKey) -> Any:
        return self._n.VerifyingKey(key.public_bytes_raw())

    def seal(
        self, signer: Any, items: Sequence[SealItem], batch: bool, sealed_type: Any = None
    ) -> list[Any]:
        return self._n.seal(signer, items, batch, sealed_type)  # type: ignore[no-any-return]

    def new_cache(self) -> Any:
        return self._n.RootCache()

    def new_open_table(
        self, message_type: type, skew_ms: int, max_age_ms: int | None, max_envelope: int
    ) -> Any:
        """The opener's fast path (``_native/src/fast.rs``): senders and sessions the opener
        checked, whose envelopes one call per batch parses, checks, verifies and decrypts into
        ``message_type`` instances (the opener's frozen dataclass)."""
        return self._n.OpenTable(
            message_type, skew_ms, max_age_ms, max_envelope, decode_headers=decode_headers
        )

    def new_replay_guard(
        self, window: int, max_sessions: int, max_sessions_per_sender: int = 1024
    ) -> Any:
        """``replay.ReplayGuard`` in Rust (``_native/src/replay.rs``), same API and decisions:
        the fast path admits through it in the call that opened the envelopes."""
        seen = (Seen.NEW, Seen.DUPLICATE, Seen.TOO_OLD)
        return self._n.ReplayGuard(seen, window, max_sessions, max_sessions_per_sender)

    def open_many(self, jobs: Sequence[OpenJob], cache: Any) -> list[Opened | InvalidEnvelope]:
        results = self._n.open_many([(j.session.handle, j.verifier, j.data) for j in jobs], cache)
        out: list[Opened | InvalidEnvelope] = []
        for r in results:
            if isinstance(r, str):
                out.append(_refusal(Reason(r)))
            elif r[0]:
                try:
                    out.append((decode_headers(r[0]), r[1]))
                except InvalidEnvelope as exc:
                    out.append(exc)
            else:
                out.append(({}, r[1]))
        return out


def decode_headers(packed: bytes) -> dict[str, HeaderValue]:
    """The sealed headers the native core split off the plaintext (``h`` > 0 bytes).

    Messages in a row mostly carry the same headers (RabbitMQ binds the routing key into each):
    the last bytes decoded are kept with their headers, and a hit hands out a fresh copy (the
    caller may change it). The values are immutable (str, bytes, int); one map is kept."""
    global _last_headers  # noqa: PLW0603 - a one-entry cache, replaced whole (thread-safe)
    last = _last_headers
    if last[0] == packed:
        return dict(last[1])
    headers = envelope.decode_headers(packed)
    _last_headers = (bytes(packed), dict(headers))
    return headers


_last_headers: tuple[bytes, dict[str, HeaderValue]] = (b"", {})


def _refusal(reason: Reason) -> InvalidEnvelope:
    cls: Callable[[Reason], InvalidEnvelope] = {
        Reason.BAD_SIGNATURE: UnauthenticEnvelope,
        Reason.DECRYPT_FAILED: UnopenableEnvelope,
    }.get(reason, MalformedEnvelope)
    return cls(reason)


PURE: Core = PureCore()
NATIVE: Core | None = None if _native is None else NativeCore(_native)


def get(name: str | None = None) -> Core:
    """The core called ``name`` ("pure" or "native"), or the default one for None."""
    if name is None:
        return _default
    if name == "pure":
        return PURE
    if name == "native":
        if NATIVE is None:
            raise ImportError("the native core is not built (no cargo at install time)")
        return NATIVE
    raise ValueError(f"unknown core {name!r}: 'pure' or 'native'")


def _choose() -> Core:
    if os.environ.get("SEALEDBUS_NATIVE", "").strip().lower() in ("0", "false", "no", "off"):
        return PURE
    return NATIVE or PURE


_default: Core = _choose()


@contextmanager
def using(name: str) -> Iterator[Core]:
    """Within the block, Sealers and Openers made without ``core=`` use core ``name`` (tests)."""
    global _default  # noqa: PLW0603 - one process-wide choice, like SEALEDBUS_NATIVE
    previous, _default = _default, get(name)
    try:
        yield _default
    finally:
        _default = previous


def describe() -> str:
    """For ``sealedbus --version``: which core runs, and why."""
    if _default is NATIVE:
        return "native core (Rust)"
    if NATIVE is not None:
        return "pure-Python core (SEALEDBUS_NATIVE=0)"
    return "pure-Python core (native core not built)"
