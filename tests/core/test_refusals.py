"""The KDS refusal codes: one enum shared by the KDS and its clients, one table saying what each
means to a member's client (``KDS_REFUSALS``), and the error tree around them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sealedbus import errors
from sealedbus.errors import (
    KDS_REFUSALS,
    AccessDenied,
    BrokerError,
    KdsCode,
    Reason,
    Refused,
    SealedbusError,
    SecretError,
    UnknownTopic,
    UnopenableEnvelope,
    refusal_error,
)

KDS_SOURCE = Path(__file__).resolve().parents[2] / "sealedbus" / "kds"


def test_every_code_has_one_row_in_the_table() -> None:
    assert set(KDS_REFUSALS) == set(KdsCode)
    assert len({c.value for c in KdsCode}) == len(KdsCode)


def test_the_kds_refuses_only_with_codes_of_the_enum() -> None:
    """A refusal written with a free-text code would reach clients as ``REFUSED``."""
    for path in KDS_SOURCE.glob("*.py"):
        text = path.read_text()
        assert not re.search(r'ServiceError\(\s*\d+,\s*["\']', text), path.name
        for name in re.findall(r"KdsCode\.([A-Z_]+)", text):
            assert name in KdsCode.__members__, (path.name, name)


def test_refused_reason_is_the_code_and_detail_the_text() -> None:
    refused = Refused(403, "not_granted", "'c' may not consume 'orders'")
    assert refused.reason is KdsCode.NOT_GRANTED
    assert refused.detail == "'c' may not consume 'orders'"
    assert str(refused) == "KDS refused (403 not_granted): 'c' may not consume 'orders'"


def test_a_code_this_client_does_not_know_is_refused_not_a_crash() -> None:
    refused = Refused(404, "route_not_found", "Not Found")
    assert (refused.reason, refused.code) == (KdsCode.REFUSED, "route_not_found")
    assert type(refusal_error(refused)) is AccessDenied
    assert type(refusal_error(refused, grant=True)) is AccessDenied


@pytest.mark.parametrize(
    ("code", "plain", "grant_reason"),
    [
        ("unknown_topic", UnknownTopic, Reason.EPOCH_UNKNOWN),
        ("epoch_unknown", UnknownTopic, Reason.EPOCH_UNKNOWN),
        ("access_denied", AccessDenied, Reason.NOT_GRANTED),
        ("not_granted", AccessDenied, Reason.NOT_GRANTED),
        ("member_revoked", AccessDenied, Reason.NOT_GRANTED),
        ("epoch_destroyed", AccessDenied, Reason.EPOCH_DESTROYED),
        ("bad_signature", AccessDenied, None),
        ("key_replaced", AccessDenied, None),
    ],
)
def test_refusal_error_follows_the_table(
    code: str, plain: type[SealedbusError], grant_reason: Reason | None
) -> None:
    refused = Refused(400, code, "why")
    error = refusal_error(refused)
    assert type(error) is plain and str(error) == "why"
    for_grant = refusal_error(refused, grant=True)
    if grant_reason is None:
        assert type(for_grant) is plain
    else:
        assert isinstance(for_grant, UnopenableEnvelope)
        assert for_grant.reason is grant_reason


def test_secret_error_is_a_sealedbus_error_and_still_a_value_error() -> None:
    assert issubclass(SecretError, SealedbusError)
    assert issubclass(SecretError, ValueError)


def test_batch_not_published_is_a_broker_error_in_the_drawn_tree() -> None:
    from sealedbus.brokers.rabbitmq import BatchNotPublished

    assert issubclass(BatchNotPublished, BrokerError)
    doc = errors.__doc__ or ""
    assert "BatchNotPublished" in doc
    assert "StaleRevocations" in doc
