"""``admin topic shred``: every key of a topic destroyed at once. Afterwards nothing opens the
topic's earlier messages from the live database, and, once the master key that wrapped them is
retired, not from a backup taken before the shred either (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url

from sealedbus import Opener, Reason, Sealer
from sealedbus.core import suites
from sealedbus.core.signed import EpochDescription
from sealedbus.errors import Refused, SecretError, UnopenableEnvelope, UntrustedResponse
from sealedbus.kds import cli
from sealedbus.kds.context import key_context as _key_context
from sealedbus.kds.secrets import MASTER_KEYS_FILE, MasterKeyring
from sealedbus.kds.service import ServiceError
from sealedbus.kds.store import Store, epoch_keys, epochs
from sealedbus.kds.store import audit as audit_table
from sealedbus.keys.client import KeyServiceClient
from tests.clock import Clock

from ._harness import AsgiTransport, Kds, make_kds, settle

ROTATION = 60  # s; the next epoch is published 6 s ahead


def _public_keys(kds: Kds, topic: str) -> dict[int, bytes]:
    with kds.store.read() as conn:
        rows = conn.execute(select(epochs).where(epochs.c.topic == topic)).all()
    return {
        r.epoch: EpochDescription.verify(r.description, kds.service.root_public).public_key
        for r in rows
    }


def _sealed_across_epochs(kds: Kds, topic: str) -> tuple[Sealer, list[bytes], Opener]:
    """Messages in epochs 0 and 1, with epoch 2 published ahead; a consumer that opened one.
    New consumers may read history: only destruction keeps them from the old messages."""
    kds.admin.create_topic(topic, producers=["p"], consumers=["c"], rotation=ROTATION, history=True)
    sealer = Sealer(kds.member("p", epoch_refresh=1), clock=kds.clock)
    consumer = Opener(kds.member("c"), clock=kds.clock)
    sent = [sealer.seal(topic, b"before the shred 0")]
    assert consumer.open(topic, sent[0]).body == b"before the shred 0"
    kds.clock.advance(ROTATION + 1)
    kds.service.tick("test")
    settle()
    sent.append(sealer.seal(topic, b"before the shred 1"))
    kds.clock.advance(ROTATION - 5)  # epoch 2 is published ahead now
    kds.service.tick("test")
    assert [e["epoch"] for e in kds.admin.epochs(topic)] == [0, 1, 2]
    return sealer, sent, consumer


def test_nothing_opens_a_shredded_topic_from_the_live_database(kds: Kds, tmp_path: Path) -> None:
    sealer, sent, _ = _sealed_across_epochs(kds, "phi")
    before = _public_keys(kds, "phi")
    with kds.store.read() as conn:
        wrapped = list(conn.execute(select(epoch_keys.c.wrapped)).scalars())
    assert len(wrapped) == 3

    shredded = kds.admin.shred_topic("phi")
    assert shredded["destroyed_epochs"] == [0, 1, 2]  # the one published ahead included
    fresh = shredded["fresh_epoch"]
    assert fresh == 3

    # the consumer starting afresh, a consumer added later (history allowed), the KDS itself
    restarted = Opener(kds.client(kds.clients[1]._identity), clock=kds.clock)
    kds.admin.set_policy("phi", consumers=["c", "auditor"])
    auditor = Opener(kds.member("auditor"), clock=kds.clock)
    for opener in (restarted, auditor):
        for envelope in sent:
            with pytest.raises(UnopenableEnvelope) as refused:
                opener.open("phi", envelope)
            assert refused.value.reason is Reason.EPOCH_DESTROYED
    for epoch in (0, 1, 2):
        with pytest.raises(ServiceError) as gone:
            kds.service.grant("c", "phi", epoch)
        assert gone.value.status == 410
    # the database, read with the master key: the only key left is the fresh epoch's
    with kds.store.read() as conn:
        rows = conn.execute(select(epoch_keys)).all()
        states = {
            r.epoch: r.state
            for r in conn.execute(
                select(epochs.c.epoch, epochs.c.state).where(epochs.c.topic == "phi")
            )
        }
        entry = conn.execute(
            select(audit_table.c.detail).where(audit_table.c.action == "topic.shredded")
        ).scalar_one()
    assert [(r.topic, r.epoch) for r in rows] == [("phi", fresh)]
    assert states == {0: "destroyed", 1: "destroyed", 2: "destroyed", fresh: "live"}
    for row in rows:
        seed = kds.service.master.unwrap(row.wrapped, _key_context(row.topic, row.epoch))
        public = suites.keypair_from_seed(suites.Suite.X25519, seed).public
        assert public not in before.values()
    assert '"epochs":[0,1,2]' in entry
    for file in tmp_path.glob("kds.db*"):  # compacted: no page or log keeps the bytes
        data = file.read_bytes()
        assert not any(w in data for w in wrapped), file.name
    assert kds.service.verify_audit().ok

    # the topic stays: producers switch to the fresh epoch at their next refresh
    kds.clock.advance(2)
    sealer.seal("phi", b"warm-up")  # the refresh runs in the background
    settle()
    kds.clock.advance(1.5)  # the sealer asks again each second
    after = sealer.seal("phi", b"after the shred")
    assert auditor.open("phi", after).body == b"after the shred"


def test_the_shred_runs_every_other_destroyer_in_its_transaction(kds: Kds) -> None:
    """The extension point for other per-topic key material (subject keys): each destroyer
    gets the shred's connection and topic; its count is audited with the shred."""
    calls: list[tuple[str, bool]] = []

    def destroyer(conn: Connection, topic: str) -> int:
        calls.append((topic, conn.in_transaction()))
        return 7

    kds.service.topic_key_destroyers = (("subject_keys", destroyer),)
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    assert kds.admin.shred_topic("phi")["other"] == {"subject_keys": 7}
    assert calls == [("phi", True)]
    with kds.store.read() as conn:
        entry = conn.execute(
            select(audit_table.c.detail).where(audit_table.c.action == "topic.shredded")
        ).scalar_one()
    assert '"subject_keys":7' in entry


