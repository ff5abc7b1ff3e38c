"""Forward secrecy by deletion: past retention, no one can open a message any more: not the
consumer that read it, not a new consumer, not the KDS with its database and master key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from sealedbus import Opener, Reason, Sealer
from sealedbus.core import suites
from sealedbus.core.signed import EpochDescription
from sealedbus.errors import UnopenableEnvelope
from sealedbus.kds.context import key_context as _key_context
from sealedbus.kds.service import ServiceError
from sealedbus.kds.store import epoch_keys, epochs

from ._harness import Kds


def test_nothing_opens_a_message_after_retention(kds: Kds, tmp_path: Path) -> None:
    kds.admin.create_topic(
        "phi", producers=["p"], consumers=["c"], rotation=60, retention=120, history=True
    )
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    consumer = kds.member("c")
    opener = Opener(consumer, clock=kds.clock)
    envelope = sealer.seal("phi", b"diagnosis")
    assert opener.open("phi", envelope).body == b"diagnosis"  # the consumer holds the key now
    with kds.store.read() as conn:
        wrapped = conn.execute(
            select(epoch_keys.c.wrapped).where(epoch_keys.c.topic == "phi", epoch_keys.c.epoch == 0)
        ).scalar_one()
        public = EpochDescription.verify(
            conn.execute(
                select(epochs.c.description).where(epochs.c.topic == "phi", epochs.c.epoch == 0)
            ).scalar_one(),
            kds.service.root_public,
        ).public_key

    kds.clock.advance(181)  # epoch 0 ends at 60 s and is destroyed at 180 s
    assert kds.service.tick("test").destroyed == 1

    # the consumer that opened it: its cache dropped the key
    with pytest.raises(UnopenableEnvelope) as refused:
        Opener(consumer, clock=kds.clock).open("phi", envelope)
    assert refused.value.reason is Reason.EPOCH_DESTROYED
    with pytest.raises(UnopenableEnvelope) as refused:
        opener.open("phi", envelope)
    assert refused.value.reason is Reason.EPOCH_DESTROYED
    # a new consumer, even with history access
    kds.admin.set_policy("phi", consumers=["c", "auditor"])
    with pytest.raises(UnopenableEnvelope) as refused:
        Opener(kds.member("auditor"), clock=kds.clock).open("phi", envelope)
    assert refused.value.reason is Reason.EPOCH_DESTROYED
    # the KDS itself
    with pytest.raises(ServiceError) as gone:
        kds.service.grant("c", "phi", 0)
    assert gone.value.status == 410
    # the KDS's database, read with the master key: the wrapped key is gone, bytes and all
    with kds.store.read() as conn:
        rows = conn.execute(select(epoch_keys)).all()
        assert (
            conn.execute(
                select(epochs.c.state).where(epochs.c.topic == "phi", epochs.c.epoch == 0)
            ).scalar_one()
            == "destroyed"
        )
    for row in rows:
        seed = kds.service.master.unwrap(row.wrapped, _key_context(row.topic, row.epoch))
        assert suites.keypair_from_seed(suites.Suite.X25519, seed).public != public
    for file in tmp_path.glob("kds.db*"):
        assert wrapped not in file.read_bytes(), file.name


def test_a_busy_write_ahead_log_is_compacted_on_a_later_tick(kds: Kds, tmp_path: Path) -> None:
    """A reader that holds the write-ahead log while keys are destroyed delays the checkpoint;
    the next tick, with nothing new to destroy, must still get the bytes out of the log."""
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"], rotation=60, retention=60)
    with kds.store.read() as conn:
        wrapped = conn.execute(select(epoch_keys.c.wrapped)).scalars().first()
    assert wrapped is not None
    reader = sqlite3.connect(tmp_path / "kds.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM epoch_keys").fetchall()  # another request, mid-read
    kds.clock.advance(121)
    assert kds.service.tick("test").destroyed == 1
    assert wrapped in (tmp_path / "kds.db-wal").read_bytes()  # the checkpoint was busy
    reader.execute("ROLLBACK")
    reader.close()
    assert kds.service.tick("test").destroyed == 0
    for file in tmp_path.glob("kds.db*"):
        assert wrapped not in file.read_bytes(), file.name
