"""``sealedbus kds init|serve|rotate-master-key|fingerprint``, one function per subcommand, and
``sealedbus admin ...`` (``sealedbus.kds.cli_admin``). The member-side ``sealedbus enroll`` and
the plumbing all commands share (one-line errors, exit codes, KDS connection options) are in
``sealedbus.keys.cli``.

Secrets (keys, TOTP seeds) only ever go to files created with 0600 permissions; the commands
print paths, names and public fingerprints. Heavy imports happen inside the commands.
"""

# ruff: noqa: PLC0415 - imports live inside the commands so `sealedbus --help` stays instant

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedbus.keys import cli
from sealedbus.keys.cli import (
    CA_ENV,
    FINGERPRINT_ENV,
    URL_ENV,
    Command,
    CommandError,
    Subcommands,
    command,
    file_option,
    seconds_option,
    usage,
)

if TYPE_CHECKING:
    from sealedbus.kds.service import KeyDistributionService

__all__ = ["CA_ENV", "DB_ENV", "FINGERPRINT_ENV", "SESSION_ENV", "TOTP_ENV", "URL_ENV", "register"]

DB_ENV = "SEALEDBUS_KDS_DATABASE_URL"
TOTP_ENV = "SEALEDBUS_TOTP"
TOTP_FILE_ENV = "SEALEDBUS_TOTP_FILE"
SESSION_ENV = "SEALEDBUS_ADMIN_SESSION"


def _reports_errors(default_name: str) -> Callable[[Command], Command]:
    """``cli.reports_errors``, and a database error as one line too (bound values are hidden;
    the driver's reason is not)."""

    def decorate(func: Command) -> Command:
        @functools.wraps(func)
        def translated(args: argparse.Namespace) -> int:
            from sqlalchemy.exc import SQLAlchemyError

            try:
                return func(args)
            except SQLAlchemyError as exc:
                why = getattr(exc, "orig", None) or type(exc).__name__
                raise CommandError(f"database: {why}") from None

        return cli.reports_errors(default_name)(translated)

    return decorate


def register(sub: Subcommands) -> None:
    kds = sub.add_parser("kds", help="run and set up the key distribution service")
    kds_sub = kds.add_subparsers(dest="kds_command", required=True, metavar="ACTION")
    _register_init(kds_sub)
    _register_serve(kds_sub)
    _register_rotate_master(kds_sub)
    _register_fingerprint(kds_sub)

    from sealedbus.kds import cli_admin  # here: it imports this module's helpers

    cli_admin.register(sub)


def _register_init(kds_sub: Subcommands) -> None:
    init = kds_sub.add_parser("init", help="create the root key, master key and first admin")
    _data_options(init)
    init.add_argument("--admin", default="admin", help="name of the first admin (default: admin)")
    command(init, _init)


def _register_serve(kds_sub: Subcommands) -> None:
    serve = kds_sub.add_parser("serve", help="serve the KDS API (TLS unless --insecure-http)")
    _data_options(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8443, help="TCP port (default: 8443)")
    file_option(serve, "--tls-cert", "server certificate chain, PEM (no default)")
    file_option(serve, "--tls-key", "server private key, PEM (no default)")
    file_option(
        serve,
        "--tls-client-ca",
        "require client certificates issued by this CA (mutual TLS; default: not required)",
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
    seconds_option(
        serve,
        "--scheduler-interval",
        1.0,
        "how often the scheduler looks for epochs to publish or destroy (default: 1 s)",
    )
    seconds_option(
        serve,
        "--lease",
        10.0,
        "scheduler lease: a dead leader is replaced after this long (default: 10 s)",
    )
    seconds_option(
        serve,
        "--certificate-lifetime",
        3600.0,
        "lifetime of member certificates (default: 3600 s = 1 h)",
    )
    serve.add_argument(
        "--enroll-per-minute",
        type=int,
        default=10,
        metavar="N",
        help="enrollment attempts per client address per minute, bursts of as many (default: 10)",
    )
    seconds_option(
        serve,
        "--admin-session-ttl",
        900,
        "longest admin session one TOTP code opens (default: 900 s = 15 min)",
        kind=int,
    )
    command(serve, _serve)


def _register_rotate_master(kds_sub: Subcommands) -> None:
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
    command(rewrap, _rotate_master)


def _register_fingerprint(kds_sub: Subcommands) -> None:
    show_fingerprint = kds_sub.add_parser(
        "fingerprint", help="print the root key's fingerprint (what clients pin), nothing secret"
    )
    _data_dir_option(show_fingerprint)
    command(show_fingerprint, _fingerprint)


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    file_option(
        parser,
        "--data-dir",
        "where the key files live (default: the current directory)",
        default=Path("."),
        metavar="DIR",
    )


def _data_options(parser: argparse.ArgumentParser) -> None:
    _data_dir_option(parser)
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV),
        metavar="URL",
        help=f"database URL (default: ${DB_ENV}, else kds.db, SQLite, in --data-dir)",
    )


