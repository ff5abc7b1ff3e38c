"""The KDS HTTP API (FastAPI on uvicorn). Binary values travel as standard base64; every signed
object is the msgpack form from ``sealedbus.core.signed``, verified by clients against the pinned
root key, so nothing here needs to be trusted for integrity beyond that signature.

Members authenticate every request with their identity key (``sealedbus.kds.auth``); admins do the
same with their admin key plus a TOTP code. Refusals are JSON ``{"error": code, "reason": text}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sealedbus.core import suites
from sealedbus.core.signed import fingerprint
from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode
from sealedbus.kds import admin_sessions, auth, evidence
from sealedbus.kds.metrics import KdsMetrics
from sealedbus.kds.service import KeyDistributionService, ServiceError
from sealedbus.keys import signing
from sealedbus.keys.authority import TopicPolicy

log = logging.getLogger("sealedbus.kds")

MAX_BODY = 64 * 1024
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"
ENTRY_PATTERN = r"^(role:)?[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,127}$"
Name = Annotated[str, StringConstraints(pattern=signing.NAME_PATTERN)]
Entry = Annotated[str, StringConstraints(pattern=ENTRY_PATTERN)]
TopicName = Annotated[str, Path(pattern=signing.TOPIC_PATTERN)]
MemberName = Annotated[str, Path(pattern=signing.NAME_PATTERN)]
B64 = Annotated[str, StringConstraints(pattern=_B64, max_length=8192)]
if TYPE_CHECKING:
    SuiteName = str
else:  # the labels of core/suites.py, as a Literal (the API schema lists them)
    SuiteName = Literal[suites.LABELS]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Model):
    error: str
    reason: str


class Root(_Model):
    public_key: str
    fingerprint: str


class EnrollRequest(_Model):
    """Enrollment: the token never travels; its derived key (``signing.token_key``) names it and
    signs ``signing.enrollment_message`` (``token_proof``), as does the identity key (``proof``)."""

    token_key: B64
    member: Name
    identity_public: B64
    receive_suite: SuiteName = Suite.X25519.label
    receive_public: B64
    timestamp_ms: int = Field(ge=0, le=1 << 53)
    token_proof: B64
    proof: B64
    # an enrolled member is replaced only when asked: 1 retires its old key, 2 as compromised
    replace: int = Field(default=0, ge=0, le=2)


class CertificateOut(_Model):
    certificate: str


class RevocationsOut(_Model):
    revocations: str


class SealingEpochOut(_Model):
    description: str
    next: str | None = None
    answer: str  # signed SealingEpochAnswer: binds both to the request's nonce and to now


class GrantOut(_Model):
    description: str
    grant: str


class SealedKeyOut(_Model):
    sealed: str


class SubjectIn(_Model):
    """A data subject, named only in signed request bodies (never in a URL a proxy logs)."""

    subject: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class SubjectKeyOut(_Model):
    subject_key: str  # signed SubjectKey (SPEC.md 6.9)


class SubjectGrantOut(_Model):
    grant: str  # signed SubjectKeyGrant (SPEC.md 6.10)


class SubjectErasedOut(_Model):
    subject_key_id: str | None  # hex; None: the subject had no live key


class TokenRequest(_Model):
    """The admin's client makes the token; only its public key (``signing.token_key``) is sent."""

    member: Name
    token_key: B64
    roles: list[Name] = Field(default_factory=list, max_length=16)
    ttl_seconds: int = Field(default=900, ge=10, le=86_400)


class TokenOut(_Model):
    expires_in: int


class TopicIn(_Model):
    name: Annotated[str, StringConstraints(pattern=signing.TOPIC_PATTERN)]
    producers: list[Entry] = Field(default_factory=list, max_length=256)
    consumers: list[Entry] = Field(default_factory=list, max_length=256)
    rotation_seconds: int = Field(default=3600, ge=1, le=366 * 86_400)
    retention_seconds: int = Field(default=7 * 86_400, ge=1, le=100 * 366 * 86_400)
    suite: SuiteName = Suite.X25519.label
    history: bool = False
    max_age_seconds: int = Field(default=86_400, ge=0, le=100 * 366 * 86_400)  # 0: no limit


class PolicyPatch(_Model):
    producers: list[Entry] | None = Field(default=None, max_length=256)
    consumers: list[Entry] | None = Field(default=None, max_length=256)


