"""Run RabbitMQ, Kafka and PostgreSQL natively on loopback for sealedbus's tests.

Python standard library only; the start-* and stop-all scripts beside this file are thin entry
points. Every service lives in its own folder under the state directory (``--state-dir``, else
``$SEALEDBUS_SERVICES_DIR``, else ``.services/`` in the repository), keeps its data and logs there,
listens on 127.0.0.1 only, and survives a stop/start with its data.

Actions (``start-<service> ACTION``):
  start    (default) start unless running, wait until ready, print the connection details
  stop     stop, keeping the data
  restart  stop then start
  status   print the connection details and exit 0 when running, exit 3 when not
  logs     print the tail of the service's logs
  certs    (rabbitmq only) make the test CA and certificates without starting anything

Output of start/status on stdout: ``KEY=VALUE`` lines, then the connection URL as the last line.
Progress and errors go to stderr. Exit status 1 on failure, with the tail of the logs on stderr.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from probes import amqp_answers, kafka_answers

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
NOT_RUNNING = 3


class ServiceError(Exception):
    """A service failed to start or stop; ``logs`` are the files whose tail explains why."""

    def __init__(self, message: str, logs: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.logs = list(logs)


def say(message: str) -> None:
    print(f"sealedbus-services: {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(f"{name}={raw!r} is not an integer") from None


def state_root(explicit: str | None) -> Path:
    root = Path(explicit or os.environ.get("SEALEDBUS_SERVICES_DIR") or REPO / ".services")
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# state of scripts/services/start-*; never committed\n*\n")
    return root


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free(ports: dict[str, int], hint: str) -> None:
    for what, port in ports.items():
        if port_open(port):
            raise ServiceError(
                f"port {port} ({what}) on {LOOPBACK} is already taken by another process; "
                f"stop it or set {hint}"
            )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def terminate(pid: int, timeout: float, what: str) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    say(f"{what} (pid {pid}) ignored SIGTERM for {timeout:.0f} s; killing it")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not pid_alive(pid):
            return
        time.sleep(0.1)


def is_root() -> bool:
    return os.geteuid() == 0


def as_user(user: str | None) -> list[str]:
    """Command prefix that runs the rest as ``user`` (only when we are root)."""
    if user is None or not is_root():
        return []
    return ["runuser", "-u", user, "--"]


def chown_tree(path: Path, user: str | None) -> None:
    if user is None or not is_root():
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def run(
    cmd: Sequence[str],
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> str:
    """Run a short command; its output is appended to ``log``; failure raises with that log."""
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argument lists built in this module
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{what} failed: {exc}", [log]) from exc
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed with exit status {proc.returncode}", [log])
    return proc.stdout


class Service:
    name = ""
    user: str | None = None  # the account the server runs as when we are root
    port_hint = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Resolved, so that a server account that cannot pass through the state directory still
        # reaches its files when the folder was relocated (see ensure_dir).
        link = root / self.name
        self.dir = link.resolve() if link.is_symlink() else link

    # -- to implement -----------------------------------------------------------------------
    def running(self) -> bool:
        raise NotImplementedError

    def _start(self, timeout: float) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def outputs(self) -> list[tuple[str, str]]:
        """``KEY=VALUE`` pairs to print; the first value is printed again, last, as the URL."""
        raise NotImplementedError

    def logs(self) -> list[Path]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        with (self.root / f".{self.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ensure_dir(self) -> None:
        """Create the service folder, reachable by the account the server runs as.

        When that account cannot reach the state directory (a checkout under a private home,
        say), the folder is made under /var/tmp instead and linked from the state directory.
        """
        link = self.root / self.name
        if self.dir.is_dir():
            return
        if link.is_symlink():  # dangling link: the /var/tmp folder was cleaned away
            link.unlink()
        if self.user is not None and is_root() and not self._user_can_reach(self.root):
            real = Path(tempfile.mkdtemp(prefix=f"sealedbus-{self.name}-", dir="/var/tmp"))
            os.chmod(real, 0o755)  # noqa: S103 - holds test data only; the owner is set below
            link.symlink_to(real)
            say(f"{self.user} cannot reach {self.root}; keeping {self.name} state in {real}")
            type(self).__init__(self, self.root)  # derive every path from the real folder
        else:
            link.mkdir(parents=True)
        chown_tree(self.dir, self.user)

    def _user_can_reach(self, path: Path) -> bool:
        if self.user is None:
            return True
        probe = subprocess.run(  # noqa: S603 - fixed argument list
            [*as_user(self.user), "test", "-x", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def start(self, timeout: float) -> None:
        with self.locked():
            if self.running():
                say(f"{self.name} is already running")
                return
            began = time.monotonic()
            self.ensure_dir()
            self._start(timeout)
            say(f"{self.name} ready after {time.monotonic() - began:.1f} s")

    def stop(self) -> None:
        with self.locked():
            if not self.dir.exists():
                return
            began = time.monotonic()
            was_running = self.running()
            self._stop()
            if was_running:
                say(f"{self.name} stopped after {time.monotonic() - began:.1f} s")

    def print_outputs(self) -> None:
        pairs = self.outputs()
        for key, value in pairs:
            print(f"{key}={value}")
        print(pairs[0][1])

    def wait_until(
        self,
        ready: Callable[[], bool],
        timeout: float,
        proc: subprocess.Popen[bytes] | None = None,
        what: str = "ready",
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with status {proc.returncode} before it was {what}",
                    self.logs(),
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} was not {what} within {timeout:.0f} s", self.logs()
                )
            time.sleep(0.25)


# ------------------------------------------------------------------------------------------
# RabbitMQ
# ------------------------------------------------------------------------------------------
class RabbitMQ(Service):
    name = "rabbitmq"
    user = "rabbitmq"
    port_hint = "SEALEDBUS_RABBITMQ_PORT / _TLS_PORT / _DIST_PORT"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.amqp_port = env_int("SEALEDBUS_RABBITMQ_PORT", 25674)
        self.amqps_port = env_int("SEALEDBUS_RABBITMQ_TLS_PORT", 25675)
        self.dist_port = env_int("SEALEDBUS_RABBITMQ_DIST_PORT", 25676)
        self.epmd_port = env_int("SEALEDBUS_RABBITMQ_EPMD_PORT", 24369)
        self.nodename = os.environ.get("SEALEDBUS_RABBITMQ_NODENAME", "rabbit@localhost")
        self.tls = self.dir / "tls"
        self.pid_file = self.dir / "rabbit.pid"  # the Erlang VM's pid, written by RabbitMQ
        self.log_dir = self.dir / "log"
        self.console_log = self.log_dir / "console.log"

    def server_binary(self) -> str:
        explicit = os.environ.get("SEALEDBUS_RABBITMQ_SERVER")
        if explicit:
            return explicit
        debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # bypasses Debian's su wrapper
        if debian.exists():
            return str(debian)
        found = shutil.which("rabbitmq-server")
        if not found:
            raise ServiceError("rabbitmq-server not found; run scripts/services/provision")
        return found

    def logs(self) -> list[Path]:
        return [self.log_dir / "rabbit.log", self.console_log]

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        if pid is None or not pid_alive(pid):
            return False
        try:
            return "beam" in Path(f"/proc/{pid}/comm").read_text()
        except OSError:
            return False

    def outputs(self) -> list[tuple[str, str]]:
        auth = "guest:guest"
        return [
            ("SEALEDBUS_AMQP_URL", f"amqp://{auth}@{LOOPBACK}:{self.amqp_port}/%2F"),
            ("SEALEDBUS_AMQPS_URL", f"amqps://{auth}@{LOOPBACK}:{self.amqps_port}/%2F"),
            ("SEALEDBUS_AMQP_CA_FILE", str(self.tls / "ca.pem")),
            ("SEALEDBUS_AMQP_CLIENT_CERT", str(self.tls / "client.pem")),
            ("SEALEDBUS_AMQP_CLIENT_KEY", str(self.tls / "client.key")),
            ("SEALEDBUS_AMQP_TLS_SERVER_NAME", "localhost"),
        ]

    def env(self) -> dict[str, str]:
        bind = "-kernel inet_dist_use_interface {127,0,0,1}"
        d = self.dir
        return {
            "HOME": str(d),  # the Erlang cookie lives here, private to this instance
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_LOGS": str(self.log_dir / "rabbit.log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": bind,
            "RABBITMQ_CTL_ERL_ARGS": bind,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
        }

    def write_certs(self) -> None:
        """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
        if (self.tls / "client.pem").exists():
            return
        self.tls.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "openssl.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cnf = self.tls / "openssl.cnf"
        cnf.write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
            "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
            "subjectKeyIdentifier = hash\n"
            "[server]\nbasicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
            "[client]\nbasicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage = clientAuth\n"
            "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
        )
        t = self.tls

        def ossl(*args: str) -> None:
            run(["openssl", *args], log, "openssl " + args[0])

        for name in ("ca", "server", "client"):
            ossl(
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                str(t / f"{name}.key"),
            )
        ossl(
            "req",
            "-x509",
            "-new",
            "-config",
            str(cnf),
            "-extensions",
            "ca",
            "-days",
            "3650",
            "-key",
            str(t / "ca.key"),
            "-subj",
            "/CN=sealedbus test CA",
            "-out",
            str(t / "ca.pem"),
        )
        for name, cn in (("server", "localhost"), ("client", "sealedbus-test-client")):
            csr = t / f"{name}.csr"
            ossl(
                "req",
                "-new",
                "-config",
                str(cnf),
                "-key",
                str(t / f"{name}.key"),
                "-subj",
                f"/CN={cn}",
                "-out",
                str(csr),
            )
            ossl(
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(t / "ca.pem"),
                "-CAkey",
                str(t / "ca.key"),
                "-set_serial",
                f"0x{uuid.uuid4().hex}",
                "-days",
                "3650",
                "-extfile",
                str(cnf),
                "-extensions",
                name,
                "-out",
                str(t / f"{name}.pem"),
            )
            csr.unlink()
        # Test material only: keys readable so that a client running as another user can load
        # the client key; the CA key is not needed after this and is removed.
        (t / "ca.key").unlink()
        for path in t.iterdir():
            path.chmod(0o644)

    def write_config(self) -> None:
        d = self.dir
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {LOOPBACK}:{self.amqp_port}\n"
            f"listeners.ssl.1 = {LOOPBACK}:{self.amqps_port}\n"
            f"ssl_options.cacertfile = {self.tls / 'ca.pem'}\n"
            f"ssl_options.certfile = {self.tls / 'server.pem'}\n"
            f"ssl_options.keyfile = {self.tls / 'server.key'}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            "ssl_options.versions.1 = tlsv1.3\n"
            "ssl_options.versions.2 = tlsv1.2\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")

    def amqp_ready(self) -> bool:
        """The AMQP listener answers a protocol header, and the TLS listener is open."""
        return amqp_answers(LOOPBACK, self.amqp_port) and port_open(self.amqps_port)

    def _start(self, timeout: float) -> None:
        require_free(
            {"AMQP": self.amqp_port, "AMQPS": self.amqps_port, "distribution": self.dist_port},
            self.port_hint,
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.write_certs()
        self.write_config()
        self.pid_file.unlink(missing_ok=True)
        chown_tree(self.dir, self.user)
        env_args = [f"{k}={v}" for k, v in self.env().items()]
        cmd = [*as_user(self.user), "env", *env_args, self.server_binary()]
        with self.console_log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                cmd,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_until(self.amqp_ready, timeout, proc, "accepting AMQP connections")
        except ServiceError:
            self._kill_after_failure(proc)
            raise

    def _kill_after_failure(self, proc: subprocess.Popen[bytes]) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None:
            terminate(pid, 20, "rabbitmq")
        if proc.poll() is None:
            terminate(proc.pid, 10, "rabbitmq launcher")
        self._stop_epmd()

    def _stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None and self.running():
            terminate(pid, 60, "rabbitmq")  # the Erlang VM stops the broker cleanly on SIGTERM
        self.pid_file.unlink(missing_ok=True)
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not port_open(self.epmd_port) or not Path(epmd).exists():
            return
        env = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port))
        subprocess.run(  # noqa: S603 - fixed argument list
            [epmd, "-kill"], env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
        )


