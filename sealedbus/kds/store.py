"""The KDS data layer: one SQLAlchemy schema for an embedded SQLite file or PostgreSQL.

Every mutating transaction starts by locking the audit head row (``write()``), which orders all
changes across replicas and keeps the audit hash chain linear; reads take no lock. On SQLite the
connection runs with ``secure_delete`` so a destroyed epoch key's bytes are overwritten in the
file, and ``compact()`` checkpoints the write-ahead log so no old page keeps them either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

topics = Table(
    "topics",
    metadata,
    Column("name", String(249), primary_key=True),
    Column("producers", Text, nullable=False),  # JSON list of member names and role:NAME entries
    Column("consumers", Text, nullable=False),
    Column("rotation_ms", BigInteger, nullable=False),
    Column("retention_ms", BigInteger, nullable=False),
    Column("suite", Integer, nullable=False),
    Column("history", Boolean, nullable=False),
    Column("token_key", LargeBinary, nullable=False),  # wrapped per-topic tokenization key
    Column("key_id", String(63), nullable=False),
    # openers refuse envelopes sent longer ago (signed into epoch descriptions); 0: no limit
    Column("max_age_ms", BigInteger, nullable=False, server_default="86400000"),
)
consumer_since = Table(
    "consumer_since",
    metadata,
    Column("topic", String(249), nullable=False),
    Column("entry", String(133), nullable=False),
    Column("since_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("topic", "entry"),
)
epochs = Table(
    "epochs",
    metadata,
    Column("topic", String(249), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("description", LargeBinary, nullable=False),  # signed EpochDescription
    Column("not_before_ms", BigInteger, nullable=False),
    Column("not_after_ms", BigInteger, nullable=False),
    Column("destroy_after_ms", BigInteger, nullable=False, index=True),
    Column("state", String(10), nullable=False),  # live | withdrawn | destroyed
    PrimaryKeyConstraint("topic", "epoch"),
)
epoch_keys = Table(  # a row per live epoch; deleting it is the destruction
    "epoch_keys",
    metadata,
    Column("topic", String(249), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("key_id", String(63), nullable=False, index=True),
    PrimaryKeyConstraint("topic", "epoch"),
)
members = Table(
    "members",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("identity_public", LargeBinary, nullable=False),
    Column("receive_suite", Integer, nullable=False),
    Column("receive_public", LargeBinary, nullable=False),
    Column("roles", Text, nullable=False),
    Column("revoked", Boolean, nullable=False),
    Column("enrolled_ms", BigInteger, nullable=False),
)
replaced_keys = Table(  # identity keys a later enrollment replaced: named in refusals, never used
    "replaced_keys",
    metadata,
    Column("member", String(128), nullable=False),
    Column("identity_public", LargeBinary(32), nullable=False),
    Column("replaced_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("member", "identity_public"),
)
certificates = Table(
    "certificates",
    metadata,
    Column("cert_id", LargeBinary(16), primary_key=True),
    Column("member", String(128), nullable=False, index=True),
    Column("serial", BigInteger, nullable=False),
    Column("signed", LargeBinary, nullable=False),
    Column("not_after_ms", BigInteger, nullable=False),
)
tokens = Table(
    "tokens",
    metadata,
    # the token's public key (``signing.token_key``; the column keeps its old name): names the token
    # and checks its signature, but cannot enroll anyone
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("member", String(128), nullable=False),
    Column("roles", Text, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("used_ms", BigInteger),
)
nonces = Table(
    "nonces",
    metadata,
    Column("principal", String(134), nullable=False),
    Column("nonce", String(64), nullable=False),
    Column("expires_ms", BigInteger, nullable=False, index=True),
    PrimaryKeyConstraint("principal", "nonce"),
)
admins = Table(
    "admins",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("identity_public", LargeBinary, nullable=False),
    Column("totp_wrapped", LargeBinary, nullable=False),
    Column("key_id", String(63), nullable=False),
)
admin_totp = Table(  # per admin: RFC 6238 replay guard and wrong-code lockout, shared by replicas
    "admin_totp",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("last_step", BigInteger, nullable=False),  # the last accepted time step
    Column("failures", Integer, nullable=False),  # wrong codes since the last accepted one
    Column("locked_until_ms", BigInteger, nullable=False),
)
revocations = Table(  # the latest signed list (older ones are deleted: the audit log has the acts)
    "revocations",
    metadata,
    Column("serial", BigInteger, primary_key=True),
    Column("signed", LargeBinary, nullable=False),
)
audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(160), nullable=False),
    Column("action", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
audit_head = Table(  # the audit chain head signed by the root key, replaced on every append
    "audit_head",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
heads = Table(  # singleton rows: "audit" (last seq and hash), "serial" (certificate serials)
    "heads",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)
leases = Table(
    "leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

admin_sessions = Table(  # admin sessions opened with one TOTP code (kds/admin_sessions.py)
    "admin_sessions",
    metadata,
    Column("session_id", LargeBinary(16), primary_key=True),
    Column("admin", String(128), nullable=False, index=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("closed_ms", BigInteger),
)
subject_keys = Table(  # per (topic, subject): an X25519 key pair (SPEC.md 4.5); erasing a
    # subject clears token, public and wrapped key and keeps the row as a tombstone
    "subject_keys",
    metadata,
    Column("topic", String(249), nullable=False),
    Column("key_id", LargeBinary(16), nullable=False),  # random; what envelopes name
    # HMAC-SHA256 of topic and subject under the topic's tokenization key: never the subject
    Column("token", LargeBinary(32), unique=True),
    Column("public", LargeBinary(32)),
    Column("wrapped", LargeBinary),  # the private key, wrapped under the master key
    Column("master_key_id", String(63), index=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("erased_ms", BigInteger),
    PrimaryKeyConstraint("topic", "key_id"),
)

GENESIS = bytes(32)
SQLITE_TIMEOUT_S = 30
# PostgreSQL advisory lock taken while the schema is made or upgraded: replicas that start
# together would otherwise race on CREATE TABLE (a unique violation in pg_type)
_SCHEMA_LOCK = 0x5EA1ED
SCHEDULER_LEASE = "scheduler"


def database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Store:
    """An engine plus the transaction discipline described in the module docstring."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        url = database_url(url)
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _create_private(make_url(url).database)
            self.engine: Engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": SQLITE_TIMEOUT_S},
                hide_parameters=True,
            )
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                url, pool_size=pool_size, pool_pre_ping=True, hide_parameters=True
            )  # errors may be logged: no values

    def create_schema(self) -> None:
        """Create what is missing; safe to run from several replicas at once."""
        with self.engine.begin() as conn:
            if not self.is_sqlite:  # one replica at a time (held until this transaction ends)
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
            _add_missing_columns(conn)
            for name in ("audit", "serial"):
                _insert_missing(conn, heads, {"name": name, "seq": 0, "hash": GENESIS})
            _insert_missing(conn, leases, {"name": SCHEDULER_LEASE, "holder": "", "expires_ms": 0})

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the global write lock (the audit head row) until it ends."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            conn.execute(select(heads.c.seq).where(heads.c.name == "audit").with_for_update())
            yield conn

    def insert_unique(self, table: Table, values: dict[str, Any]) -> bool:
        """Insert one row in its own transaction; False when the key exists (e.g. a replay)."""
        try:
            with (
                self.engine.connect().execution_options(sqlite_immediate=True) as conn,
                conn.begin(),
            ):
                conn.execute(insert(table).values(**values))
            return True
        except IntegrityError:
            return False

    def try_lease(self, holder: str, now_ms: int, ttl_ms: int) -> bool:
        """Take or extend the scheduler lease; True while ``holder`` holds it."""
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            result = conn.execute(
                update(leases)
                .where(leases.c.name == SCHEDULER_LEASE)
                .where((leases.c.holder == holder) | (leases.c.expires_ms < now_ms))
                .values(holder=holder, expires_ms=now_ms + ttl_ms)
            )
            return result.rowcount == 1

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(leases)
                .where(leases.c.name == SCHEDULER_LEASE, leases.c.holder == holder)
                .values(expires_ms=0)
            )

    def compact(self) -> bool:
        """After keys were destroyed: make sure no journal or free page keeps their bytes. False
        when that could not be done now (on SQLite, a reader still uses the write-ahead log):
        the caller tries again later."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA busy_timeout=200")  # do not stall the scheduler
                try:
                    busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
            return bool(busy == 0)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM epoch_keys")
            conn.exec_driver_sql("VACUUM subject_keys")
        return True

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


# -- row-level reads and writes the service's parts share (inside their transactions) ----------


def topic_row(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(topics).where(topics.c.name == name)).first()


def member_roles(conn: Connection, member: str) -> list[str]:
    """The member's roles ([] for no such member)."""
    roles = conn.execute(select(members.c.roles).where(members.c.name == member)).scalar()
    return list(json.loads(roles or "[]"))


