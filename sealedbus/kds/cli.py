"""``sealedbus kds serve|init|rotate-master-key|fingerprint`` and ``sealedbus enroll``; the
helpers ``sealedbus admin ...`` (``sealedbus.kds.cli_admin``) shares with them.

Secrets (keys, tokens, TOTP seeds) only ever go to files created with 0600 permissions; the
commands print paths, names and public fingerprints. Heavy imports happen inside the commands.

Errors end a command with one line on stderr, ``sealedbus <command>: <message>``, and no
traceback: exit code 2 for a bad or missing argument (found before anything was changed or asked
of the KDS), 1 for anything that failed after that.
"""

# ruff: noqa: PLC0415 - imports live inside the commands so `sealedbus --help` stays instant

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
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
CA_ENV = "SEALEDBUS_KDS_CA"
TOTP_ENV = "SEALEDBUS_TOTP"
TOTP_FILE_ENV = "SEALEDBUS_TOTP_FILE"
SESSION_ENV = "SEALEDBUS_ADMIN_SESSION"
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

            from sealedbus.errors import KeyServiceUnavailable, SealedbusError
            from sealedbus.keys.keyfiles import SecretError

            try:
                return func(args)
            except CommandError as exc:
                message, code = str(exc), exc.code
            except KeyServiceUnavailable as exc:
                message, code = _unavailable(getattr(args, "url", None), exc), 1
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


# what OpenSSL says when the other side answers a TLS handshake in plain text (by version)
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}


