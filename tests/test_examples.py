"""The examples run end to end, so they cannot rot.

``examples/kds_dev.sh`` sets up a development KDS in a temporary directory (on a free port, with a
fresh topic name); each broker's producer and consumer then run as separate processes, exactly as
``examples/README.md`` tells users to run them. The KDS is stopped with ``kds_dev.sh stop``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEALEDBUS = Path(sys.executable).parent / "sealedbus"
PRODUCER, CONSUMER = "admissions-api", "records-svc"
COUNT = 5
PATIENTS = [f"P-{100000 + n}" for n in range(COUNT)]
TIMEOUT = 60.0  # any one subprocess


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SEALEDBUS_* settings (the examples read them), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALEDBUS_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own scripts, fixed arguments
        args,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


@dataclass
class DevKds:
    directory: Path
    stdout: str
    env: dict[str, str]  # the exports kds_dev.sh printed

    def key(self, member: str) -> Path:
        return self.directory / f"{member}.key"

    @property
    def topic(self) -> str:
        return self.env["SEALEDBUS_TOPIC"]


def kds_dev(*args: str) -> list[str]:
    return ["bash", str(EXAMPLES / "kds_dev.sh"), *args]


@pytest.fixture(scope="module")
def dev_kds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevKds]:
    directory = tmp_path_factory.mktemp("examples") / "kds-dev"
    env = clean_env(
        KDS_PORT=str(free_port()),
        TOPIC=f"admissions-{uuid.uuid4().hex[:8]}",
        SEALEDBUS=str(SEALEDBUS),
        PYTHON=sys.executable,
    )
    try:
        stdout = ok(run(kds_dev(str(directory)), env))
        exports = dict(re.findall(r"^export (SEALEDBUS_\w+)=(\S+)$", stdout, re.MULTILINE))
        yield DevKds(directory, stdout, exports)
    finally:
        pid_file = directory / "kds.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        stopped = run(kds_dev("stop", str(directory)), env, timeout=30)
        if pid is not None and _alive(pid):  # backstop: never leave our KDS running
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"kds_dev.sh stop left the KDS running:\n{stopped.stdout}{stopped.stderr}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Background:
    """An example running in the background, its output going to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own scripts, fixed arguments
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never printed {text!r}:\n{self.output()}")
            time.sleep(0.1)

    def finish(self, timeout: float = TIMEOUT) -> str:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"did not finish within {timeout} s:\n{self.output()}")
        assert code == 0, f"exited {code}:\n{self.output()}"
        return self.output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_pair(kds: DevKds, broker: str, broker_env: dict[str, str], tmp_path: Path) -> str:
    """The consumer in the background until ready, then the producer; the consumer's output."""
    env = clean_env(**kds.env, **broker_env)
    consumer = Background(
        [
            sys.executable,
            str(EXAMPLES / f"{broker}_consumer.py"),
            "--key-file",
            str(kds.key(CONSUMER)),
            "--count",
            str(COUNT),
            "--timeout",
            "40",
        ],
        env,
        tmp_path / "consumer.log",
    )
    try:
        consumer.wait_for(f"{CONSUMER} waiting on")
        produced = ok(
            run(
                [
                    sys.executable,
                    str(EXAMPLES / f"{broker}_producer.py"),
                    "--key-file",
                    str(kds.key(PRODUCER)),
                    "--count",
                    str(COUNT),
                ],
                env,
            )
        )
        assert all(p in produced for p in PATIENTS), produced
        out = consumer.finish()
    finally:
        consumer.stop()
    got = re.findall(
        rf'^{CONSUMER} got .*"patient_id": "(P-\d+)".* from {PRODUCER} ', out, re.MULTILINE
    )
    assert sorted(got) == PATIENTS, out
    assert f"{CONSUMER} received {COUNT} event(s)" in out
    return out


# ------------------------------------------------------------------------------------------------
# no broker
# ------------------------------------------------------------------------------------------------
def test_memory_example_runs_without_a_broker(tmp_path: Path) -> None:
    out = ok(run([sys.executable, str(EXAMPLES / "memory_example.py")], clean_env(), tmp_path))
    assert out.count("billing b'customer-7'") == 3
    assert "the bus holds only envelopes" in out


