"""The public surface and the error tree stay what they claim to be."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import sealedbus
from sealedbus import errors
from sealedbus.errors import InvalidEnvelope, Reason, SealedbusError

from ._support import REASON_CLASS

EXPECTED_ALL = [
    "AccessDenied",
    "InvalidEnvelope",
    "KeyServiceUnavailable",
    "KeySource",
    "KeyTokenizer",
    "LocalKeyService",
    "MemoryBus",
    "OpenedMessage",
    "Opener",
    "PrometheusMetrics",
    "Reason",
    "Sealed",
    "SealedbusError",
    "Sealer",
    "UndeliverablePolicy",
]


def test_all_is_exactly_the_public_surface() -> None:
    assert sorted(sealedbus.__all__) == EXPECTED_ALL
    assert len(set(sealedbus.__all__)) == len(sealedbus.__all__)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_each_public_name_imports(name: str) -> None:
    module = importlib.import_module("sealedbus")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from sealedbus import {name}", namespace)  # noqa: S102 - the import statement itself
    assert namespace[name] is getattr(sealedbus, name)


def test_importing_the_core_loads_no_adapter_kds_or_metrics_backend() -> None:
    """The core stays pure when imported, not only in source: the package exports are lazy."""
    code = (
        "import sys, sealedbus.core.wire, sealedbus.core.envelope\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('sealedbus.brokers', "
        "'sealedbus.kds', 'sealedbus.ops', 'sealedbus.keys', 'sealedbus.opener', "
        "'sealedbus.sealer', 'prometheus_client', 'pika', 'kafka', 'fastapi', 'httpx')))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(  # noqa: S603 - fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_version() -> None:
    assert isinstance(sealedbus.__version__, str) and sealedbus.__version__


def _error_classes() -> list[type[SealedbusError]]:
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, SealedbusError) and c.__module__ == errors.__name__
    ]


def test_every_error_is_in_the_drawn_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in _error_classes():
        assert cls.__name__ in doc, cls
        assert cls.__doc__, f"{cls.__name__} has no docstring"


def test_every_invalid_envelope_subclass_has_its_own_default_reason() -> None:
    subclasses = [c for c in _error_classes() if issubclass(c, InvalidEnvelope)]
    assert len(subclasses) == 7
    for cls in subclasses:
        assert "default_reason" in vars(cls), cls
        assert isinstance(cls.default_reason, Reason)
        assert cls().reason is cls.default_reason
        if cls is not InvalidEnvelope:
            assert REASON_CLASS[cls.default_reason] is cls


def test_every_reason_maps_to_one_class() -> None:
    assert set(REASON_CLASS) == set(Reason)
    assert len({r.value for r in Reason}) == len(Reason)


def test_reason_and_detail_in_message() -> None:
    exc = InvalidEnvelope(Reason.EXPIRED, "topic t")
    assert exc.reason is Reason.EXPIRED and exc.detail == "topic t"
    assert str(exc) == "expired: topic t"
    assert str(InvalidEnvelope()) == "malformed"


def test_retryable_flags() -> None:
    assert errors.KeyServiceUnavailable("x").retryable
    assert not errors.AccessDenied("x").retryable
    assert errors.BrokerError("x", retryable=True).retryable
    assert not errors.BrokerError("x").retryable
    assert issubclass(errors.ConfigurationError, ValueError)


def test_every_reason_value_is_documented_in_the_spec() -> None:
    spec = (Path(__file__).parents[2] / "SPEC.md").read_text()
    table = spec[spec.index("## 8. Error reasons") :]
    missing = [r.value for r in Reason if f"| `{r.value}` |" not in table]
    assert not missing, missing
    assert "SPEC.md section 8" in (errors.__doc__ or "")


def test_cli_names_the_extra_a_missing_optional_dependency_comes_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sealedbus.ops import cli, demo

    def needs_pika(args: object) -> int:
        raise ModuleNotFoundError("No module named 'pika'", name="pika")

    monkeypatch.setattr(demo, "run", needs_pika)
    assert cli.main(["demo"]) == 2
    assert "pip install -e '.[rabbitmq]'" in capsys.readouterr().err
