"""Objects the key authority signs with its root key (SPEC.md section 6): member certificates,
epoch descriptions, key grants and revocation lists.

Each travels as ``msgpack([body, signature])`` where ``body`` is the msgpack array of its fields
and ``signature = Ed25519(root, LABEL || body)`` with a per-kind label, so no signed object can
stand in for another kind. Decoding checks the signature before looking at any field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from functools import cached_property
from types import UnionType
from typing import Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core.suites import PROTOCOL, Suite

FORMAT = 1
MAX_SIGNED_OBJECT = 1 << 20


class SignatureError(ValueError):
    """A signed object did not verify under the pinned root key, or does not parse."""


def fingerprint(public_key: bytes) -> str:
    """The form in which users pin a root key: ``sha256:`` and the hex digest."""
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class _Signed:
    LABEL: ClassVar[bytes]

    # how many trailing fields were added after version 1 first shipped: an object signed before
    # them has fewer fields and takes their defaults (SPEC.md 6)
    LATER_FIELDS: ClassVar[int] = 0

    @cached_property
    def body(self) -> bytes:
        """The canonical encoding of the fields: what is signed and hashed."""
        values = [getattr(self, f.name) for f in fields(self)]
        return bytes(msgpack.packb([FORMAT, *_to_wire(values)], use_bin_type=True))

    def sign(self, root: Ed25519PrivateKey) -> bytes:
        body = self.body
        return bytes(msgpack.packb([body, root.sign(self.LABEL + body)], use_bin_type=True))

    @classmethod
    def verify(cls, data: bytes, root: Ed25519PublicKey) -> Self:
        if len(data) > MAX_SIGNED_OBJECT:
            raise SignatureError("signed object too large")
        try:
            body, signature = msgpack.unpackb(data, raw=False, strict_map_key=True)
            root.verify(signature, cls.LABEL + body)
            fmt, *fields = msgpack.unpackb(body, raw=False)
            if type(fmt) is not int or fmt != FORMAT:
                raise SignatureError(f"unknown format {fmt!r}")
            _check_types(cls, fields)
            obj = cls._from_fields(fields)
            obj.__dict__["body"] = bytes(body)  # ids and digests hash the bytes that were signed
            return obj
        except SignatureError:
            raise
        except InvalidSignature:
            raise SignatureError(f"{cls.__name__} signature does not verify") from None
        except (ValueError, TypeError, KeyError) as exc:  # msgpack and field errors
            raise SignatureError(f"{cls.__name__} does not parse") from exc

    @classmethod
    def _from_fields(cls, fields: list[Any]) -> Self:
        return cls(*fields)


def _check_types(cls: type[_Signed], values: list[Any]) -> None:
    """Each field's MessagePack family is the one SPEC.md 6 gives it (``str``, ``bin``,
    ``int``, arrays of those), read from the dataclass annotations; anything else is refused,
    so that no two implementations can disagree on what a mistyped object means."""
    hints = _field_types(cls)
    if not len(hints) - cls.LATER_FIELDS <= len(values) <= len(hints):
        raise SignatureError(f"{cls.__name__} has {len(values)} fields, not {len(hints)}")
    for (name, hint), v in zip(hints, values, strict=False):
        if not _has_type(hint, v):
            raise SignatureError(f"{cls.__name__}.{name} is not of type {hint}")


_FIELD_TYPES: dict[type, tuple[tuple[str, Any], ...]] = {}


def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(field name, resolved annotation)`` of a signed object class, computed once."""
    known = _FIELD_TYPES.get(cls)
    if known is None:
        hints = get_type_hints(cls)
        known = _FIELD_TYPES[cls] = tuple((f.name, hints[f.name]) for f in fields(cls))
    return known


def _has_type(hint: Any, value: Any) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: an array
        return isinstance(value, list) and all(_has_type(args[0], v) for v in value)
    if origin is tuple:  # tuple[X, Y]: an array of exactly these
        return (
            isinstance(value, list)
            and len(value) == len(args)
            and all(_has_type(a, v) for a, v in zip(args, value, strict=True))
        )
    if origin in (Union, UnionType):
        return any(_has_type(a, value) for a in args)
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, bool):
        return type(value) is bool
    if isinstance(hint, type) and issubclass(hint, int):  # int, and IntEnums such as Suite
        return type(value) is int  # exact: a boolean is not an int
    if hint in (str, bytes):
        return type(value) is hint
    raise NotImplementedError(f"no MessagePack type for field annotation {hint!r}")


