"""pytest plugin: real RabbitMQ, Kafka and PostgreSQL for the tests that ask for them.

Load with ``-p tests.services`` or ``pytest_plugins = ["tests.services"]`` in a conftest.

Session fixtures (each service starts lazily, on the first test that asks for it, and is stopped at
the end of the session when this session started it):

- ``rabbitmq_service``, ``amqp_url`` (``amqp://...``), ``amqp_tls`` (:class:`AmqpTls`)
- ``kafka_service``, ``kafka_bootstrap`` (``host:port``)
- ``postgres_service``, ``postgres_url`` (``postgresql://...``)

Each ``*_service`` is a :class:`Service`: ``restart()`` (or ``stop()`` then ``start()``) the broker
in the middle of a test; data (durable queues, topics, tables) survives.

Where a service comes from, first match wins:

1. the environment: ``SEALEDBUS_AMQP_URL`` (TLS: ``SEALEDBUS_AMQPS_URL``,
   ``SEALEDBUS_AMQP_CA_FILE``, optional ``SEALEDBUS_AMQP_CLIENT_CERT`` / ``_CLIENT_KEY`` /
   ``_TLS_SERVER_NAME``; ``start-rabbitmq`` prints exactly these lines),
   ``SEALEDBUS_KAFKA_BOOTSTRAP``, ``SEALEDBUS_POSTGRES_URL``; this session does not own such a
   service, so restarting it skips the test;
2. testcontainers, when a Docker engine answers a ping;
3. the native scripts in ``scripts/services/`` (run ``scripts/services/provision`` once first).

``SEALEDBUS_SERVICE_BACKEND=native`` or ``=testcontainers`` forces step 2 or 3;
``SEALEDBUS_KEEP_SERVICES=1`` leaves natively started services running after the session.
A service that cannot be started skips its tests, or fails them when ``CI=true``.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "services"


def _load_probes() -> Any:
    """scripts/services/probes.py: the one copy of the broker readiness probes."""
    spec = importlib.util.spec_from_file_location("sealedbus_service_probes", SCRIPTS / "probes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_probes = _load_probes()
amqp_answers: Callable[[str, int], bool] = _probes.amqp_answers
kafka_answers: Callable[[str, int], bool] = _probes.kafka_answers

MARKERS = {
    "rabbitmq": "needs a real RabbitMQ broker",
    "kafka": "needs a real Kafka broker",
    "postgres": "needs a real PostgreSQL server",
}
# fixture name -> marker that a test using it gets automatically
FIXTURE_MARKERS = {
    "rabbitmq_service": "rabbitmq",
    "amqp_url": "rabbitmq",
    "amqp_tls": "rabbitmq",
    "kafka_service": "kafka",
    "kafka_bootstrap": "kafka",
    "postgres_service": "postgres",
    "postgres_url": "postgres",
    "postgres_database": "postgres",
}
START_TIMEOUT = {"rabbitmq": 90.0, "kafka": 150.0, "postgres": 60.0}


class ServiceUnavailableError(Exception):
    """A service could not be started; the message carries the log tail."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(name: str, detail: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where broker tests must never skip."""
    message = f"{name} is not available, so this test cannot run: {detail}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------------------
# readiness probes: one copy, in scripts/services/probes.py, shared with the native scripts
# ------------------------------------------------------------------------------------------------
def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.25)


