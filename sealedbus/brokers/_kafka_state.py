"""Kafka consumer state that lives on the broker: the replay state carried in offset commit
metadata, and the record size limits read at start-up. Imported by ``kafka`` only (needs
kafka-python)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

# Replay state carried in the offset commit's metadata (see SealedKafkaConsumer): per session
# of the partition, 8 bytes of session digest, the highest sequence number handled, and the
# sent-at second of that message.
_STATE_PREFIX = "sb1:"
_STATE_ENTRY = struct.Struct(">8sII")
DEFAULT_STATE_BYTES = 4000  # the broker's offset.metadata.max.bytes is 4096 by default


def encode_replay_state(
    entries: Mapping[bytes, tuple[int, int]], now: float, max_age: float, max_chars: int
) -> str:
    """The newest entries (``digest -> (seq, sent_at_s)``) younger than ``max_age`` that fit."""
    fresh = sorted(
        ((sent, digest, seq) for digest, (seq, sent) in entries.items() if sent >= now - max_age),
        reverse=True,
    )
    room = (max_chars - len(_STATE_PREFIX)) * 3 // 4 // _STATE_ENTRY.size
    packed = b"".join(_STATE_ENTRY.pack(d, q, t) for t, d, q in fresh[: max(room, 0)])
    if not packed:
        return ""
    return _STATE_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")


def decode_replay_state(metadata: str | None) -> dict[bytes, tuple[int, int]]:
    """What ``encode_replay_state`` wrote; anything else (another tool's metadata) is empty."""
    if not metadata or not metadata.startswith(_STATE_PREFIX):
        return {}
    text = metadata[len(_STATE_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return {}
    n = len(raw) // _STATE_ENTRY.size
    return {d: (q, t) for d, q, t in (_STATE_ENTRY.unpack_from(raw, i * 16) for i in range(n))}


def max_message_bytes(client_config: Mapping[str, Any], topics: list[str]) -> dict[str, int]:
    """Each topic's effective ``max.message.bytes`` (one admin request, with the client's
    connection and security settings)."""
    keep = ("bootstrap_servers", "security_protocol", "ssl_", "sasl_", "api_version")
    config = {
        k: v
        for k, v in client_config.items()
        if k.startswith(keep) and k in KafkaAdminClient.DEFAULT_CONFIG
    }
    admin = KafkaAdminClient(**config)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        try:  # kafka-python 3 lists only modified settings unless asked for all
            answer = admin.describe_configs(resources, config_filter="all")
        except TypeError:
            answer = admin.describe_configs(resources)
    finally:
        admin.close()
    sizes: dict[str, int] = {}
    if isinstance(answer, dict):  # kafka-python 3: {"topic": {name: {setting: {"value"}}}}
        for name, settings in answer.get("topic", {}).items():
            value = settings.get("max.message.bytes", {}).get("value")
            if value is not None:
                sizes[name] = int(value)
        return sizes
    for response in answer if isinstance(answer, list) else [answer]:  # kafka-python 2
        for resource in response.resources:
            error, name, entries = resource[0], resource[3], resource[4]
            for entry in entries if not error else ():
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    sizes[name] = int(entry[1])
    return sizes
