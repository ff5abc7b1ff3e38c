"""``sealedbus inspect``: print an envelope's public header fields, with no key."""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from sealedbus.core import wire
from sealedbus.errors import InvalidEnvelope


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show an envelope's public header fields (no key needed)")
    p.add_argument("file", nargs="?", default="-", help="envelope file, or - for standard input")
    p.add_argument(
        "--format",
        choices=["raw", "hex", "base64"],
        default="raw",
        help="encoding of the input (default raw bytes)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def describe(data: bytes) -> dict[str, Any]:
    """The public fields of an envelope; raises InvalidEnvelope when it does not parse."""
    parsed = wire.parse(data)
    h = parsed.header
    fields: dict[str, Any] = {
        "version": wire.VERSION,
        "suite": h.suite.label,
        "signing": "batch" if h.batch else "per-message",
        "epoch": h.epoch,
        "sender_certificate": h.cert_id.hex(),
        "session": h.session_id.hex(),
        "sequence": h.seq,
        "sent_at": dt.datetime.fromtimestamp(h.sent_at_ms / 1000, dt.UTC).isoformat(),
        "expires_at": (
            dt.datetime.fromtimestamp((h.sent_at_ms + h.ttl_ms) / 1000, dt.UTC).isoformat()
            if h.ttl_ms
            else None
        ),
        "content_type": h.content_type,
        "ciphertext_bytes": len(parsed.ciphertext),
        "total_bytes": len(data),
    }
    if h.subject:  # a random id: it links a subject's messages, it does not name the subject
        fields["subject_key"] = h.subject_key_id.hex()
    if parsed.proof is not None:
        fields["batch_leaf"] = f"{parsed.proof.index} of {parsed.proof.size}"
    return fields


def run(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"sealedbus inspect: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if args.format == "hex":
            raw = bytes.fromhex(raw.decode().strip())
        elif args.format == "base64":
            raw = base64.b64decode(raw.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        print(f"sealedbus inspect: input is not valid {args.format}: {exc}", file=sys.stderr)
        return 2
    try:
        fields = describe(raw)
    except InvalidEnvelope as exc:
        print(f"sealedbus inspect: not a sealedbus envelope ({exc.reason.value})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for key, value in fields.items():
            print(f"{key:<20} {value}")
    return 0
