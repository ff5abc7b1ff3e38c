"""A member's own secret keys: the Ed25519 identity key and the receive key grants are sealed to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core import suites
from sealedbus.core.suites import KeyPair, Suite

_FORMAT = b"sealedbus/1 member keys"


@dataclass(frozen=True)
class MemberIdentity:
    name: str
    signing_key: Ed25519PrivateKey
    receive: KeyPair

    @classmethod
    def generate(
        cls, name: str, rng: Callable[[int], bytes], suite: Suite = Suite.X25519
    ) -> MemberIdentity:
        return cls(
            name,
            Ed25519PrivateKey.from_private_bytes(rng(32)),
            suites.keypair_from_seed(suite, rng(suite.seed_len)),
        )

    @property
    def identity_public(self) -> bytes:
        return self.signing_key.public_key().public_bytes_raw()

    def to_bytes(self) -> bytes:
        """Secret: write only to a file with 0600 permissions."""
        fields = [
            _FORMAT,
            self.name,
            self.signing_key.private_bytes_raw(),
            int(self.receive.suite),
            self.receive.private,
        ]
        return bytes(msgpack.packb(fields, use_bin_type=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> MemberIdentity:
        try:
            fmt, name, sk, suite, private = msgpack.unpackb(data, raw=False)
            if fmt != _FORMAT:
                raise ValueError("not a sealedbus member key file")
            return cls(
                name,
                Ed25519PrivateKey.from_private_bytes(sk),
                suites.keypair_from_seed(Suite(suite), private),
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"member key file does not parse: {exc}") from exc
