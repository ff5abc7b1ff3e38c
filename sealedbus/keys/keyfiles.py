"""Owner-only secret files: a member's identity key, and the KDS's root key and master keyring.

A secret is written atomically to a new 0600 file and read only from a file no one but its owner
may read or write. Used by members (``keys/client.py``, ``sealedbus enroll``) and by the KDS
(``kds/secrets.py``); every failure is a ``SecretError``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sealedbus.errors import SecretError

__all__ = [
    "ENROLL_HINT",
    "SecretError",
    "check_new_secret_path",
    "read_secret",
    "write_secret",
]

ENROLL_HINT = "`sealedbus enroll` creates a member's key file"


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to a new file readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.exists() and not overwrite:
        tmp.unlink()
        raise SecretError(f"{path} exists; refusing to overwrite it")
    os.replace(tmp, path)


def check_new_secret_path(path: Path) -> None:
    """Raise SecretError unless ``write_secret(path, ...)`` can create ``path``: it must not
    exist yet and its directory must exist and be writable. Call it before doing anything that
    cannot be undone (issuing a token, enrolling a key) whose result goes to ``path``."""
    if os.path.lexists(path):
        what = "is a directory" if path.is_dir() else "exists"
        raise SecretError(f"{path} {what}; refusing to overwrite it")
    directory = path.parent
    if not directory.is_dir():
        raise SecretError(f"cannot create {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SecretError(f"cannot create {path}: directory {directory} is not writable")


def read_secret(path: Path, *, hint: str | None = None) -> bytes:
    """Read a secret file, refusing one that others may read or write. ``hint`` is added to the
    error when the file does not exist, e.g. ``INIT_HINT`` or ``ENROLL_HINT``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecretError(f"{path} does not exist" + (f" ({hint})" if hint else "")) from None
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{path} is accessible to group or others; chmod 600 it")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None
