"""``sealedbus admin ...``: signed admin requests with a TOTP code (typed, given, or computed from
``--totp-file``) or an admin session (``sealedbus.kds.admin_sessions``). Arguments the KDS would
refuse are refused here first, before a code is spent (exit 2, nothing sent). Errors are one line,
as in ``sealedbus.kds.cli``, whose helpers this uses.
"""

# ruff: noqa: PLC0415 - imports live inside the commands so `sealedbus --help` stays instant

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedbus.kds.cli import SESSION_ENV, TOTP_ENV, TOTP_FILE_ENV, _reports_errors
from sealedbus.keys.cli import (
    FINGERPRINT_ENV,
    FINGERPRINT_PATTERN,
    CommandError,
    Subcommands,
    client_options,
    command,
    describe,
    file_option,
    http_options,
    load_identity,
    new_secret_path,
    seconds_option,
    suite_option,
    usage,
)

if TYPE_CHECKING:
    from sealedbus.kds.admin_client import AdminClient

TOKEN_TTL = (10, 86_400)  # what the KDS accepts for `admin token --ttl`, in seconds
SESSION_TTL = (10, 86_400)
PRODUCER_REFRESH_S = 10  # KeyServiceClient's default epoch_refresh
EXPORT_PAGE = 500  # audit entries per request of `audit export`


