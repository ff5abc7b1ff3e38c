"""Per-topic tokenization keys on the wire (``KeySource.topic_key``): the 32-byte key HPKE-sealed
to the member's receive key, the info string binding topic and member, and the whole signed by
the root key with its own label, like a grant. ``sealedbus.core.signed`` has no kind for it yet,
so it lives here, shared by the KDS and KeyServiceClient."""

from __future__ import annotations

import msgpack
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import suites
from sealedbus.core.suites import PROTOCOL, KeyPair, Suite

_LABEL = PROTOCOL + b" topic key\x00"


def _info(topic: str, member: str) -> bytes:
    return _LABEL + bytes(msgpack.packb([topic, member], use_bin_type=True))


def seal_topic_key(
    root: Ed25519PrivateKey, topic: str, member: str, receive_suite: Suite,
    receive_public: bytes, key: bytes,
) -> bytes:
    sealed = suites.hpke_seal(receive_suite, receive_public, key, _info(topic, member))
    body = bytes(msgpack.packb([topic, member, sealed], use_bin_type=True))
    return bytes(msgpack.packb([body, root.sign(_LABEL + body)], use_bin_type=True))


def open_topic_key(
    root: Ed25519PublicKey, data: bytes, topic: str, member: str, receive: KeyPair
) -> bytes:
    """Verify and open a sealed topic key; raises ValueError when anything is off."""
    try:
        body, signature = msgpack.unpackb(data, raw=False)
        root.verify(signature, _LABEL + body)
        got_topic, got_member, sealed = msgpack.unpackb(body, raw=False)
        if (got_topic, got_member) != (topic, member):
            raise ValueError("topic key is for another topic or member")
        key = suites.hpke_open(receive.suite, receive.private, sealed, _info(topic, member))
    except (InvalidSignature, InvalidTag, TypeError, msgpack.UnpackException) as exc:
        raise ValueError("topic key does not verify or open") from exc
    if len(key) != 32:
        raise ValueError("topic key must be 32 bytes")
    return bytes(key)