def _db_url(args: argparse.Namespace) -> str:
    return str(args.db or f"sqlite:///{(args.data_dir / 'kds.db').resolve()}")


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


def _open_service(args: argparse.Namespace, replica: str) -> KeyDistributionService:
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

    from sealedbus.kds.api import create_app
    from sealedbus.kds.metrics import KdsMetrics
    from sealedbus.kds.scheduler import Scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = args.tls_cert is not None or args.tls_key is not None
    if tls and args.insecure_http:
        raise usage("choose TLS (--tls-cert/--tls-key) or --insecure-http")
    if not tls and not args.insecure_http:
        raise usage("--tls-cert and --tls-key are required (or --insecure-http on loopback)")
    if args.insecure_http and not _loopback(args.host):
        raise usage(f"--insecure-http only binds loopback addresses, not {args.host}")
    if tls:
        _check_tls_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    if not 10 <= args.admin_session_ttl <= 86_400:
        raise usage("--admin-session-ttl: must be 10 to 86400 seconds")
    listener = _listen(args.host, args.port)  # before the slow start: a busy port is one line
    service = _open_service(args, args.replica)
    metrics = KdsMetrics()
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
        raise usage(f"--port {port}: must be 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        if isinstance(exc, socket.gaierror):
            raise usage(f"--host {host}: {exc.strerror}") from None
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
        raise usage("--tls-cert and --tls-key go together")
    files = [("--tls-cert", cert_path), ("--tls-key", key_path)]
    files += [("--tls-client-ca", client_ca)] if client_ca else []
    for flag, path in files:
        try:
            path.read_bytes()
        except OSError as exc:
            raise usage(f"{flag} {path}: {exc.strerror or 'cannot be read'}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except ValueError:
        raise usage(
            f"--tls-cert {cert_path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        raise usage(
            f"--tls-key {key_path}: encrypted with a passphrase; the KDS needs it unencrypted "
            "(`openssl pkey -in KEY -out KEY.plain`, mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise usage(
            f"--tls-key {key_path}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
        ) from None
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, raw) != chain[0].public_key().public_bytes(der, raw):
        raise usage(
            f"--tls-key {key_path} does not belong to the certificate in --tls-cert {cert_path} "
            "(its first certificate must be the server's)"
        )
    now = datetime.now(UTC)
    if now > chain[0].not_valid_after_utc:
        raise usage(
            f"--tls-cert {cert_path}: expired on {chain[0].not_valid_after_utc.isoformat()}"
        )
    if now < chain[0].not_valid_before_utc:
        raise usage(
            f"--tls-cert {cert_path}: not valid before {chain[0].not_valid_before_utc.isoformat()}"
        )
    if client_ca:
        try:
            ssl.create_default_context(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise usage(
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


def _retire_master(service: KeyDistributionService, path: Path) -> int:
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
