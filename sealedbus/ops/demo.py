"""``sealedbus demo``: the whole flow in one process, no broker, a few seconds.

An in-process key service and an in-memory bus; a producer seals patient events, a consumer
opens them; a key rotation mid-stream; a tampered, a replayed and a misrouted envelope refused.
Exits non-zero when anything unexpected happens.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from sealedbus.brokers.memory import MemoryBus, Subscription
from sealedbus.errors import InvalidEnvelope
from sealedbus.keys.local import LocalKeyService
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealer

TOPIC = "patient-events"
ROTATION = 30.0
RETENTION = 60.0
RUN_SECONDS = 100.0  # simulated: the stream spans three rotations and one retention window
_EVENTS = ("admitted", "lab-result", "medication", "transferred", "discharged")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole flow in one process (no broker needed)")
    p.add_argument("--messages", type=int, default=2000, help="events to send (default 2000)")
    p.add_argument(
        "--show",
        type=int,
        default=6,
        metavar="N",
        help="rows of the side-by-side table (default: 6)",
    )
    p.set_defaults(func=run)


def patient_event(i: int, rng: random.Random) -> bytes:
    event = {
        "patient_id": f"P-{rng.randrange(10_000, 99_999)}",
        "event": _EVENTS[i % len(_EVENTS)],
        "ward": rng.choice(["ICU", "ER", "Cardiology", "Oncology"]),
        "seq": i,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    n = max(int(args.messages), 10)
    step = RUN_SECONDS / n  # simulated seconds per event, so any --messages sees it all
    problems: list[str] = []
    print("sealedbus demo: in-process key service + in-memory bus, no broker\n")

    t0 = time.time()
    now = [t0]  # simulated time: 50 ms per event, so keys rotate during the demo

    def clock() -> float:
        return now[0]

    ks = LocalKeyService(clock=clock)
    ks.create_topic(
        TOPIC,
        producers=["admissions-api"],
        consumers=["billing-svc"],
        rotation_period=ROTATION,
        retention=RETENTION,
    )
    ks.create_topic("lab-results", producers=["lab-api"], consumers=["billing-svc"])
    producer_keys = ks.enroll("admissions-api")
    sealer = Sealer(producer_keys, batch_size=64, clock=clock)
    opener = Opener(ks.enroll("billing-svc"), clock=clock)
    bus = MemoryBus()
    sub = bus.subscribe(TOPIC, "billing")
    print(
        f"topic {TOPIC!r}: producer admissions-api (write-only), consumer billing-svc; suite "
        f"x25519; batch signatures (N=64, 1 s linger); keys rotate every {ROTATION:.0f} s and "
        f"are destroyed {RETENTION:.0f} s later; simulated time runs {step * 1000:.0f} ms per event"
    )

    rng = random.Random(7)
    bodies = [patient_event(i, rng) for i in range(n)]
    received: list[OpenedMessage] = []
    start = time.perf_counter()
    for body in bodies:
        now[0] += step
        batch = sealer.add(
            TOPIC, body, headers={"schema": "patient-event/1"}, content_type="application/json"
        )
        if not batch and sealer.pending_since is not None and now[0] - sealer.pending_since >= 1:
            batch = sealer.flush()  # the linger an adapter runs: no batch waits over a second
        for s in batch:
            bus.publish(TOPIC, s.envelope)
        _consume(sub, opener, received)
    for s in sealer.flush():
        bus.publish(s.topic, s.envelope)
    _consume(sub, opener, received)
    elapsed = time.perf_counter() - start

    held = bus.records(TOPIC)
    switch = next((i for i, m in enumerate(received) if m.epoch), len(received))
    _table(held, received, args.show, switch)
    epochs = sorted({m.epoch for m in received})
    print(
        f"\nrotation: the producer moved through epochs {epochs} on the schedule, without a gap "
        "and without a single failed open"
    )
    if len(epochs) < 2:
        problems.append("no key rotation happened")

    if [m.body for m in received] != bodies:
        problems.append("the consumer did not receive exactly what was sent, in order")
    leaked = sum(1 for r in held for b in bodies[:50] if b[:24] in r.value)
    ids = {json.loads(b)["patient_id"].encode() for b in bodies}
    leaked += sum(1 for r in held if any(pid in r.value for pid in ids))
    print(
        f"plaintext on the broker: {leaked} of {len(held)} stored envelopes contain a patient id"
        " or event text"
    )
    if leaked:
        problems.append("plaintext found on the broker")

    print("\nattacks, each refused before any plaintext reaches the application:")
    victim = held[len(held) // 3].value
    tampered = bytearray(victim)
    tampered[-5] ^= 0x01
    _expect(opener, TOPIC, bytes(tampered), "tampered envelope (1 bit flipped)", problems)
    _expect(opener, TOPIC, victim, "replayed envelope (sent again)", problems)
    _expect(opener, "lab-results", victim, "envelope moved to topic 'lab-results'", problems)
    _expect(opener, TOPIC, b'{"patient_id":"P-00000"}', "plaintext injected on the topic", problems)

    shredded = Opener(opener.keys, clock=clock)  # a restarted consumer: no cached sessions
    _expect(
        shredded,
        TOPIC,
        held[0].value,
        f"epoch-0 envelope {now[0] - t0:.0f} s later (destroyed)",
        problems,
    )

    per_msg = Sealer(producer_keys, clock=clock)
    start = time.perf_counter()
    singles = [per_msg.seal(TOPIC, b) for b in bodies[:500]]
    fresh = Opener(opener.keys, clock=clock)
    for e in singles:
        fresh.open(TOPIC, e)
    per_msg_rate = len(singles) / (time.perf_counter() - start)
    overhead = len(held[0].value) - len(bodies[0])
    print(
        f"\nthroughput (seal + open, one thread): batch signatures {n / elapsed:,.0f} msgs/s, "
        f"per-message signatures {per_msg_rate:,.0f} msgs/s; "
        f"overhead {overhead} bytes/message at N=64 (content type and sealed headers included)"
    )
    if problems:
        print("\nUNEXPECTED: " + "; ".join(problems))
        return 1
    print(f"\nOK: {len(received)} of {n} events delivered once each; 5 attacks refused")
    return 0


def _consume(sub: Subscription, opener: Opener, received: list[OpenedMessage]) -> None:
    while records := sub.poll(timeout=0.0, max_records=1000):
        for record in records:
            received.append(opener.open(TOPIC, record.value))
            sub.ack(record)


def _table(held: list[Any], received: list[OpenedMessage], rows: int, switch: int) -> None:
    picks = sorted({*range(rows // 2), *range(max(switch - 1, 0), switch - 1 + rows - rows // 2)})
    picks = [i for i in picks if i < len(received)]
    print(
        f"\n{'#':>5}  {'the broker holds (hex)':<26} {'bytes':>5}  "
        f"{'billing-svc receives':<44} {'sender':<15} epoch"
    )
    for i in picks:
        raw, msg = held[i].value, received[i]
        print(
            f"{i:>5}  {raw[-12:].hex():<26} {len(raw):>5}  "
            f"{_clip(msg.body.decode(), 44):<44} {msg.sender or '-':<15} {msg.epoch}"
        )


def _expect(opener: Opener, topic: str, data: bytes, what: str, problems: list[str]) -> None:
    try:
        opener.open(topic, data)
    except InvalidEnvelope as exc:
        print(f"  {what:<42} -> refused: {exc.reason.value}")
        return
    problems.append(f"{what} was accepted")
    print(f"  {what:<42} -> ACCEPTED (unexpected)")