# ------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------
class Kafka(Service):
    name = "kafka"
    port_hint = "SEALEDBUS_KAFKA_PORT / SEALEDBUS_KAFKA_CONTROLLER_PORT"
    ready_line = "Kafka Server started"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.port = env_int("SEALEDBUS_KAFKA_PORT", 29092)
        self.controller_port = env_int("SEALEDBUS_KAFKA_CONTROLLER_PORT", 29093)
        self.heap = os.environ.get("SEALEDBUS_KAFKA_HEAP", "512m")
        cache = os.environ.get("SEALEDBUS_CACHE") or str(Path.home() / ".cache" / "sealedbus")
        self.lib = Path(os.environ.get("SEALEDBUS_KAFKA_LIB") or Path(cache) / "kafka-lib")
        self.data = self.dir / "data"
        self.log = self.dir / "kafka.log"
        self.pid_file = self.dir / "kafka.pid"
        self.properties = self.dir / "server.properties"
        self.log4j = self.dir / "log4j2.properties"
        self.log_offset = 0  # where this start's part of the log begins

    def logs(self) -> list[Path]:
        return [self.log]

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        if pid is None or not pid_alive(pid):
            return False
        try:
            return str(self.properties) in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        except OSError:
            return False

    def outputs(self) -> list[tuple[str, str]]:
        return [("SEALEDBUS_KAFKA_BOOTSTRAP", f"{LOOPBACK}:{self.port}")]

    def java(self) -> str:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
        found = shutil.which("java")
        if not found:
            raise ServiceError("java not found; run scripts/services/provision")
        return found

    def classpath(self) -> str:
        if not (self.lib / ".complete").exists() or not list(self.lib.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"no Kafka jars in {self.lib}; run scripts/services/provision")
        return str(self.lib / "*")

    def write_config(self) -> None:
        self.properties.write_text(
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@{LOOPBACK}:{self.controller_port}\n"
            f"listeners=PLAINTEXT://{LOOPBACK}:{self.port},"
            f"CONTROLLER://{LOOPBACK}:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{self.port}\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={self.data}\n"
            "num.partitions=1\n"
            "default.replication.factor=1\n"
            "min.insync.replicas=1\n"
            "auto.create.topics.enable=true\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "transaction.state.log.num.partitions=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            "num.network.threads=2\n"
            "num.io.threads=4\n"
            "num.recovery.threads.per.data.dir=1\n"
        )
        self.log4j.write_text(
            "status = warn\n"
            "name = sealedbus-kafka\n"
            "appender.out.type = Console\n"
            "appender.out.name = OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.out.ref = OUT\n"
            # the one INFO line the start script waits for, "Kafka Server started"
            "logger.server.name = kafka.server.KafkaRaftServer\n"
            "logger.server.level = INFO\n"
        )

    def jvm(self, heap: str) -> list[str]:
        return [
            self.java(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            self.classpath(),
        ]

    def format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        while True:  # URL-safe base64 of 16 random bytes; one that starts with "-" reads as a flag
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):
                break
        say(f"formatting Kafka storage (cluster id {cluster_id})")
        run(
            [
                *self.jvm("256m"),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties),
            ],
            self.log,
            "kafka-storage format",
            timeout=180,
        )

    def api_versions_ok(self) -> bool:
        return kafka_answers(LOOPBACK, self.port)

    def log_says_started(self) -> bool:
        try:
            with self.log.open("rb") as fh:
                fh.seek(self.log_offset)
                return self.ready_line.encode() in fh.read()
        except OSError:
            return False

    def _start(self, timeout: float) -> None:
        require_free({"client": self.port, "controller": self.controller_port}, self.port_hint)
        self.write_config()
        self.format_storage()
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        cmd = [*self.jvm(self.heap), "kafka.Kafka", str(self.properties)]
        with self.log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                cmd,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self.wait_until(self.api_versions_ok, timeout, proc, "answering requests")
            if not self.log_says_started():
                say(f"warning: the broker answers but its log lacks {self.ready_line!r}")
        except ServiceError:
            terminate(proc.pid, 20, "kafka")
            self.pid_file.unlink(missing_ok=True)
            raise

    def _stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid is not None and self.running():
            terminate(pid, 90, "kafka")
        self.pid_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------
