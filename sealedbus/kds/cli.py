"""``sealedbus kds serve|init|rotate-master-key``, ``sealedbus admin ...`` and ``sealedbus enroll``.

Secrets (keys, tokens, TOTP seeds) only ever go to files created with 0600 permissions; the
commands print paths, names and public fingerprints. Heavy imports happen inside the commands.

Errors end a command with one line on stderr, ``sealedbus <command>: <message>``, and no
traceback: exit code 2 for a bad or missing argument (found before anything was changed or asked
of the KDS), 1 for anything that failed after that.
"""

# ruff: noqa: PLC0415 - imports live inside the commands so `sealedbus --help` stays instant

from __future__ import annotations

import argparse
import functools
import getpass
import ipaddress
import json
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DB_ENV = "SEALEDBUS_KDS_DATABASE_URL"
URL_ENV = "SEALEDBUS_KDS_URL"
FINGERPRINT_ENV = "SEALEDBUS_KDS_ROOT_FINGERPRINT"
TOTP_ENV = "SEALEDBUS_TOTP"
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")

Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """Ends a command with ``sealedbus <command>: <message>`` on stderr and exit code ``code``
    (2: a bad or missing argument, nothing done yet; 1: a failure)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> CommandError:
    return CommandError(message, 2)


def _command(parser: argparse.ArgumentParser, func: Command, **defaults: Any) -> None:
    """Make ``func`` the parser's command; its errors name the parser (``sealedbus admin
    token``)."""
    parser.set_defaults(func=func, command_name=parser.prog, **defaults)


def _reports_errors(default_name: str) -> Callable[[Command], Command]:
    """Turn a command's errors into one line on stderr and an exit code: CommandError as it
    says, any other SealedbusError, SecretError or OSError 1. Applied to the command functions
    themselves, so calling one directly (as tests do) gives the exit code too."""

    def decorate(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            from sqlalchemy.exc import SQLAlchemyError

            from sealedbus.errors import SealedbusError
            from sealedbus.kds.secrets import SecretError

            try:
                return func(args)
            except CommandError as exc:
                message, code = str(exc), exc.code
            except BrokenPipeError:
                raise  # `sealedbus ... | head`: not an error (the entry point returns 0)
            except (SealedbusError, SecretError, OSError) as exc:
                message, code = _describe(exc), 1
            except SQLAlchemyError as exc:  # bound values are hidden; the driver's reason is not
                message, code = f"database: {getattr(exc, 'orig', None) or type(exc).__name__}", 1
            except EOFError:
                message, code = "no input (a TOTP code was expected)", 1
            name = getattr(args, "command_name", None) or default_name
            print(f"{name}: {message}", file=sys.stderr)
            return code

        return run

    return decorate


def _describe(exc: BaseException) -> str:
    """One line for an error. Our errors never carry secrets; an OSError names a path."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc) or type(exc).__name__