def _to_wire(values: list[Any]) -> list[Any]:
    return [list(v) if isinstance(v, tuple | frozenset) else v for v in values]


@dataclass(frozen=True)
class Certificate(_Signed):
    """A member's keys and what it may do, valid from ``not_before_ms`` to ``not_after_ms``."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" certificate\x00"
    member: str
    identity_public: bytes  # Ed25519, 32 bytes
    receive_suite: Suite
    receive_public: bytes
    produce: tuple[str, ...]
    consume: tuple[str, ...]
    not_before_ms: int
    not_after_ms: int
    serial: int

    @cached_property
    def cert_id(self) -> bytes:
        """16 bytes that name this certificate in every envelope its holder seals."""
        return hashlib.sha256(self.body).digest()[:16]

    def identity_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.identity_public)

    def valid_at(self, ms: int) -> bool:
        return self.not_before_ms <= ms <= self.not_after_ms

    @classmethod
    def _from_fields(cls, fields: list[Any]) -> Self:
        m, ip, rs, rp, prod, cons, nb, na, serial = fields
        return cls(m, ip, Suite(rs), rp, tuple(prod), tuple(cons), nb, na, serial)


@dataclass(frozen=True)
class EpochDescription(_Signed):
    """One epoch of a topic: its public key, when producers use it, when it is destroyed, and
    the topic's maximum message age (openers refuse envelopes sent longer ago; 0: no limit)."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" epoch\x00"
    LATER_FIELDS: ClassVar[int] = 1  # max_age_ms
    topic: str
    epoch: int
    suite: Suite
    public_key: bytes
    not_before_ms: int  # producers switch to it from here
    not_after_ms: int  # producers stop sealing with it here
    destroy_after_ms: int  # the private key is destroyed here (retention)
    max_age_ms: int = 0  # openers refuse envelopes sent longer ago than this (0: no limit)

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(self.body).digest()

    @classmethod
    def _from_fields(cls, fields: list[Any]) -> Self:
        t, e, s, pk, nb, na, da, *rest = fields  # seven fields: signed before max_age existed
        (ma,) = rest or (0,)
        if not isinstance(ma, int) or ma < 0:
            raise ValueError("max age must be a non-negative integer")
        return cls(t, e, Suite(s), pk, nb, na, da, ma)


GRANT_INFO = PROTOCOL + b" grant\x00"


def grant_info(topic: str, epoch: int, member: str, description_digest: bytes) -> bytes:
    """HPKE info string of a grant: binds topic, epoch, member and the signed epoch description."""
    fields = [topic, epoch, member, description_digest]
    return GRANT_INFO + bytes(msgpack.packb(fields, use_bin_type=True))


@dataclass(frozen=True)
class Grant(_Signed):
    """An epoch private key sealed (HPKE base mode) to one member's receive key."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" grant\x00"
    topic: str
    epoch: int
    member: str
    description_digest: bytes
    sealed_key: bytes


TOPIC_KEY_INFO = PROTOCOL + b" topic key\x00"


def topic_key_info(topic: str, member: str) -> bytes:
    """HPKE info string of a topic key grant: binds topic and member."""
    return TOPIC_KEY_INFO + bytes(msgpack.packb([topic, member], use_bin_type=True))


@dataclass(frozen=True)
class TopicKeyGrant(_Signed):
    """A topic's 32-byte tokenization key sealed (HPKE base mode) to one member's receive key."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" topic key\x00"
    topic: str
    member: str
    sealed_key: bytes


@dataclass(frozen=True)
class SubjectKey(_Signed):
    """The public half of one data subject's key pair on a topic, for producers: what a
    subject-sealed envelope names (``subject_key_id``, random, not derived from the subject)
    and mixes into its session keys (SPEC.md 4.5, 6.9). The subject itself is named nowhere."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" subject key\x00"
    topic: str
    subject_key_id: bytes  # 16 random bytes
    public_key: bytes  # X25519, 32 bytes
    issued_at_ms: int


SUBJECT_GRANT_INFO = PROTOCOL + b" subject grant\x00"


def subject_grant_info(topic: str, subject_key_id: bytes, member: str) -> bytes:
    """HPKE info string of a subject key grant: binds topic, subject key id and member."""
    return SUBJECT_GRANT_INFO + bytes(
        msgpack.packb([topic, subject_key_id, member], use_bin_type=True)
    )


@dataclass(frozen=True)
class SubjectKeyGrant(_Signed):
    """A subject's X25519 private key sealed (HPKE base mode) to one consumer's receive key."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" subject grant\x00"
    topic: str
    subject_key_id: bytes
    member: str
    sealed_key: bytes


