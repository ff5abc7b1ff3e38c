"""What only the KDS has of the key-service semantics: roles, refusals as HTTP answers, a
producer switching epochs from its client's cache. The semantics both back ends share are one
suite, ``tests/keys/test_semantics.py``."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from sealedbus import AccessDenied, Opener, Reason, Sealer
from sealedbus.errors import UnopenableEnvelope
from sealedbus.kds.service import ServiceError
from sealedbus.kds.store import consumer_since
from sealedbus.keys import signing

from ._harness import Kds


def test_refusal_is_http_403_with_reason(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"])
    client = kds.member("c")
    response = client._http.http.build_request("GET", "/v1/topics/orders/sealing-epoch")
    response.headers.update(
        signing.sign_request(
            client._identity.signing_key,
            "c",
            "GET",
            response.url.raw_path,
            b"",
            kds.clock_ms(),
            bytes(16),
        )
    )
    answer = kds.http.send(response)
    assert answer.status_code == 403
    assert answer.json() == {"error": "access_denied", "reason": "'c' may not produce to 'orders'"}


def test_next_epoch_is_published_ahead(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], rotation=100)
    kds.clock.advance(91)  # inside the last tenth of the period
    kds.service.tick("test")
    epochs = kds.admin.epochs("orders")
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["not_before_ms"] == epochs[0]["not_after_ms"]
    producer = kds.member("p")
    assert producer.sealing_epoch("orders", kds.clock_ms()).epoch == 0
    kds.clock.advance(9)  # the producer switches from its cache, without asking the KDS
    kds.http.close()
    assert producer.sealing_epoch("orders", kds.clock_ms()).epoch == 1


def test_roles_grant_access(kds: Kds) -> None:
    kds.admin.create_topic("billing", producers=["role:writers"], consumers=["role:auditors"])
    sealer = Sealer(kds.member("w1", roles=["writers"]), clock=kds.clock)
    opener = Opener(kds.member("a1", roles=["auditors"]), clock=kds.clock)
    assert opener.open("billing", sealer.seal("billing", b"r")).body == b"r"
    with pytest.raises(AccessDenied):
        Sealer(kds.member("a2", roles=["auditors"]), clock=kds.clock).seal("billing", b"r")


def test_a_member_joining_a_role_later_gets_no_earlier_epochs(kds: Kds) -> None:
    """The access window counts from when this member enrolled, not from when its role was
    added to the policy."""
    kds.admin.create_topic(
        "phi",
        producers=["p"],
        consumers=["role:auditors", "old"],
        rotation=60,
        retention=7 * 86_400,
        max_age=0,  # no maximum message age: a two-day-old message still opens
    )
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    veteran = Opener(kds.member("veteran", roles=["auditors"]), clock=kds.clock)
    before = sealer.seal("phi", b"sealed before the newcomer enrolled")
    kds.clock.advance(2 * 86_400)
    kds.service.tick("test")
    newcomer = Opener(kds.member("newcomer", roles=["auditors"]), clock=kds.clock)
    with pytest.raises(UnopenableEnvelope, match="predates") as refused:
        newcomer.open("phi", before)
    assert refused.value.reason is Reason.NOT_GRANTED
    assert veteran.open("phi", before).body == b"sealed before the newcomer enrolled"
    assert newcomer.open("phi", sealer.seal("phi", b"after")).body == b"after"
    with kds.store.write() as conn:  # no record of since when: deny, never "since forever"
        conn.execute(delete(consumer_since))
    with pytest.raises(ServiceError, match="may not consume"):
        kds.service.grant("veteran", "phi", 0)