def register(sub: Any) -> None:
    kds = sub.add_parser("kds", help="run and set up the key distribution service")
    kds_sub = kds.add_subparsers(dest="kds_command", required=True, metavar="ACTION")

    init = kds_sub.add_parser("init", help="create the root key, master key and first admin")
    _data_options(init)
    init.add_argument("--admin", default="admin", help="name of the first admin")
    _command(init, _init)

    serve = kds_sub.add_parser("serve", help="serve the KDS API (TLS unless --insecure-http)")
    _data_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates issued by this CA (mutual TLS)",
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain HTTP on a loopback address, for development only",
    )
    serve.add_argument(
        "--replica",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's name in the scheduler lease and audit log",
    )
    serve.add_argument("--scheduler-interval", type=float, default=1.0, metavar="SECONDS")
    serve.add_argument(
        "--lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="scheduler lease: a dead leader is replaced after this long",
    )
    serve.add_argument("--certificate-lifetime", type=float, default=3600.0, metavar="SECONDS")
    serve.add_argument("--enroll-per-minute", type=int, default=10)
    _command(serve, _serve)

    rewrap = kds_sub.add_parser(
        "rotate-master-key", help="add a new master key and re-wrap every stored key under it"
    )
    _data_options(rewrap)
    rewrap.add_argument(
        "--retire",
        action="store_true",
        help="instead: drop older master keys from the keyring file, refusing "
        "while any stored value still uses one",
    )
    _command(rewrap, _rotate_master)

    show_fingerprint = kds_sub.add_parser(
        "fingerprint", help="print the root key's fingerprint (what clients pin), nothing secret"
    )
    show_fingerprint.add_argument(
        "--data-dir",
        type=Path,
        default=Path("."),
        help="where the key files live (default: the current directory)",
    )
    _command(show_fingerprint, _fingerprint)

    admin = sub.add_parser("admin", help="administer a KDS (needs the admin key and a TOTP code)")
    _client_options(admin)
    admin.add_argument("--key", type=Path, default=Path("admin.key"), help="admin key file")
    admin.add_argument("--totp", help=f"TOTP code (default ${TOTP_ENV}, else prompt)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    token = admin_sub.add_parser("token", help="create a one-time enrollment token")
    token.add_argument("member")
    token.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    token.add_argument("--ttl", type=int, default=900, metavar="SECONDS")
    token.add_argument("--out", type=Path, required=True, help="file for the token (0600)")
    _command(token, _admin, action="token")

    topic = admin_sub.add_parser("topic", help="create, change, list and show topics")
    topic_sub = topic.add_subparsers(dest="topic_command", required=True, metavar="ACTION")
    create = topic_sub.add_parser("create", help="create a topic (deny by default)")
    create.add_argument("name")
    create.add_argument("--producers", default="", help="comma-separated names or role:NAME")
    create.add_argument("--consumers", default="", help="comma-separated names or role:NAME")
    create.add_argument("--rotation", type=int, default=3600, metavar="SECONDS")
    create.add_argument("--retention", type=int, default=7 * 86_400, metavar="SECONDS")
    create.add_argument("--suite", choices=["x25519", "x25519-mlkem768"], default="x25519")
    create.add_argument(
        "--history",
        action="store_true",
        help="new consumers may read epochs from before they were added",
    )
    _command(create, _admin, action="topic-create")
    change = topic_sub.add_parser("set", help="replace who may produce or consume")
    change.add_argument("name")
    change.add_argument("--producers", help="comma-separated; '' for nobody")
    change.add_argument("--consumers", help="comma-separated; '' for nobody (rotates at once)")
    _command(change, _admin, action="topic-set")
    _command(topic_sub.add_parser("list", help="list topics"), _admin, action="topics")
    show = topic_sub.add_parser("show", help="show a topic's policy")
    show.add_argument("name")
    _command(show, _admin, action="topic-show")

    rotate = admin_sub.add_parser("rotate", help="start a new epoch now")
    rotate.add_argument("name")
    _command(rotate, _admin, action="rotate")
    revoke = admin_sub.add_parser("revoke", help="revoke a member (rotates its topics)")
    revoke.add_argument("member")
    _command(revoke, _admin, action="revoke")
    epochs = admin_sub.add_parser("epochs", help="list a topic's epochs")
    epochs.add_argument("name")
    _command(epochs, _admin, action="epochs")
    audit = admin_sub.add_parser("audit", help="verify the audit log's hash chain and checkpoints")
    _command(audit, _admin, action="audit")

    enroll = sub.add_parser("enroll", help="create a member's key file and enroll it")
    _client_options(enroll)
    enroll.add_argument("--name", required=True, help="the service name the token was made for")
    enroll.add_argument("--token-file", type=Path, required=True)
    enroll.add_argument("--key-out", type=Path, required=True, help="member key file (0600)")
    enroll.add_argument("--suite", choices=["x25519", "x25519-mlkem768"], default="x25519")
    enroll.add_argument(
        "--replace",
        action="store_true",
        help="replace an enrolled member's keys: its old key file stops working and its old "
        "certificates are revoked (envelopes they signed before now still open)",
    )
    enroll.add_argument(
        "--compromised",
        action="store_true",
        help="with --replace: the old key may be exposed; refuse every envelope it signed",
    )
    _command(enroll, _enroll)


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("."),
        help="where the key files live (default: the current directory)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV),
        help=f"database URL (default ${DB_ENV}, else sqlite in --data-dir)",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get(URL_ENV), help=f"KDS URL (${URL_ENV})")
    parser.add_argument(
        "--root-fingerprint",
        default=os.environ.get(FINGERPRINT_ENV),
        help=f"pinned KDS root key fingerprint (${FINGERPRINT_ENV})",
    )
    parser.add_argument("--ca", type=Path, help="CA bundle to verify the KDS TLS certificate")
    parser.add_argument("--client-cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--client-key", type=Path, help="client key for mutual TLS")


def _db_url(args: argparse.Namespace) -> str:
    return str(args.db or f"sqlite:///{(args.data_dir / 'kds.db').resolve()}")


