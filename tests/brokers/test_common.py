"""``brokers/_common.py``: which refusals are this reader's (give the message back) and which are
the message's (dead-letter it), decided by codes, never by the words of a message."""

from __future__ import annotations

from sealedbus.brokers._common import reader_refusal
from sealedbus.errors import (
    AccessDenied,
    KdsCode,
    Reason,
    Refused,
    UnopenableEnvelope,
    refusal_error,
)


def test_an_epoch_before_this_readers_access_is_the_messages_fault() -> None:
    predates = UnopenableEnvelope(Reason.NOT_GRANTED, "x", refusal=KdsCode.PREDATES_ACCESS)
    assert reader_refusal("t", predates) is None


def test_not_granted_is_this_readers_refusal_whatever_its_text_says() -> None:
    worded = UnopenableEnvelope(Reason.NOT_GRANTED, "epoch 3 predates 'c''s access")
    assert isinstance(reader_refusal("t", worded), AccessDenied)
    coded = UnopenableEnvelope(Reason.NOT_GRANTED, "", refusal=KdsCode.NOT_GRANTED)
    assert isinstance(reader_refusal("t", coded), AccessDenied)


def test_the_kds_client_keeps_the_code_of_a_refused_grant() -> None:
    exc = refusal_error(Refused(403, "predates_access", "epoch 0 predates"), grant=True)
    assert isinstance(exc, UnopenableEnvelope)
    assert (exc.reason, exc.refusal) == (Reason.NOT_GRANTED, KdsCode.PREDATES_ACCESS)
