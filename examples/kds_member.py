"""What the two-process examples share: command-line options, the KDS client, a sample event
(and creating Kafka topics).

Each example process is one enrolled member of the KDS (``examples/kds_dev.sh`` sets one up). It
needs three things, as flags or environment variables:

    --key-file          $SEALEDBUS_KEY_FILE              its key file (from `sealedbus enroll`)
    --kds-url           $SEALEDBUS_KDS_URL               where the KDS answers
    --root-fingerprint  $SEALEDBUS_KDS_ROOT_FINGERPRINT  the pinned root key (`kds init` prints it)

and optionally ``--ca`` / ``$SEALEDBUS_KDS_CA`` (the CA bundle of the KDS's TLS certificate) and
``--topic`` / ``$SEALEDBUS_TOPIC`` (default ``admissions``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sealedbus.errors import AccessDenied, KeyServiceUnavailable, UntrustedResponse
from sealedbus.keys.client import KeyServiceClient
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import SecretError, read_secret

WARDS = ("3B", "ICU", "maternity")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the KDS options; the script adds its own."""
    env = os.environ.get
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--key-file",
        type=Path,
        default=env("SEALEDBUS_KEY_FILE"),
        help="member key file ($SEALEDBUS_KEY_FILE)",
    )
    p.add_argument(
        "--kds-url", default=env("SEALEDBUS_KDS_URL"), help="KDS URL ($SEALEDBUS_KDS_URL)"
    )
    p.add_argument(
        "--root-fingerprint",
        default=env("SEALEDBUS_KDS_ROOT_FINGERPRINT"),
        help="pinned KDS root key fingerprint ($SEALEDBUS_KDS_ROOT_FINGERPRINT)",
    )
    p.add_argument(
        "--ca",
        default=env("SEALEDBUS_KDS_CA"),
        help="CA bundle for the KDS's TLS certificate ($SEALEDBUS_KDS_CA)",
    )
    p.add_argument(
        "--topic",
        default=env("SEALEDBUS_TOPIC", "admissions"),
        help="sealing topic ($SEALEDBUS_TOPIC, default admissions)",
    )
    return p


def key_service(p: argparse.ArgumentParser, args: argparse.Namespace) -> KeyServiceClient:
    """The member's ``KeyServiceClient`` (a ``KeySource`` for ``Sealer`` and ``Opener``), checked
    once against the KDS so a wrong URL, pin or key file fails here with a clear message."""
    for value, option, env in (
        (args.key_file, "--key-file", "SEALEDBUS_KEY_FILE"),
        (args.kds_url, "--kds-url", "SEALEDBUS_KDS_URL"),
        (args.root_fingerprint, "--root-fingerprint", "SEALEDBUS_KDS_ROOT_FINGERPRINT"),
    ):
        if not value:
            p.error(f"{option} or ${env} is required (examples/kds_dev.sh prints full commands)")
    if not args.key_file.exists():
        p.error(f"key file {args.key_file} does not exist (`sealedbus enroll` writes it)")
    try:
        identity = MemberIdentity.from_bytes(read_secret(args.key_file))
    except (SecretError, ValueError) as exc:
        p.error(f"key file: {exc}")
    verify: Any = args.ca or True
    keys = KeyServiceClient(args.kds_url, identity, args.root_fingerprint, verify=verify)
    try:
        keys.identity(int(time.time() * 1000))  # fetch the root key (pinned) and our certificate
    except KeyServiceUnavailable as exc:
        p.exit(1, f"error: cannot reach the KDS at {args.kds_url}: {exc}\n")
    except UntrustedResponse as exc:
        p.exit(1, f"error: the KDS at {args.kds_url} is not the one pinned: {exc}\n")
    except AccessDenied as exc:
        p.exit(1, f"error: the KDS refused {identity.name}: {exc}\n")
    return keys


def patient_event(n: int) -> dict[str, Any]:
    """A sample admission event: what the brokers must never see in clear."""
    return {
        "event": "admitted",
        "patient_id": f"P-{100000 + n}",
        "ward": WARDS[n % len(WARDS)],
        "seq": n,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def ensure_kafka_topics(bootstrap: str, topics: list[str], partitions: int = 3) -> None:
    """Create the Kafka topics that do not exist yet (either side may start first)."""
    from kafka import KafkaAdminClient  # noqa: PLC0415 - only the Kafka examples need kafka-python
    from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        missing = set(topics) - set(admin.list_topics())
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # the other side was quicker
                admin.create_topics(
                    {t: {"num_partitions": partitions} for t in missing}, wait_for_metadata=True
                )  # replication: the broker's default
    finally:
        admin.close()