def register(sub: Subcommands) -> None:
    admin = sub.add_parser(
        "admin",
        help="administer a KDS (needs the admin key, and a TOTP code or an admin session)",
        description="Administer a KDS. Each request is signed with the admin key and carries "
        "a TOTP code (--totp, $SEALEDBUS_TOTP, --totp-file, else a prompt on a terminal) or an "
        "admin session that one code opened (`admin session open`, then --session).",
    )
    client_options(admin)
    file_option(
        admin,
        "--key",
        "admin key file (default: admin.key in the current directory)",
        default=Path("admin.key"),
    )
    admin.add_argument(
        "--totp",
        metavar="CODE",
        help=f"TOTP code, 6 digits (default: ${TOTP_ENV}, else --totp-file, else a prompt)",
    )
    file_option(
        admin,
        "--totp-file",
        f"the admin's TOTP secret (admin.totp) to compute codes from (default: "
        f"${TOTP_FILE_ENV}); trades the second factor for automation: CI secrets only",
        env=TOTP_FILE_ENV,
    )
    file_option(
        admin,
        "--session",
        f"an admin session file from `admin session open`, used instead of a TOTP code "
        f"(default: ${SESSION_ENV})",
        env=SESSION_ENV,
    )
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    session = admin_sub.add_parser("session", help="open or close an admin session")
    session_sub = session.add_subparsers(dest="session_command", required=True, metavar="ACTION")
    opening = session_sub.add_parser(
        "open", help="spend one TOTP code on a session that later commands use (--session)"
    )
    file_option(opening, "--out", "file for the session (0600)", required=True)
    opening.add_argument(
        "--ttl",
        type=int,
        metavar="SECONDS",
        help="session lifetime, 10 s or more (default: the KDS's --admin-session-ttl, 900 s)",
    )
    command(opening, _admin, action="session-open")
    closing = session_sub.add_parser("close", help="close the session in --session, or all")
    closing.add_argument(
        "--all",
        action="store_true",
        help="close every open session of this admin (default: only the one in --session)",
    )
    command(closing, _admin, action="session-close")

    token = admin_sub.add_parser("token", help="create a one-time enrollment token")
    token.add_argument("member", help="the service name the token enrolls")
    token.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="ROLE",
        help="a role the member gets (repeatable; default: none)",
    )
    seconds_option(
        token,
        "--ttl",
        900,
        f"how long the token is valid, {TOKEN_TTL[0]} to {TOKEN_TTL[1]} s (default: 900 s)",
        kind=int,
    )
    file_option(token, "--out", "file for the token (0600)", required=True)
    command(token, _admin, action="token")

    topic = admin_sub.add_parser("topic", help="create, change, list and show topics")
    topic_sub = topic.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    create = topic_sub.add_parser("create", help="create a topic (deny by default)")
    create.add_argument("name", help="topic name")
    create.add_argument(
        "--producers",
        default="",
        metavar="NAMES",
        help="comma-separated names or role:NAME (default: nobody)",
    )
    create.add_argument(
        "--consumers",
        default="",
        metavar="NAMES",
        help="comma-separated names or role:NAME (default: nobody)",
    )
    seconds_option(
        create,
        "--rotation",
        3600,
        "epoch length: a new topic key this often (default: 3600 s = 1 h)",
        kind=int,
    )
    seconds_option(
        create,
        "--retention",
        7 * 86_400,
        "how long an epoch's private key is kept after the epoch ends, then destroyed "
        "(default: 604800 s = 7 days)",
        kind=int,
    )
    suite_option(create, "key agreement; x25519-mlkem768 is post-quantum hybrid (default: x25519)")
    create.add_argument(
        "--history",
        action="store_true",
        help="new consumers may read epochs from before they were added (default: off)",
    )
    seconds_option(
        create,
        "--max-age",
        86_400,
        "openers refuse messages sent longer ago (bounds replays to restarted or other "
        "consumers; a consumer lagging more dead-letters as expired); 0: no limit "
        "(default: 86400 s = 24 h)",
        kind=int,
    )
    command(create, _admin, action="topic-create")
    change = topic_sub.add_parser("set", help="replace who may produce or consume")
    change.add_argument("name", help="topic name")
    change.add_argument(
        "--producers", metavar="NAMES", help="comma-separated; '' for nobody (default: unchanged)"
    )
    change.add_argument(
        "--consumers",
        metavar="NAMES",
        help="comma-separated; '' for nobody; a removal rotates at once (default: unchanged)",
    )
    command(change, _admin, action="topic-set")
    command(topic_sub.add_parser("list", help="list topics"), _admin, action="topics")
    show = topic_sub.add_parser("show", help="show a topic's policy")
    show.add_argument("name", help="topic name")
    command(show, _admin, action="topic-show")
    shred = topic_sub.add_parser(
        "shred",
        help="destroy every key of a topic now: its earlier messages never open again",
        description="Destroy every epoch key of the topic at once (the current one and any "
        "published ahead) and its other key material (subject keys). The topic stays: "
        "producers get a fresh epoch at their next refresh. Database backups taken before "
        "still hold the keys: see docs/operations.md, Shred a topic.",
    )
    shred.add_argument("name", help="topic name")
    command(shred, _admin, action="topic-shred")

    rotate = admin_sub.add_parser("rotate", help="start a new epoch now")
    rotate.add_argument("name", help="topic name")
    command(rotate, _admin, action="rotate")
    revoke = admin_sub.add_parser("revoke", help="revoke a member (rotates its topics)")
    revoke.add_argument("member", help="member name")
    revoke.add_argument(
        "--retire",
        action="store_true",
        help="retirement, not key compromise: envelopes it stamped before now still open "
        "(only for keys not suspected of exposure; default: key compromise, refuse them all)",
    )
    command(revoke, _admin, action="revoke")
    epochs = admin_sub.add_parser("epochs", help="list a topic's epochs (times in UTC)")
    epochs.add_argument("name", help="topic name")
    command(epochs, _admin, action="epochs")
    audit = admin_sub.add_parser(
        "audit",
        help="verify, anchor and export the audit log (alone: verify)",
        description="The KDS's hash-chained audit log. Without an action: verify.",
    )
    command(audit, _admin, action="audit", expect_head=None)
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="verify the hash chain, checkpoints and signed head (exit 1 if broken)"
    )
    verify.add_argument(
        "--expect-head",
        type=Path,
        metavar="FILE",
        help="a head saved earlier by `audit head`: also check that the chain still holds it "
        "(not rolled back, not rewritten) (default: no such check)",
    )
    command(verify, _admin, action="audit")
    head = audit_sub.add_parser(
        "head", help="print the signed audit head (JSON) to keep outside the KDS"
    )
    command(head, _admin, action="audit-head")
    export = audit_sub.add_parser(
        "export", help="write the audit log as JSON lines (one entry each, with its chain hash)"
    )
    export.add_argument(
        "--since",
        type=int,
        default=0,
        metavar="SEQ",
        help="export the entries after this sequence number (default: 0, from the start)",
    )
    export.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="file to write (replaced) (default: standard output)",
    )
    command(export, _admin, action="audit-export")
    subject = admin_sub.add_parser(
        "subject", help="per-subject erasure: crypto-shred one data subject's messages"
    )
    subject_sub = subject.add_subparsers(dest="subject_command", required=True)
    erase = subject_sub.add_parser(
        "erase",
        help="destroy a subject's key on a topic: its messages no longer open anywhere",
        description="Destroy SUBJECT's key on TOPIC (GDPR Art. 17): every message sealed for "
        "it, in the broker, a dead-letter queue or a backup, is refused as subject_erased. "
        "Producers and consumers cache subject keys for up to 60 s: messages sealed within "
        "that time are erased too. A later message for the subject gets a fresh key.",
    )
    erase.add_argument("name", metavar="TOPIC", help="topic name")
    erase.add_argument("subject", metavar="SUBJECT", help="the subject id the producers seal for")
    command(erase, _admin, action="subject-erase")


