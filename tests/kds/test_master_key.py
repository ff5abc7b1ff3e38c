"""``sealedbus kds rotate-master-key`` while replicas run: they follow the keyring file at their
next write, and older keys are retired only in a separate step that refuses while any stored
value still uses one. After all of it, a restarted KDS opens everything."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest
from sqlalchemy import select

from sealedbus.kds import cli
from sealedbus.kds.context import key_context as _key_context
from sealedbus.kds.context import token_context as _token_context
from sealedbus.kds.secrets import MASTER_KEYS_ENV, MASTER_KEYS_FILE, MasterKeyring
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import epoch_keys, topics
from sealedbus.keys.authority import TopicPolicy


def _policy(name: str) -> TopicPolicy:
    return TopicPolicy(name, frozenset(["p"]), frozenset(["c"]), rotation_ms=60_000)


def test_rotation_under_running_replicas_keeps_every_key_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "kds"
    assert cli._init(Namespace(data_dir=data, db=None, admin="admin")) == 0
    args = Namespace(data_dir=data, db=None, retire=False)
    running = cli._open_service(args, "running")  # `kds serve`, keyring from the file
    running.create_topic("admin:x", _policy("t"))
    monkeypatch.setenv(MASTER_KEYS_ENV, (data / MASTER_KEYS_FILE).read_text())
    # a replica that cannot follow the file (keyring in its environment, not yet restarted)
    stale = KeyDistributionService(
        running.store, running.root, MasterKeyring.load(data / MASTER_KEYS_FILE)
    )
    monkeypatch.delenv(MASTER_KEYS_ENV)

    assert cli._rotate_master(args) == 0
    running.rotate("admin:x", "t")  # writes after the rotation use the new key
    running.create_topic("admin:x", _policy("t2"))
    assert running.master.current == "k2"
    assert running.master_keys_in_use() >= {"k2"}
    stale.rotate("admin:x", "t2")  # ...but this one still wraps with k1

    retire = Namespace(data_dir=data, db=None, retire=True)
    assert cli._rotate_master(retire) == 1  # k1 still wraps a value: refused, nothing dropped
    assert MasterKeyring.load(data / MASTER_KEYS_FILE).key_ids == {"k1", "k2"}
    assert cli._rotate_master(args) == 0  # k3, and everything re-wrapped under it
    assert cli._rotate_master(retire) == 0
    assert MasterKeyring.load(data / MASTER_KEYS_FILE).key_ids == {"k3"}
    running.rotate("admin:x", "t")
    assert running.master_keys_in_use() == {"k3"}

    restarted = cli._open_service(args, "restarted")
    with restarted.store.read() as conn:
        rows = conn.execute(select(epoch_keys)).all()
        tokens = conn.execute(select(topics.c.name, topics.c.token_key)).all()
    assert len(rows) == 5
    for row in rows:
        restarted.master.unwrap(row.wrapped, _key_context(row.topic, row.epoch))
    for t in tokens:
        restarted.master.unwrap(t.token_key, _token_context(t.name))
    assert restarted.admin_credentials("admin") is not None
    for service in (running, restarted):
        service.store.dispose()
