"""The KDS on a real PostgreSQL: the same semantics as on SQLite, and two replicas sharing one
database, where exactly one runs the rotation scheduler and a survivor takes the schedule over."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.store import Store, audit, epochs
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import read_secret
from tests.keys import test_semantics as semantics
from tests.keys._backends import Backend, KdsBackend

from . import test_destruction, test_security
from ._harness import Kds, make_kds
from ._processes import KdsProcess, init, totp_code

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(postgres_database: str) -> str:
    return postgres_database


@pytest.fixture
def pg_kds(database: str, tmp_path: Path) -> Iterator[Kds]:
    kds = make_kds(tmp_path, database)
    yield kds
    kds.http.close()
    kds.store.dispose()


SAME_SEMANTICS: list[Callable[[Backend], None]] = [
    semantics.test_round_trip_keeps_body_sender_and_headers,
    semantics.test_removing_a_consumer_rotates_at_once,
    semantics.test_revoking_a_member_rotates_and_refuses_it,
    semantics.test_forced_rotation_refuses_the_withdrawn_epoch,
]
SAME_AS_SQLITE: list[Callable[..., None]] = [
    test_security.test_replayed_request_is_refused,
    test_security.test_enrollment_tokens_are_one_time_short_lived_and_named,
]


@pytest.mark.parametrize("check", SAME_SEMANTICS, ids=lambda f: f.__name__)
def test_same_key_service_semantics_on_postgres(
    pg_kds: Kds, check: Callable[[Backend], None]
) -> None:
    check(KdsBackend(pg_kds))


@pytest.mark.parametrize("check", SAME_AS_SQLITE, ids=lambda f: f.__name__)
def test_same_semantics_on_postgres(pg_kds: Kds, check: Callable[..., None]) -> None:
    if "topic" in check.__code__.co_varnames[: check.__code__.co_argcount]:
        pg_kds.admin.create_topic("orders", producers=["p"], consumers=["c", "c2"], rotation=60)
        check(pg_kds, None)
    else:
        check(pg_kds)


def test_retention_destroys_keys_on_postgres(pg_kds: Kds, tmp_path: Path) -> None:
    test_destruction.test_nothing_opens_a_message_after_retention(pg_kds, tmp_path)


def _published(url: str) -> list[tuple[int, str]]:
    store = Store(url)
    with store.read() as conn:
        rows = conn.execute(
            select(audit.c.detail, audit.c.actor).where(audit.c.action == "epoch.published")
        ).all()
    store.dispose()
    import json

    return [(json.loads(d)["epoch"], a) for d, a in rows]


def _epoch_numbers(url: str) -> list[int]:
    store = Store(url)
    with store.read() as conn:
        numbers = list(
            conn.execute(
                select(epochs.c.epoch).where(epochs.c.topic == "ticks").order_by(epochs.c.epoch)
            ).scalars()
        )
    store.dispose()
    return numbers


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_two_replicas_rotate_once_and_hand_over(database: str, tmp_path: Path) -> None:
    data = tmp_path / "kds"
    init(data, database)
    options = ("--scheduler-interval", "0.2", "--lease", "1.5")
    a = KdsProcess(data, "--replica", "a", *options, db=database)
    b = KdsProcess(data, "--replica", "b", *options, db=database)
    try:
        admin = AdminClient(
            a.url,
            MemberIdentity.from_bytes(read_secret(data / "admin.key")),
            lambda: totp_code(data),
        )
        admin.create_topic("ticks", rotation=2, retention=60)
        admin.close()
        leaders = {a.health()["leader"], b.health()["leader"]}
        assert leaders == {True, False}  # exactly one runs the scheduler
        leader, survivor = (a, b) if a.health()["leader"] else (b, a)
        _wait(lambda: len(_epoch_numbers(database)) >= 4, "rotations by the first leader")
        leader.kill()
        _wait(lambda: survivor.health()["leader"], "the survivor to take the lease")
        survivor_name = "scheduler:" + survivor.health()["replica"]
        _wait(
            lambda: sum(actor == survivor_name for _, actor in _published(database)) >= 2,
            "rotations by the survivor",
        )
        numbers = _epoch_numbers(database)
        assert numbers == list(range(len(numbers)))  # no gap, no duplicate
        counts = Counter(n for n, _ in _published(database))
        assert set(counts.values()) == {1}  # every epoch published exactly once
        actors = {actor for _, actor in _published(database)}
        assert actors <= {"admin:admin", "scheduler:a", "scheduler:b"}
    finally:
        for process in (a, b):
            process.stop()


def test_replicas_starting_together_create_the_schema_once(database: str) -> None:
    """Two `kds serve` replicas started at once on an empty database both ran CREATE TABLE for
    a table the other was creating, and one died on PostgreSQL's unique index of type names
    (pg_type_typname_nsp_index). The schema is now made under an advisory lock."""
    stores = [Store(database) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: Store) -> None:
        barrier.wait()
        try:
            store.create_schema()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert "admin_sessions" in inspect(stores[0].engine).get_table_names()
    finally:
        for s in stores:
            s.dispose()