class _TotpFile:
    """Codes computed from the admin's TOTP secret (``--totp-file``). The KDS accepts each 30 s
    step once, with one step of drift either way: this hands out the previous, current and next
    step in turn (``advance`` after a ``totp_reused``), then waits for a new one."""

    def __init__(self, path: Path) -> None:
        import base64
        from urllib.parse import parse_qs, urlsplit

        from sealedbus.kds import auth
        from sealedbus.keys.keyfiles import SecretError, read_secret

        text = read_secret(path).decode(errors="replace").strip()
        secret = parse_qs(urlsplit(text).query).get("secret", [""])[0] if "://" in text else text
        try:
            self._totp = auth.totp(base64.b32decode(secret.upper() + "=" * (-len(secret) % 8)))
        except ValueError:
            raise SecretError(
                f"{path} holds no TOTP secret (expected the otpauth:// URI that "
                "`sealedbus kds init` wrote to admin.totp, or its base32 secret)"
            ) from None
        self._step = self._now() - 1

    @staticmethod
    def _now() -> int:
        import time

        from sealedbus.kds import auth

        return int(time.time()) // auth.TOTP_STEP

    def __call__(self) -> str:
        import time

        from sealedbus.kds import auth

        while self._step > self._now() + 1:
            time.sleep(0.2)
        return self._totp.generate(self._step * auth.TOTP_STEP).decode()

    def advance(self) -> None:
        self._step += 1


def _totp_source(args: argparse.Namespace) -> Callable[[], str]:
    """Where the TOTP code comes from: --totp, $SEALEDBUS_TOTP, --totp-file, else a prompt
    (only on a terminal). A given code is checked here, before anything is sent."""
    code = args.totp or os.environ.get(TOTP_ENV)
    if code:
        if not re.fullmatch(r"[0-9]{6}", str(code)):
            flag = "--totp" if args.totp else f"${TOTP_ENV}"
            raise usage(f"{flag}: a TOTP code is 6 digits")
        return lambda: str(code)
    if args.totp_file is not None:
        return _TotpFile(args.totp_file)
    if not sys.stdin.isatty():
        raise usage(
            f"no terminal to ask for a TOTP code: pass --totp, --totp-file or ${TOTP_ENV} "
            "(or --session)"
        )

    def prompt() -> str:
        for _ in range(3):
            typed = getpass.getpass("TOTP code: ").strip()
            if re.fullmatch(r"[0-9]{6}", typed):
                return typed
            print("a TOTP code is 6 digits", file=sys.stderr)
        raise usage("no valid TOTP code was typed")

    return prompt