def member_revoked(conn: Connection, member: str) -> bool:
    return bool(conn.execute(select(members.c.revoked).where(members.c.name == member)).scalar())


def latest_certificate(conn: Connection, member: str) -> bytes | None:
    return conn.execute(
        select(certificates.c.signed)
        .where(certificates.c.member == member)
        .order_by(certificates.c.serial.desc())
        .limit(1)
    ).scalar()


def latest_serial(conn: Connection, member: str) -> int | None:
    return conn.execute(
        select(func.max(certificates.c.serial)).where(certificates.c.member == member)
    ).scalar()


def serial_head(conn: Connection) -> int:
    """The last certificate serial issued (to anyone)."""
    return int(conn.execute(select(heads.c.seq).where(heads.c.name == "serial")).scalar_one())


def take_serial(conn: Connection) -> int:
    """The next certificate serial, taken."""
    serial = serial_head(conn) + 1
    conn.execute(update(heads).where(heads.c.name == "serial").values(seq=serial))
    return serial


def latest_not_after(conn: Connection, topic: str) -> int | None:
    """When the highest-numbered epoch ends (it may end before a withdrawn one would)."""
    return conn.execute(
        select(epochs.c.not_after_ms)
        .where(epochs.c.topic == topic)
        .order_by(epochs.c.epoch.desc())
        .limit(1)
    ).scalar()