COMPROMISE = 0  # a revocation's ``since_ms`` for key compromise: every envelope is refused


@dataclass(frozen=True)
class RevocationList(_Signed):
    """What the authority revoked, as of ``issued_at_ms``, by member and certificate serial (so
    its size grows with revocations, not with how many certificates a member ever had).

    ``members`` entries ``(member, up_to_serial, since_ms)`` revoke that member's certificates
    with a serial up to ``up_to_serial``: for key compromise (``since_ms`` 0) every envelope
    they signed is refused, whatever its sent-at time; for retirement only envelopes sent at or
    after ``since_ms`` (sent-at is the sender's word: retirement trusts the retired key).
    ``withdrawn`` entries ``(member, topic, up_to_serial)``: those certificates no longer count
    for ``topic`` (their member no longer produces to it), though they still list it until they
    expire; they stay good for the member's other topics."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" revocations\x00"
    issued_at_ms: int
    serial: int
    members: tuple[tuple[str, int, int], ...] = ()
    withdrawn: tuple[tuple[str, str, int], ...] = ()

    def revokes(self, cert: Certificate, sent_at_ms: int) -> bool:
        """Whether an envelope ``cert`` signed, stamped ``sent_at_ms``, is refused."""
        for up_to, since in self._by_member.get(cert.member, ()):
            if cert.serial <= up_to and (since == COMPROMISE or sent_at_ms >= since):
                return True
        return False

    def withdraws(self, cert: Certificate, topic: str) -> bool:
        return cert.serial <= self._withdrawn.get((cert.member, topic), -1)

    @cached_property
    def _by_member(self) -> dict[str, list[tuple[int, int]]]:
        index: dict[str, list[tuple[int, int]]] = {}
        for member, up_to, since in self.members:
            index.setdefault(member, []).append((up_to, since))
        return index

    @cached_property
    def _withdrawn(self) -> dict[tuple[str, str], int]:
        index: dict[tuple[str, str], int] = {}
        for member, topic, up_to in self.withdrawn:
            index[(member, topic)] = max(up_to, index.get((member, topic), -1))
        return index

    @classmethod
    def _from_fields(cls, fields: list[Any]) -> Self:
        at, serial, members, withdrawn = fields
        entries = tuple((str(m), int(s), int(t)) for m, s, t in members)
        gone = tuple((str(m), str(t), int(s)) for m, t, s in withdrawn)
        return cls(at, serial, entries, gone)


@dataclass(frozen=True)
class SealingEpochAnswer(_Signed):
    """The KDS's answer to one producer's sealing-epoch request: which epoch descriptions
    (by digest; ``next_digest`` empty when none is published) it named, for the request carrying
    ``nonce``, at ``issued_at_ms``. A recorded answer cannot be replayed to another request."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" sealing epoch\x00"
    topic: str
    current_digest: bytes
    next_digest: bytes
    nonce: bytes
    issued_at_ms: int


@dataclass(frozen=True)
class AuditHead(_Signed):
    """The head of the KDS's audit hash chain as the KDS publishes it (SPEC.md 6.12): the
    ``sequence`` of its last entry, that entry's ``chain_hash`` (32 bytes; all zero for an empty
    log) and when the KDS signed it. Kept by clients and admins outside the KDS database, it
    shows a later rollback of the database: a head that goes backwards."""

    LABEL: ClassVar[bytes] = PROTOCOL + b" published audit head\x00"
    sequence: int
    chain_hash: bytes
    issued_at_ms: int

    def behind(self, seen: AuditHead) -> bool:
        """True when this head cannot follow ``seen`` in one chain: a lower sequence, or the
        same sequence with another hash (a rollback or a fork)."""
        return self.sequence < seen.sequence or (
            self.sequence == seen.sequence and self.chain_hash != seen.chain_hash
        )