def _check_admin_args(args: argparse.Namespace) -> None:
    """What the KDS would refuse, refused here before a TOTP code is spent (exit 2)."""
    from sealedbus.keys import signing

    def in_range(flag: str, value: int | None, bounds: tuple[int, int]) -> None:
        if value is not None and not bounds[0] <= value <= bounds[1]:
            raise usage(f"{flag} {value}: must be {bounds[0]} to {bounds[1]} seconds")

    if args.action == "token":
        in_range("--ttl", args.ttl, TOKEN_TTL)
        names = [args.member, *args.role]
    elif args.action == "session-open":
        in_range("--ttl", args.ttl, SESSION_TTL)
        names = []
    elif args.action == "revoke":
        names = [args.member]
    else:
        names = []
    if args.action == "topic-create":
        in_range("--rotation", args.rotation, (1, 366 * 86_400))
        in_range("--retention", args.retention, (1, 100 * 366 * 86_400))
        if not 0 <= args.max_age <= 100 * 366 * 86_400:
            raise usage(f"--max-age {args.max_age}: must be 0 (no limit) to 3162240000 seconds")
    if getattr(args, "name", None) and not re.fullmatch(signing.TOPIC_PATTERN, args.name):
        raise usage(f"{args.name!r}: topic names use letters, digits and ._~:@+- (no /)")
    for name in names:
        if not re.fullmatch(signing.NAME_PATTERN, name) or name.startswith("role:"):
            raise usage(
                f"{name!r}: member and role names use letters, digits and ._~:@+- (up to 128) "
                "and do not start with role:"
            )
    if args.action == "session-open":
        new_secret_path(args.out, "--out")
    if args.action == "subject-erase" and not 1 <= len(args.subject) <= 1024:
        raise usage("SUBJECT: 1 to 1024 characters")
    if args.action == "audit-export":
        if args.since < 0:
            raise usage(f"--since {args.since}: a sequence number is 0 or more")
        if args.output is not None and not args.output.absolute().parent.is_dir():
            raise usage(f"--output {args.output}: no such directory")
    if args.action == "audit" and args.expect_head is not None:
        args.expected_head = _read_head_file(args.expect_head)
    if args.action == "session-close" and args.session is None and not args.all:
        raise usage(f"--session FILE (or ${SESSION_ENV}) names the session to close; or --all")


def _read_head_file(path: Path) -> bytes:
    """The signed head in a file `audit head` wrote (checked against the root key later)."""
    import base64
    import binascii

    try:
        doc = json.loads(path.read_text())
        return base64.b64decode(doc["head"], validate=True)
    except OSError as exc:
        raise usage(f"--expect-head {path}: {describe(exc)}") from None
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise usage(
            f"--expect-head {path}: not a head file (`sealedbus admin audit head > FILE` "
            "writes one)"
        ) from None


def _read_session(path: Path) -> tuple[str, str]:
    """(token, session id) from a session file that `admin session open` wrote."""
    from sealedbus.keys.keyfiles import SecretError, read_secret

    fields = read_secret(path, hint="`sealedbus admin session open --out FILE` writes it")
    parts = fields.decode(errors="replace").split()
    if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{32}", parts[0]):
        raise SecretError(f"{path} is not an admin session file (from `admin session open`)")
    return parts[1], parts[0]


