"""Admin sessions: one TOTP code opens a short session, the way cloud consoles grant MFA sessions.

``POST /v1/admin/sessions``, signed with the admin key and carrying a TOTP code, returns a session
token: ``msgpack([1, session id, admin, SHA-256(admin public key), issued_ms, expires_ms])``
followed by the KDS root key's Ed25519 signature over ``LABEL || that``. Later admin requests are
still signed with the admin key (timestamp, nonce and all) and carry the token in
``X-Sealedbus-Admin-Session`` instead of a TOTP code. The KDS accepts the token only when
- its root signature verifies;
- it names the admin who signed the request, and that admin's current key: a token without the
  admin key is useless, and giving an admin a new key ends its sessions;
- it has not expired, and its row (shared by replicas) says it was not closed.

Sessions last ``DEFAULT_TTL_S`` (15 minutes) unless the KDS is configured otherwise
(``sealedbus kds serve --admin-session-ttl``, the longest it grants; an admin may ask for less).
Every request made under a session is an audit entry (``admin.session.used``: session, method,
path), as are opening and closing one. Opening needs a TOTP code, never a session, so a session
cannot extend itself. Any admin may close any session (a lost laptop); ``DELETE
/v1/admin/sessions`` closes all of the caller's own.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and they name the dependency that ``router`` is given.
import base64
import binascii
import hashlib
import weakref
from collections.abc import Callable
from typing import Annotated, Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update

from sealedbus.core.suites import PROTOCOL
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds.admin_client import SESSION_HEADER, SESSIONS_PATH
from sealedbus.kds.service import KeyDistributionService, ServiceError
from sealedbus.kds.store import Store, admin_sessions

HEADER = SESSION_HEADER
OPEN_PATH = SESSIONS_PATH
DEFAULT_TTL_S = 900
MIN_TTL_S = 10
MAX_TTL_S = 86_400
_LABEL = PROTOCOL + b" admin session\x00"
_SIGNATURE = 64
_MAX_TOKEN = 512

_ready: weakref.WeakSet[Store] = weakref.WeakSet()  # stores whose table is known to exist


def _table(store: Store) -> None:
    """Create the sessions table in a database made before it existed (once per store)."""
    if store not in _ready:
        admin_sessions.create(store.engine, checkfirst=True)
        _ready.add(store)


def key_digest(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(public.public_bytes_raw()).digest()


def open_session(
    service: KeyDistributionService, admin: str, admin_key: Ed25519PublicKey, ttl_s: int
) -> tuple[str, str, int]:
    """A new session for ``admin`` (already checked with a TOTP code): (token, id, expires_ms)."""
    _table(service.store)
    session_id, now = service.rng(16), service.now_ms()
    expires = now + ttl_s * 1000
    body = msgpack.packb(
        [1, session_id, admin, key_digest(admin_key), now, expires], use_bin_type=True
    )
    token = bytes(body) + service.root.sign(_LABEL + bytes(body))
    with service.store.write() as conn:
        conn.execute(
            insert(admin_sessions).values(
                session_id=session_id, admin=admin, expires_ms=expires, closed_ms=None
            )
        )
        audit.append(
            conn,
            service.root,
            now,
            f"admin:{admin}",
            "admin.session.opened",
            session=session_id.hex(),
            expires_ms=expires,
        )
    return base64.b64encode(token).decode(), session_id.hex(), expires


def _refuse(reason: str) -> ServiceError:
    return ServiceError(401, KdsCode.BAD_SESSION, f"admin session {reason}; open a new one")


def check_session(
    service: KeyDistributionService,
    admin: str,
    admin_key: Ed25519PublicKey,
    token_text: str,
    method: str,
    path: str,
) -> str:
    """Accept ``token_text`` for a request that ``admin`` signed with ``admin_key``, and audit
    the use; returns the session id (hex). Raises ServiceError 401 ``bad_session``."""
    _table(service.store)
    try:
        if len(token_text) > _MAX_TOKEN:
            raise ValueError
        token = base64.b64decode(token_text, validate=True)
        body, signature = token[:-_SIGNATURE], token[-_SIGNATURE:]
        service.root_public.verify(signature, _LABEL + body)
        version, session_id, name, digest, _, expires = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, binascii.Error, InvalidSignature, msgpack.ExtraData):
        raise _refuse("token does not verify") from None
    if version != 1 or name != admin or digest != key_digest(admin_key):
        raise _refuse("belongs to another admin or admin key")
    now = service.now_ms()
    if now >= expires:
        raise _refuse("expired")
    with service.store.write() as conn:
        row = conn.execute(
            select(admin_sessions.c.closed_ms).where(admin_sessions.c.session_id == session_id)
        ).first()
        if row is None or row.closed_ms is not None:
            raise _refuse("was closed")
        audit.append(
            conn,
            service.root,
            now,
            f"admin:{admin}",
            "admin.session.used",
            session=session_id.hex(),
            method=method,
            path=path,
        )
    return str(session_id.hex())


def second_factor(
    request: Request, admin: str, admin_key: Ed25519PublicKey, totp_secret: bytes, code: str
) -> None:
    """The admin's second factor for one request: an open session, else a TOTP code. Opening a
    session always takes a TOTP code."""
    service: KeyDistributionService = request.app.state.service
    token = request.headers.get(HEADER, "")
    opening = request.method == "POST" and request.url.path == OPEN_PATH
    if token and opening:
        raise ServiceError(401, KdsCode.BAD_SESSION, "opening an admin session takes a TOTP code")
    if token:
        check_session(service, admin, admin_key, token, request.method, request.url.path)
    else:
        service.check_totp(admin, totp_secret, code)


def close_sessions(
    service: KeyDistributionService, actor: str, *, session_id: bytes | None, admin: str
) -> int:
    """Close one session (any admin's) or all of ``admin``'s open ones; returns how many."""
    _table(service.store)
    now = service.now_ms()
    query = update(admin_sessions).where(admin_sessions.c.closed_ms.is_(None))
    if session_id is not None:
        query = query.where(admin_sessions.c.session_id == session_id)
    else:
        query = query.where(admin_sessions.c.admin == admin)
    with service.store.write() as conn:
        closed = int(conn.execute(query.values(closed_ms=now)).rowcount)
        detail: dict[str, Any] = {"closed": closed}
        detail.update({"session": session_id.hex()} if session_id is not None else {"admin": admin})
        audit.append(conn, service.root, now, actor, "admin.session.closed", **detail)
    return closed


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: int | None = Field(default=None, ge=MIN_TTL_S, le=MAX_TTL_S)


class SessionOut(BaseModel):
    session: str
    session_id: str
    expires_at_ms: int
    expires_in: int


class ClosedOut(BaseModel):
    closed: int


def router(admin_check: Callable[..., str]) -> APIRouter:
    """The session endpoints; ``admin_check`` is the API's admin dependency (it returns
    ``admin:NAME`` after checking the signature and the second factor)."""
    routes = APIRouter(tags=["admin"])
    admin_dependency = Annotated[str, Depends(admin_check)]

    @routes.post(OPEN_PATH, response_model=SessionOut, status_code=201)
    def open_admin_session(
        body: SessionRequest, request: Request, who: admin_dependency
    ) -> SessionOut:
        service: KeyDistributionService = request.app.state.service
        longest = int(getattr(request.app.state, "admin_session_ttl", DEFAULT_TTL_S))
        ttl = min(body.ttl_seconds or longest, longest)
        name = who.removeprefix("admin:")
        creds = service.admin_credentials(name)
        if creds is None:  # pragma: no cover - the dependency has just found this admin
            raise ServiceError(401, KdsCode.BAD_SIGNATURE, "request signature does not verify")
        token, session_id, expires = open_session(service, name, creds[0], ttl)
        return SessionOut(
            session=token, session_id=session_id, expires_at_ms=expires, expires_in=ttl
        )

    @routes.delete(OPEN_PATH + "/{session_id}", response_model=ClosedOut)
    def close_admin_session(
        session_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
        request: Request,
        who: admin_dependency,
    ) -> ClosedOut:
        service: KeyDistributionService = request.app.state.service
        closed = close_sessions(
            service, who, session_id=bytes.fromhex(session_id), admin=who.removeprefix("admin:")
        )
        if not closed:
            raise ServiceError(404, KdsCode.UNKNOWN_SESSION, "no open admin session with this id")
        return ClosedOut(closed=closed)

    @routes.delete(OPEN_PATH, response_model=ClosedOut)
    def close_own_sessions(request: Request, who: admin_dependency) -> ClosedOut:
        service: KeyDistributionService = request.app.state.service
        closed = close_sessions(service, who, session_id=None, admin=who.removeprefix("admin:"))
        return ClosedOut(closed=closed)

    return routes
