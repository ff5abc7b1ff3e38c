"""A producer or consumer process for the multi-process tests:

    python -m tests.kds._member produce URL CA KEYFILE FINGERPRINT TOPIC FILE SECONDS
    python -m tests.kds._member consume URL CA KEYFILE FINGERPRINT TOPIC FILE

The producer seals messages for SECONDS into FILE (length-prefixed); the consumer opens them all
and prints a JSON summary. The "broker" is the file: these tests are about the keys."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

from sealedbus import InvalidEnvelope, Opener, SealedbusError, Sealer
from sealedbus.keys.client import KeyServiceClient
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import read_secret


def main(argv: list[str]) -> int:
    action, url, ca, key_file, fp, topic, path = argv[:7]
    identity = MemberIdentity.from_bytes(read_secret(Path(key_file)))
    client = KeyServiceClient(url, identity, fp, verify=ca)
    if action == "produce":
        produce(client, topic, path, float(argv[7]))
    else:
        consume(client, topic, path)
    return 0


def produce(client: KeyServiceClient, topic: str, path: str, seconds: float) -> None:
    sealer = Sealer(client, epoch_check_interval=0.1)
    deadline = time.monotonic() + seconds
    count, failures = 0, 0
    with open(path, "wb") as out:
        while time.monotonic() < deadline:
            try:
                envelope = sealer.seal(topic, b"message %d" % count)
            except SealedbusError:
                failures += 1
                continue
            out.write(struct.pack(">I", len(envelope)) + envelope)
            count += 1
            time.sleep(0.002)
    print(json.dumps({"sealed": count, "failures": failures}))


def consume(client: KeyServiceClient, topic: str, path: str) -> None:
    opener = Opener(client)
    data = Path(path).read_bytes()
    opened, at = 0, 0
    failures: list[str] = []
    epochs: set[int] = set()
    while at < len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        try:
            message = opener.open(topic, data[at + 4 : at + 4 + size])
            opened += 1
            epochs.add(message.epoch)
        except (InvalidEnvelope, SealedbusError) as exc:
            failures.append(str(exc))
        at += 4 + size
    print(json.dumps({"opened": opened, "failures": failures[:5], "epochs": sorted(epochs)}))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