def test_kds_dev_sets_up_members_and_prints_no_secrets(dev_kds: DevKds) -> None:
    assert set(dev_kds.env) == {
        "SEALEDBUS_KDS_URL",
        "SEALEDBUS_KDS_ROOT_FINGERPRINT",
        "SEALEDBUS_TOPIC",
    }
    assert dev_kds.env["SEALEDBUS_KDS_URL"].startswith("http://127.0.0.1:")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", dev_kds.env["SEALEDBUS_KDS_ROOT_FINGERPRINT"])
    for member in (PRODUCER, CONSUMER):
        assert dev_kds.key(member).stat().st_mode & 0o777 == 0o600
        assert str(dev_kds.key(member)) in dev_kds.stdout  # the commands to run name them
        assert not (dev_kds.directory / f"{member}.token").exists()  # used up, removed
    totp_seed = re.search(r"secret=(\w+)", (dev_kds.directory / "admin.totp").read_text())
    assert totp_seed is not None and totp_seed.group(1) not in dev_kds.stdout
    assert "secret" not in dev_kds.stdout.lower()


def test_missing_settings_are_named(tmp_path: Path) -> None:
    proc = run([sys.executable, str(EXAMPLES / "rabbitmq_producer.py")], clean_env(), tmp_path)
    assert proc.returncode == 2
    assert "--key-file or $SEALEDBUS_KEY_FILE is required" in proc.stderr


def test_a_wrong_root_fingerprint_is_refused(dev_kds: DevKds, tmp_path: Path) -> None:
    env = clean_env(**{**dev_kds.env, "SEALEDBUS_KDS_ROOT_FINGERPRINT": "sha256:" + "0" * 64})
    proc = run(
        [
            sys.executable,
            str(EXAMPLES / "kafka_consumer.py"),
            "--key-file",
            str(dev_kds.key(CONSUMER)),
        ],
        env,
        tmp_path,
    )
    assert proc.returncode == 1
    assert "is not the one pinned" in proc.stderr


# ------------------------------------------------------------------------------------------------
# real brokers
# ------------------------------------------------------------------------------------------------
@pytest.mark.rabbitmq
def test_rabbitmq_producer_and_consumer_processes(
    dev_kds: DevKds, amqp_url: str, tmp_path: Path
) -> None:
    import pika

    topic = dev_kds.topic
    tap = f"{topic}.tap"  # a second queue on the topic's exchange: what the broker was given
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.exchange_declare(topic, "fanout", durable=True)
        channel.queue_declare(tap, exclusive=True)
        channel.queue_bind(tap, topic)
        run_pair(dev_kds, "rabbitmq", {"SEALEDBUS_AMQP_URL": amqp_url}, tmp_path)
        held = []
        while True:
            method, props, body = channel.basic_get(tap, auto_ack=True)
            if method is None:
                break
            held.append((props, body))
        assert len(held) == COUNT
        for props, body in held:
            assert props.content_type == "application/vnd.sealedbus"
            assert props.headers is None  # the ward header travelled sealed
            assert b"admitted" not in body and b"P-1000" not in body
        channel.queue_delete(f"{topic}.{CONSUMER}")
        channel.exchange_delete(topic)
    finally:
        conn.close()


@pytest.mark.rabbitmq
def test_rabbitmq_one_process_example(amqp_url: str, tmp_path: Path) -> None:
    env = clean_env(SEALEDBUS_AMQP_URL=amqp_url)
    out = ok(run([sys.executable, str(EXAMPLES / "rabbitmq_example.py")], env, tmp_path))
    assert [line.split(" ", 1)[0] for line in out.splitlines()] == ["admissions"] * 3, out


@pytest.mark.kafka
def test_kafka_one_process_example(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = clean_env(SEALEDBUS_KAFKA_BOOTSTRAP=kafka_bootstrap)
    out = ok(run([sys.executable, str(EXAMPLES / "kafka_example.py")], env, tmp_path))
    assert [line.split(" ", 2)[:2] for line in out.splitlines()] == [["lab", "b'patient-1234'"]] * 3


@pytest.mark.kafka
def test_kafka_producer_and_consumer_processes(
    dev_kds: DevKds, kafka_bootstrap: str, tmp_path: Path
) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    topic = dev_kds.topic
    run_pair(dev_kds, "kafka", {"SEALEDBUS_KAFKA_BOOTSTRAP": kafka_bootstrap}, tmp_path)

    raw = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    try:
        partitions = [TopicPartition(topic, p) for p in raw.partitions_for_topic(topic) or ()]
        raw.assign(partitions)
        raw.seek_to_beginning()
        records = [r for _, r in zip(range(COUNT), raw, strict=False)]
    finally:
        raw.close()
    assert len(records) == COUNT
    for record in records:
        assert b"admitted" not in record.value and b"P-1000" not in record.value
        assert len(record.key) == 32 and b"P-1000" not in record.key  # an HMAC token
        assert not record.headers

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([topic, f"{topic}.dlq"])
    finally:
        admin.close()
