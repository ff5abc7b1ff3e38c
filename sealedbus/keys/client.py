"""KeyServiceClient: a ``KeySource`` backed by the network KDS (needs the ``kds`` extra).

Trust comes from the pinned root key fingerprint, not from the transport: every certificate,
epoch description, grant and revocation list is verified against it, so a proxy that terminates
TLS can neither read epoch keys nor substitute them (``UntrustedResponse``).

Caching, after PyJWKClient: epoch descriptions are re-checked every ``epoch_refresh`` seconds and
the next one is prefetched; epoch keys are kept until their ``destroy_after`` and dropped then;
a key id (epoch, certificate) not in the cache is fetched once (unknown certificate ids at a
bounded rate). Refreshes of what the cache still covers run in the background, so no seal or
open waits for the KDS while the cache answers. When the KDS cannot be reached the client keeps
answering from its cache while the cached epochs, certificate and revocation list still cover
the request (the list for at most ``revocation_max_age``, a producer's epoch view for at most
``max_epoch_staleness``), and raises ``KeyServiceUnavailable`` (retryable; ``StaleRevocations``
for the list) after that, at once while the outage backoff runs.

Every ``epoch_refresh`` seconds (in the background, when ``dropped_epochs`` is asked: openers do
at each revocation check) the client also asks the KDS which of the epochs it holds keys for are
no longer live (``POST /v1/epochs/gone``) and drops those keys at once: a topic shred reaches a
consumer that is reading within ``epoch_refresh`` plus its opener's revocation check interval
(and one KDS round trip), not at the epoch's ``destroy_after``; one that read nothing for
``revocation_max_age`` asks before its next open (as it fetches its revocation list then). A
consumer resuming after a shorter pause learns in the background: what it opens in its first
revocation check interval may still come from the shredded epochs. That answer is not signed:
it can only make the client forget a key (fetched again, signed, while it is live), never
accept one.

Evidence (``docs/threat-model.md``, *Rollback*): with its periodic refreshes the client fetches
the KDS's signed audit head (SPEC.md 6.12) every ``audit_head_refresh`` seconds and remembers the
highest; a head that goes backwards makes it refuse that KDS for good (``AuditRollback``, from
every method). ``report_open_failure`` tells the KDS's audit log about a message that could not
be opened (reason, topic, sender certificate id; nothing from the message), token-bucket limited.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core.cache import BoundedCache
from sealedbus.core.signed import (
    AuditHead,
    Certificate,
    EpochDescription,
    RevocationList,
    SealingEpochAnswer,
    SignatureError,
    SubjectKey,
    fingerprint,
)
from sealedbus.errors import (
    AuditRollback,
    KdsCode,
    KeyServiceUnavailable,
    Reason,
    Refused,
    StaleRevocations,
    UnopenableEnvelope,
    UntrustedResponse,
    refusal_error,
)
from sealedbus.keys import authority, signing
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import ENROLL_HINT, read_secret
from sealedbus.keys.source import EpochKeys

_MAX_CACHED_CERTS = 10_000
# An id the KDS did not know is asked again only after this long. Ids are hashes of issued
# certificates, so a real one is never unknown first; the answer is not signed, so not forever.
_UNKNOWN_CERT_MS = 60_000
# An epoch the KDS called destroyed is refused without asking again for this long, so that a
# backlog of a shredded topic does not cost a KDS request per message. Destruction is final,
# but the refusal is not signed, so not forever either.
_DESTROYED_MS = 60_000
_PREFETCH_RETRY_MS = 1000
_SWEEP_MS = 10_000  # how often cached epoch keys past their destruction time are dropped
_GONE_BATCH = 500  # (topic, epoch) pairs per question to /v1/epochs/gone
_GONE_BATCH_CHARS = 32_000  # and topic-name characters, well under the KDS's body limit


URL_ENV = "SEALEDBUS_KDS_URL"
FINGERPRINT_ENV = "SEALEDBUS_KDS_ROOT_FINGERPRINT"
CA_ENV = "SEALEDBUS_KDS_CA"
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


def check_fingerprint(value: str) -> str:
    """``value`` if it is a root fingerprint as ``sealedbus kds init`` prints it (``sha256:`` and
    64 lowercase hex digits); ValueError otherwise, before anything is asked of the KDS."""
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
        raise ValueError(
            "root fingerprint: expected sha256: and 64 lowercase hex digits, as "
            "`sealedbus kds init` and `sealedbus kds fingerprint` print it"
        )
    return value


def tls_context(verify: Any = True, cert: Any = None) -> ssl.SSLContext | bool:
    """An SSL context from a CA file path (or True: the system store) and an optional client
    certificate ``(cert_file, key_file)`` for mutual TLS; an SSLContext passes through."""
    if isinstance(verify, ssl.SSLContext) or (verify is False and cert is None):
        return verify
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class SignedHttp:
    """HTTP to the KDS with every request signed by a principal's Ed25519 key."""

    def __init__(
        self,
        url: str,
        principal: str,
        key: Ed25519PrivateKey,
        *,
        http: httpx.Client | None = None,
        verify: Any = True,
        cert: Any = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._owned = http is None
        self.http = http or httpx.Client(
            base_url=url, verify=tls_context(verify, cert), timeout=timeout
        )
        self.principal = principal
        self._key = key
        self._clock = clock
        self._rng = rng

    def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        signed: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a request; return its JSON. Raises Refused (4xx) or KeyServiceUnavailable."""
        request = self.http.build_request(method, path, json=json, headers=headers)
        if signed:
            request.headers.update(
                signing.sign_request(
                    self._key,
                    self.principal,
                    method,
                    request.url.raw_path,
                    request.content,
                    int(self._clock() * 1000),
                    self._rng(16),
                )
            )
        try:
            response = self.http.send(request)
        except httpx.HTTPError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, ssl.SSLError):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise KeyServiceUnavailable(
                    "KDS TLS certificate not trusted (pass the CA bundle: --ca / verify=)"
                ) from exc
            if cause is not None:
                raise KeyServiceUnavailable(f"KDS TLS handshake failed: {cause}") from exc
            raise KeyServiceUnavailable(f"KDS unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                doc = response.json()
                detail = f": {doc['error']}: {doc['reason']}"
            raise KeyServiceUnavailable(f"KDS answered {response.status_code}{detail}")
        try:
            body = response.json() if response.content else None
        except ValueError:
            raise UntrustedResponse("KDS answer is not JSON") from None
        if response.status_code >= 400:
            doc = body if isinstance(body, dict) else {}
            raise Refused(
                response.status_code,
                str(doc.get("error", "refused")),
                str(doc.get("reason", doc.get("detail", ""))),
            )
        return body

    def close(self) -> None:
        if self._owned:
            self.http.close()


def _field(doc: Any, name: str) -> bytes:
    try:
        return base64.b64decode(doc[name], validate=True)
    except (KeyError, TypeError, ValueError):
        raise UntrustedResponse(f"KDS answer lacks a valid {name!r}") from None


def fetch_root(http: SignedHttp, root_fingerprint: str) -> Ed25519PublicKey:
    """The KDS root public key, accepted only if it has the pinned fingerprint."""
    public = _field(http.call("GET", "/v1/root", signed=False), "public_key")
    if fingerprint(public) != root_fingerprint:
        raise UntrustedResponse("KDS root key does not match the pinned fingerprint")
    return Ed25519PublicKey.from_public_bytes(public)


def enroll(
    url: str,
    identity: MemberIdentity,
    token: str,
    root_fingerprint: str,
    *,
    replace: bool = False,
    compromised: bool = False,
    **http_options: Any,
) -> Certificate:
    """Enroll ``identity`` with a one-time token; returns the verified certificate. The token
    does not travel: a key derived from it signs the enrollment (``signing.token_key``).

    The KDS refuses a name that is already enrolled (409 ``member_enrolled``) unless
    ``replace``: the member's old key then stops working and its old certificates are revoked,
    as retirement (envelopes signed before now still open) or, with ``compromised``, as key
    compromise (none do)."""
    replace_mode = signing.REPLACE_NONE
    if replace:
        replace_mode = signing.REPLACE_COMPROMISE if compromised else signing.REPLACE_RETIRE
    check_fingerprint(root_fingerprint)
    http = SignedHttp(url, identity.name, identity.signing_key, **http_options)
    clock: Callable[[], float] = http_options.get("clock", time.time)
    try:
        root = fetch_root(http, root_fingerprint)
        token_key = signing.token_key(token)
        token_public = token_key.public_key().public_bytes_raw()
        now_ms = int(clock() * 1000)
        message = signing.enrollment_message(
            token_public,
            identity.name,
            identity.identity_public,
            int(identity.receive.suite),
            identity.receive.public,
            now_ms,
            replace_mode,
        )
        doc = http.call(
            "POST",
            "/v1/enroll",
            {
                "token_key": base64.b64encode(token_public).decode(),
                "member": identity.name,
                "identity_public": base64.b64encode(identity.identity_public).decode(),
                "receive_suite": identity.receive.suite.label,
                "receive_public": base64.b64encode(identity.receive.public).decode(),
                "timestamp_ms": now_ms,
                "token_proof": base64.b64encode(token_key.sign(message)).decode(),
                "proof": base64.b64encode(identity.signing_key.sign(message)).decode(),
                **({"replace": replace_mode} if replace_mode else {}),
            },
            signed=False,
        )
        return _check_certificate(_field(doc, "certificate"), root, identity)
    finally:
        http.close()


def _check_certificate(
    signed: bytes, root: Ed25519PublicKey, identity: MemberIdentity
) -> Certificate:
    try:
        cert = Certificate.verify(signed, root)
    except SignatureError as exc:
        raise UntrustedResponse(str(exc)) from None
    if (cert.member, cert.identity_public, cert.receive_public) != (
        identity.name,
        identity.identity_public,
        identity.receive.public,
    ):
        raise UntrustedResponse("certificate is for another member or other keys")
    return cert


@dataclass
class _TopicEpochs:
    current: EpochDescription
    ahead: EpochDescription | None
    fetched_ms: int

    def at(self, now: int) -> EpochDescription | None:
        for d in (self.ahead, self.current):
            if d is not None and d.not_before_ms <= now < d.not_after_ms:
                return d
        return None


class KeyServiceClient:
    """One enrolled member's keys from a KDS; implements ``KeySource``."""

    def __init__(
        self,
        url: str,
        identity: MemberIdentity,
        root_fingerprint: str,
        *,
        http: httpx.Client | None = None,
        verify: Any = True,
        cert: Any = None,
        timeout: float = 5.0,
        epoch_refresh: float = 10.0,
        revocation_refresh: float = 30.0,
        certificate_refresh: float = 60.0,
        outage_backoff: float = 5.0,
        revocation_max_age: float | None = None,
        max_epoch_staleness: float | None = 300.0,
        certificate_lookups_per_second: float = 5.0,
        certificate_lookup_burst: int = 20,
        audit_head_refresh: float = 30.0,
        failure_reports_per_second: float = 1.0,
        failure_report_burst: int = 10,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._identity = identity
        self._fingerprint = check_fingerprint(root_fingerprint)
        self._http = SignedHttp(
            url,
            identity.name,
            identity.signing_key,
            http=http,
            verify=verify,
            cert=cert,
            timeout=timeout,
            clock=clock,
            rng=rng,
        )
        self._epoch_refresh_ms = int(epoch_refresh * 1000)
        self._revocation_refresh_ms = int(revocation_refresh * 1000)
        # A list signed longer ago than this is refused, and one held that long is no longer
        # used (StaleRevocations, retryable): default a few refresh intervals and the skew.
        self._revocation_max_age_ms = (
            3 * self._revocation_refresh_ms + signing.MAX_SKEW_MS
            if revocation_max_age is None
            else int(revocation_max_age * 1000)
        )
        # A producer whose epoch view is older than this stops sealing until it can refresh:
        # a consumer revoked meanwhile (the topic rotated) reads at most this long. None: the
        # cached epoch is used to its end.
        self._max_staleness_ms = (
            None if max_epoch_staleness is None else int(max_epoch_staleness * 1000)
        )
        self._cert_refresh_ms = int(certificate_refresh * 1000)
        self._backoff_ms = int(outage_backoff * 1000)
        self._lookup_rate = certificate_lookups_per_second / 1000  # tokens per ms
        self._lookup_burst = float(certificate_lookup_burst)
        self._lookups = _Bucket(certificate_lookups_per_second, certificate_lookup_burst)
        self._clock = clock
        self._inflight: set[str] = set()
        self._next_sweep_ms = 0
        self._rng = rng
        self._lock = threading.RLock()
        self._root: Ed25519PublicKey | None = None
        self._cert: Certificate | None = None
        self._cert_fetched_ms = 0
        self._epochs: dict[str, _TopicEpochs] = {}
        self._highest: dict[str, int] = {}
        self._keys: dict[tuple[str, int], EpochKeys] = {}
        self._dropped: set[tuple[str, int]] = set()  # dropped early, not yet told to the opener
        self._gone_checked_ms = 0
        self._gone_answered_ms = 0  # when the KDS last said which held epochs are gone
        self._prefetched: BoundedCache[tuple[str, int], int] = BoundedCache(_MAX_CACHED_CERTS)
        self._next_prefetch_ms = 0
        self._certs: BoundedCache[bytes, Certificate] = BoundedCache(_MAX_CACHED_CERTS)
        # certificate id -> ask again after (ms)
        self._unknown_certs: BoundedCache[bytes, int] = BoundedCache(_MAX_CACHED_CERTS)
        # (topic, epoch) the KDS called destroyed -> (ask again after (ms), its refusal code)
        self._destroyed: BoundedCache[tuple[str, int], tuple[int, KdsCode | None]] = BoundedCache(
            _MAX_CACHED_CERTS
        )
        self._topic_keys: dict[str, bytes] = {}
        self._revocations: RevocationList | None = None
        self._revocations_fetched_ms = 0
        self._down_until_ms = 0
        self._audit_refresh_ms = int(audit_head_refresh * 1000)
        self._audit_head: AuditHead | None = None
        self._audit_lock = threading.Lock()
        self._audit_fetched_ms = -self._audit_refresh_ms
        self._rollback = ""  # why this KDS is refused for good (a rollback was seen)
        self._reports = _Bucket(failure_reports_per_second, failure_report_burst)
        self._reports_suppressed = 0

    @property
    def member(self) -> str:
        return self._identity.name

    @classmethod
    def from_key_file(
        cls, url: str, key_file: str | os.PathLike[str], root_fingerprint: str, **options: Any
    ) -> KeyServiceClient:
        """A client for the member whose key file ``sealedbus enroll`` wrote (mode 0600)."""
        identity = MemberIdentity.from_bytes(read_secret(Path(key_file), hint=ENROLL_HINT))
        return cls(url, identity, root_fingerprint, **options)

    @classmethod
    def from_env(cls, key_file: str | os.PathLike[str], **options: Any) -> KeyServiceClient:
        """``from_key_file`` configured as the CLI is: the KDS URL from ``$SEALEDBUS_KDS_URL``,
        the pinned root fingerprint from ``$SEALEDBUS_KDS_ROOT_FINGERPRINT`` and, if set, the CA
        bundle for the KDS's TLS certificate from ``$SEALEDBUS_KDS_CA`` (else the system trust
        store). Keyword options (``verify=``, ``timeout=``...) win over the environment."""
        url, pin = os.environ.get(URL_ENV, ""), os.environ.get(FINGERPRINT_ENV, "")
        missing = [f"${name}" for name, v in ((URL_ENV, url), (FINGERPRINT_ENV, pin)) if not v]
        if missing:
            raise ValueError(f"set {' and '.join(missing)} (or use from_key_file)")
        if os.environ.get(CA_ENV):
            options.setdefault("verify", os.environ[CA_ENV])
        return cls.from_key_file(url, key_file, pin, **options)

    def close(self) -> None:
        self._http.close()

    # -- KeySource ----------------------------------------------------------------------------

    def identity(self, now_ms: int, refresh: bool = False) -> tuple[Ed25519PrivateKey, Certificate]:
        self._check_evidence(now_ms)
        with self._lock:  # snapshot under the lock; no network call holds it
            cert = self._cert
            due = (
                cert is None
                or now_ms - self._cert_fetched_ms >= self._cert_refresh_ms
                or now_ms >= cert.not_after_ms - (cert.not_after_ms - cert.not_before_ms) // 4
            )
            down = self._down(now_ms)
        if cert is not None and cert.valid_at(now_ms) and (not refresh or down):
            if due and not down:  # renewed off the hot path while this one is good
                self._background("identity", lambda: self._fetch_identity(now_ms))
            return self._identity.signing_key, cert
        try:
            return self._identity.signing_key, self._fetch_identity(now_ms)
        except KeyServiceUnavailable:
            if cert is None or not cert.valid_at(now_ms):
                raise
            return self._identity.signing_key, cert

    def _fetch_identity(self, now_ms: int) -> Certificate:
        try:
            doc = self._call("GET", "/v1/certificate", now_ms)
        except Refused as exc:
            raise refusal_error(exc) from None
        fetched = _check_certificate(
            _field(doc, "certificate"), self._root_key(now_ms), self._identity
        )
        with self._lock:
            if self._cert is None or fetched.serial >= self._cert.serial:
                self._cert, self._cert_fetched_ms = fetched, now_ms
            return self._cert

    def sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        self._check_evidence(now_ms)
        with self._lock:
            cached = self._epochs.get(topic)
            down = self._down(now_ms)
        # a cached epoch is used only while now is inside its window, outage or not, and while
        # the view is younger than max_epoch_staleness; refreshed in the background
        usable = cached.at(now_ms) if cached else None
        if cached is not None and usable is not None:
            age = now_ms - cached.fetched_ms
            if self._max_staleness_ms is None or age < self._max_staleness_ms:
                if age >= self._epoch_refresh_ms and not down:
                    self._background(
                        "epoch:" + topic, lambda: self._fetch_sealing_epoch(topic, now_ms)
                    )
                return usable
        return self._fetch_sealing_epoch(topic, now_ms)

    def _fetch_sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        nonce = self._rng(16)
        try:
            doc = self._call("GET", f"/v1/topics/{topic}/sealing-epoch?nonce={nonce.hex()}", now_ms)
        except Refused as exc:
            with self._lock:  # no longer a producer: the cached epoch must not outlive that
                self._epochs.pop(topic, None)
            raise refusal_error(exc) from None
        root = self._root_key(now_ms)
        current = self._description(_field(doc, "description"), topic, root)
        ahead = None
        if doc.get("next"):
            ahead = self._description(_field(doc, "next"), topic, root)
        # The answer is signed for this request (our nonce) and now: a recorded answer, say from
        # before a consumer was removed, cannot be replayed to us, even after a restart.
        try:
            answer = SealingEpochAnswer.verify(_field(doc, "answer"), root)
        except SignatureError as exc:
            raise UntrustedResponse(str(exc)) from None
        if (answer.topic, answer.nonce, answer.current_digest, answer.next_digest) != (
            topic,
            nonce,
            current.digest,
            ahead.digest if ahead else b"",
        ):
            raise UntrustedResponse("sealing-epoch answer is not for this request (replayed?)")
        if abs(now_ms - answer.issued_at_ms) > signing.MAX_SKEW_MS:
            raise UntrustedResponse("sealing-epoch answer is not fresh (replayed or clock skew)")
        if ahead is not None and ahead.epoch <= current.epoch:
            raise UntrustedResponse("KDS answered with a next epoch older than the current one")
        fetched = _TopicEpochs(current, ahead, now_ms)
        # The KDS answered at its now, later than ours when the request took a while: an epoch
        # that started meanwhile is the right one (the opener allows the skew at its start).
        usable = fetched.at(now_ms) or fetched.at(max(now_ms, self._now_ms()))
        if usable is None:
            raise UntrustedResponse("KDS answered with an epoch whose window does not contain now")
        with self._lock:
            # Current epochs only move forward (defence in depth behind the nonce). A background
            # refresh may have stored a newer answer while this request was in flight: use it.
            if current.epoch < self._highest.get(topic, -1):
                held = self._epochs.get(topic)
                newer = held.at(max(now_ms, self._now_ms())) if held else None
                if newer is None:
                    raise UntrustedResponse("KDS answered with an older epoch (rollback)")
                return newer
            self._highest[topic] = current.epoch
            self._epochs[topic] = fetched
            if self._cert is not None and topic not in self._cert.produce:
                self._cert_fetched_ms = -self._cert_refresh_ms  # renew on the next identity()
        return usable

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        self._refuse_rolled_back()
        with self._lock:
            cached = self._keys.get((topic, epoch))
            if cached is not None and now_ms >= cached.description.destroy_after_ms:
                del self._keys[(topic, epoch)]  # past retention: forget it, as the KDS did
                raise UnopenableEnvelope(Reason.EPOCH_DESTROYED, f"{topic!r} epoch {epoch}")
        if cached is not None:
            self._prefetch_due(now_ms)
            return cached
        until, refusal = self._destroyed.get((topic, epoch)) or (0, None)
        if now_ms < until:  # a shredded topic's backlog: one KDS request, not one per message
            raise UnopenableEnvelope(
                Reason.EPOCH_DESTROYED, f"{topic!r} epoch {epoch}", refusal=refusal
            )
        return self._fetch_grant(topic, epoch, now_ms)

    def dropped_epochs(self, now_ms: int) -> frozenset[tuple[str, int]]:
        """The epochs whose keys this client dropped since the last call because the KDS said
        they are no longer live. Asks it again in the background every ``epoch_refresh``; when
        no answer came for ``revocation_max_age`` (the caller was idle that long: its revocation
        list is fetched before answering too), asks before answering, so a consumer that
        resumes reading refuses a shredded topic from its first message."""
        with self._lock:
            asking = bool(self._keys) and not self._down(now_ms) and not self._rollback
            due = asking and now_ms - self._gone_checked_ms >= self._epoch_refresh_ms
            stale = asking and now_ms - self._gone_answered_ms >= self._revocation_max_age_ms
            if due:
                self._gone_checked_ms = now_ms
        if stale:
            with contextlib.suppress(Exception):  # unanswered: keep serving from the cache
                self.drop_gone_epochs(now_ms)
        elif due:
            self._background("epochs-gone", lambda: self.drop_gone_epochs(now_ms))
        with self._lock:
            dropped, self._dropped = frozenset(self._dropped), set()
        return dropped

    def drop_gone_epochs(self, now_ms: int) -> set[tuple[str, int]]:
        """Ask the KDS now which of the epochs held are no longer live (destroyed by a shred or
        retention, withdrawn, or no longer this member's to read) and drop their keys; returns
        them (``dropped_epochs`` reports them too). Only pairs asked about are dropped, whatever
        the answer says; a malformed answer drops nothing (``UntrustedResponse``)."""
        self._refuse_rolled_back()
        with self._lock:
            held = sorted(self._keys)
        gone: set[tuple[str, int]] = set()
        for batch in _batches(held):
            try:
                doc = self._call("POST", "/v1/epochs/gone", now_ms, {"epochs": batch})
            except Refused as exc:
                raise refusal_error(exc) from None
            gone |= _gone(doc, batch)
        with self._lock:
            for key in gone:
                self._keys.pop(key, None)
            self._dropped |= gone
            self._gone_answered_ms = max(self._gone_answered_ms, now_ms)
        return gone

    def topic_key(self, topic: str, now_ms: int) -> bytes:
        self._refuse_rolled_back()
        with self._lock:
            cached = self._topic_keys.get(topic)
        if cached is not None:
            return cached
        try:
            doc = self._call("GET", f"/v1/topics/{topic}/topic-key", now_ms)
        except Refused as exc:
            raise refusal_error(exc) from None
        try:
            key = authority.open_topic_key(
                self._root_key(now_ms),
                _field(doc, "sealed"),
                topic,
                self.member,
                self._identity.receive,
            )
        except ValueError as exc:
            raise UntrustedResponse(str(exc)) from None
        with self._lock:
            self._topic_keys[topic] = key
        return key

    def subject_key(self, topic: str, subject: str, now_ms: int) -> SubjectKey:
        """POST /v1/topics/{topic}/subject-key with the subject in the signed body (never in
        the URL, which proxies log). Sealers cache the answer (SPEC.md 4.5)."""
        try:
            doc = self._call(
                "POST", f"/v1/topics/{topic}/subject-key", now_ms, {"subject": subject}
            )
        except Refused as exc:
            raise refusal_error(exc) from None
        try:
            return authority.check_subject_key(
                self._root_key(now_ms), _field(doc, "subject_key"), topic
            )
        except authority.GrantError as exc:
            raise UntrustedResponse(str(exc)) from None

    def subject_private_key(self, topic: str, subject_key_id: bytes, now_ms: int) -> bytes:
        """GET /v1/topics/{topic}/subjects/{subject key id}/grant; a refusal becomes the
        envelope's reason (subject_erased, not_granted, bad_signature for an unknown id)."""
        path = f"/v1/topics/{topic}/subjects/{subject_key_id.hex()}/grant"
        try:
            doc = self._call("GET", path, now_ms)
        except Refused as exc:
            raise refusal_error(exc, grant=True) from None
        try:
            return authority.open_subject_grant(
                self._root_key(now_ms),
                _field(doc, "grant"),
                topic,
                subject_key_id,
                self.member,
                self._identity.receive,
            )
        except authority.GrantError as exc:
            raise UntrustedResponse(str(exc)) from None

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        self._refuse_rolled_back()
        with self._lock:
            cached = self._certs.get(cert_id)
            unknown_until = self._unknown_certs.get(cert_id) or 0
        if cached is not None:
            return cached
        if now_ms < unknown_until:  # junk envelopes must not cost a KDS request each
            return None
        if not self._take_lookup(now_ms):  # nor a stream of fresh junk ids: a token bucket
            raise KeyServiceUnavailable(
                "certificate look-ups over the limit "
                f"({self._lookup_rate * 1000:g}/s, bursts of {self._lookup_burst:g}); retry"
            )
        try:
            doc = self._call("GET", f"/v1/certificates/{cert_id.hex()}", now_ms)
        except Refused as exc:
            if exc.reason is KdsCode.UNKNOWN_CERTIFICATE:
                self._unknown_certs.put(cert_id, now_ms + _UNKNOWN_CERT_MS)
                return None
            # asked to open an envelope: a revoked member's refusal means "not granted", as
            # the grant would be refused (and as LocalKeyService says)
            raise refusal_error(exc, grant=True) from None
        try:
            cert = Certificate.verify(_field(doc, "certificate"), self._root_key(now_ms))
        except SignatureError as exc:
            raise UntrustedResponse(str(exc)) from None
        if cert.cert_id != cert_id:
            raise UntrustedResponse("KDS answered with another certificate")
        self._certs.put(cert_id, cert)
        return cert

    def revocations(self, now_ms: int) -> RevocationList:
        self._check_evidence(now_ms)
        self._prefetch_due(now_ms)  # every open asks this: the cheap moment to look ahead
        self._sweep(now_ms)
        with self._lock:
            current = self._revocations
            fetched_ms = self._revocations_fetched_ms
            down = self._down(now_ms)
        if current is not None:
            age = now_ms - min(fetched_ms, current.issued_at_ms)
            if age < self._revocation_max_age_ms:
                if now_ms - fetched_ms >= self._revocation_refresh_ms and not down:
                    self._background("revocations", lambda: self._fetch_revocations(now_ms))
                return current
        try:
            return self._fetch_revocations(now_ms)
        except KeyServiceUnavailable as exc:
            if current is None:
                raise
            raise StaleRevocations(
                f"revocation list is {(now_ms - current.issued_at_ms) // 1000} s old (limit "
                f"{self._revocation_max_age_ms // 1000} s) and the KDS cannot be asked: "
                f"{exc}"
            ) from exc

    def _fetch_revocations(self, now_ms: int) -> RevocationList:
        try:
            doc = self._call("GET", "/v1/revocations", now_ms)
            fetched = RevocationList.verify(_field(doc, "revocations"), self._root_key(now_ms))
        except SignatureError as exc:
            raise UntrustedResponse(str(exc)) from None
        except Refused as exc:
            raise refusal_error(exc) from None
        # The KDS signs the list afresh for every answer: an old one is a replay.
        if fetched.issued_at_ms < now_ms - self._revocation_max_age_ms:
            raise UntrustedResponse("KDS answered with a stale revocation list (replayed?)")
        with self._lock:
            held = self._revocations
            if held is not None and (fetched.serial, fetched.issued_at_ms) < (
                held.serial,
                held.issued_at_ms,
            ):
                raise UntrustedResponse("KDS answered with an older revocation list")
            self._revocations, self._revocations_fetched_ms = fetched, now_ms
        return fetched

    # -- evidence -----------------------------------------------------------------------------

    def audit_head(self, now_ms: int) -> AuditHead:
        """Fetch the KDS's signed audit head now and check it against the highest this client
        accepted before. Raises ``AuditRollback`` (and refuses this KDS from then on) when it went
        backwards, ``UntrustedResponse`` when it does not verify or is not fresh."""
        self._refuse_rolled_back()
        # One fetch at a time: an answer read from the database before another one that was
        # answered first would look like a step back (the KDS needs no lock for that).
        with self._audit_lock:
            return self._fetch_audit_head(now_ms)

    def _fetch_audit_head(self, now_ms: int) -> AuditHead:
        try:
            doc = self._call("GET", "/v1/audit/head", now_ms)
        except Refused as exc:
            raise refusal_error(exc) from None
        try:
            head = AuditHead.verify(_field(doc, "head"), self._root_key(now_ms))
        except SignatureError as exc:
            raise UntrustedResponse(str(exc)) from None
        # signed afresh for every answer: an old one is a replay (which could hide a rollback)
        if abs(max(now_ms, self._now_ms()) - head.issued_at_ms) > signing.MAX_SKEW_MS:
            raise UntrustedResponse("audit head is not fresh (replayed or clock skew)")
        with self._lock:
            seen = self._audit_head
            if seen is not None and head.behind(seen):
                self._rollback = (
                    f"the KDS's audit head went backwards: it published {head.sequence} "
                    f"({head.chain_hash.hex()[:16]}...) after {seen.sequence} "
                    f"({seen.chain_hash.hex()[:16]}...); its database was rolled back or "
                    "forked. This client refuses it until restarted: ask an operator to check "
                    "(`sealedbus admin audit verify --expect-head`)"
                )
            elif seen is None or head.sequence > seen.sequence:
                self._audit_head = head
            self._audit_fetched_ms = now_ms
        self._refuse_rolled_back()
        return head

    @property
    def highest_audit_head(self) -> AuditHead | None:
        """The highest audit head this client accepted (None before the first fetch)."""
        return self._audit_head

    def report_open_failure(
        self, topic: str, reason: str, sender: bytes | None, now_ms: int
    ) -> bool:
        """Record in the KDS's audit log that a message on ``topic`` could not be opened, with
        the refusal ``reason`` and the sender certificate id the envelope names (if any);
        nothing else from the message. Sent in the background; at most
        ``failure_reports_per_second`` (bursts of ``failure_report_burst``): the rest are
        counted and the count travels with the next report. True when a report was sent."""
        with self._lock:
            if self._rollback or self._down(now_ms) or not self._reports.take(now_ms):
                self._reports_suppressed += 1
                return False
            suppressed, self._reports_suppressed = self._reports_suppressed, 0
        body = {
            "topic": topic,
            "reason": reason,
            "sender": sender.hex() if sender else "",
            "suppressed": suppressed,
        }

        def send() -> None:
            with contextlib.suppress(Exception):  # evidence is best effort: never the consumer's
                self._http.call("POST", "/v1/audit/open-failures", body)

        threading.Thread(target=send, name="kds-report", daemon=True).start()
        return True

    def _refuse_rolled_back(self) -> None:
        if self._rollback:
            raise AuditRollback(self._rollback)

    def _check_evidence(self, now_ms: int) -> None:
        """Refuse a rolled-back KDS; fetch its audit head in the background when due."""
        self._refuse_rolled_back()
        if now_ms - self._audit_fetched_ms >= self._audit_refresh_ms and not self._down(now_ms):
            with self._lock:
                self._audit_fetched_ms = now_ms  # once per interval, answered or not
            self._background("audit-head", lambda: self.audit_head(now_ms))

    # -- internals ----------------------------------------------------------------------------

    def _down(self, now_ms: int) -> bool:
        return now_ms < self._down_until_ms

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _call(self, method: str, path: str, now_ms: int, json: Any = None) -> Any:
        """One request, unless the KDS failed within the backoff: then fail at once, so a hung
        KDS costs each caller nothing rather than a timeout. The backoff runs from when the
        failure was known (after the timeout), not from when the request started."""
        if self._down(now_ms):
            raise KeyServiceUnavailable(
                f"KDS unavailable (last attempt failed; next in under {self._backoff_ms} ms)"
            )
        try:
            return self._http.call(method, path, json)
        except KeyServiceUnavailable:
            with self._lock:
                self._down_until_ms = max(now_ms, self._now_ms()) + self._backoff_ms
            raise

    def _background(self, key: str, fetch: Callable[[], object]) -> None:
        """Run ``fetch`` on a thread unless one for ``key`` is running: refreshes of what the
        cache still covers never hold up a seal or an open. Failures are left to the backoff
        and to the next caller (a refusal drops the cached entry where that matters)."""
        with self._lock:
            if key in self._inflight:
                return
            self._inflight.add(key)

        def run() -> None:
            try:
                with contextlib.suppress(Exception):
                    fetch()
            finally:
                with self._lock:
                    self._inflight.discard(key)

        threading.Thread(target=run, name="kds-refresh", daemon=True).start()

    def _take_lookup(self, now_ms: int) -> bool:
        with self._lock:
            return self._lookups.take(now_ms)

    def _sweep(self, now_ms: int) -> None:
        """Drop cached epoch keys past their destruction time, used or not."""
        with self._lock:
            if now_ms < self._next_sweep_ms:
                return
            self._next_sweep_ms = now_ms + _SWEEP_MS
            self._keys = {
                k: v for k, v in self._keys.items() if now_ms < v.description.destroy_after_ms
            }

    def _root_key(self, now_ms: int) -> Ed25519PublicKey:
        with self._lock:
            root = self._root
        if root is None:
            if self._down(now_ms):
                raise KeyServiceUnavailable("KDS unavailable (backing off)")
            try:
                root = fetch_root(self._http, self._fingerprint)
            except KeyServiceUnavailable:
                with self._lock:
                    self._down_until_ms = max(now_ms, self._now_ms()) + self._backoff_ms
                raise
            with self._lock:
                self._root = root
        return root

    def _description(self, signed: bytes, topic: str, root: Ed25519PublicKey) -> EpochDescription:
        try:
            description = EpochDescription.verify(signed, root)
        except SignatureError as exc:
            raise UntrustedResponse(str(exc)) from None
        if description.topic != topic:
            raise UntrustedResponse("epoch description is for another topic")
        return description

    def _fetch_grant(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        try:
            doc = self._call("GET", f"/v1/topics/{topic}/epochs/{epoch}/grant", now_ms)
        except Refused as exc:
            error = refusal_error(exc, grant=True)
            if isinstance(error, UnopenableEnvelope) and error.reason is Reason.EPOCH_DESTROYED:
                self._destroyed.put((topic, epoch), (now_ms + _DESTROYED_MS, error.refusal))
            raise error from None
        root = self._root_key(now_ms)
        try:
            description = EpochDescription.verify(_field(doc, "description"), root)
            if (description.topic, description.epoch) != (topic, epoch):
                raise UntrustedResponse("grant is for another topic or epoch")
            keys = authority.open_grant(
                root, _field(doc, "grant"), description, self.member, self._identity.receive
            )
        except (SignatureError, authority.GrantError) as exc:
            raise UntrustedResponse(str(exc)) from None
        if now_ms >= description.destroy_after_ms:
            self._destroyed.put((topic, epoch), (now_ms + _DESTROYED_MS, None))
            raise UnopenableEnvelope(Reason.EPOCH_DESTROYED, f"{topic!r} epoch {epoch}")
        result = EpochKeys(description, keys)
        with self._lock:
            self._keys = {
                k: v for k, v in self._keys.items() if now_ms < v.description.destroy_after_ms
            }
            if not self._keys:  # the only key held is this one, live as of now
                self._gone_answered_ms = max(self._gone_answered_ms, now_ms)
            self._keys[(topic, epoch)] = result
            self._next_prefetch_ms = 0
        return result

    def _prefetch_due(self, now_ms: int) -> None:
        """Near the end of the newest epoch cached for a topic, fetch the next one's grant in
        the background (retried each second until published), so no open waits for it."""
        due: list[tuple[str, int]] = []
        with self._lock:
            if now_ms < self._next_prefetch_ms or self._down(now_ms):
                return
            newest: dict[str, EpochDescription] = {}
            for (topic, _), held in self._keys.items():
                if topic not in newest or held.description.epoch > newest[topic].epoch:
                    newest[topic] = held.description
            next_check = now_ms + 3_600_000
            for d in newest.values():
                start = d.not_after_ms - (d.not_after_ms - d.not_before_ms) // 10
                if now_ms < start:
                    next_check = min(next_check, start)
                elif now_ms < d.not_after_ms:
                    key = (d.topic, d.epoch + 1)
                    last = self._prefetched.get(key)
                    if last is None or now_ms - last >= _PREFETCH_RETRY_MS:
                        self._prefetched.put(key, now_ms)
                        due.append(key)
                    next_check = min(next_check, now_ms + _PREFETCH_RETRY_MS)
            self._next_prefetch_ms = next_check

        def fetch(topic: str, epoch: int) -> None:
            with contextlib.suppress(Exception):  # best effort: the open path fetches on a miss
                self._fetch_grant(topic, epoch, now_ms)

        for topic, epoch in due:
            threading.Thread(
                target=fetch, args=(topic, epoch), name="kds-prefetch", daemon=True
            ).start()


def _batches(held: list[tuple[str, int]]) -> list[dict[str, list[int]]]:
    """``held`` as bodies for /v1/epochs/gone, each small enough for the KDS's limits."""
    batches: list[dict[str, list[int]]] = [{}]
    pairs = chars = 0
    for topic, epoch in held:
        if pairs >= _GONE_BATCH or chars >= _GONE_BATCH_CHARS:
            batches.append({})
            pairs = chars = 0
        if topic not in batches[-1]:
            chars += len(topic)
        batches[-1].setdefault(topic, []).append(epoch)
        pairs += 1
    return [b for b in batches if b]


def _gone(doc: Any, asked: dict[str, list[int]]) -> set[tuple[str, int]]:
    """The pairs of ``asked`` that the answer names as gone; nothing else, whatever it says."""
    try:
        answer = doc["gone"]
        named = {
            (topic, epoch)
            for topic, epochs in answer.items()
            for epoch in epochs
            if isinstance(topic, str) and type(epoch) is int
        }
    except (KeyError, TypeError, AttributeError):
        raise UntrustedResponse("KDS answer lacks a valid 'gone'") from None
    return {(topic, epoch) for topic, epochs in asked.items() for epoch in epochs} & named


class _Bucket:
    """A token bucket over a millisecond clock: ``rate`` per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate / 1000
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at_ms: int | None = None

    def take(self, now_ms: int) -> bool:
        if self._at_ms is not None:
            self._tokens = min(
                self._burst, self._tokens + max(0, now_ms - self._at_ms) * self._rate
            )
        self._at_ms = now_ms if self._at_ms is None else max(now_ms, self._at_ms)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