class EpochOut(_Model):
    epoch: int
    not_before_ms: int
    not_after_ms: int
    destroy_after_ms: int
    destroyed: bool


class RotateOut(_Model):
    epoch: int


class AuditOut(_Model):
    entries: int
    checkpoints: int
    ok: bool
    problem: str


class ShredOut(_Model):
    topic: str
    destroyed_epochs: list[int]
    other: dict[str, int]  # other per-topic key material destroyed, by kind (subject keys)
    fresh_epoch: int


class AuditHeadOut(_Model):
    head: str  # signed AuditHead (SPEC.md 6.12)


class AuditEntryOut(_Model):
    seq: int
    at_ms: int
    actor: str
    action: str
    detail: str  # JSON text, as hashed
    prev_hash: str
    hash: str


class AuditEntriesOut(_Model):
    entries: list[AuditEntryOut]


class EpochsHeld(_Model):
    """Epochs a member holds keys for, by topic (``POST /v1/epochs/gone``)."""

    epochs: dict[
        Annotated[str, StringConstraints(pattern=signing.TOPIC_PATTERN)],
        list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]],
    ] = Field(max_length=evidence.MAX_LIVENESS_QUERY)


class EpochsGone(_Model):
    """Those of them no longer live (unsigned: clients only drop cached keys on it)."""

    gone: dict[str, list[int]]


class OpenFailureIn(_Model):
    """A client's report of an envelope it could not open: nothing from the message but the
    sender certificate id of its clear header."""

    topic: Annotated[str, StringConstraints(pattern=signing.TOPIC_PATTERN)]
    reason: Annotated[str, StringConstraints(pattern=evidence.REPORT_REASON_PATTERN)]
    sender: Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{32})?$")] = ""
    suppressed: int = Field(default=0, ge=0, le=1 << 31)  # reports the client itself dropped


class OpenFailureOut(_Model):
    recorded: bool


class Health(_Model):
    status: str
    replica: str
    leader: bool


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, KdsCode.INVALID_REQUEST, f"{field} is not valid base64") from None


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _topic_out(p: TopicPolicy) -> TopicIn:
    return TopicIn(
        name=p.name,
        producers=sorted(p.producers),
        consumers=sorted(p.consumers),
        rotation_seconds=p.rotation_ms // 1000,
        retention_seconds=p.retention_ms // 1000,
        suite=p.suite.label,
        history=p.history,
        max_age_seconds=p.max_age_ms // 1000,
    )


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whatever Content-Length claims (or
    with none, chunked): the body is read here first, then handed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await _too_large(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _too_large(send)
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Send) -> None:
    body = b'{"error":"too_large","reason":"request body exceeds the limit"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RateLimit:
    """A token bucket per client address (enrollment: ``per_minute``, bursts of the same)."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))  # re-inserted: newest
            while len(self._buckets) >= 10_000:  # forget the longest idle, never everyone
                del self._buckets[next(iter(self._buckets))]
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1, now)
            return True


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _verify(request: Request, body: bytes, admin: bool) -> str:
    """Check a signed request (``sealedbus.kds.auth``); returns the principal's name."""
    service: KeyDistributionService = request.app.state.service
    h = request.headers
    principal, stamp = h.get(signing.PRINCIPAL, ""), h.get(signing.TIMESTAMP, "")
    nonce, signature = h.get(signing.NONCE, ""), h.get(signing.SIGNATURE, "")
    if not (principal and stamp and nonce and signature):
        raise ServiceError(401, KdsCode.UNAUTHENTICATED, "request signature headers are missing")
    if (
        len(principal) > 128
        or not (stamp.isascii() and stamp.isdigit())
        or len(stamp) > 16
        or len(nonce) != 32
        or len(signature) != 88
    ):
        raise ServiceError(401, KdsCode.UNAUTHENTICATED, "request signature headers are malformed")
    now = service.now_ms()
    if abs(now - int(stamp)) > signing.MAX_SKEW_MS:
        raise ServiceError(401, KdsCode.STALE_REQUEST, "timestamp outside the allowed clock skew")
    # An unknown principal and a bad signature get the same answer: no probing for names.
    key: Ed25519PublicKey | None = None
    revoked, totp_secret = False, b""
    if admin:
        creds = service.admin_credentials(principal)
        if creds is not None:
            key, totp_secret = creds
    else:
        member = service.member_key(principal)
        if member is not None:
            key, revoked = member
    target = request.scope.get("raw_path") or request.url.path.encode()
    if request.scope.get("query_string"):
        target += b"?" + request.scope["query_string"]
    message = signing.request_message(request.method, target, int(stamp), nonce, body)
    try:
        signature_bytes = _b64(signature, "signature")
        # an unknown principal costs the same verification as a known one: no timing probe
        (key or _NOBODY).verify(signature_bytes, message)
        if key is None:
            raise InvalidSignature
    except (InvalidSignature, ServiceError):
        if (
            not admin
            and key is not None
            and _signed_by_any(service.replaced_keys(principal), signature, message)
        ):
            raise ServiceError(
                401, KdsCode.KEY_REPLACED, "key replaced by a later enrollment of this member"
            ) from None
        raise ServiceError(
            401, KdsCode.BAD_SIGNATURE, "request signature does not verify"
        ) from None
    if revoked:
        raise ServiceError(403, KdsCode.MEMBER_REVOKED, f"member {principal!r} is revoked")
    kind = "admin" if admin else "member"
    expires = int(stamp) + 2 * signing.MAX_SKEW_MS
    if request.method in ("GET", "HEAD") or target in _SIGNED_READS:  # no database write
        fresh = request.app.state.read_nonces.remember(f"{kind}:{principal}", nonce, expires, now)
    else:
        fresh = service.remember_nonce(f"{kind}:{principal}", nonce, expires)
    if not fresh:
        raise ServiceError(401, KdsCode.REPLAYED_REQUEST, "this request was seen before")
    if admin:  # a TOTP code, or an admin session opened with one
        admin_sessions.second_factor(
            request, principal, key, totp_secret, h.get(auth.TOTP_CODE, "")
        )
    return principal