def set_epoch_state(conn: Connection, topic: str, number: int, state: str) -> None:
    """Mark an epoch withdrawn or destroyed and delete its key (the destruction)."""
    conn.execute(
        update(epochs).where(epochs.c.topic == topic, epochs.c.epoch == number).values(state=state)
    )
    conn.execute(
        delete(epoch_keys).where(epoch_keys.c.topic == topic, epoch_keys.c.epoch == number)
    )


def destroy_topic_keys(conn: Connection, topic: str, state: str) -> list[int]:
    """Every epoch of ``topic`` that still has a key, in order: marked ``state`` (destroyed) and
    its key deleted, all in the caller's transaction (a topic shred)."""
    numbers = list(
        conn.execute(
            select(epoch_keys.c.epoch)
            .where(epoch_keys.c.topic == topic)
            .order_by(epoch_keys.c.epoch)
        ).scalars()
    )
    for number in numbers:
        set_epoch_state(conn, topic, number, state)
    return numbers


def _create_private(path: str | None) -> None:
    """Create a new SQLite database file readable by its owner only (0600); SQLite gives its
    write-ahead log and shared-memory files the same mode."""
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _add_missing_columns(conn: Connection) -> None:
    """Columns added since a database was created (create_all adds tables, not columns)."""
    have = {c["name"] for c in inspect(conn).get_columns("topics")}
    if "max_age_ms" not in have:
        conn.exec_driver_sql(
            "ALTER TABLE topics ADD COLUMN max_age_ms BIGINT NOT NULL DEFAULT 86400000"
        )


def _insert_missing(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    key = next(iter(table.primary_key.columns))
    if conn.execute(select(key).where(key == values[key.name])).first() is None:
        conn.execute(insert(table).values(**values))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# -- subject keys (kds/subjects.py): every statement on the subject_keys table ---------------------


def subject_by_token(conn: Connection, token: bytes) -> Row[Any] | None:
    """The live subject key a token names (erased keys have no token)."""
    return conn.execute(select(subject_keys).where(subject_keys.c.token == token)).first()


def subject_by_id(conn: Connection, topic: str, key_id: bytes) -> Row[Any] | None:
    """A subject key, live or a tombstone, by its id on ``topic``."""
    return conn.execute(
        select(subject_keys).where(subject_keys.c.topic == topic, subject_keys.c.key_id == key_id)
    ).first()


def insert_subject(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(subject_keys).values(**values))


def insert_subjects(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Many at once (one executemany: bulk loads, benchmarks)."""
    conn.execute(insert(subject_keys), rows)


_ERASED = {"token": None, "public": None, "wrapped": None, "master_key_id": None}


def erase_subject_by_token(conn: Connection, token: bytes, now_ms: int) -> bytes | None:
    """Destroy the subject key a token names and forget the token; its id stays as a tombstone.
    Returns the erased key id (None: no live key for that token)."""
    key_id = conn.execute(
        select(subject_keys.c.key_id).where(subject_keys.c.token == token)
    ).scalar()
    if key_id is None:
        return None
    conn.execute(
        update(subject_keys)
        .where(subject_keys.c.token == token)
        .values(**_ERASED, erased_ms=now_ms)
    )
    return bytes(key_id)


def erase_topic_subjects(conn: Connection, topic: str, now_ms: int) -> int:
    """Destroy every live subject key of ``topic`` (for a topic shred); returns how many."""
    return conn.execute(
        update(subject_keys)
        .where(subject_keys.c.topic == topic, subject_keys.c.erased_ms.is_(None))
        .values(**_ERASED, erased_ms=now_ms)
    ).rowcount


def subjects_to_rewrap(conn: Connection, current: str, limit: int) -> list[Any]:
    return list(
        conn.execute(
            select(subject_keys.c.topic, subject_keys.c.key_id, subject_keys.c.wrapped)
            .where(
                subject_keys.c.master_key_id.is_not(None),
                subject_keys.c.master_key_id != current,
            )
            .limit(limit)
        ).all()
    )


def set_subject_wrapped(
    conn: Connection, topic: str, key_id: bytes, wrapped: bytes, master_key_id: str
) -> None:
    conn.execute(
        update(subject_keys)
        .where(subject_keys.c.topic == topic, subject_keys.c.key_id == key_id)
        .values(wrapped=wrapped, master_key_id=master_key_id)
    )


def subject_master_keys(conn: Connection) -> set[str]:
    return {
        k
        for k in conn.execute(select(subject_keys.c.master_key_id).distinct()).scalars()
        if k is not None
    }
