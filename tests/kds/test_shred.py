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

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url

from sealedbus import Opener, Reason, Sealer
from sealedbus.core import suites
from sealedbus.core.signed import EpochDescription
from sealedbus.errors import SecretError, UnopenableEnvelope
from sealedbus.kds import cli
from sealedbus.kds.context import key_context as _key_context
from sealedbus.kds.secrets import MASTER_KEYS_FILE, MasterKeyring
from sealedbus.kds.service import ServiceError
from sealedbus.kds.store import Store, epoch_keys, epochs
from sealedbus.kds.store import audit as audit_table
from tests.clock import Clock

from ._harness import Kds, make_kds, settle

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