def _http_options(args: argparse.Namespace) -> dict[str, Any]:
    """The KDS connection options; checks the URL and the TLS files before anything is done."""
    if not args.url:
        raise _usage(f"--url or ${URL_ENV} is required")
    for flag, path in (
        ("--ca", args.ca),
        ("--client-cert", args.client_cert),
        ("--client-key", args.client_key),
    ):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise _usage(f"{flag} {path}: not a readable file")
    options: dict[str, Any] = {"verify": str(args.ca) if args.ca else True}
    if args.client_cert:
        options["cert"] = (str(args.client_cert), str(args.client_key or args.client_cert))
    return options


@_reports_errors("sealedbus kds init")
def _init(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from sealedbus.core.signed import fingerprint
    from sealedbus.kds import auth, secrets
    from sealedbus.kds.service import KeyDistributionService
    from sealedbus.kds.store import Store
    from sealedbus.keys.identity import MemberIdentity

    data: Path = args.data_dir
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = [
        data / n
        for n in (secrets.ROOT_KEY_FILE, secrets.MASTER_KEYS_FILE, "admin.key", "admin.totp")
    ]
    if any(p.exists() for p in paths):
        raise CommandError(f"{data} already holds KDS key files; refusing to overwrite them")
    store = Store(_db_url(args))
    try:  # the database first: a bad --db must not leave key files behind
        store.create_schema()
    except SQLAlchemyError as exc:
        store.dispose()
        detail = getattr(exc, "orig", None) or "see the log"
        raise CommandError(
            f"cannot create the database schema ({type(exc).__name__}: {detail})"
        ) from None
    root = secrets.new_root_key_file(paths[0])
    master = secrets.MasterKeyring.generate()
    secrets.write_secret(paths[1], master.to_bytes())
    admin = MemberIdentity.generate(args.admin, os.urandom)
    secrets.write_secret(paths[2], admin.to_bytes())
    totp_secret = os.urandom(20)
    secrets.write_secret(paths[3], auth.totp_uri(totp_secret, args.admin).encode() + b"\n")
    KeyDistributionService(store, root, master).add_admin(
        args.admin, admin.identity_public, totp_secret
    )
    store.dispose()
    public = root.public_key().public_bytes_raw()
    print(f"root key fingerprint: {fingerprint(public)}")
    print(f"wrote {', '.join(str(p) for p in paths)} (mode 0600)")
    print(f"load {paths[3]} into an authenticator app, then keep it offline")
    return 0


@_reports_errors("sealedbus kds fingerprint")
def _fingerprint(args: argparse.Namespace) -> int:
    from sealedbus.core.signed import fingerprint
    from sealedbus.kds import secrets

    root = secrets.load_root_key(args.data_dir / secrets.ROOT_KEY_FILE)
    print(fingerprint(root.public_key().public_bytes_raw()))
    return 0


def _open_service(args: argparse.Namespace, replica: str) -> Any:
    from sealedbus.kds import secrets
    from sealedbus.kds.service import KeyDistributionService
    from sealedbus.kds.store import Store

    root = secrets.load_root_key(args.data_dir / secrets.ROOT_KEY_FILE)
    master = secrets.MasterKeyring.load(args.data_dir / secrets.MASTER_KEYS_FILE)
    store = Store(_db_url(args))
    store.create_schema()
    lifetime = int(getattr(args, "certificate_lifetime", 3600.0) * 1000)
    return KeyDistributionService(
        store, root, master, replica=replica, certificate_lifetime_ms=lifetime
    )


@_reports_errors("sealedbus kds serve")
def _serve(args: argparse.Namespace) -> int:
    import logging
    import ssl

    import uvicorn

    from sealedbus.kds.api import Metrics, create_app
    from sealedbus.kds.scheduler import Scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = args.tls_cert is not None or args.tls_key is not None
    if tls and args.insecure_http:
        raise _usage("choose TLS (--tls-cert/--tls-key) or --insecure-http")
    if not tls and not args.insecure_http:
        raise _usage("--tls-cert and --tls-key are required (or --insecure-http on loopback)")
    if args.insecure_http and not _loopback(args.host):
        raise _usage(f"--insecure-http only binds loopback addresses, not {args.host}")
    service = _open_service(args, args.replica)
    metrics = Metrics()
    scheduler = Scheduler(
        service, interval=args.scheduler_interval, lease_seconds=args.lease, metrics=metrics
    )
    app = create_app(
        service,
        metrics=metrics,
        enroll_per_minute=args.enroll_per_minute,
        on_startup=scheduler.start,
        on_shutdown=scheduler.stop,
        is_leader=lambda: scheduler.leader,
    )
    options: dict[str, Any] = {}
    if tls:
        options.update(ssl_certfile=str(args.tls_cert), ssl_keyfile=str(args.tls_key))
        if args.tls_client_ca:
            options.update(ssl_ca_certs=str(args.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    else:
        banner = (
            "!" * 78 + "\n!! INSECURE: the KDS serves plain HTTP. Development on loopback "
            "only; never\n!! expose it. Use --tls-cert/--tls-key in any real deployment.\n"
            + "!"
            * 78
        )
        print(banner, file=sys.stderr, flush=True)
        logging.getLogger("sealedbus.kds").warning("serving plain HTTP (--insecure-http)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **options)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@_reports_errors("sealedbus kds rotate-master-key")
def _rotate_master(args: argparse.Namespace) -> int:
    from sealedbus.kds import secrets

    path = args.data_dir / secrets.MASTER_KEYS_FILE
    if os.environ.get(secrets.MASTER_KEYS_ENV):
        raise CommandError(
            f"unset ${secrets.MASTER_KEYS_ENV} and rotate the file, or rotate the "
            "secret in your secret store and restart replicas one by one"
        )
    service = _open_service(args, f"{socket.gethostname()}-rotate-master-key")
    if args.retire:
        return _retire_master(service, path)
    service.master = service.master.with_new_key()
    secrets.write_secret(path, service.master.to_bytes(), overwrite=True)  # replicas follow it
    count = service.rewrap()
    print(
        f"master key {service.master.current} is current; re-wrapped {count} values. Running "
        "replicas adopt it at their next write; once they all have (say, a minute from now), "
        "run `sealedbus kds rotate-master-key --retire` to drop the older keys"
    )
    return 0


def _retire_master(service: Any, path: Path) -> int:
    """Drop every master key but the current one from the keyring file, unless a stored value
    still uses it (a replica that had not yet followed the rotation may have wrapped with it)."""
    from sealedbus.kds import secrets

    old = service.master.key_ids - {service.master.current}
    in_use = sorted(old & service.master_keys_in_use())
    if in_use:
        raise CommandError(
            f"master keys {in_use} still wrap stored values; run "
            "`sealedbus kds rotate-master-key` again (it re-wraps everything), "
            "then retire"
        )
    secrets.write_secret(path, service.master.without(old).to_bytes(), overwrite=True)
    print(f"retired master keys {sorted(old) or 'none'}; {service.master.current} is current")
    return 0


def _totp_code(args: argparse.Namespace) -> str:
    code = args.totp or os.environ.get(TOTP_ENV)
    if code:
        return str(code)
    if not sys.stdin.isatty():
        raise _usage(f"pass --totp or set ${TOTP_ENV}")
    return getpass.getpass("TOTP code: ")


def _load_identity(path: Path, hint: str) -> Any:
    """A member's or admin's key file as a MemberIdentity (SecretError if it is not one)."""
    from sealedbus.kds.secrets import SecretError, read_secret
    from sealedbus.keys.identity import MemberIdentity

    data = read_secret(path, hint=hint)
    try:
        return MemberIdentity.from_bytes(data)
    except ValueError:
        raise SecretError(f"{path} is not a sealedbus key file") from None


def _new_secret_path(path: Path, flag: str) -> None:
    """Refuse (exit 2) an output path that ``write_secret`` could not create."""
    from sealedbus.kds.secrets import SecretError, check_new_secret_path

    try:
        check_new_secret_path(path)
    except SecretError as exc:
        raise _usage(f"{flag}: {exc}") from None


@_reports_errors("sealedbus admin")
def _admin(args: argparse.Namespace) -> int:
    from sealedbus.kds.admin_client import AdminClient
    from sealedbus.kds.secrets import SecretError, write_secret

    options = _http_options(args)
    if args.action == "token":  # before the KDS issues a token that could not be saved
        _new_secret_path(args.out, "--out")
    admin = _load_identity(
        args.key,
        "`sealedbus kds init` writes the first admin's key to "
        "admin.key in its --data-dir; pass it with --key",
    )
    code = _totp_code(args)
    client = AdminClient(args.url, admin, lambda: code, **options)
    out: Any = None
    try:
        if args.action == "token":
            token = client.create_token(args.member, args.role, args.ttl)
            try:
                write_secret(args.out, token.encode() + b"\n")
            except (SecretError, OSError) as exc:
                raise CommandError(
                    f"the KDS issued a token for {args.member}, but it could not be saved "
                    f"({_describe(exc)}); it is lost and expires unused in {args.ttl} s: "
                    "issue another"
                ) from None
            print(
                f"wrote a one-time token for {args.member} to {args.out} (expires in {args.ttl} s)"
            )
        elif args.action == "topic-create":
            out = client.create_topic(
                args.name,
                producers=_names(args.producers),
                consumers=_names(args.consumers),
                rotation=args.rotation,
                retention=args.retention,
                suite=args.suite,
                history=args.history,
            )
        elif args.action == "topic-set":
            out = client.set_policy(
                args.name,
                producers=None if args.producers is None else _names(args.producers),
                consumers=None if args.consumers is None else _names(args.consumers),
            )
        elif args.action == "topics":
            out = client.topics()
        elif args.action == "topic-show":
            out = client.topic(args.name)
        elif args.action == "rotate":
            out = {"topic": args.name, "epoch": client.rotate(args.name)}
        elif args.action == "revoke":
            client.revoke(args.member)
            print(f"revoked {args.member}; its topics rotated")
        elif args.action == "epochs":
            out = client.epochs(args.name)
        elif args.action == "audit":
            out = client.audit()
    finally:
        client.close()
    if out is not None:
        print(json.dumps(out, indent=2))
        if args.action == "audit" and not out.get("ok"):
            return 1
    return 0


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


@_reports_errors("sealedbus enroll")
def _enroll(args: argparse.Namespace) -> int:
    """Check every argument, then make the key and enroll it; the key file appears only once
    enrolled (it is written to KEY_OUT.pending first and removed if enrollment fails)."""
    from datetime import UTC, datetime

    from sealedbus.core.suites import Suite
    from sealedbus.errors import KeyServiceError
    from sealedbus.kds.secrets import write_secret
    from sealedbus.keys.client import enroll
    from sealedbus.keys.identity import MemberIdentity

    options = _http_options(args)
    if not args.root_fingerprint:
        raise _usage(f"--root-fingerprint or ${FINGERPRINT_ENV} is required")
    if not _FINGERPRINT.fullmatch(args.root_fingerprint):
        raise _usage(
            "--root-fingerprint: expected sha256: and 64 lowercase hex digits, as "
            "`sealedbus kds init` and `sealedbus kds fingerprint` print it"
        )
    if args.compromised and not args.replace:
        raise _usage("--compromised goes with --replace")
    token = _read_token(args.token_file)
    key_out: Path = args.key_out
    pending = key_out.with_name(key_out.name + ".pending")
    _new_secret_path(key_out, "--key-out")
    if os.path.lexists(pending):
        raise _usage(
            f"{pending} exists, left by an interrupted `sealedbus enroll`: if that "
            f"enrollment succeeded, rename it to {key_out}; else delete it"
        )
    identity = MemberIdentity.generate(args.name, os.urandom, Suite.parse(args.suite))
    write_secret(pending, identity.to_bytes())
    try:
        cert = enroll(
            args.url,
            identity,
            token,
            args.root_fingerprint,
            replace=args.replace,
            compromised=args.compromised,
            **options,
        )
    except KeyServiceError as exc:
        pending.unlink(missing_ok=True)
        raise CommandError(f"enrollment failed: {exc}") from None
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    _publish(pending, key_out, cert.member)
    if args.replace:
        kind = "for key compromise" if args.compromised else "from now on (retired)"
        print(f"replaced {cert.member}'s keys; its old certificates are revoked {kind}")
    until = datetime.fromtimestamp(cert.not_after_ms / 1000, UTC).isoformat(timespec="seconds")
    print(
        f"enrolled {cert.member}; key file {key_out} (0600); certificate valid until "
        f"{until}; may produce {list(cert.produce)}, consume {list(cert.consume)}"
    )
    return 0


def _read_token(path: Path) -> str:
    """The enrollment token in ``path`` (never echoed: it is a secret)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise _usage(f"--token-file {path}: {exc.strerror or 'cannot be read'}") from None
    except UnicodeDecodeError:
        raise _usage(f"--token-file {path} does not hold a token") from None
    if not token or len(token.split()) != 1:
        raise _usage(f"--token-file {path} does not hold a token")
    return token


def _publish(pending: Path, key_out: Path, member: str) -> None:
    """Move the enrolled key from ``pending`` to ``key_out``, never replacing a file."""
    lost = CommandError(
        f"enrolled {member}, but {key_out} appeared meanwhile; the enrolled key is in {pending}"
    )
    try:
        os.link(pending, key_out)  # fails if key_out exists, unlike a rename
    except FileExistsError:
        raise lost from None
    except OSError:  # no hard links on this file system
        if os.path.lexists(key_out):
            raise lost from None
        os.replace(pending, key_out)
    else:
        pending.unlink()
