"""The KDS's own secrets: the Ed25519 root key and the master keyring that wraps epoch private
keys (and admin TOTP secrets) at rest.

The keyring is a JSON object ``{"current": id, "keys": {id: base64 key}}`` read from a 0600 file
or from the ``SEALEDBUS_KDS_MASTER_KEYS`` environment variable. Every wrapped value names the key
that wrapped it, so a keyring holding the old and the new key opens both while values are
re-wrapped (``KeyDistributionService.rewrap``); meeting an unknown key id reloads the keyring once.
A keyring read from a file also re-reads it before wrapping whenever the file changed, and adopts
its ``current`` key: so running replicas follow ``sealedbus kds rotate-master-key`` at once.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealedbus.errors import SecretError
from sealedbus.keys.keyfiles import read_secret, write_secret

MASTER_KEYS_ENV = "SEALEDBUS_KDS_MASTER_KEYS"
ROOT_KEY_FILE = "root.key"
MASTER_KEYS_FILE = "master.keys"
_WRAP_LABEL = b"sealedbus/1 kds at rest\x00"
INIT_HINT = "`sealedbus kds init` creates it"  # root key, master keyring, first admin's key


def new_root_key_file(path: Path, rng: Callable[[int], bytes] = os.urandom) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.from_private_bytes(rng(32))
    write_secret(path, key.private_bytes_raw())
    return key


def load_root_key(path: Path) -> Ed25519PrivateKey:
    data = read_secret(path, hint=INIT_HINT)
    if len(data) != 32:
        raise SecretError(f"{path} is not a 32-byte Ed25519 root key")
    return Ed25519PrivateKey.from_private_bytes(data)


class MasterKeyring:
    """AES-256-GCM keys that wrap secrets at rest; ``current`` wraps, any of them unwraps."""

    def __init__(
        self,
        current: str,
        keys: dict[str, bytes],
        source: Path | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if current not in keys or not all(len(k) == 32 for k in keys.values()):
            raise SecretError("master keyring needs a current key and 32-byte keys")
        if not all(0 < len(i.encode()) < 64 for i in keys):
            raise SecretError("master key ids are 1 to 63 bytes")
        self.current = current
        self._keys = dict(keys)
        self._source = source
        self._rng = rng
        self._lock = threading.Lock()
        self._seen = _file_stamp(source)  # the source file as last read (or written by us)

    @classmethod
    def load(cls, path: Path) -> MasterKeyring:
        """From the environment variable if set, else from ``path``."""
        env = os.environ.get(MASTER_KEYS_ENV)
        raw = env.encode() if env else read_secret(path, hint=INIT_HINT)
        current, keys = _parse(raw)
        return cls(current, keys, None if env else path)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> MasterKeyring:
        return cls("k1", {"k1": rng(32)}, rng=rng)

    def with_new_key(self) -> MasterKeyring:
        """A keyring whose current key is new and which still holds every older key."""
        number = 1 + max((int(i[1:]) for i in self._keys if i[1:].isdigit()), default=0)
        new_id = f"k{number}"
        return MasterKeyring(new_id, {**self._keys, new_id: self._rng(32)}, self._source, self._rng)

    def without(self, retired: set[str]) -> MasterKeyring:
        keys = {i: k for i, k in self._keys.items() if i not in retired or i == self.current}
        return MasterKeyring(self.current, keys, self._source, self._rng)

    @property
    def key_ids(self) -> set[str]:
        return set(self._keys)

    def to_bytes(self) -> bytes:
        """Secret: write only with ``write_secret``."""
        keys = {i: base64.b64encode(k).decode() for i, k in self._keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, sort_keys=True).encode()

    def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        """``len(id) || id || nonce || AES-GCM(plaintext)``, bound to ``context``."""
        with self._lock:
            self._follow_source()
            current, key = self.current, self._keys[self.current]
        key_id = current.encode()
        nonce = self._rng(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext, _WRAP_LABEL + context)
        return bytes([len(key_id)]) + key_id + nonce + sealed

    def _follow_source(self) -> None:
        """Adopt the source file's current key (and learn its keys) when the file changed."""
        stamp = _file_stamp(self._source)
        if self._source is None or stamp == self._seen:
            return
        current, keys = _parse(read_secret(self._source))
        self._keys.update(keys)
        self.current, self._seen = current, stamp

    def key_id_of(self, wrapped: bytes) -> str:
        return wrapped[1 : 1 + wrapped[0]].decode() if wrapped else ""

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        key_id = self.key_id_of(wrapped)
        key = self._key(key_id)
        body = wrapped[1 + wrapped[0] :]
        try:
            return AESGCM(key).decrypt(body[:12], body[12:], _WRAP_LABEL + context)
        except InvalidTag:
            raise SecretError("wrapped value does not open under the master key") from None

    def _key(self, key_id: str) -> bytes:
        with self._lock:
            if key_id not in self._keys and self._source is not None:
                _, keys = _parse(read_secret(self._source))  # rotated meanwhile: reload
                self._keys.update(keys)
            if key_id not in self._keys:
                raise SecretError(f"master key {key_id!r} is not in the keyring")
            return self._keys[key_id]


def _file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _parse(raw: bytes) -> tuple[str, dict[str, bytes]]:
    try:
        doc = json.loads(raw)
        keys = {str(i): base64.b64decode(k, validate=True) for i, k in doc["keys"].items()}
        return str(doc["current"]), keys
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SecretError("master keyring does not parse") from exc
