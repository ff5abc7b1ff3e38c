"""The two key-service back ends behind one small interface, so that one semantics suite
(``test_semantics.py``) runs against both, as ``tests/brokers/test_contract.py`` runs against
every broker: ``LocalKeyService`` in this process, and the KDS (the real app, service and SQLite
store in-process, reached by ``KeyServiceClient`` members and an ``AdminClient``).

The interface is ``LocalKeyService``'s own administration API; the KDS adapter maps it onto the
admin client and translates the KDS's refusals with the client's one table
(``errors.refusal_error``), as a member's client does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sealedbus import KeySource, LocalKeyService, Opener, Sealer
from sealedbus.core.signed import Certificate
from sealedbus.core.suites import Suite
from sealedbus.errors import Refused, refusal_error
from sealedbus.keys.authority import DEFAULT_MAX_AGE_MS, EpochInfo
from tests.clock import Clock
from tests.core._support import MEMBERS, TOPICS  # one world, whichever key service serves it
from tests.kds._harness import Kds, make_kds

BACKENDS = ("local", "kds")


class Backend(Protocol):
    """What the semantics suite asks of a key service (``LocalKeyService``'s API)."""

    name: str

    @property
    def clock(self) -> Clock: ...

    def enroll(self, name: str, suite: str | Suite = Suite.X25519) -> KeySource: ...

    def create_topic(
        self,
        name: str,
        *,
        producers: Iterable[str] = (),
        consumers: Iterable[str] = (),
        rotation_period: float = 3600.0,
        retention: float = 7 * 86_400.0,
        suite: str | Suite = Suite.X25519,
        history: bool = False,
        max_message_age: float | None = DEFAULT_MAX_AGE_MS / 1000,
    ) -> None: ...

    def set_policy(
        self,
        name: str,
        *,
        producers: Iterable[str] | None = None,
        consumers: Iterable[str] | None = None,
    ) -> None: ...

    def rotate(self, name: str) -> int: ...

    def revoke(self, member: str, *, compromised: bool = True) -> None: ...

    def shred_topic(self, name: str) -> int:
        """Destroy every key of the topic now; returns the fresh epoch."""
        ...

    def epochs(self, name: str) -> list[EpochInfo]: ...

    def tick(self) -> None: ...

    def set_certificate_lifetime(self, seconds: float) -> None: ...

    def certificate(self, member: str) -> Certificate:
        """The member's certificate as the service would hand it out now."""
        ...


class LocalBackend:
    name = "local"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ks = LocalKeyService(clock=clock)

    def enroll(self, name: str, suite: str | Suite = Suite.X25519) -> KeySource:
        return self.ks.enroll(name, suite=suite)

    def create_topic(self, name: str, **options: Any) -> None:
        self.ks.create_topic(name, **options)

    def set_policy(
        self,
        name: str,
        *,
        producers: Iterable[str] | None = None,
        consumers: Iterable[str] | None = None,
    ) -> None:
        self.ks.set_policy(name, producers=producers, consumers=consumers)

    def rotate(self, name: str) -> int:
        return self.ks.rotate(name)

    def revoke(self, member: str, *, compromised: bool = True) -> None:
        self.ks.revoke(member, compromised=compromised)

    def shred_topic(self, name: str) -> int:
        return self.ks.shred_topic(name)[1]

    def epochs(self, name: str) -> list[EpochInfo]:
        return self.ks.epochs(name)

    def tick(self) -> None:
        self.ks.tick()

    def set_certificate_lifetime(self, seconds: float) -> None:
        self.ks._cert_lifetime_ms = int(seconds * 1000)

    def certificate(self, member: str) -> Certificate:
        return self.ks._certificate_for(member, self.clock.ms)


@contextmanager
def _translated() -> Iterator[None]:
    """An admin refusal as the member's client would raise it (``errors.refusal_error``)."""
    try:
        yield
    except Refused as exc:
        raise refusal_error(exc) from exc


@dataclass
class KdsBackend:
    """The KDS on the hand-moved clock. Its scheduler runs on its own in production; here each
    question about epochs first runs it once (``tick``), as ``LocalKeyService`` advances its
    schedule whenever it is asked something. Members' clients ask for the sealing epoch on every
    seal (``max_epoch_staleness=0``): the suite is about the service's rules; the client's
    caches and background refreshes are tested in ``tests/kds/test_client.py``."""

    kds: Kds
    name: str = "kds"
    roles: dict[str, list[str]] = field(default_factory=dict)

    @property
    def clock(self) -> Clock:
        return self.kds.clock

    def enroll(self, name: str, suite: str | Suite = Suite.X25519) -> KeySource:
        with _translated():
            return self.kds.member(
                name,
                suite=Suite.parse(suite),
                roles=self.roles.get(name),
                max_epoch_staleness=0,  # ask the KDS for the sealing epoch every time
            )

    def create_topic(
        self,
        name: str,
        *,
        producers: Iterable[str] = (),
        consumers: Iterable[str] = (),
        rotation_period: float = 3600.0,
        retention: float = 7 * 86_400.0,
        suite: str | Suite = Suite.X25519,
        history: bool = False,
        max_message_age: float | None = DEFAULT_MAX_AGE_MS / 1000,
    ) -> None:
        with _translated():
            self.kds.admin.create_topic(
                name,
                producers=list(producers),
                consumers=list(consumers),
                rotation=int(rotation_period),
                retention=int(retention),
                suite=Suite.parse(suite).label,
                history=history,
                max_age=0 if max_message_age is None else int(max_message_age),
            )

    def set_policy(
        self,
        name: str,
        *,
        producers: Iterable[str] | None = None,
        consumers: Iterable[str] | None = None,
    ) -> None:
        with _translated():
            self.kds.admin.set_policy(
                name,
                producers=None if producers is None else list(producers),
                consumers=None if consumers is None else list(consumers),
            )

    def rotate(self, name: str) -> int:
        with _translated():
            return self.kds.admin.rotate(name)

    def revoke(self, member: str, *, compromised: bool = True) -> None:
        with _translated():
            self.kds.admin.revoke(member, compromised=compromised)

    def shred_topic(self, name: str) -> int:
        with _translated():
            return int(self.kds.admin.shred_topic(name)["fresh_epoch"])

    def epochs(self, name: str) -> list[EpochInfo]:
        self.tick()
        with _translated():
            found = self.kds.admin.epochs(name)
        return [
            EpochInfo(
                name,
                e["epoch"],
                e["not_before_ms"],
                e["not_after_ms"],
                e["destroy_after_ms"],
                e["destroyed"],
            )
            for e in found
        ]

    def tick(self) -> None:
        self.kds.service.tick("test")

    def set_certificate_lifetime(self, seconds: float) -> None:
        self.kds.service.certificate_lifetime_ms = int(seconds * 1000)

    def certificate(self, member: str) -> Certificate:
        signed = self.kds.service.certificate(member)
        return Certificate.verify(signed, self.kds.service.root_public)


def make_backend(kind: str, clock: Clock, path: Path) -> tuple[Backend, Callable[[], None]]:
    """A fresh back end of ``kind`` on ``clock`` and what closes it."""
    if kind == "local":
        return LocalBackend(clock), lambda: None
    kds = make_kds(path, clock=clock)

    def close() -> None:
        kds.http.close()
        kds.store.dispose()

    return KdsBackend(kds), close


@dataclass
class World:
    """A key service with enrolled members; builds sealers and openers on the shared clock."""

    clock: Clock
    ks: Backend
    members: dict[str, KeySource]

    def enroll(self, name: str) -> KeySource:
        # "consumer" reads the hybrid topic, whose epochs go only to hybrid receive keys
        suite = "x25519-mlkem768" if name == "consumer" else "x25519"
        self.members[name] = self.ks.enroll(name, suite=suite)
        return self.members[name]

    def sealer(self, member: str = "producer", **kwargs: Any) -> Sealer:
        kwargs.setdefault("clock", self.clock)
        return Sealer(self.members[member], **kwargs)

    def opener(self, member: str = "consumer", **kwargs: Any) -> Opener:
        kwargs.setdefault("clock", self.clock)
        return Opener(self.members[member], **kwargs)


def populate(
    ks: Backend,
    *,
    topics: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] | None = None,
    members: Iterable[str] = MEMBERS,
    rotation_period: float = 3600.0,
    retention: float = 7 * 86_400.0,
    history: bool = False,
) -> World:
    world = World(ks.clock, ks, {})
    for name in members:
        world.enroll(name)
    for name, (producers, consumers, suite) in (TOPICS if topics is None else topics).items():
        ks.create_topic(
            name,
            producers=producers,
            consumers=consumers,
            suite=suite,
            rotation_period=rotation_period,
            retention=retention,
            history=history,
        )
    return world
