"""The member-side command, ``sealedbus enroll``, and the command-line plumbing the KDS's own
commands (``sealedbus kds``, ``sealedbus admin``: ``sealedbus.kds.cli``) share with it.

Secrets (keys, tokens) only ever go to files created with 0600 permissions; the commands print
paths, names and public fingerprints. Heavy imports happen inside the commands.

Errors end a command with one line on stderr, ``sealedbus <command>: <message>``, and no
traceback: exit code 2 for a bad or missing argument (found before anything was changed or asked
of the KDS), 1 for anything that failed after that.
"""

# ruff: noqa: PLC0415 - imports live inside the commands so `sealedbus --help` stays instant

from __future__ import annotations

import argparse
import functools
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sealedbus.core.suites import LABELS, Suite

if TYPE_CHECKING:
    from sealedbus.keys.identity import MemberIdentity

URL_ENV = "SEALEDBUS_KDS_URL"
FINGERPRINT_ENV = "SEALEDBUS_KDS_ROOT_FINGERPRINT"
CA_ENV = "SEALEDBUS_KDS_CA"
FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")

Command = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: Subcommands) -> None:
    enroll = sub.add_parser("enroll", help="create a member's key file and enroll it")
    client_options(enroll)
    enroll.add_argument("--name", required=True, help="the service name the token was made for")
    file_option(
        enroll, "--token-file", "the one-time token from `sealedbus admin token`", required=True
    )
    file_option(enroll, "--key-out", "member key file (0600)", required=True)
    suite_option(enroll, "the receive key's suite (default: x25519)")
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
    command(enroll, _enroll)


class CommandError(Exception):
    """Ends a command with ``sealedbus <command>: <message>`` on stderr and exit code ``code``
    (2: a bad or missing argument, nothing done yet; 1: a failure)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def usage(message: str) -> CommandError:
    return CommandError(message, 2)


def command(parser: argparse.ArgumentParser, func: Command, **defaults: Any) -> None:
    """Make ``func`` the parser's command; its errors name the parser (``sealedbus admin
    token``)."""
    parser.set_defaults(func=func, command_name=parser.prog, **defaults)


def reports_errors(default_name: str) -> Callable[[Command], Command]:
    """Turn a command's errors into one line on stderr and an exit code: CommandError as it
    says, any other SealedbusError, SecretError or OSError 1 (the KDS's commands add database
    errors: ``sealedbus.kds.cli``). Applied to the command functions
    themselves, so calling one directly (as tests do) gives the exit code too."""

    def decorate(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            from sealedbus.errors import KeyServiceUnavailable, SealedbusError
            from sealedbus.keys.keyfiles import SecretError

            try:
                return func(args)
            except CommandError as exc:
                message, code = str(exc), exc.code
            except KeyServiceUnavailable as exc:
                message, code = unavailable(getattr(args, "url", None), exc), 1
            except BrokenPipeError:
                raise  # `sealedbus ... | head`: not an error (the entry point returns 0)
            except (SealedbusError, SecretError, OSError) as exc:
                message, code = describe(exc), 1
            except EOFError:
                message, code = "no input (a TOTP code was expected)", 1
            name = getattr(args, "command_name", None) or default_name
            print(f"{name}: {message}", file=sys.stderr)
            return code

        return run

    return decorate


# what OpenSSL says when the other side answers a TLS handshake in plain text (by version)
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}


def unavailable(url: str | None, exc: BaseException) -> str:
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


def describe(exc: BaseException) -> str:
    """One line for an error. Our errors never carry secrets; an OSError names a path."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc) or type(exc).__name__


def env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get(URL_ENV), help=f"KDS URL (default: ${URL_ENV})"
    )
    parser.add_argument(
        "--root-fingerprint",
        default=os.environ.get(FINGERPRINT_ENV),
        metavar="SHA256",
        help=f"pinned KDS root key fingerprint (default: ${FINGERPRINT_ENV})",
    )
    file_option(
        parser,
        "--ca",
        f"CA bundle to verify the KDS TLS certificate (default: ${CA_ENV}, else the "
        "system trust store)",
        env=CA_ENV,
    )
    file_option(parser, "--client-cert", "client certificate for mutual TLS (default: none)")
    file_option(
        parser, "--client-key", "client key for mutual TLS (default: the --client-cert file)"
    )
    seconds_option(
        parser, "--timeout", 5.0, "give up on a KDS request after this long (default: 5 s)"
    )