# ------------------------------------------------------------------------------------------------
# services
# ------------------------------------------------------------------------------------------------
class Service:
    """A running service: its URL, its other connection values, and stop/start/restart.

    ``values`` holds the ``SEALEDBUS_*`` connection variables (the same names the environment
    branch reads). ``source`` is ``"env"``, ``"testcontainers"`` or ``"native"``.
    """

    source = ""

    def __init__(self, name: str, url: str, values: dict[str, str]) -> None:
        self.name = name
        self.url = url
        self.values = values
        self.stopped = False  # by a test's stop(); the next test finds it started again

    def stop(self) -> None:
        """Stop the broker, keeping its data."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the broker again after :meth:`stop`; returns once it accepts clients."""
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def require_restartable(self) -> None:
        """Skip the calling test now when :meth:`restart` would skip it later."""

    def close(self) -> None:
        """End of session: stop what this session started."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.source} {self.url}>"


class EnvService(Service):
    """A service named by the environment; this session does not own it."""

    source = "env"

    def _not_ours(self) -> NoReturn:
        pytest.skip(f"{self.name} came from the environment; this session cannot restart it")

    def stop(self) -> None:
        self._not_ours()

    def start(self) -> None:
        self._not_ours()

    def require_restartable(self) -> None:
        self._not_ours()


class NativeService(Service):
    """A service run by ``scripts/services/start-<name>`` on this machine."""

    source = "native"

    def __init__(self, name: str) -> None:
        super().__init__(name, "", {})
        self.script = SCRIPTS / f"start-{name}"
        self.timeout = START_TIMEOUT[name] + 90  # the script's own wait, plus a first format
        self.started_here = False

    def _run(self, action: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(self.script), action]
        try:
            return subprocess.run(  # noqa: S603 - fixed argument list: our own script
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceUnavailableError(f"{shlex.join(cmd)} failed: {exc}") from exc

    def _parse(self, stdout: str) -> None:
        lines = [line for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise ServiceUnavailableError(f"{self.script.name} printed no URL")
        self.url = lines[-1].strip()
        self.values = dict(line.split("=", 1) for line in lines[:-1] if "=" in line)

    def open(self) -> None:
        """First start in this session: remember whether it was running already."""
        already = self._run("status").returncode == 0
        self.start()
        self.started_here = not already

    def start(self) -> None:
        proc = self._run("start")
        if proc.returncode != 0:
            raise ServiceUnavailableError(
                f"{self.script.relative_to(SCRIPTS.parents[1])} exited with status "
                f"{proc.returncode}\n{proc.stderr.strip()}"
            )
        self._parse(proc.stdout)
        self.stopped = False

    def stop(self) -> None:
        proc = self._run("stop")
        if proc.returncode != 0:
            pytest.fail(f"stopping {self.name} failed:\n{proc.stderr.strip()}", pytrace=False)
        self.stopped = True

    def restart(self) -> None:
        self.stop()
        try:
            self.start()
        except ServiceUnavailableError as exc:
            pytest.fail(f"{self.name} did not come back after a stop:\n{exc}", pytrace=False)

    def close(self) -> None:
        if self.started_here and os.environ.get("SEALEDBUS_KEEP_SERVICES", "") in ("", "0"):
            self._run("stop")


class ContainerService(Service):
    """A service in a Docker container started by testcontainers.

    Host ports are fixed when the container is made, so a stop/start keeps the URL.
    """

    source = "testcontainers"

    def __init__(
        self,
        name: str,
        container: Any,
        ready: Callable[[], bool],
        url: str,
        values: dict[str, str],
    ) -> None:
        super().__init__(name, url, values)
        self.container = container
        self.ready = ready

    def stop(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.container.get_wrapped_container().stop(timeout=60)
        self.stopped = True

    def start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.container.get_wrapped_container().start()
        wait_for(self.ready, START_TIMEOUT[self.name], self.name)
        self.stopped = False

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.container.stop()


@dataclass(frozen=True)
class AmqpTls:
    """Where and how to reach RabbitMQ over TLS."""

    url: str  # amqps://user:pass@host:port/vhost
    host: str
    port: int
    ca_file: Path
    server_hostname: str  # the name to verify the server certificate against
    client_cert: Path | None = None
    client_key: Path | None = None

    def ssl_context(self, *, client_cert: bool = False) -> ssl.SSLContext:
        """A verifying client context trusting the test CA, optionally presenting a client cert."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            if self.client_cert is None or self.client_key is None:
                pytest.skip("no client certificate is configured for this broker")
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------
def backend() -> str:
    chosen = os.environ.get("SEALEDBUS_SERVICE_BACKEND", "auto").strip().lower() or "auto"
    if chosen not in ("auto", "native", "testcontainers"):
        raise pytest.UsageError(
            f"SEALEDBUS_SERVICE_BACKEND={chosen!r}: use auto, native or testcontainers"
        )
    if chosen == "auto":
        return "testcontainers" if docker_answers() else "native"
    return chosen


