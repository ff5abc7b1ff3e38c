"""``SealedFuture`` against kafka-python's own ``Future`` standing in for the client's future (unit
tests of its resolution logic; the real client's futures are covered in test_kafka.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from kafka.future import Future

from sealedbus.brokers.kafka import SealedFuture
from sealedbus.errors import BrokerError


def sent_future() -> tuple[SealedFuture, Future]:
    future, sent = SealedFuture("t", ref="r"), Future()
    future._sent_as(sent)
    return future, sent


def test_state_follows_the_clients_future_without_hooking_onto_it() -> None:
    future, sent = sent_future()
    assert not future.is_done and future.value is None and future.exception is None
    assert sent._callbacks == [] and sent._errbacks == []  # nothing runs on the network thread
    sent.success("metadata")
    assert future.is_done and future.succeeded() and not future.failed()
    assert future.value == "metadata" and future.get(0) == "metadata"


def test_a_client_failure_reads_as_the_same_broker_error_every_time() -> None:
    future, sent = sent_future()
    sent.failure(KafkaConnectionError("gone"))
    error = future.exception
    assert isinstance(error, BrokerError) and error.retryable
    assert isinstance(error.__cause__, KafkaConnectionError)
    assert future.failed() and future.exception is error
    with pytest.raises(BrokerError) as raised:
        future.get(0)
    assert raised.value is error


@pytest.mark.parametrize("when", ["before sending", "after sending", "after resolving"])
def test_application_callbacks_run_once_whenever_they_are_added(when: str) -> None:
    future, sent = SealedFuture("t"), Future()
    seen: list[Any] = []
    if when != "before sending":
        future._sent_as(sent)
    if when == "after resolving":
        sent.success("metadata")
    future.add_callback(seen.append).add_errback(lambda e: seen.append(("error", e)))
    future.add_callback(lambda v, tag: seen.append((tag, v)), tag="second")
    if when == "before sending":
        future._sent_as(sent)
    if when != "after resolving":
        assert seen == []
        sent.success("metadata")
    assert seen == ["metadata", ("second", "metadata")]
    sent.success("again")  # a client future resolves once; nothing runs twice
    assert future.value == "metadata" and len(seen) == 2


def test_errbacks_get_the_broker_error_and_callbacks_nothing() -> None:
    future, sent = SealedFuture("t"), Future()
    seen: list[Any] = []
    future.add_callback(seen.append)
    future.add_errback(seen.append)
    future._sent_as(sent)
    sent.failure(KafkaTimeoutError("expired"))
    assert len(seen) == 1 and isinstance(seen[0], BrokerError) and seen[0] is future.exception


def test_a_failing_callback_is_logged_and_the_others_still_run() -> None:
    future, sent = sent_future()
    seen: list[Any] = []

    def boom(_: Any) -> None:
        raise RuntimeError("application bug")

    future.add_callback(boom).add_callback(seen.append)
    sent.success("metadata")
    assert seen == ["metadata"]


def test_the_adapters_own_failure_wins_before_sending() -> None:
    future = SealedFuture("t")
    seen: list[Any] = []
    future.add_errback(seen.append)
    future.failure(KafkaConnectionError("the batch could not be sent"))
    assert isinstance(future.exception, BrokerError) and seen == [future.exception]
    with pytest.raises(BrokerError):
        future.get(0)


def test_get_waits_for_the_send_and_then_for_the_broker() -> None:
    future, sent = SealedFuture("t"), Future()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(future.get(5.0)))
    waiter.start()
    future._sent_as(sent)  # the batch closes after get began waiting
    sent.success("metadata")
    waiter.join(5.0)
    assert got == ["metadata"]


def test_get_times_out_as_a_retryable_broker_error() -> None:
    future, sent = sent_future()
    with pytest.raises(BrokerError) as raised:
        future.get(0.01)
    assert raised.value.retryable and not future.is_done
    sent.success("metadata")  # the hook placed by that get resolves it
    assert future.get(0) == "metadata"


def test_chain_forwards_the_outcome() -> None:
    future, sent = sent_future()
    downstream = Future()
    future.chain(downstream)
    sent.success("metadata")
    assert downstream.succeeded() and downstream.value == "metadata"
