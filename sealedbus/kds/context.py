"""What every part of the KDS shares: the refusal it raises, the store, the root key, the master
keyring, the clock and the randomness, and the few helpers every concern reads with.

``KeyDistributionService`` is the one ``Context``; each part (``kds/admins.py``,
``kds/enrollment.py``, ``kds/certificates.py``, ``kds/topics.py``, ``kds/epochs.py``) holds it,
so replacing ``master``, ``rng`` or a clock on the service reaches every part at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Row

from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode
from sealedbus.kds import store as rows
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.store import Store
from sealedbus.keys.authority import HOUR_MS, TopicPolicy

LIVE, WITHDRAWN, DESTROYED = "live", "withdrawn", "destroyed"
ROLE_PREFIX = "role:"


class ServiceError(Exception):
    """A refusal: HTTP ``status``, stable ``code`` (the KdsCode a client reads back as
    ``Refused.reason``) and a ``reason`` safe to show the caller."""

    def __init__(self, status: int, code: KdsCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


class Context:
    """The state all parts of the service read: set once, replaceable in place (tests swap the
    clock or the randomness; ``rotate-master-key`` swaps ``master``)."""

    def __init__(
        self,
        store: Store,
        root: Ed25519PrivateKey,
        master: MasterKeyring,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        certificate_lifetime_ms: int = HOUR_MS,
        replica: str = "kds",
        totp_clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.root_public = root.public_key()
        self.master = master
        self.clock = clock
        self.rng = rng  # every random value the service draws (keys, token keys, session ids)
        self.certificate_lifetime_ms = certificate_lifetime_ms
        self.replica = replica
        self.totp_clock = totp_clock or clock  # tests give TOTP codes a clock of their own
        self._compose()

    def _compose(self) -> None:
        """Build what rests on the state above (``KeyDistributionService``: its parts)."""

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


class Part:
    """One concern of the service, reading the shared ``Context`` through these properties."""

    def __init__(self, kds: Context) -> None:
        self.kds = kds

    @property
    def store(self) -> Store:
        return self.kds.store

    @property
    def root(self) -> Ed25519PrivateKey:
        return self.kds.root

    @property
    def root_public(self) -> Ed25519PublicKey:
        return self.kds.root_public

    @property
    def master(self) -> MasterKeyring:
        return self.kds.master

    @property
    def replica(self) -> str:
        return self.kds.replica

    def rng(self, n: int) -> bytes:
        return self.kds.rng(n)

    def now_ms(self) -> int:
        return self.kds.now_ms()


def key_context(topic: str, epoch: int) -> bytes:
    return bytes(msgpack.packb(["epoch key", topic, epoch], use_bin_type=True))


def token_context(topic: str) -> bytes:
    return bytes(msgpack.packb(["token key", topic], use_bin_type=True))


def entries(member: str, roles: Iterable[str]) -> frozenset[str]:
    """The policy entries that name this member: its name and ``role:R`` for each of its roles."""
    return frozenset([member, *(ROLE_PREFIX + r for r in roles)])


def policy_of(row: Row[Any]) -> TopicPolicy:
    return TopicPolicy(
        name=row.name,
        producers=frozenset(json.loads(row.producers)),
        consumers=frozenset(json.loads(row.consumers)),
        rotation_ms=row.rotation_ms,
        retention_ms=row.retention_ms,
        suite=Suite(row.suite),
        history=row.history,
        max_age_ms=row.max_age_ms,
    )


def load_policy(conn: Connection, name: str) -> TopicPolicy:
    row = rows.topic_row(conn, name)
    if row is None:
        raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {name!r}")
    return policy_of(row)


def member_entries(conn: Connection, member: str) -> frozenset[str]:
    return entries(member, rows.member_roles(conn, member))