def _unavailable(url: str | None, exc: BaseException) -> str:
    """Why the KDS at ``url`` could not be asked: refused, timed out, TLS on one side only..."""
    import ssl

    import httpx

    chain: list[BaseException] = []
    cause: BaseException | None = exc.__cause__
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not chain or not isinstance(chain[0], httpx.HTTPError):
        return str(exc)  # the KDS answered (e.g. 503): the message says what
    at = f"KDS at {url}" if url else "KDS"
    secure = bool(url and url.startswith("https:"))
    ssl_error = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
    if any(isinstance(c, ConnectionRefusedError) for c in chain):
        why = "connection refused (nothing listens on that port: is the KDS running there?)"
    elif isinstance(chain[0], httpx.TimeoutException):
        why = "timed out (no answer within --timeout; a firewall, or a hung KDS?)"
    elif any(isinstance(c, socket.gaierror) for c in chain):
        why = "host name not found"
    elif isinstance(ssl_error, ssl.SSLCertVerificationError):
        why = (
            f"its TLS certificate is not trusted ({ssl_error.verify_message}); pass its CA "
            f"with --ca or ${CA_ENV}"
        )
    elif ssl_error is not None and secure and ssl_error.reason in _NOT_TLS:
        why = "spoke TLS to a plain-HTTP port (use an http:// URL, or serve with TLS)"
    elif ssl_error is not None:
        why = f"TLS handshake failed ({ssl_error.reason or ssl_error})"
    elif not secure and isinstance(chain[0], (httpx.RemoteProtocolError, httpx.ReadError)):
        why = (
            "spoke HTTP to a TLS port? The server closed the connection without an answer "
            "(use an https:// URL)"
        )
    else:
        why = f"{type(chain[0]).__name__}: {chain[0]}"
    return f"{at} unreachable: {why}"


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
    init.add_argument("--admin", default="admin", help="name of the first admin (default: admin)")
    _command(init, _init)

    serve = kds_sub.add_parser("serve", help="serve the KDS API (TLS unless --insecure-http)")
    _data_options(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8443, help="TCP port (default: 8443)")
    serve.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="server certificate chain, PEM (no default)"
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="server private key, PEM (no default)"
    )
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates issued by this CA (mutual TLS; default: not required)",
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain HTTP on a loopback address, for development only (default: off)",
    )
    serve.add_argument(
        "--replica",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's name in the scheduler lease and audit log (default: HOST-PID)",
    )
    serve.add_argument(
        "--scheduler-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the scheduler looks for epochs to publish or destroy (default: 1 s)",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="scheduler lease: a dead leader is replaced after this long (default: 10 s)",
    )
    serve.add_argument(
        "--certificate-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of member certificates (default: 3600 s = 1 h)",
    )
    serve.add_argument(
        "--enroll-per-minute",
        type=int,
        default=10,
        metavar="N",
        help="enrollment attempts per client address per minute, bursts of as many (default: 10)",
    )
    serve.add_argument(
        "--admin-session-ttl",
        type=int,
        default=900,
        metavar="SECONDS",
        help="longest admin session one TOTP code opens (default: 900 s = 15 min)",
    )
    _command(serve, _serve)

    rewrap = kds_sub.add_parser(
        "rotate-master-key", help="add a new master key and re-wrap every stored key under it"
    )
    _data_options(rewrap)
    rewrap.add_argument(
        "--retire",
        action="store_true",
        help="instead: drop older master keys from the keyring file, refusing "
        "while any stored value still uses one (default: off)",
    )
    _command(rewrap, _rotate_master)

    show_fingerprint = kds_sub.add_parser(
        "fingerprint", help="print the root key's fingerprint (what clients pin), nothing secret"
    )
    show_fingerprint.add_argument(
        "--data-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where the key files live (default: the current directory)",
    )
    _command(show_fingerprint, _fingerprint)

    from sealedbus.kds import cli_admin  # here: it imports this module's helpers

    cli_admin.register(sub)

    enroll = sub.add_parser("enroll", help="create a member's key file and enroll it")
    _client_options(enroll)
    enroll.add_argument("--name", required=True, help="the service name the token was made for")
    enroll.add_argument(
        "--token-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the one-time token from `sealedbus admin token`",
    )
    enroll.add_argument(
        "--key-out", type=Path, required=True, metavar="FILE", help="member key file (0600)"
    )
    enroll.add_argument(
        "--suite",
        choices=["x25519", "x25519-mlkem768"],
        default="x25519",
        help="the receive key's suite (default: x25519)",
    )
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


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where the key files live (default: the current directory)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV),
        metavar="URL",
        help=f"database URL (default: ${DB_ENV}, else kds.db, SQLite, in --data-dir)",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get(URL_ENV), help=f"KDS URL (default: ${URL_ENV})"
    )
    parser.add_argument(
        "--root-fingerprint",
        default=os.environ.get(FINGERPRINT_ENV),
        metavar="SHA256",
        help=f"pinned KDS root key fingerprint (default: ${FINGERPRINT_ENV})",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=_env_path(CA_ENV),
        metavar="FILE",
        help=f"CA bundle to verify the KDS TLS certificate (default: ${CA_ENV}, else the "
        "system trust store)",
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        metavar="FILE",
        help="client certificate for mutual TLS (default: none)",
    )
    parser.add_argument(
        "--client-key",
        type=Path,
        metavar="FILE",
        help="client key for mutual TLS (default: the --client-cert file)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up on a KDS request after this long (default: 5 s)",
    )


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
    if not args.timeout > 0:
        raise _usage("--timeout: must be more than 0 s")
    options: dict[str, Any] = {"verify": str(args.ca) if args.ca else True}
    options["timeout"] = args.timeout
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
    from sealedbus.keys import keyfiles
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
    keyfiles.write_secret(paths[1], master.to_bytes())
    admin = MemberIdentity.generate(args.admin, os.urandom)
    keyfiles.write_secret(paths[2], admin.to_bytes())
    totp_secret = os.urandom(20)
    keyfiles.write_secret(paths[3], auth.totp_uri(totp_secret, args.admin).encode() + b"\n")
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
    if tls:
        _check_tls_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    if not 10 <= args.admin_session_ttl <= 86_400:
        raise _usage("--admin-session-ttl: must be 10 to 86400 seconds")
    listener = _listen(args.host, args.port)  # before the slow start: a busy port is one line
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
    app.state.admin_session_ttl = args.admin_session_ttl
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
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", **options)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The server socket, bound here so that a port in use is one line and exit 1."""
    if not 0 < port < 65536:
        raise _usage(f"--port {port}: must be 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        if isinstance(exc, socket.gaierror):
            raise _usage(f"--host {host}: {exc.strerror}") from None
        raise CommandError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _check_tls_files(cert_path: Path, key_path: Path | None, client_ca: Path | None) -> None:
    """Name the TLS file that is wrong, and why, before the server starts (exit 2)."""
    import ssl
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if cert_path is None or key_path is None:
        raise _usage("--tls-cert and --tls-key go together")
    files = [("--tls-cert", cert_path), ("--tls-key", key_path)]
    files += [("--tls-client-ca", client_ca)] if client_ca else []
    for flag, path in files:
        try:
            path.read_bytes()
        except OSError as exc:
            raise _usage(f"{flag} {path}: {exc.strerror or 'cannot be read'}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except ValueError:
        raise _usage(
            f"--tls-cert {cert_path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        raise _usage(
            f"--tls-key {key_path}: encrypted with a passphrase; the KDS needs it unencrypted "
            "(`openssl pkey -in KEY -out KEY.plain`, mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _usage(
            f"--tls-key {key_path}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, raw) != chain[0].public_key().public_bytes(der, raw):
        raise _usage(
            f"--tls-key {key_path} does not belong to the certificate in --tls-cert {cert_path} "
            "(its first certificate must be the server's)"
        )
    now = datetime.now(UTC)
    if now > chain[0].not_valid_after_utc:
        raise _usage(
            f"--tls-cert {cert_path}: expired on {chain[0].not_valid_after_utc.isoformat()}"
        )
    if now < chain[0].not_valid_before_utc:
        raise _usage(
            f"--tls-cert {cert_path}: not valid before {chain[0].not_valid_before_utc.isoformat()}"
        )
    if client_ca:
        try:
            ssl.create_default_context(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise _usage(
                f"--tls-client-ca {client_ca}: not a PEM CA bundle ({exc.reason})"
            ) from None


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
    from sealedbus.keys import keyfiles

    path = args.data_dir / secrets.MASTER_KEYS_FILE
    if os.environ.get(secrets.MASTER_KEYS_ENV):
        raise CommandError(
            f"unset ${secrets.MASTER_KEYS_ENV} and rotate the file, or rotate the "
            "secret in your secret store and restart replicas one by one"
        )
    service = _open_service(args, f"{socket.gethostname()}-rotate-master-key")
    try:
        if args.retire:
            return _retire_master(service, path)
        service.master = service.master.with_new_key()
        keyfiles.write_secret(path, service.master.to_bytes(), overwrite=True)  # replicas follow
        count = service.rewrap()
    finally:
        service.store.dispose()  # its connections closed now, not when collected
    print(
        f"master key {service.master.current} is current; re-wrapped {count} values. Running "
        "replicas adopt it at their next write; once they all have (say, a minute from now), "
        "run `sealedbus kds rotate-master-key --retire` to drop the older keys"
    )
    return 0


def _retire_master(service: Any, path: Path) -> int:
    """Drop every master key but the current one from the keyring file, unless a stored value
    still uses it (a replica that had not yet followed the rotation may have wrapped with it)."""
    from sealedbus.keys import keyfiles

    old = service.master.key_ids - {service.master.current}
    in_use = sorted(old & service.master_keys_in_use())
    if in_use:
        raise CommandError(
            f"master keys {in_use} still wrap stored values; run "
            "`sealedbus kds rotate-master-key` again (it re-wraps everything), "
            "then retire"
        )
    keyfiles.write_secret(path, service.master.without(old).to_bytes(), overwrite=True)
    print(f"retired master keys {sorted(old) or 'none'}; {service.master.current} is current")
    return 0


def _load_identity(path: Path, hint: str) -> Any:
    """A member's or admin's key file as a MemberIdentity (SecretError if it is not one)."""
    from sealedbus.keys.identity import MemberIdentity
    from sealedbus.keys.keyfiles import SecretError, read_secret

    data = read_secret(path, hint=hint)
    try:
        return MemberIdentity.from_bytes(data)
    except ValueError:
        if re.fullmatch(rb"[A-Za-z0-9_-]{20,100}\n?", data):
            raise SecretError(
                f"{path} is not a sealedbus key file: it holds an enrollment token; pass it "
                "to `sealedbus enroll --token-file`, which writes the key file"
            ) from None
        if data.startswith(b"otpauth://"):
            raise SecretError(
                f"{path} is not a sealedbus key file: it holds a TOTP secret"
            ) from None
        raise SecretError(f"{path} is not a sealedbus key file") from None


def _new_secret_path(path: Path, flag: str) -> None:
    """Refuse (exit 2) an output path that ``write_secret`` could not create."""
    from sealedbus.keys.keyfiles import SecretError, check_new_secret_path

    try:
        check_new_secret_path(path)
    except SecretError as exc:
        raise _usage(f"{flag}: {exc}") from None


@_reports_errors("sealedbus enroll")
def _enroll(args: argparse.Namespace) -> int:
    """Check every argument, then make the key and enroll it; the key file appears only once
    enrolled (it is written to KEY_OUT.pending first and removed if enrollment fails)."""
    from datetime import UTC, datetime

    from sealedbus.core.suites import Suite
    from sealedbus.errors import KeyServiceError
    from sealedbus.keys.client import enroll
    from sealedbus.keys.identity import MemberIdentity
    from sealedbus.keys.keyfiles import write_secret

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
        raise CommandError(f"enrollment failed: {_unavailable(args.url, exc)}") from None
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