def test_shred_needs_a_known_topic_and_a_second_factor(kds: Kds) -> None:
    from sealedbus.errors import Refused
    from sealedbus.kds.admin_client import AdminClient

    with pytest.raises(Refused) as refused:
        kds.admin.shred_topic("nope")
    assert refused.value.status == 404
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    no_code = AdminClient(
        "http://testserver", kds.admin_identity, lambda: "000000", http=kds.http, clock=kds.clock
    )
    with pytest.raises(Refused) as refused:
        no_code.shred_topic("phi")
    assert refused.value.status == 401
    assert [e["destroyed"] for e in kds.admin.epochs("phi")] == [False]


# -- backups ---------------------------------------------------------------------------------


def _pg(tool: str, *args: str, check: bool = True) -> None:
    """Run a PostgreSQL client tool (from the Debian packages) with our own arguments."""
    path = shutil.which(tool)
    assert path is not None, f"{tool} is not installed (Debian: postgresql-client)"
    subprocess.run([path, *args], check=check)  # noqa: S603 - fixed arguments


def _backup_sqlite(url: str, to: Path) -> Callable[[], str]:
    source = make_url(url).database
    assert source is not None
    with sqlite3.connect(source) as live, sqlite3.connect(to) as copy:
        live.backup(copy)
    return lambda: f"sqlite:///{to}"


def _backup_postgres(url: str, to: Path) -> Callable[[], str]:
    _pg("pg_dump", "--format=custom", "--file", str(to), "--dbname", url)

    def restore() -> str:  # into a fresh database, as after losing the live one
        base, _, name = url.rpartition("/")
        restored = f"{name}_restored"
        admin = f"{base}/postgres"
        _pg("psql", "-q", "-c", f"CREATE DATABASE {restored}", admin)
        _pg("pg_restore", "--no-owner", "--dbname", f"{base}/{restored}", str(to))
        return f"{base}/{restored}"

    return restore


@pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_backup_from_before_a_shred_opens_nothing_once_the_master_key_is_retired(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "kds"
    db = None
    if engine == "postgresql":
        db = request.getfixturevalue("postgres_database")
    assert cli._init(Namespace(data_dir=data, db=db, admin="admin")) == 0
    args = Namespace(data_dir=data, db=db, retire=False)
    kds = make_kds(tmp_path, service=cli._open_service(args, "kds"), clock=Clock(time.time()))
    restored_url = ""
    try:
        _, sent, _ = _sealed_across_epochs(kds, "phi")
        url = kds.store.engine.url.render_as_string(hide_password=False)
        url = url.replace("postgresql+psycopg://", "postgresql://")
        backup = (_backup_sqlite if engine == "sqlite" else _backup_postgres)(
            url, tmp_path / "before-shred.backup"
        )
        kds.admin.shred_topic("phi")

        # the procedure of docs/operations.md: rotate the master key, then retire the old one
        assert cli._rotate_master(args) == 0
        assert cli._rotate_master(Namespace(data_dir=data, db=db, retire=True)) == 0
        keyring = MasterKeyring.load(data / MASTER_KEYS_FILE)
        assert keyring.key_ids == {"k2"}

        restored_url = backup()
        restored = Store(restored_url)
        with restored.read() as conn:
            old_keys = conn.execute(select(epoch_keys).where(epoch_keys.c.topic == "phi")).all()
        assert {r.epoch for r in old_keys} == {0, 1, 2}  # the backup holds them, wrapped...
        for row in old_keys:  # ...under a master key that no longer exists anywhere
            with pytest.raises(ValueError):
                keyring.unwrap(row.wrapped, _key_context(row.topic, row.epoch))

        # a KDS started on the restored backup with today's keyring opens none of it
        restored.create_schema()
        from sealedbus.kds.service import KeyDistributionService

        revived = KeyDistributionService(restored, kds.service.root, keyring, clock=kds.clock)
        for epoch in (0, 1):
            with pytest.raises(SecretError):  # the wrapping key is unknown: nothing to grant
                revived.grant("c", "phi", epoch)
        revived_kds = make_kds(tmp_path / "r", service=revived, clock=kds.clock)
        opener = Opener(revived_kds.client(kds.clients[1]._identity), clock=kds.clock)
        for envelope in sent:
            with pytest.raises(Exception) as failed:
                opener.open("phi", envelope)
            assert "before the shred" not in str(failed.value)
        revived_kds.http.close()
        restored.dispose()
    finally:
        kds.http.close()
        kds.store.dispose()
        if engine == "postgresql" and restored_url:
            base, _, name = restored_url.rpartition("/")
            _pg(
                "psql",
                "-q",
                "-c",
                f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                f"{base}/postgres",
                check=False,
            )


@pytest.mark.postgres
def test_nothing_opens_a_shredded_topic_from_the_live_database_on_postgres(
    postgres_database: str, tmp_path: Path
) -> None:
    kds = make_kds(tmp_path, postgres_database)
    try:
        test_nothing_opens_a_shredded_topic_from_the_live_database(kds, tmp_path)
    finally:
        kds.http.close()
        kds.store.dispose()


# -- consumers already running when the shred happens ----------------------------------------

REFRESH = 10.0  # KeyServiceClient's default epoch_refresh (s): how often it asks what is gone
CHECK = 1.0  # the Opener's default revocation_check_interval (s): how often it hears of it


def _running_consumer(kds: Kds, **options: Any) -> tuple[list[bytes], Opener]:
    """A consumer that opened the topic's first message (it holds epoch 0's key and session)
    and three more messages sealed before the shred, not read yet."""
    kds.admin.create_topic("phi", producers=["p", "late"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    before = [sealer.seal("phi", b"before %d" % i) for i in range(4)]
    consumer = Opener(kds.member("c", **options), clock=kds.clock)
    assert consumer.open("phi", before[0]).body == b"before 0"
    return before[1:], consumer


def _refused_as_destroyed(consumer: Opener, envelopes: list[bytes]) -> None:
    for envelope in envelopes:
        with pytest.raises(UnopenableEnvelope) as refused:
            consumer.open("phi", envelope)
        assert refused.value.reason is Reason.EPOCH_DESTROYED


def test_shred_reaches_a_running_consumer_within_its_refresh_without_a_restart(kds: Kds) -> None:
    """Regression (issue 14): a consumer running before a shred kept the topic's epoch keys and
    sessions until each epoch's destroy_after, opening its old messages until restarted."""
    before, consumer = _running_consumer(kds)
    kds.admin.shred_topic("phi")
    kds.clock.advance(REFRESH)
    after = Sealer(kds.member("late"), clock=kds.clock).seal("phi", b"after")
    # the fresh epoch opens; this open's revocation check asked the KDS in the background
    assert consumer.open("phi", after).body == b"after"
    settle()
    kds.clock.advance(CHECK)  # the opener's next check hears what its key source dropped
    _refused_as_destroyed(consumer, before)


def test_shred_reaches_an_idle_consumer_at_its_first_message(kds: Kds) -> None:
    """A consumer that read nothing for ``revocation_max_age`` asks before it opens again (as it
    fetches its revocation list): no backlog of the shredded topic's messages opens meanwhile."""
    before, consumer = _running_consumer(kds, revocation_max_age=40)
    kds.admin.shred_topic("phi")
    kds.clock.advance(40)
    _refused_as_destroyed(consumer, before)
    after = Sealer(kds.member("late"), clock=kds.clock).seal("phi", b"after")
    assert consumer.open("phi", after).body == b"after"


def test_rotation_does_not_drop_live_keys(kds: Kds) -> None:
    """Only what is gone is dropped: after rotations the consumer still holds and uses the
    older epoch's key (live until its destroy_after)."""
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"], rotation=ROTATION)
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    first = [sealer.seal("phi", b"epoch 0 %d" % i) for i in range(2)]
    client = kds.member("c")
    consumer = Opener(client, clock=kds.clock)
    assert consumer.open("phi", first[0]).body == b"epoch 0 0"
    for _ in range(3):
        kds.clock.advance(ROTATION)
        kds.service.tick("test")
        assert client.drop_gone_epochs(kds.clock_ms()) == set()
    assert consumer.open("phi", first[1]).body == b"epoch 0 1"


# -- POST /v1/epochs/gone ----------------------------------------------------------------------


def test_epochs_gone_answers_what_the_member_can_no_longer_be_granted(kds: Kds) -> None:
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    kds.admin.create_topic("other", producers=["p"], consumers=["someone"])
    client = kds.member("c")

    def gone(asked: dict[str, list[int]]) -> Any:
        return client._http.call("POST", "/v1/epochs/gone", {"epochs": asked})["gone"]

    # live epoch kept; unknown epoch, unknown topic, a topic it may not read (live or not): gone
    assert gone({"phi": [0, 7], "nope": [0], "other": [0, 3]}) == {
        "phi": [7],
        "nope": [0],
        "other": [0, 3],
    }
    fresh = kds.admin.shred_topic("phi")["fresh_epoch"]
    assert gone({"phi": [0, fresh]}) == {"phi": [0]}
    with pytest.raises(Refused) as refused:  # bounded
        gone({"phi": list(range(1001))})
    assert refused.value.status == 422
    with pytest.raises(Refused) as refused:  # members only
        client._http.call("POST", "/v1/epochs/gone", {"epochs": {"phi": [0]}}, signed=False)
    assert refused.value.status == 401


class _Forging(httpx.BaseTransport):
    """The KDS, except that someone between it and the client answers /v1/epochs/gone (and,
    when set, grants) as they like."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.gone: dict[str, Any] | None = None  # httpx.Response arguments
        self.grant: dict[str, Any] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/epochs/gone" and self.gone is not None:
            return httpx.Response(200, **self.gone)
        if request.url.path.endswith("/grant") and self.grant is not None:
            return httpx.Response(200, **self.grant)
        return self.inner.handle_request(request)


def test_unsigned_epochs_gone_answer_cannot_make_a_client_accept_a_key(kds: Kds) -> None:
    """The answer is not signed: forged, it may make a client drop keys (fetched again, signed)
    or tell it nothing, but never hand it a key or make it open an envelope."""
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    sent = [sealer.seal("phi", b"m%d" % i) for i in range(4)]
    forging = _Forging(AsgiTransport(kds.app))
    with httpx.Client(transport=forging, base_url="http://testserver") as http:
        _forged_answers(kds, forging, Opener(kds.member("c", http=http), clock=kds.clock), sent)
        settle()


def _forged_answers(kds: Kds, forging: _Forging, consumer: Opener, sent: list[bytes]) -> None:
    client = consumer.keys
    assert isinstance(client, KeyServiceClient)
    assert consumer.open("phi", sent[0]).body == b"m0"

    # garbage: refused as untrusted, nothing dropped
    garbage: list[dict[str, Any]] = [
        {"content": b"not json"},
        {"json": [1, 2]},
        {"json": {"gone": "phi"}},
        {"json": {"nothing": {}}},
    ]
    for forged in garbage:
        forging.gone = forged
        with pytest.raises(UntrustedResponse):
            client.drop_gone_epochs(kds.clock_ms())
    forging.gone = {"json": {"gone": {"phi": ["0", 0.0, None]}}}
    assert client.drop_gone_epochs(kds.clock_ms()) == set()
    kds.clock.advance(CHECK)
    assert consumer.open("phi", sent[1]).body == b"m1"  # the session was kept
    settle()  # (that open asked in the background, with the forged answer: nothing dropped)

    # pairs not asked about are ignored; an asked one is dropped and fetched again, signed
    forging.gone = {"json": {"gone": {"phi": [0, 99], "evil": [1]}}}
    assert client.drop_gone_epochs(kds.clock_ms()) == {("phi", 0)}
    kds.service.rotate("admin:test", "phi")  # epoch 1: a genuine grant, of the wrong epoch
    kds.clock.advance(1)
    forging.grant = None
    other = client._http.call("GET", "/v1/topics/phi/epochs/1/grant")
    forging.grant = {"json": other}
    with pytest.raises(UntrustedResponse):
        client.epoch_keys("phi", 0, kds.clock_ms())
    with pytest.raises(UntrustedResponse):
        consumer.open("phi", sent[2])  # the opener lost its session too: it asks, and refuses
    forging.grant = forging.gone = None
    assert consumer.open("phi", sent[2]).body == b"m2"  # the genuine key, fetched again


def test_a_shredded_topics_backlog_costs_one_key_request_per_epoch_not_one_per_message(
    kds: Kds,
) -> None:
    """Regression: each message of a shredded topic's backlog asked the KDS for its epoch's keys
    again, so a consumer dead-lettering a million of them sent a million requests. The refusal
    is remembered for a minute (it is not signed, so not for good)."""
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    backlog = [sealer.seal("phi", b"before %d" % i) for i in range(20)]
    kds.admin.shred_topic("phi")
    asked: list[str] = []

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/grant"):
            asked.append(request.url.path)

    kds.http.event_hooks["request"].append(count)  # what reaches the KDS, as it is sent
    consumer = Opener(kds.member("c"), clock=kds.clock)
    _refused_as_destroyed(consumer, backlog)
    assert asked == ["/v1/topics/phi/epochs/0/grant"]
    kds.clock.advance(59)
    _refused_as_destroyed(consumer, backlog)
    assert len(asked) == 1
    kds.clock.advance(2)  # a minute on: asked again, once
    _refused_as_destroyed(consumer, backlog)
    assert len(asked) == 2
