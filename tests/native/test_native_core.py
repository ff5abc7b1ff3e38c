"""The native core's own guarantees: batch verification that still names each bad envelope,
sessions that a forked child cannot continue, Merkle trees equal to the reference."""

from __future__ import annotations

import os
import warnings

import pytest

from sealedbus.core import backend, merkle
from sealedbus.errors import InvalidEnvelope, Reason
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.vectors.generate import T0_MS, FixedRng, VectorKeys

pytestmark = pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")
KEYS = VectorKeys()


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :]


@pytest.mark.parametrize("core", ["pure", "native"])
def test_a_failed_batch_verification_still_gives_each_envelope_its_reason(core: str) -> None:
    """Per-message signatures checked in one call: each bad envelope gets its own reason."""
    sealer = Sealer(KEYS, clock=lambda: T0_MS / 1000, core=core)
    good = [sealer.seal("orders", b"m%d" % i) for i in range(8)]
    items = list(good)
    items[2] = _flip(good[2], 80)  # in the signature
    items[5] = _flip(good[5], len(good[5]) - 1)  # in the GCM tag: the signature covers it
    items[6] = good[6][:60]  # truncated
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core=core)
    results = opener.open_many([("orders", e) for e in items])
    reasons = [r.reason if isinstance(r, InvalidEnvelope) else r.body for r in results]  # type: ignore[union-attr]
    assert reasons == [
        b"m0",
        b"m1",
        Reason.BAD_SIGNATURE,
        b"m3",
        b"m4",
        Reason.BAD_SIGNATURE,
        Reason.MALFORMED,
        b"m7",
    ]
    # the good ones were marked seen; the refused ones were not
    again = opener.open_many([("orders", e) for e in good])
    assert [isinstance(r, InvalidEnvelope) and r.reason for r in again] == [
        Reason.DUPLICATE if i not in (2, 5, 6) else False for i in range(8)
    ]


def test_native_session_refuses_to_seal_in_a_forked_child() -> None:
    """Defence in depth below Sealer's fork handler: a native session handle made in the parent
    cannot seal in the child, so its (session, sequence) nonces are never used twice."""
    core = backend.get("native")
    epoch = KEYS.sealing_epoch("orders", T0_MS)
    session = core.start_session(
        epoch.suite, b"orders", epoch.epoch, epoch.public_key, FixedRng("fork")(32)
    )
    signer = core.signer(KEYS.signing)
    head = b"\x53\xb1\x01\x01\x00" + bytes(52)  # wire.header_head: magic through session id
    item = (session.handle, head, 0, T0_MS, 0, b"", b"", b"", b"x", "orders", None)
    assert core.seal(signer, [item], False)  # fine in the parent
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a threaded process
        pid = os.fork()
    if pid == 0:
        try:
            core.seal(signer, [item], False)
            os.write(write_end, b"sealed")
        except ValueError as exc:
            os.write(write_end, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    said = os.read(read_end, 1024)
    os.close(read_end)
    assert b"another process" in said


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 100])
def test_merkle_trees_equal_the_reference(n: int) -> None:
    leaves = [bytes([i % 251]) * 32 for i in range(n)]
    root, paths = merkle.build(leaves)
    native_root, native_paths = backend._native.merkle_build(leaves)
    assert native_root == root
    assert native_paths == [b"".join(p) for p in paths]


def test_version_names_the_core() -> None:
    assert backend.describe() in (
        "native core (Rust)",
        "pure-Python core (SEALEDBUS_NATIVE=0)",
    )


@pytest.mark.parametrize(("sealing", "opening"), [("pure", "native"), ("native", "pure")])
@pytest.mark.parametrize("batch", [False, True])
def test_hybrid_suite_envelopes_open_across_cores(sealing: str, opening: str, batch: bool) -> None:
    """HPKE randomness lives inside cryptography, so hybrid envelopes cannot be byte-identical;
    they must still open on the other core."""
    keys = VectorKeys("vault-api")  # the hybrid producer; the world holds the vault epoch
    sealer = Sealer(keys, clock=lambda: T0_MS / 1000, core=sealing)
    if batch:
        for i in range(3):
            sealer.add("vault", b"pq%d" % i, headers={"n": i})
        envelopes = [s.envelope for s in sealer.flush()]
    else:
        envelopes = [sealer.seal("vault", b"pq%d" % i, headers={"n": i}) for i in range(3)]
    opener = Opener(keys, clock=lambda: T0_MS / 1000, core=opening)
    opened = opener.open_many([("vault", e) for e in envelopes])
    assert [(m.body, m.headers) for m in opened] == [  # type: ignore[union-attr]
        (b"pq%d" % i, {"n": i}) for i in range(3)
    ]