@_reports_errors("sealedbus admin")
def _admin(args: argparse.Namespace) -> int:
    from sealedbus.errors import KdsCode, Refused
    from sealedbus.kds.admin_client import AdminClient

    options = http_options(args)
    if args.root_fingerprint and not FINGERPRINT_PATTERN.fullmatch(args.root_fingerprint):
        raise usage(
            "--root-fingerprint: expected sha256: and 64 lowercase hex digits, as "
            "`sealedbus kds init` and `sealedbus kds fingerprint` print it"
        )
    _check_admin_args(args)
    if args.action == "token":  # before the KDS issues a token that could not be saved
        new_secret_path(args.out, "--out")
    admin = load_identity(
        args.key,
        "`sealedbus kds init` writes the first admin's key to "
        "admin.key in its --data-dir; pass it with --key",
    )
    session = None
    if args.session is not None and args.action != "session-open":
        session = _read_session(args.session)
        totp: Callable[[], str] = _no_code
    else:
        totp = _totp_source(args)
    client = AdminClient(args.url, admin, totp, session=session[0] if session else None, **options)
    try:
        if args.root_fingerprint:  # before a code is sent to it
            client.check_root(args.root_fingerprint)
        for attempt in range(4):
            try:
                out = _admin_action(client, args, session)
                break
            except Refused as exc:
                if (
                    exc.reason is not KdsCode.TOTP_REUSED
                    or not isinstance(totp, _TotpFile)
                    or attempt == 3
                ):
                    raise
                totp.advance()
    finally:
        client.close()
    if out is not None:
        print(json.dumps(out, indent=2))
    if not args.root_fingerprint:
        print(
            f"{args.command_name}: note: no root fingerprint pinned (--root-fingerprint or "
            f"${FINGERPRINT_ENV}); the KDS was trusted on its TLS certificate alone",
            file=sys.stderr,
        )
    if args.action == "audit" and out is not None and not out.get("ok"):
        return 1
    return 0