class Postgres(Service):
    name = "postgres"
    user = "postgres"
    port_hint = "SEALEDBUS_POSTGRES_PORT"
    role = "sealedbus"
    password = "sealedbus"  # noqa: S105 - a throwaway test cluster on loopback
    database = "sealedbus"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.port = env_int("SEALEDBUS_POSTGRES_PORT", 25432)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.setup_log = self.dir / "setup.log"

    def bin(self) -> Path:
        explicit = os.environ.get("SEALEDBUS_PG_BIN")
        if explicit:
            return Path(explicit)
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        if found:
            return found[-1].parent
        initdb = shutil.which("initdb")
        if initdb:
            return Path(initdb).parent
        raise ServiceError("PostgreSQL's initdb not found; run scripts/services/provision")

    @property
    def socket_dir(self) -> Path:
        # A Unix socket path is limited to 107 bytes; fall back to /tmp for long state paths.
        here = self.dir / "run"
        if len(str(here.resolve() if here.exists() else here)) <= 80:
            return here
        return Path(tempfile.gettempdir()) / f"sealedbus-pg-{os.getuid()}-{self.port}"

    def logs(self) -> list[Path]:
        return [self.log, self.setup_log]

    def running(self) -> bool:
        pid = read_pid(self.data / "postmaster.pid")
        return pid is not None and pid_alive(pid)

    def outputs(self) -> list[tuple[str, str]]:
        hostport = f"{LOOPBACK}:{self.port}"
        return [
            (
                "SEALEDBUS_POSTGRES_URL",
                f"postgresql://{self.role}:{self.password}@{hostport}/{self.database}",
            ),
            ("SEALEDBUS_POSTGRES_ADMIN_URL", f"postgresql://postgres:postgres@{hostport}/postgres"),
        ]

    def pg(self, tool: str, *args: str, what: str | None = None) -> str:
        return run(
            [*as_user(self.user), str(self.bin() / tool), *args],
            self.setup_log,
            what or tool,
            timeout=180,
        )

    def write_config(self) -> None:
        (self.data / "sealedbus.conf").write_text(
            f"listen_addresses = '{LOOPBACK}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "max_connections = 200\n"
            # a disposable test cluster: durability traded for speed
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "log_min_messages = warning\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        conf = self.data / "postgresql.conf"
        if "include_if_exists = 'sealedbus.conf'" not in conf.read_text():
            with conf.open("a") as fh:
                fh.write("\ninclude_if_exists = 'sealedbus.conf'\n")

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.pg(
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
            what="psql",
        )

    def _start(self, timeout: float) -> None:
        require_free({"postgres": self.port}, self.port_hint)
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)  # a half-made cluster from an interrupted initdb
            say("initdb")
            self.pg(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            )
        self.write_config()
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        chown_tree(self.dir, self.user)
        chown_tree(sock, self.user)
        self.pg(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(timeout)),
            "-s",
        )
        # role, password and database are this class's constants, not outside input
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.role}'").strip()  # noqa: S608
        if not exists:
            self.psql(
                f"CREATE ROLE {self.role} LOGIN CREATEDB PASSWORD '{self.password}';"
                "ALTER ROLE postgres PASSWORD 'postgres';"
            )
        sql = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"  # noqa: S608
        exists = self.psql(sql).strip()
        if not exists:
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.role}")

    def _stop(self) -> None:
        if self.running():
            self.pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "-s")