# POSTs that only read (a body too large for a URL): their nonces are kept as a GET's are
_SIGNED_READS = frozenset({b"/v1/epochs/gone"})
_NOBODY = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()


def _signed_by_any(keys: list[Ed25519PublicKey], signature: str, message: bytes) -> bool:
    for old in keys:
        try:
            old.verify(base64.b64decode(signature), message)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def _member(request: Request, body: Annotated[bytes, Depends(_raw_body)]) -> str:
    return _verify(request, body, admin=False)


def _admin(request: Request, body: Annotated[bytes, Depends(_raw_body)]) -> str:
    return "admin:" + _verify(request, body, admin=True)


Member = Annotated[str, Depends(_member)]
Admin = Annotated[str, Depends(_admin)]


def create_app(
    service: KeyDistributionService,
    *,
    max_body: int = MAX_BODY,
    enroll_per_minute: int = 10,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    metrics: KdsMetrics | None = None,
    is_leader: Callable[[], bool] = lambda: False,
) -> FastAPI:
    m = metrics or KdsMetrics()
    limiter = RateLimit(enroll_per_minute, time.monotonic)
    reports = evidence.FailureReports(
        RateLimit(evidence.REPORT_RATE_PER_MINUTE, time.monotonic).allow
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_startup:
            on_startup()
        try:
            yield
        finally:
            if on_shutdown:
                on_shutdown()

    app = FastAPI(
        title="sealedbus key distribution service",
        version="1",
        lifespan=lifespan,
        responses={
            400: {"model": Error},
            401: {"model": Error},
            403: {"model": Error},
            404: {"model": Error},
            413: {"model": Error},
        },
    )
    app.state.metrics = m
    m.watch(service, is_leader)
    app.state.service = service
    app.state.read_nonces = auth.ReadNonces()

    @app.exception_handler(ServiceError)
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ServiceError):  # pragma: no cover - registered for that type
            raise exc
        m.refusals.labels(exc.code).inc()
        return JSONResponse({"error": exc.code, "reason": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # pragma: no cover
            raise exc
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        )
        m.refusals.labels(KdsCode.INVALID_REQUEST).inc()
        return JSONResponse({"error": KdsCode.INVALID_REQUEST, "reason": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__)  # no trace, no values: may be secret
        return JSONResponse(
            {"error": KdsCode.INTERNAL_ERROR, "reason": "internal error"}, status_code=500
        )

    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # answered here: Starlette's outer handler would re-raise it,
            # and the server would log a traceback that may hold values (keys, tokens)
            log.error("internal error: %s", type(exc).__name__)
            response = JSONResponse(
                {"error": KdsCode.INTERNAL_ERROR, "reason": "internal error"}, status_code=500
            )
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        m.requests.labels(name, str(response.status_code)).inc()
        m.latency.labels(name).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        return Health(status="ok", replica=service.replica, leader=is_leader())

    @app.get(
        "/readyz", response_model=Health, tags=["operations"], responses={503: {"model": Error}}
    )
    def readyz() -> Health:
        try:
            service.store.ping()
        except Exception as exc:
            raise ServiceError(503, KdsCode.NOT_READY, "database unreachable") from exc
        return Health(status="ready", replica=service.replica, leader=is_leader())

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics_endpoint() -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/root", response_model=Root, tags=["members"])
    def root() -> Root:
        public = service.root_public.public_bytes_raw()
        return Root(public_key=_enc(public), fingerprint=fingerprint(public))

    @app.post(
        "/v1/enroll",
        response_model=CertificateOut,
        tags=["members"],
        responses={429: {"model": Error}},
    )
    def enroll(body: EnrollRequest, request: Request) -> CertificateOut:
        if not limiter.allow(request.client.host if request.client else "?"):
            raise ServiceError(
                429, KdsCode.RATE_LIMITED, "too many enrollment attempts; retry later"
            )
        try:
            cert = service.enroll(
                _b64(body.token_key, "token_key"),
                body.member,
                _b64(body.identity_public, "identity_public"),
                Suite.parse(body.receive_suite),
                _b64(body.receive_public, "receive_public"),
                body.timestamp_ms,
                _b64(body.token_proof, "token_proof"),
                _b64(body.proof, "proof"),
                body.replace,
            )
        except ServiceError as exc:
            service.record(f"member:{body.member}", "enrollment.refused", code=exc.code)
            raise
        m.enrollments.inc()
        return CertificateOut(certificate=_enc(cert))

    @app.get("/v1/certificate", response_model=CertificateOut, tags=["members"])
    def certificate(who: Member) -> CertificateOut:
        return CertificateOut(certificate=_enc(service.certificate(who)))

    @app.get("/v1/certificates/{cert_id}", response_model=CertificateOut, tags=["members"])
    def certificate_by_id(
        cert_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], who: Member
    ) -> CertificateOut:
        signed = service.certificate_by_id(bytes.fromhex(cert_id))
        if signed is None:
            raise ServiceError(404, KdsCode.UNKNOWN_CERTIFICATE, "no certificate with this id")
        return CertificateOut(certificate=_enc(signed))

    @app.get("/v1/revocations", response_model=RevocationsOut, tags=["members"])
    def revocation_list(who: Member) -> RevocationsOut:
        return RevocationsOut(revocations=_enc(service.revocation_list()))

    @app.get("/v1/topics/{topic}/sealing-epoch", response_model=SealingEpochOut, tags=["members"])
    def sealing_epoch(
        topic: TopicName,
        who: Member,
        nonce: Annotated[str, Query(pattern=r"^([0-9a-f]{32})?$")] = "",
    ) -> SealingEpochOut:
        current, ahead, answer = service.sealing_epoch(who, topic, bytes.fromhex(nonce))
        return SealingEpochOut(
            description=_enc(current), next=_enc(ahead) if ahead else None, answer=_enc(answer)
        )

    @app.get(
        "/v1/topics/{topic}/epochs/{epoch}/grant",
        response_model=GrantOut,
        tags=["members"],
        responses={410: {"model": Error}},
    )
    def grant(
        topic: TopicName, epoch: Annotated[int, Path(ge=0, le=0xFFFFFFFF)], who: Member
    ) -> GrantOut:
        description, sealed = service.grant(who, topic, epoch)
        m.grants.inc()
        return GrantOut(description=_enc(description), grant=_enc(sealed))

    @app.get("/v1/topics/{topic}/topic-key", response_model=SealedKeyOut, tags=["members"])
    def topic_key(topic: TopicName, who: Member) -> SealedKeyOut:
        return SealedKeyOut(sealed=_enc(service.topic_key(who, topic)))

    @app.post("/v1/topics/{topic}/subject-key", response_model=SubjectKeyOut, tags=["members"])
    def subject_key(topic: TopicName, body: SubjectIn, who: Member) -> SubjectKeyOut:
        return SubjectKeyOut(subject_key=_enc(service.subject_key(who, topic, body.subject)))

    @app.get(
        "/v1/topics/{topic}/subjects/{key_id}/grant",
        response_model=SubjectGrantOut,
        tags=["members"],
        responses={410: {"model": Error}},
    )
    def subject_grant(
        topic: TopicName, key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], who: Member
    ) -> SubjectGrantOut:
        return SubjectGrantOut(grant=_enc(service.subject_grant(who, topic, bytes.fromhex(key_id))))

    @app.post(
        "/v1/admin/topics/{topic}/subjects/erase", response_model=SubjectErasedOut, tags=["admin"]
    )
    def erase_subject(topic: TopicName, body: SubjectIn, who: Admin) -> SubjectErasedOut:
        key_id = service.erase_subject(who, topic, body.subject)
        return SubjectErasedOut(subject_key_id=key_id.hex() if key_id else None)

    @app.get("/v1/audit/head", response_model=AuditHeadOut, tags=["members"])
    def audit_head(who: Member) -> AuditHeadOut:
        """The audit chain's head, signed now: clients keep the highest (SPEC.md 6.12)."""
        return AuditHeadOut(
            head=_enc(evidence.audit_head(service.store, service.root, service.now_ms()))
        )

    @app.post("/v1/epochs/gone", response_model=EpochsGone, tags=["members"])
    def epochs_gone(body: EpochsHeld, who: Member) -> EpochsGone:
        """Which of the epochs the member holds keys for it can no longer be granted (destroyed
        by a shred or retention, withdrawn, unknown, or no longer its to read): running
        consumers drop those keys and their sessions (``KeyServiceClient``)."""
        asked = [(t, n) for t, numbers in body.epochs.items() for n in set(numbers)]
        if len(asked) > evidence.MAX_LIVENESS_QUERY:
            raise ServiceError(
                422,
                KdsCode.INVALID_REQUEST,
                f"at most {evidence.MAX_LIVENESS_QUERY} epochs per question",
            )
        gone: dict[str, list[int]] = {}
        for topic, epoch in evidence.epochs_gone(service.store, who, asked, service.now_ms()):
            gone.setdefault(topic, []).append(epoch)
        return EpochsGone(gone={t: sorted(n) for t, n in gone.items()})

    @app.post("/v1/audit/open-failures", response_model=OpenFailureOut, tags=["members"])
    def open_failure(body: OpenFailureIn, who: Member) -> OpenFailureOut:
        """Record an envelope the member could not open; per-member rate limited (``recorded``
        false: counted, and the count goes with the member's next recorded report)."""
        dropped = reports.admit(who)
        if dropped is None:
            return OpenFailureOut(recorded=False)
        service.record(
            f"member:{who}",
            evidence.OPEN_FAILED,
            topic=body.topic,
            reason=body.reason,
            sender=body.sender,
            suppressed=body.suppressed + dropped,
        )
        return OpenFailureOut(recorded=True)

    @app.post("/v1/admin/tokens", response_model=TokenOut, status_code=201, tags=["admin"])
    def create_token(body: TokenRequest, who: Admin) -> TokenOut:
        token_public = _b64(body.token_key, "token_key")
        service.create_token(who, body.member, body.roles, body.ttl_seconds * 1000, token_public)
        return TokenOut(expires_in=body.ttl_seconds)

    @app.get("/v1/admin/topics", response_model=list[TopicIn], tags=["admin"])
    def list_topics(who: Admin) -> list[TopicIn]:
        return [_topic_out(p) for p in service.topics()]

    @app.post(
        "/v1/admin/topics",
        response_model=TopicIn,
        status_code=201,
        tags=["admin"],
        responses={409: {"model": Error}},
    )
    def create_topic(body: TopicIn, who: Admin) -> TopicIn:
        try:
            policy = TopicPolicy(
                name=body.name,
                producers=frozenset(body.producers),
                consumers=frozenset(body.consumers),
                rotation_ms=body.rotation_seconds * 1000,
                retention_ms=body.retention_seconds * 1000,
                suite=Suite.parse(body.suite),
                history=body.history,
                max_age_ms=body.max_age_seconds * 1000,
            )
        except ValueError as exc:
            raise ServiceError(422, KdsCode.INVALID_POLICY, str(exc)) from None
        service.create_topic(who, policy)
        return _topic_out(policy)

    @app.get("/v1/admin/topics/{topic}", response_model=TopicIn, tags=["admin"])
    def show_topic(topic: TopicName, who: Admin) -> TopicIn:
        return _topic_out(service.topic(topic))

    @app.patch("/v1/admin/topics/{topic}", response_model=TopicIn, tags=["admin"])
    def change_topic(topic: TopicName, body: PolicyPatch, who: Admin) -> TopicIn:
        service.set_policy(who, topic, body.producers, body.consumers)
        return _topic_out(service.topic(topic))

    @app.post("/v1/admin/topics/{topic}/rotate", response_model=RotateOut, tags=["admin"])
    def rotate(topic: TopicName, who: Admin) -> RotateOut:
        epoch = service.rotate(who, topic)
        m.rotations.labels("admin").inc()
        return RotateOut(epoch=epoch)

    @app.post("/v1/admin/topics/{topic}/shred", response_model=ShredOut, tags=["admin"])
    def shred(topic: TopicName, who: Admin) -> ShredOut:
        """Destroy every key of the topic now; it stays, with a fresh epoch for producers."""
        done = service.shred_topic(who, topic)
        return ShredOut(
            topic=topic,
            destroyed_epochs=done.epochs,
            other=done.other,
            fresh_epoch=done.fresh_epoch,
        )

    @app.get("/v1/admin/topics/{topic}/epochs", response_model=list[EpochOut], tags=["admin"])
    def list_epochs(topic: TopicName, who: Admin) -> list[EpochOut]:
        return [
            EpochOut(
                epoch=e.epoch,
                not_before_ms=e.not_before_ms,
                not_after_ms=e.not_after_ms,
                destroy_after_ms=e.destroy_after_ms,
                destroyed=e.destroyed,
            )
            for e in service.epochs(topic)
        ]

    @app.post(
        "/v1/admin/members/{member}/revoke",
        status_code=204,
        tags=["admin"],
        response_class=Response,
    )
    def revoke(member: MemberName, who: Admin, compromised: bool = True) -> Response:
        """``compromised=false`` retires the member: envelopes it stamped before now still open."""
        service.revoke(who, member, compromised=compromised)
        return Response(status_code=204)

    @app.get("/v1/admin/audit", response_model=AuditOut, tags=["admin"])
    def verify_audit(
        who: Admin,
        expect_seq: Annotated[int | None, Query(ge=0, le=1 << 62)] = None,
        expect_hash: Annotated[str, Query(pattern=r"^([0-9a-f]{64})?$")] = "",
    ) -> AuditOut:
        """Walk the chain; with ``expect_seq`` and ``expect_hash`` (from a head kept outside the
        database) also check that the chain still holds that hash at that sequence."""
        if (expect_seq is None) != (not expect_hash):
            raise ServiceError(
                422, KdsCode.INVALID_REQUEST, "expect_seq and expect_hash go together"
            )
        expect = None if expect_seq is None else (expect_seq, bytes.fromhex(expect_hash))
        report = evidence.verify_audit(service.store, service.root_public, expect)
        return AuditOut(
            entries=report.entries,
            checkpoints=report.checkpoints,
            ok=report.ok,
            problem=report.problem,
        )

    @app.get("/v1/admin/audit/head", response_model=AuditHeadOut, tags=["admin"])
    def admin_audit_head(who: Admin) -> AuditHeadOut:
        return AuditHeadOut(
            head=_enc(evidence.audit_head(service.store, service.root, service.now_ms()))
        )

    @app.get("/v1/admin/audit/entries", response_model=AuditEntriesOut, tags=["admin"])
    def audit_entries(
        who: Admin,
        since: Annotated[int, Query(ge=0, le=1 << 62)] = 0,
        limit: Annotated[int, Query(ge=1, le=evidence.MAX_EXPORT_PAGE)] = 500,
    ) -> AuditEntriesOut:
        """Entries after ``since``, in order, each with its chain hash and the one before it."""
        return AuditEntriesOut(
            entries=[
                AuditEntryOut(**e) for e in evidence.audit_entries(service.store, since, limit)
            ]
        )

    app.include_router(admin_sessions.router(_admin))
    app.add_middleware(BodyLimit, limit=max_body)
    return app
