"""Fuzz the API from its own OpenAPI document: whatever arrives, the answer is a 4xx with a JSON
reason or a success, never a 5xx and never a stack trace. Requests are signed by an enrolled
member (or the admin, with a valid TOTP) so the fuzzing reaches past authentication."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from sealedbus.kds import auth
from sealedbus.keys import signing

from ._harness import Kds, make_kds

_state: dict[str, Any] = {}


def _kds() -> Kds:
    if "kds" not in _state:
        import tempfile

        kds = make_kds(Path(tempfile.mkdtemp(prefix="kds-fuzz-")))
        kds.admin.create_topic("orders", producers=["fuzz"], consumers=["fuzz"])
        kds.member("fuzz")
        _state["kds"] = kds
    return _state["kds"]  # type: ignore[no-any-return]


schema = schemathesis.openapi.from_asgi("/openapi.json", _kds().app)


@pytest.fixture(scope="module", autouse=True)
def _close() -> Iterator[None]:
    yield
    kds = _state.get("kds")
    if kds is not None:
        kds.http.close()
        kds.store.dispose()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_bad_input(case: Any) -> None:
    kds = _kds()
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    data = kwargs.get("data")
    raw = data if isinstance(data, bytes | str) else None
    request = kds.http.build_request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers={k: str(v) for k, v in (kwargs.get("headers") or {}).items()},
        content=kwargs.get("content") or raw,
        json=kwargs.get("json"),
        data=None if raw is not None else data,
    )
    admin = request.url.path.startswith("/v1/admin")
    identity = kds.admin_identity if admin else kds.clients[0]._identity
    request.headers.update(
        signing.sign_request(
            identity.signing_key,
            identity.name,
            request.method,
            request.url.raw_path,
            request.content,
            kds.clock_ms(),
            os.urandom(16),
        )
    )
    if admin:
        request.headers[auth.TOTP_CODE] = kds.totp()
    response = kds.http.send(request)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")


def test_unsigned_requests_are_refused_cleanly() -> None:
    kds = _kds()
    for path in ("/v1/certificate", "/v1/revocations", "/v1/admin/topics"):
        response = kds.http.get(path)
        assert response.status_code == 401 and response.json()["error"] == "unauthenticated"
    assert kds.http.get("/openapi.json").json()["info"]["title"].startswith("sealedbus")
    assert b"sealedbus_kds_requests_total" in kds.http.get("/metrics").content
    assert kds.http.get("/readyz").json()["status"] == "ready"