SERVICES: dict[str, type[Service]] = {"rabbitmq": RabbitMQ, "kafka": Kafka, "postgres": Postgres}
DEFAULT_TIMEOUT = {"rabbitmq": 90.0, "kafka": 150.0, "postgres": 60.0}


def fail(service: Service | None, exc: ServiceError) -> int:
    say(f"ERROR: {exc}")
    for path in exc.logs:
        if path.exists():
            print(f"--- last lines of {path} ---", file=sys.stderr)
            print(tail(path), file=sys.stderr)
    if service is not None and not exc.logs:
        say(f"logs: {', '.join(str(p) for p in service.logs())}")
    return 1


def main(name: str, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"start-{name}",
        description=f"Start, stop or query the native {name} test service on 127.0.0.1.",
        epilog="The connection URL is the last line printed on stdout.",
    )
    parser.add_argument(
        "action",
        nargs="?",
        default="start",
        choices=["start", "stop", "restart", "status", "logs", "certs"],
    )
    parser.add_argument(
        "--state-dir", help="state folder (default $SEALEDBUS_SERVICES_DIR or <repo>/.services)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds to wait for readiness (default {DEFAULT_TIMEOUT[name]:.0f}, "
        f"or $SEALEDBUS_{name.upper()}_START_TIMEOUT)",
    )
    args = parser.parse_args(argv)
    service: Service | None = None
    try:
        timeout = args.timeout or float(
            env_int(f"SEALEDBUS_{name.upper()}_START_TIMEOUT", int(DEFAULT_TIMEOUT[name]))
        )
        service = SERVICES[name](state_root(args.state_dir))
        if args.action in ("stop", "restart"):
            service.stop()
        if args.action in ("start", "restart"):
            service.start(timeout)
        if args.action == "status" and not service.running():
            say(f"{name} is not running")
            return NOT_RUNNING
        if args.action == "certs":
            if not isinstance(service, RabbitMQ):
                raise ServiceError("only start-rabbitmq has the certs action")
            with service.locked():
                service.ensure_dir()
                service.write_certs()
                chown_tree(service.dir, service.user)
        if args.action == "logs":
            for path in service.logs():
                if path.exists():
                    print(f"--- {path} ---\n{tail(path)}")
            return 0
        if args.action != "stop":
            service.print_outputs()
    except ServiceError as exc:
        return fail(service, exc)
    except KeyboardInterrupt:
        return 130
    return 0


def stop_all(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stop-all", description="Stop every native test service, keeping their data."
    )
    parser.add_argument("--state-dir", help="state folder (default as for start-*)")
    args = parser.parse_args(argv)
    root = state_root(args.state_dir)
    status = 0
    for name in ("kafka", "rabbitmq", "postgres"):
        service = SERVICES[name](root)
        try:
            service.stop()
        except ServiceError as exc:
            status = fail(service, exc)
    return status
