"""Replay windows: mark, check, unmark, sliding, and the bounded LRU of sessions. The guard
tests run on each core's guard (``Core.new_replay_guard``: ``ReplayGuard`` here, its Rust twin
in the native core), which must decide and bound alike."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedbus.core import backend
from sealedbus.core.replay import ReplayWindow, Seen

from ._support import FAST

CORES = ["pure"] + (["native"] if backend.NATIVE is not None else [])
each_core = pytest.mark.parametrize("core", CORES)


def ReplayGuard(
    window: int = 4096,
    max_sessions: int = 100_000,
    max_sessions_per_sender: int = 1024,
    *,
    core: str,
) -> Any:
    return backend.get(core).new_replay_guard(window, max_sessions, max_sessions_per_sender)


def test_window_basics() -> None:
    w = ReplayWindow(8)
    assert w.check(0) is Seen.NEW
    w.mark(0)
    assert w.check(0) is Seen.DUPLICATE
    assert w.check(1) is Seen.NEW
    w.mark(5)
    assert [w.check(s) for s in range(7)] == [
        Seen.DUPLICATE,
        Seen.NEW,
        Seen.NEW,
        Seen.NEW,
        Seen.NEW,
        Seen.DUPLICATE,
        Seen.NEW,
    ]
    w.mark(3)  # below the highest, inside the window
    assert w.check(3) is Seen.DUPLICATE


def test_window_slides() -> None:
    w = ReplayWindow(8)
    w.mark(0)
    w.mark(7)
    assert w.check(0) is Seen.DUPLICATE  # offset 7: the last slot inside
    w.mark(8)
    assert w.check(0) is Seen.TOO_OLD  # slid out
    assert w.check(1) is Seen.NEW  # inside, never seen
    assert w.check(7) is Seen.DUPLICATE
    w.mark(100)
    assert w.check(92) is Seen.TOO_OLD
    assert w.check(93) is Seen.NEW
    assert w.check(8) is Seen.TOO_OLD


def test_unmark() -> None:
    w = ReplayWindow(8)
    for s in (1, 2, 3):
        w.mark(s)
    w.unmark(2)
    assert [w.check(s) for s in (1, 2, 3)] == [Seen.DUPLICATE, Seen.NEW, Seen.DUPLICATE]
    w.unmark(3)  # the highest: forgotten, and the window does not move back
    assert w.check(3) is Seen.NEW
    w.unmark(500)  # outside: nothing happens
    w.unmark(-5)
    assert w.check(1) is Seen.DUPLICATE


@FAST
@given(st.lists(st.integers(0, 200), max_size=200), st.integers(1, 64))
def test_window_matches_a_model(seqs: list[int], size: int) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    highest = -1
    for s in seqs:
        if s > highest:
            expected = Seen.NEW
        elif highest - s >= size:
            expected = Seen.TOO_OLD
        else:
            expected = Seen.DUPLICATE if s in seen else Seen.NEW
        assert w.check(s) is expected
        if expected is Seen.NEW:
            w.mark(s)
            seen.add(s)
            highest = max(highest, s)


@each_core
def test_guard_keeps_senders_and_sessions_apart(core: str) -> None:
    g = ReplayGuard(window=8, max_sessions=10, core=core)
    g.mark("s1", b"a", 1)
    assert g.check("s1", b"a", 1) is Seen.DUPLICATE
    assert g.check("s1", b"b", 1) is Seen.NEW
    assert g.check("s2", b"a", 1) is Seen.NEW  # the same session id from another sender
    g.unmark("s1", b"a", 1)
    assert g.check("s1", b"a", 1) is Seen.NEW
    g.unmark("s1", b"never", 1)  # unknown session: nothing happens
    g.unmark("nobody", b"a", 1)


@each_core
def test_guard_evicts_a_senders_least_recently_used_session(core: str) -> None:
    g = ReplayGuard(window=8, max_sessions=100, max_sessions_per_sender=2, core=core)
    g.mark("s", b"a", 1)
    g.mark("s", b"b", 1)
    g.mark("s", b"a", 2)  # a is now the most recently used
    g.mark("s", b"c", 1)  # evicts b
    assert g.check("s", b"a", 1) is Seen.DUPLICATE
    assert g.check("s", b"c", 1) is Seen.DUPLICATE
    assert g.check("s", b"b", 1) is Seen.NEW


@each_core
def test_a_flooding_sender_evicts_only_its_own_windows(core: str) -> None:
    g = ReplayGuard(window=8, max_sessions=50, max_sessions_per_sender=20, core=core)
    for honest in range(3):
        g.mark(f"honest{honest}", b"s", 7)
    for i in range(10_000):
        g.mark("flooder", i.to_bytes(4, "big"), 0)
    for honest in range(3):
        assert g.check(f"honest{honest}", b"s", 7) is Seen.DUPLICATE
    many = ReplayGuard(window=8, max_sessions=50, max_sessions_per_sender=20, core=core)
    for sender in range(10):  # many senders: the global bound takes from the largest
        for i in range(sender + 1):
            many.mark(sender, i, 0)
    assert many.check(0, 0, 0) is Seen.DUPLICATE  # the smallest sender kept its window


@each_core
@pytest.mark.parametrize(("window", "sessions"), [(0, 1), (1, 0), (-1, 5)])
def test_guard_rejects_nonsense_limits(window: int, sessions: int, core: str) -> None:
    with pytest.raises(ValueError):
        ReplayGuard(window, sessions, core=core)


@each_core
def test_scopes_keep_their_own_windows(core: str) -> None:
    """Issue 9.1: one partition's backlog must not make another's messages too old."""
    g = ReplayGuard(window=8, core=core)
    for seq in range(0, 300, 3):  # partition 0 of a session, read first
        assert g.check("s", b"a", seq, scope=0) is Seen.NEW
        g.mark("s", b"a", seq, scope=0)
    for seq in range(1, 300, 3):  # then partition 1, far behind
        assert g.check("s", b"a", seq, scope=1) is Seen.NEW
        g.mark("s", b"a", seq, scope=1)
    assert g.check("s", b"a", 298, scope=1) is Seen.DUPLICATE
    assert g.check("s", b"a", 1, scope=1) is Seen.TOO_OLD  # within its own scope


@each_core
def test_a_copy_moved_to_another_scope_is_a_duplicate(core: str) -> None:
    g = ReplayGuard(window=8, core=core)
    g.mark("s", b"a", 10, scope=0)
    assert g.check("s", b"a", 10, scope=1) is Seen.DUPLICATE
    assert g.check("s", b"a", 11, scope=1) is Seen.NEW
    g.unmark("s", b"a", 10, scope=0)  # given back: its redelivery is accepted anywhere
    assert g.check("s", b"a", 10, scope=1) is Seen.NEW


@each_core
def test_a_floor_counts_what_was_handled_before_a_restart(core: str) -> None:
    g = ReplayGuard(window=8, core=core)
    assert g.check("s", b"a", 20, scope=0, floor=20) is Seen.DUPLICATE
    assert g.check("s", b"a", 13, scope=0, floor=20) is Seen.DUPLICATE
    assert g.check("s", b"a", 12, scope=0, floor=20) is Seen.TOO_OLD
    assert g.check("s", b"a", 21, scope=0, floor=20) is Seen.NEW
    g.mark("s", b"a", 21, scope=0, floor=20)
    assert g.check("s", b"a", 19, scope=0) is Seen.DUPLICATE  # the floor stays with the window
    # another scope's floor is not exact: it never makes this scope's message a duplicate
    assert g.check("s", b"a", 15, scope=1) is Seen.NEW


@each_core
def test_a_floor_lifts_a_window_that_fell_behind(core: str) -> None:
    """A partition that came back after another member read on: what it committed counts."""
    g = ReplayGuard(window=8, core=core)
    g.mark("s", b"a", 5, scope=0)
    assert g.check("s", b"a", 30, scope=0, floor=30) is Seen.DUPLICATE
    assert g.check("s", b"a", 31, scope=0) is Seen.NEW
    assert g.check("s", b"a", 5, scope=0) is Seen.TOO_OLD


@each_core
def test_the_cross_scope_check_costs_one_window_whatever_the_partitions(core: str) -> None:
    g = ReplayGuard(window=128, max_sessions=1000, core=core)
    for p in range(64):
        g.mark("s", b"a", p, scope=p)
    assert g.check("s", b"a", 3, scope=40) is Seen.DUPLICATE  # opened in partition 3
    assert g.check("s", b"a", 64, scope=40) is Seen.NEW
    assert g._count == 65  # a window per partition, and one over all of them


_steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # sender
        st.integers(0, 2),  # session
        st.integers(0, 40),  # sequence number
        st.sampled_from([None, 0, 1]),  # scope
        st.sampled_from([-1, -1, 3, 12]),  # floor
        st.booleans(),  # unmark it again afterwards
    ),
    max_size=60,
)


@each_core
@FAST
@given(steps=_steps)
def test_admit_is_check_then_mark(
    steps: list[tuple[int, int, int, int | None, int, bool]], core: str
) -> None:
    """``admit`` (the opener's one step) decides and remembers exactly as ``check`` followed by
    ``mark`` when NEW, including its shortcut for the usual case."""
    one, two = ReplayGuard(8, 5, 2, core=core), ReplayGuard(8, 5, 2, core=core)
    for sender, session, seq, scope, floor, unmark in steps:
        seen = two.check(sender, session, seq, scope, floor)
        if seen is Seen.NEW:
            two.mark(sender, session, seq, scope, floor)
        assert one.admit(sender, session, seq, scope, floor) is seen
        if unmark:
            one.unmark(sender, session, seq, scope)
            two.unmark(sender, session, seq, scope)
    for sender in range(3):
        for session in range(3):
            for scope in (None, 0, 1):
                for seq in range(41):
                    assert one.check(sender, session, seq, scope) is two.check(
                        sender, session, seq, scope
                    )


_ops = st.lists(
    st.tuples(
        st.sampled_from(["check", "mark", "admit", "unmark"]),
        st.integers(0, 3),  # sender
        st.integers(0, 3),  # session
        st.integers(0, 300),  # sequence number
        st.sampled_from([None, 0, 1, 2]),  # scope
        st.sampled_from([-1, -1, 5, 70, 200]),  # floor
    ),
    max_size=120,
)


@pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")
@FAST
@given(
    ops=_ops,
    window=st.sampled_from([1, 3, 64, 65, 130]),
    max_sessions=st.integers(1, 10),
    per_sender=st.integers(1, 4),
)
def test_the_native_guard_decides_and_evicts_as_the_pure_one(
    ops: list[tuple[str, int, int, int, int | None, int]],
    window: int,
    max_sessions: int,
    per_sender: int,
) -> None:
    """Every operation, in any order, under any bound: the same answers and windows held."""
    pure = ReplayGuard(window, max_sessions, per_sender, core="pure")
    native = ReplayGuard(window, max_sessions, per_sender, core="native")
    for op, sender, session, seq, scope, floor in ops:
        key = (f"s{sender}", b"%d" % sender), (sender + session, b"x")  # the opener's key shapes
        if op == "unmark":
            assert pure.unmark(*key, seq, scope) == native.unmark(*key, seq, scope)
        else:
            got = getattr(native, op)(*key, seq, scope, floor)
            assert got is getattr(pure, op)(*key, seq, scope, floor)
        assert native._count == pure._count
    for sender in range(4):
        for session in range(4):
            key = (f"s{sender}", b"%d" % sender), (sender + session, b"x")
            for scope in (None, 0, 1, 2):
                for seq in range(0, 301, 7):
                    assert native.check(*key, seq, scope) is pure.check(*key, seq, scope)