def file_option(
    parser: argparse.ArgumentParser,
    flag: str,
    help: str,
    *,
    env: str | None = None,
    metavar: str = "FILE",
    **extra: Any,
) -> None:
    """An option naming a file (or, with ``metavar="DIR"``, a folder); with ``env``, its default
    is that environment variable's value when set."""
    if env is not None:
        extra["default"] = env_path(env)
    parser.add_argument(flag, type=Path, metavar=metavar, help=help, **extra)


def seconds_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: float,
    help: str,
    *,
    kind: type[int] | type[float] = float,
) -> None:
    """An option giving a duration in seconds (its help says the default and its unit)."""
    parser.add_argument(flag, type=kind, default=default, metavar="SECONDS", help=help)


def suite_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--suite``: one of the suites' labels (``core.suites.LABELS``), x25519 by default."""
    parser.add_argument("--suite", choices=LABELS, default=Suite.X25519.label, help=help)


def http_options(args: argparse.Namespace) -> dict[str, Any]:
    """The KDS connection options; checks the URL and the TLS files before anything is done."""
    if not args.url:
        raise usage(f"--url or ${URL_ENV} is required")
    for flag, path in (
        ("--ca", args.ca),
        ("--client-cert", args.client_cert),
        ("--client-key", args.client_key),
    ):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise usage(f"{flag} {path}: not a readable file")
    if not args.timeout > 0:
        raise usage("--timeout: must be more than 0 s")
    options: dict[str, Any] = {"verify": str(args.ca) if args.ca else True}
    options["timeout"] = args.timeout
    if args.client_cert:
        options["cert"] = (str(args.client_cert), str(args.client_key or args.client_cert))
    return options


def load_identity(path: Path, hint: str) -> MemberIdentity:
    """A member's or admin's key file as a MemberIdentity (SecretError if it is not one)."""
    from sealedbus.keys.identity import MemberIdentity as Identity
    from sealedbus.keys.keyfiles import SecretError, read_secret

    data = read_secret(path, hint=hint)
    try:
        return Identity.from_bytes(data)
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


def new_secret_path(path: Path, flag: str) -> None:
    """Refuse (exit 2) an output path that ``write_secret`` could not create."""
    from sealedbus.keys.keyfiles import SecretError, check_new_secret_path

    try:
        check_new_secret_path(path)
    except SecretError as exc:
        raise usage(f"{flag}: {exc}") from None


@reports_errors("sealedbus enroll")
def _enroll(args: argparse.Namespace) -> int:
    """Check every argument, then make the key and enroll it; the key file appears only once
    enrolled (it is written to KEY_OUT.pending first and removed if enrollment fails)."""
    from datetime import UTC, datetime

    from sealedbus.core.suites import Suite
    from sealedbus.errors import KeyServiceError
    from sealedbus.keys.client import enroll
    from sealedbus.keys.identity import MemberIdentity
    from sealedbus.keys.keyfiles import write_secret

    options = http_options(args)
    if not args.root_fingerprint:
        raise usage(f"--root-fingerprint or ${FINGERPRINT_ENV} is required")
    if not FINGERPRINT_PATTERN.fullmatch(args.root_fingerprint):
        raise usage(
            "--root-fingerprint: expected sha256: and 64 lowercase hex digits, as "
            "`sealedbus kds init` and `sealedbus kds fingerprint` print it"
        )
    if args.compromised and not args.replace:
        raise usage("--compromised goes with --replace")
    token = _read_token(args.token_file)
    key_out: Path = args.key_out
    pending = key_out.with_name(key_out.name + ".pending")
    new_secret_path(key_out, "--key-out")
    if os.path.lexists(pending):
        raise usage(
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
        raise CommandError(f"enrollment failed: {unavailable(args.url, exc)}") from None
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
        raise usage(f"--token-file {path}: {exc.strerror or 'cannot be read'}") from None
    except UnicodeDecodeError:
        raise usage(f"--token-file {path} does not hold a token") from None
    if not token or len(token.split()) != 1:
        raise usage(f"--token-file {path} does not hold a token")
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
