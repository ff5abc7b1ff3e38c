"""An in-process KDS on a hand-moved clock: the real app, service and SQLite store, reached
through Starlette's TestClient (an httpx.Client), so KeyServiceClient runs unchanged."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import delete, insert, select

from sealedbus.core.signed import fingerprint
from sealedbus.core.suites import Suite
from sealedbus.kds import auth
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.api import create_app
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import Store, audit, audit_checkpoints, audit_head, heads
from sealedbus.keys.client import KeyServiceClient, enroll
from sealedbus.keys.identity import MemberIdentity
from tests.clock import Clock


class AsgiTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app, on an event loop in its own thread
    (Starlette's TestClient does the same but now warns that it is deprecated)."""

    def __init__(self, app: FastAPI) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        future = asyncio.run_coroutine_threadsafe(send(), self._loop)
        while True:  # a request in flight when the transport closes fails, as over a socket
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if self._closed:
                    raise httpx.ConnectError("transport closed", request=request) from None

    def close(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def settle() -> None:
    """Wait for the clients' background refreshes and prefetches (they run off the hot path)."""
    for thread in threading.enumerate():
        if thread.name in ("kds-refresh", "kds-prefetch"):
            thread.join(30)


def http_client(app: FastAPI) -> httpx.Client:
    return httpx.Client(transport=AsgiTransport(app), base_url="http://testserver")


@dataclass
class Kds:
    """One KDS and the admin that runs it."""

    clock: Clock
    store: Store
    service: KeyDistributionService
    app: FastAPI
    http: httpx.Client
    admin: AdminClient
    admin_identity: MemberIdentity
    totp_secret: bytes
    root_fingerprint: str
    clients: list[KeyServiceClient] = field(default_factory=list)
    totp_clock: Clock = field(default_factory=Clock)

    def clock_ms(self) -> int:
        return int(self.clock() * 1000)

    def totp(self) -> str:
        """A fresh code for each admin request: the KDS accepts each TOTP time step once, so
        the KDS's TOTP clock (``totp_clock``, apart from ``clock``) moves a step per code."""
        self.totp_clock.advance(auth.TOTP_STEP)
        return auth.totp(self.totp_secret).generate(int(self.totp_clock())).decode()

    def member(
        self,
        name: str,
        *,
        roles: list[str] | None = None,
        http: httpx.Client | None = None,
        suite: Suite = Suite.X25519,
        **options: Any,
    ) -> KeyServiceClient:
        """Enroll a new member with a fresh token and return its client."""
        identity = MemberIdentity.generate(name, os.urandom, suite)
        token = self.admin.create_token(name, roles)
        enroll(
            "http://testserver",
            identity,
            token,
            self.root_fingerprint,
            http=self.http,
            clock=self.clock,
        )
        return self.client(identity, http=http, **options)

    def client(
        self, identity: MemberIdentity, *, http: httpx.Client | None = None, **options: Any
    ) -> KeyServiceClient:
        client = KeyServiceClient(
            "http://testserver",
            identity,
            self.root_fingerprint,
            http=http or self.http,
            clock=self.clock,
            **options,
        )
        self.clients.append(client)
        return client


def make_kds(
    path: Path,
    url: str | None = None,
    clock: Clock | None = None,
    service: KeyDistributionService | None = None,
) -> Kds:
    """A KDS with a new store, root and master key; or around ``service`` (say, one opened from
    a data directory as ``kds serve`` does), which then runs on this harness's clocks."""
    clock = clock or Clock()
    totp_clock = Clock()
    if service is None:
        store = Store(url or f"sqlite:///{path / 'kds.db'}")
        store.create_schema()
        service = KeyDistributionService(
            store,
            Ed25519PrivateKey.generate(),
            MasterKeyring.generate(),
            clock=clock,
            replica="test",
            totp_clock=totp_clock,
        )
    service.clock, service.totp_clock = clock, totp_clock
    store, root = service.store, service.root
    admin_identity = MemberIdentity.generate("root-admin", os.urandom)
    totp_secret = os.urandom(20)
    service.add_admin(admin_identity.name, admin_identity.identity_public, totp_secret)
    app = create_app(service, enroll_per_minute=1000)
    http = http_client(app)
    kds = Kds(
        clock,
        store,
        service,
        app,
        http,
        None,  # type: ignore[arg-type]  # the admin client needs the Kds; set just below
        admin_identity,
        totp_secret,
        fingerprint(root.public_key().public_bytes_raw()),
        totp_clock=totp_clock,
    )
    kds.admin = AdminClient("http://testserver", admin_identity, kds.totp, http=http, clock=clock)
    return kds


AUDIT_TABLES = (audit, audit_checkpoints, audit_head)


def snapshot_audit(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The audit tables and the chain head row as they are now (an attacker's old copy)."""
    with store.read() as conn:
        snap = {t.name: [dict(r._mapping) for r in conn.execute(select(t))] for t in AUDIT_TABLES}
        snap["heads"] = [
            dict(r._mapping) for r in conn.execute(select(heads).where(heads.c.name == "audit"))
        ]
    return snap


def roll_back_audit(store: Store, snap: dict[str, list[dict[str, Any]]]) -> None:
    """Put the old copy back, as someone with write access to the database could."""
    with store.engine.begin() as conn:
        for table in AUDIT_TABLES:
            conn.execute(delete(table))
            if snap[table.name]:
                conn.execute(insert(table), snap[table.name])
        conn.execute(delete(heads).where(heads.c.name == "audit"))
        conn.execute(insert(heads), snap["heads"])


# -- a KDS that hangs (tests/kds/test_hung_kds.py, tests/brokers/test_hung_kds.py) -------------


class RealClock(Clock):
    """Real time passing from ``now``, plus what ``advance`` adds."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()

    def __call__(self) -> float:
        return self.now + (time.monotonic() - self._start)


class HungSocket:
    """A TCP listener that accepts every connection and never reads from or answers it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


class Hangable(httpx.BaseTransport):
    """The in-process KDS while ``hung`` is False; then every request goes to a socket that
    never answers. Records which thread made each request that went to the hung socket."""

    def __init__(self, inner: httpx.BaseTransport, hung: HungSocket) -> None:
        self.inner = inner
        self.hung = False
        self._socket = httpx.HTTPTransport()
        self._port = hung.port
        self.hung_callers: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.hung:
            return self.inner.handle_request(request)
        self.hung_callers.append(threading.current_thread().name)
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return self._socket.handle_request(request)


@contextmanager
def running_kds(tmp_path: Path, clock: Clock) -> Iterator[Kds]:
    """``make_kds``, closed afterwards: its members' clients, its HTTP client and its database."""
    k = make_kds(tmp_path, clock=clock)
    try:
        yield k
    finally:
        for client in k.clients:
            client.close()
        k.http.close()
        k.store.dispose()
