"""Output of the throughput benchmark: ``latest.json``, ``latest.md``, ``throughput.png`` and
``latency.png`` (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

import json
import os
from array import array
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from cryptography.fernet import Fernet

from sealedbus import LocalKeyService, Sealer

from .endpoints import BATCH_SIZE, MODES

TRANSPORT_NAMES = {
    "memory": "in-memory bus",
    "rabbitmq": "RabbitMQ (pika)",
    "kafka": "Kafka (kafka-python)",
}


@cache
def overhead(mode: str, size: int) -> float:
    """Mean envelope bytes beyond the payload (batch: over one full batch of BATCH_SIZE)."""
    if mode == "plain":
        return 0
    if mode == "fernet":  # base64 of version, time, IV, AES-CBC padding and HMAC
        return len(Fernet(Fernet.generate_key()).encrypt(bytes(size))) - size
    ks = LocalKeyService()
    ks.create_topic("overhead", producers=["p"])
    sealer = Sealer(ks.enroll("p"), batch_size=BATCH_SIZE)
    body = os.urandom(size)
    if mode == "sealed-message":
        return len(sealer.seal("overhead", body)) - size
    batch = [s.envelope for _ in range(BATCH_SIZE) for s in sealer.add("overhead", body)]
    return round(sum(len(e) for e in batch) / len(batch) - size, 1)


def markdown(result: dict[str, Any]) -> str:
    h = result["header"]
    m = h["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; "
        f"Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in h["versions"].items())
        + f". {h['mode']} run, {h['rounds']} round(s), {h['started_at']}.",
        "",
        "| transport | payload | mode | msgs/s end to end (min-max) | MB/s | ratio (min-max) | "
        "produce msgs/s (ratio) | consume msgs/s (ratio) | p50 ms | p99 ms | "
        "CPU µs/msg producer | CPU µs/msg consumer | overhead B |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['transport']} | {r['payload_bytes']} | {r['mode']} | "
            f"{r['msgs_per_s']:,.0f} ({r['msgs_per_s_min']:,.0f}-{r['msgs_per_s_max']:,.0f}) | "
            f"{r['mb_per_s']:.1f} | {r['ratio_to_plain']:.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
            f"{r['produce_msgs_per_s']:,.0f} ({r['produce_ratio_to_plain']:.2f}) | "
            f"{r['consume_msgs_per_s']:,.0f} ({r['consume_ratio_to_plain']:.2f}) | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['producer_cpu_us_per_msg']:.1f} | "
            f"{r['consumer_cpu_us_per_msg']:.1f} | {r['overhead_bytes']:g} |"
        )
    return "\n".join(lines) + "\n"


def write(
    result: dict[str, Any], *, samples_latency: dict[tuple[str, int, str], array[int]], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "latest.md").write_text(markdown(result))
    _plots(result, samples_latency, out)


def _plots(
    result: dict[str, Any], latency: dict[tuple[str, int, str], array[int]], out: Path
) -> None:
    rows = result["rows"]
    transports = list(dict.fromkeys(r["transport"] for r in rows))
    sizes = sorted({r["payload_bytes"] for r in rows})
    machine = result["header"]["machine"]
    note = f"{machine['cpu']}, {machine['cores']} cores; median of {result['header']['rounds']}"

    fig, axes = plt.subplots(1, len(transports), figsize=(5 * len(transports), 4), squeeze=False)
    width = 0.8 / len(MODES)
    for ax, transport in zip(axes[0], transports, strict=True):
        for i, mode in enumerate(MODES):
            got = {
                r["payload_bytes"]: r
                for r in rows
                if r["transport"] == transport and r["mode"] == mode
            }
            xs = [j + (i - (len(MODES) - 1) / 2) * width for j, s in enumerate(sizes) if s in got]
            ys = [got[s]["msgs_per_s"] for s in sizes if s in got]
            err = [
                [got[s]["msgs_per_s"] - got[s]["msgs_per_s_min"] for s in sizes if s in got],
                [got[s]["msgs_per_s_max"] - got[s]["msgs_per_s"] for s in sizes if s in got],
            ]
            ax.bar(xs, ys, width, yerr=err, capsize=2, label=mode)
        ax.set_xticks(
            range(len(sizes)), [f"{s} B" if s < 1024 else f"{s // 1024} KB" for s in sizes]
        )
        ax.set_title(TRANSPORT_NAMES.get(transport, transport))
        ax.set_xlabel("payload")
        ax.set_ylabel("messages/s, end to end")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"Throughput, plaintext vs sealed ({note}, min-max bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    size = 1024 if 1024 in sizes else sizes[len(sizes) // 2]
    fig, axes = plt.subplots(1, len(transports), figsize=(5 * len(transports), 4), squeeze=False)
    rate = result["header"]["latency_phase"]["offered_msgs_per_s"]
    for ax, transport in zip(axes[0], transports, strict=True):
        for mode in MODES:
            values = sorted(v / 1e6 for v in latency.get((transport, size, mode), ()))
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, label=mode)
        ax.set_xscale("log")
        ax.set_title(TRANSPORT_NAMES.get(transport, transport))
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("fraction of messages")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(
        f"Latency distribution, {size} B payloads at {rate:,.0f} msgs/s offered ({note})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