@cache
def docker_answers() -> bool:
    """A Docker engine answers a ping (the ``docker`` binary alone proves nothing)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parts = urlsplit(host)
    if parts.scheme == "unix" or (
        parts.scheme == "tcp" and not os.environ.get("DOCKER_TLS_VERIFY")
    ):
        return _http_ping(parts.scheme, parts.path, parts.hostname, parts.port)
    return _sdk_ping()  # ssh://, TLS and the like: let the Docker SDK speak them


def _http_ping(scheme: str, path: str, hostname: str | None, port: int | None) -> bool:
    try:
        if scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = path
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (hostname or "127.0.0.1", port or 2375)
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] + b" "


def _sdk_ping() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # incl. ResourceWarnings of sockets a failed ping drops
        try:
            docker = importlib.import_module("docker")
            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # any failure here just means "no Docker"
            return False
        finally:
            gc.collect()


def _container_rabbitmq() -> ContainerService:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from testcontainers.community.rabbitmq import RabbitMqContainer

        # The test CA and certificates come from the native script (openssl, nothing started).
        certs = NativeService("rabbitmq")
        proc = certs._run("certs")
        if proc.returncode != 0:
            raise ServiceUnavailableError(f"making TLS certificates failed:\n{proc.stderr}")
        certs._parse(proc.stdout)
        tls_dir = Path(certs.values["SEALEDBUS_AMQP_CA_FILE"]).parent
        conf = tls_dir / "container-tls.conf"
        conf.write_text(
            "listeners.ssl.default = 5671\n"
            "ssl_options.cacertfile = /etc/sealedbus-tls/ca.pem\n"
            "ssl_options.certfile = /etc/sealedbus-tls/server.pem\n"
            "ssl_options.keyfile = /etc/sealedbus-tls/server.key\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )
        amqp, amqps = free_port(), free_port()
        image = os.environ.get("SEALEDBUS_RABBITMQ_IMAGE", "rabbitmq:3.13")
        container = (
            RabbitMqContainer(image)
            .with_bind_ports(5672, amqp)
            .with_bind_ports(5671, amqps)
            .with_volume_mapping(str(tls_dir), "/etc/sealedbus-tls", "ro")
            .with_volume_mapping(str(conf), "/etc/rabbitmq/conf.d/90-sealedbus-tls.conf", "ro")
        )
        container.start()
    host = "127.0.0.1"
    values = dict(certs.values)
    values["SEALEDBUS_AMQP_URL"] = f"amqp://guest:guest@{host}:{amqp}/%2F"
    values["SEALEDBUS_AMQPS_URL"] = f"amqps://guest:guest@{host}:{amqps}/%2F"
    service = ContainerService(
        "rabbitmq",
        container,
        lambda: amqp_answers(host, amqp) and port_open(host, amqps),
        values["SEALEDBUS_AMQP_URL"],
        values,
    )
    wait_for(service.ready, START_TIMEOUT["rabbitmq"], "rabbitmq")
    return service


def _container_kafka() -> ContainerService:
    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from testcontainers.community.kafka import KafkaContainer

        image = os.environ.get("SEALEDBUS_KAFKA_IMAGE")
        kafka = KafkaContainer(image) if image else KafkaContainer()
        container = kafka.with_kraft().with_bind_ports(kafka.port, port)
        container.start(timeout=int(START_TIMEOUT["kafka"]))
        bootstrap = str(container.get_bootstrap_server())
    host, _, port_text = bootstrap.rpartition(":")
    return ContainerService(
        "kafka",
        container,
        lambda: kafka_answers(host, int(port_text)),
        bootstrap,
        {"SEALEDBUS_KAFKA_BOOTSTRAP": bootstrap},
    )


def _container_postgres() -> ContainerService:
    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from testcontainers.community.postgres import PostgresContainer

        image = os.environ.get("SEALEDBUS_POSTGRES_IMAGE", "postgres:16-alpine")
        container = PostgresContainer(
            image, username="sealedbus", password="sealedbus", dbname="sealedbus"
        ).with_bind_ports(5432, port)
        container.start()
        host = str(container.get_container_host_ip())
    url = f"postgresql://sealedbus:sealedbus@{host}:{port}/sealedbus"
    return ContainerService(
        "postgres",
        container,
        lambda: port_open(host, port),
        url,
        {"SEALEDBUS_POSTGRES_URL": url},
    )


CONTAINERS: dict[str, Callable[[], ContainerService]] = {
    "rabbitmq": _container_rabbitmq,
    "kafka": _container_kafka,
    "postgres": _container_postgres,
}
ACTIVE: list[Service] = []  # the services of this session, for _restart_stopped_services
ENV_URL = {
    "rabbitmq": "SEALEDBUS_AMQP_URL",
    "kafka": "SEALEDBUS_KAFKA_BOOTSTRAP",
    "postgres": "SEALEDBUS_POSTGRES_URL",
}


def provide(name: str) -> Iterator[Service]:
    """Body of the ``*_service`` fixtures: environment, then testcontainers, then native."""
    url = os.environ.get(ENV_URL[name], "").strip()
    if url:
        values = {k: v for k, v in os.environ.items() if k.startswith("SEALEDBUS_")}
        yield EnvService(name, url, values)
        return
    chosen = backend()
    service: Service | None = None
    error = ""
    with warnings.catch_warnings():
        # A failed Docker call leaves sockets behind; their ResourceWarnings would surface as
        # errors in some later, unrelated test.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            if chosen == "testcontainers":
                service = CONTAINERS[name]()
            else:
                native = NativeService(name)
                native.open()
                service = native
        except ServiceUnavailableError as exc:
            error = f"({chosen}) {exc}"
        except Exception as exc:  # Docker and testcontainers raise many kinds
            error = f"({chosen}) {type(exc).__name__}: {exc}"
        gc.collect()
    if service is None:
        unavailable(name, error)
    ACTIVE.append(service)
    try:
        yield service
    finally:
        ACTIVE.remove(service)
        service.close()


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def rabbitmq_service() -> Iterator[Service]:
    yield from provide("rabbitmq")


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_service: Service) -> str:
    return rabbitmq_service.url


@pytest.fixture(scope="session")
def amqp_tls(rabbitmq_service: Service) -> AmqpTls:
    values = rabbitmq_service.values
    url = values.get("SEALEDBUS_AMQPS_URL", "")
    ca_file = values.get("SEALEDBUS_AMQP_CA_FILE", "")
    if not url or not ca_file:
        unavailable(
            "RabbitMQ over TLS",
            "set SEALEDBUS_AMQPS_URL and SEALEDBUS_AMQP_CA_FILE beside SEALEDBUS_AMQP_URL",
        )
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    cert = values.get("SEALEDBUS_AMQP_CLIENT_CERT")
    key = values.get("SEALEDBUS_AMQP_CLIENT_KEY")
    return AmqpTls(
        url=url,
        host=host,
        port=parts.port or 5671,
        ca_file=Path(ca_file),
        server_hostname=values.get("SEALEDBUS_AMQP_TLS_SERVER_NAME") or host,
        client_cert=Path(cert) if cert else None,
        client_key=Path(key) if key else None,
    )


@pytest.fixture(scope="session")
def kafka_service() -> Iterator[Service]:
    yield from provide("kafka")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: Service) -> str:
    return kafka_service.url


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[Service]:
    yield from provide("postgres")


@pytest.fixture(scope="session")
def postgres_url(postgres_service: Service) -> str:
    return postgres_service.url


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine

    from sealedbus.kds.store import database_url

    name = f"test_{os.urandom(6).hex()}"
    admin = create_engine(database_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(autouse=True)
def _restart_stopped_services() -> Iterator[None]:
    """A test that stopped a broker and failed before starting it leaves it running again."""
    yield
    for service in ACTIVE:
        if service.stopped:
            try:
                service.start()
            except ServiceUnavailableError as exc:
                pytest.fail(f"{service.name} did not start again after a test:\n{exc}")


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a service fixture get its marker, so ``-m "not kafka"`` leaves them out."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        for marker in sorted({FIXTURE_MARKERS[n] for n in names if n in FIXTURE_MARKERS}):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)