def _audit_head(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The head, verified against the root key, as the file `--expect-head` reads."""
    import base64

    from sealedbus.core.signed import AuditHead, SignatureError, fingerprint

    root = client.root_key(args.root_fingerprint)
    signed = client.audit_head()
    try:
        head = AuditHead.verify(signed, root)
    except SignatureError as exc:
        raise CommandError(
            f"the KDS answered with an audit head that does not verify: {exc}"
        ) from None
    return {
        "sequence": head.sequence,
        "chain_hash": head.chain_hash.hex(),
        "issued_at": _utc(head.issued_at_ms),
        "root_fingerprint": fingerprint(root.public_bytes_raw()),
        "head": base64.b64encode(signed).decode(),
    }


def _expected(client: Any, args: argparse.Namespace) -> tuple[int, bytes]:
    """(sequence, chain hash) of the head in --expect-head, refused unless the root signed it."""
    from sealedbus.core.signed import AuditHead, SignatureError

    try:
        head = AuditHead.verify(args.expected_head, client.root_key(args.root_fingerprint))
    except SignatureError:
        raise CommandError(
            f"--expect-head {args.expect_head}: the head is not signed by this KDS's root key "
            "(forged, altered, or from another KDS); nothing was checked"
        ) from None
    return head.sequence, head.chain_hash


def _export(client: Any, args: argparse.Namespace) -> int:
    """Page through the entries after --since, one JSON object a line; progress on stderr."""
    import contextlib

    out = (
        contextlib.nullcontext(sys.stdout)
        if args.output is None
        else args.output.open("w", encoding="utf-8")
    )
    since, written = args.since, 0
    with out as sink:
        while True:
            page = client.audit_entries(since, EXPORT_PAGE)
            for e in page:
                line = {
                    "seq": e["seq"],
                    "time": _utc(e["at_ms"]),
                    "at_ms": e["at_ms"],
                    "actor": e["actor"],
                    "action": e["action"],
                    "detail": json.loads(e["detail"]),
                    "prev_hash": e["prev_hash"],
                    "hash": e["hash"],
                }
                sink.write(json.dumps(line, sort_keys=True) + "\n")
            written += len(page)
            if page:
                since = page[-1]["seq"]
            if len(page) < EXPORT_PAGE:
                break
            if sys.stderr.isatty() or written % (EXPORT_PAGE * 10) == 0:
                print(f"exported {written} entries (up to {since})", file=sys.stderr)
    print(f"exported {written} audit entries, up to sequence {since}", file=sys.stderr)
    return written


def _no_code() -> str:  # pragma: no cover - the session header is sent instead
    raise CommandError("a TOTP code was asked for under an admin session")


def _admin_action(
    client: AdminClient, args: argparse.Namespace, session: tuple[str, str] | None
) -> Any:
    """Run one admin action; returns what to print as JSON (None: it printed already)."""
    from sealedbus.keys.keyfiles import SecretError, write_secret

    action = args.action
    if action == "session-open":
        doc = client.open_session(args.ttl)
        write_secret(args.out, f"{doc['session_id']} {doc['session']}\n".encode())
        until = _utc(doc["expires_at_ms"])
        print(
            f"opened admin session {doc['session_id']} until {until} ({doc['expires_in']} s); "
            f"wrote {args.out} (0600): pass --session {args.out} or set ${SESSION_ENV}"
        )
        return None
    if action == "session-close":
        closed = client.close_session(None if args.all else session[1] if session else None)
        print(f"closed {closed} admin session{'' if closed == 1 else 's'}")
        return None
    if action == "token":
        token = client.create_token(args.member, args.role, args.ttl)
        try:
            write_secret(args.out, token.encode() + b"\n")
        except (SecretError, OSError) as exc:
            raise CommandError(
                f"the KDS issued a token for {args.member}, but it could not be saved "
                f"({describe(exc)}); it is lost and expires unused in {args.ttl} s: "
                "issue another"
            ) from None
        print(f"wrote a one-time token for {args.member} to {args.out} (expires in {args.ttl} s)")
        return None
    if action == "topic-create":
        return client.create_topic(
            args.name,
            producers=_names(args.producers),
            consumers=_names(args.consumers),
            rotation=args.rotation,
            retention=args.retention,
            suite=args.suite,
            history=args.history,
            max_age=args.max_age,
        )
    if action == "topic-set":
        return client.set_policy(
            args.name,
            producers=None if args.producers is None else _names(args.producers),
            consumers=None if args.consumers is None else _names(args.consumers),
        )
    if action == "topics":
        return client.topics()
    if action == "topic-show":
        return client.topic(args.name)
    if action == "rotate":
        epoch = client.rotate(args.name)
        current = next((e for e in client.epochs(args.name) if e["epoch"] == epoch), None)
        out: dict[str, Any] = {"topic": args.name, "epoch": epoch}
        if current is not None:
            start = current["not_before_ms"]
            out["not_before"] = _utc(start)
            out["producers_switch_by"] = _utc(start + PRODUCER_REFRESH_S * 1000)
            out["note"] = (
                f"producers re-check the sealing epoch every {PRODUCER_REFRESH_S} s "
                "(KeyServiceClient epoch_refresh) and switch at their next check; "
                "consumers open both epochs meanwhile"
            )
        return out
    if action == "revoke":
        client.revoke(args.member, compromised=not args.retire)
        kind = "retired" if args.retire else "revoked (key compromise)"
        print(f"{kind} {args.member}; its topics rotated")
        return None
    if action == "epochs":
        return [
            {**e, **{k[:-3]: _utc(e[k]) for k in _EPOCH_TIMES if k in e}}
            for e in client.epochs(args.name)
        ]
    if action == "audit":
        if args.expect_head is None:
            return client.audit()
        expect = _expected(client, args)
        return {"expected_head": expect[0], **client.audit(expect)}
    if action == "audit-head":
        return _audit_head(client, args)
    if action == "audit-export":
        opened = None
        if session is None:  # one code for every page: a short session, closed at the end
            opened = client.open_session(SESSION_TTL[0] * 60)
        try:
            _export(client, args)
        finally:
            if opened is not None:
                client.close_session(opened["session_id"])
        return None
    if action == "topic-shred":
        return client.shred_topic(args.name)
    if action == "subject-erase":
        key_id = client.erase_subject(args.name, args.subject)
        if key_id is None:
            print(f"no key for that subject on {args.name}: nothing to erase (audited)")
        else:
            print(f"erased subject key {key_id} on {args.name} (caches expire within 60 s)")
        return None
    raise AssertionError(action)  # pragma: no cover - every parser sets a known action


_EPOCH_TIMES = ("not_before_ms", "not_after_ms", "destroy_after_ms")


def _utc(ms: int) -> str:
    """A millisecond stamp as ISO 8601 UTC, to the millisecond (what the stamp says exactly)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]
