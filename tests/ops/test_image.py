"""The KDS container image, built here without a registry (``scripts/ops/image``: mmdebstrap +
podman import + buildah bud) and run with ``buildah run --isolation chroot`` on loopback
(``podman run`` cannot set rlimits in this sandbox): init, serve, /healthz, /readyz, /metrics, the
HEALTHCHECK command, one enrollment and a producer->consumer round trip against it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sealedbus import Opener, Sealer
from tests.kds._processes import free_port
from tests.kds._processes import init as host_init

from ._stack import set_up_members
from ._tools import CHART, ROOT, run, tool

pytestmark = [pytest.mark.ops, pytest.mark.slow]

CONTAINERS = ROOT / "scripts" / "ops" / "containers"
DATA = "/var/lib/sealedbus/data"


def containers(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(CONTAINERS, *args, check=check, timeout=300)


@pytest.fixture(scope="module")
def image() -> str:
    for name in ("buildah", "podman", "mmdebstrap"):
        tool(name)
    start = time.monotonic()
    built = run(ROOT / "scripts" / "ops" / "image", timeout=1800)
    name = built.stdout.strip().splitlines()[-1]
    size = int(containers("podman", "image", "inspect", "--format", "{{.Size}}", name).stdout)
    print(f"\nimage {name}: {size / 1e6:.0f} MB, built in {time.monotonic() - start:.0f} s")
    print(built.stderr)
    return name


@pytest.fixture
def container(image: str) -> Iterator[str]:
    name = containers("buildah", "from", "--quiet", image).stdout.strip()
    try:
        yield name
    finally:
        containers("buildah", "rm", name, check=False)


def in_container(
    container: str,
    data: Path,
    *command: str,
    env: dict[str, str] | None = None,
    mounts: dict[Path, str] | None = None,
) -> list[str]:
    args = [str(CONTAINERS), "buildah", "run", "--isolation", "chroot", "-v", f"{data}:{DATA}"]
    for host, inside in (mounts or {}).items():
        args += ["-v", f"{host}:{inside}"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    return [*args, container, "--", *command]


def kds_pids(session: int) -> list[int]:
    """The ``sealedbus kds serve`` processes in the session ``buildah run`` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[3]) == session and b"serve" in cmdline and b"buildah" not in cmdline[0]:
            found.append(int(stat.parent.name))
    return found


def test_image_metadata(image: str) -> None:
    config = json.loads(containers("buildah", "inspect", "--type", "image", image).stdout)
    docker = config["Docker"]["config"]
    assert docker["User"] == "10001:10001"  # fixed, non-root
    assert docker["Entrypoint"] == ["/opt/sealedbus/bin/sealedbus", "kds", "serve"]
    assert docker["Healthcheck"]["Test"][0] == "CMD"
    assert "/usr/local/lib/sealedbus/healthcheck.py" in docker["Healthcheck"]["Test"]


def test_runtime_has_the_kds_extra_only_and_no_compiler(container: str, tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, shutil\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'psycopg', 'httpx',"
        " 'pika', 'kafka', 'matplotlib', 'pytest', 'pip') if u.find_spec(m)))\n"
        "print([c for c in ('gcc', 'cc', 'make') if shutil.which(c)])\n"
    )
    out = run(*in_container(container, tmp_path, "/opt/sealedbus/bin/python", "-c", probe))
    found, compilers = out.stdout.strip().splitlines()
    assert found == "['fastapi', 'httpx', 'psycopg', 'sqlalchemy', 'uvicorn']"
    assert compilers == "[]"


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)


def stop(process: subprocess.Popen[bytes]) -> None:
    for pid in kds_pids(process.pid):  # buildah would SIGKILL it: stop the KDS itself
        os.kill(pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_charts_init_container_and_arguments_work_in_the_image(
    container: str, tmp_path: Path
) -> None:
    """The pod as the chart makes it: Secret files (group-readable, as under fsGroup) copied
    owner-only by the init container's script, the SQLite volume seeded from the bootstrap
    Secret, then `serve` with the chart's --data-dir and database URL."""
    rendered = run(
        tool("helm"), "template", "kds", CHART, "--kube-version", "1.30.0",
        "--set", "sqlite.bootstrap.existingSecret=seed",
    )  # fmt: skip
    (deployment,) = [
        d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (init_container,) = pod["initContainers"]
    workstation = tmp_path / "workstation"  # `sealedbus kds init` where the admin works
    fingerprint = host_init(workstation)
    secrets = {"root": "root.key", "master": "master.keys", "bootstrap": "kds.db"}
    mounts: dict[Path, str] = {}
    for name, file in secrets.items():
        volume = tmp_path / "secret" / name
        volume.mkdir(parents=True)
        (volume / file).write_bytes((workstation / file).read_bytes())
        os.chown(volume / file, 0, 10001)  # what the kubelet does under fsGroup: root:fsGroup 0440
        (volume / file).chmod(0o440)
        mounts[volume] = f"/etc/sealedbus/{name}"
    for name, inside in (("keys", "/run/sealedbus/keys"), ("pvc", "/var/lib/sealedbus")):
        (tmp_path / name).mkdir()
        os.chown(tmp_path / name, 10001, 10001)
        mounts[tmp_path / name] = inside
    unused = tmp_path / "unused"  # in_container's own data mount
    unused.mkdir()
    copied = run(*in_container(container, unused, *init_container["command"], mounts=mounts))
    assert "seeded the database" in copied.stdout
    for file in ("root.key", "master.keys"):
        info = (tmp_path / "keys" / file).stat()
        assert (info.st_mode & 0o777, info.st_uid) == (0o600, 10001)
    assert (tmp_path / "pvc" / "kds.db").stat().st_mode & 0o777 == 0o600  # SQLite writes to it
    again = run(*in_container(container, unused, *init_container["command"], mounts=mounts))
    assert "seeded" not in again.stdout  # a restart never overwrites the database

    port = free_port()
    (kds,) = pod["containers"]
    config = {"SEALEDBUS_KDS_PORT": str(port), "SEALEDBUS_KDS_SCHEDULER_INTERVAL": "0.5",
              "SEALEDBUS_KDS_LEASE": "5", "SEALEDBUS_KDS_CERTIFICATE_LIFETIME": "3600",
              "SEALEDBUS_KDS_ENROLL_PER_MINUTE": "10", "POD_NAME": "kds-0",
              "SEALEDBUS_KDS_DATABASE_URL": "sqlite:////var/lib/sealedbus/kds.db"}  # fmt: skip
    args = [re.sub(r"\$\((\w+)\)", lambda m: config[m.group(1)], a) for a in kds["args"]]
    # loopback and plain HTTP here instead of 0.0.0.0 with the TLS Secret
    args = [a for a in args if not a.startswith(("--host=", "--tls-"))] + ["--insecure-http"]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(  # noqa: S603 - our own script and image
            in_container(
                container, unused, "sealedbus", "kds", "serve", *args, env=config, mounts=mounts
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, serve, log)
            assert httpx.get(url + "/healthz", timeout=5).json()["replica"] == "kds-0"
            root = httpx.get(url + "/v1/root", timeout=5).json()
            assert root["fingerprint"] == fingerprint  # the root key from the Secret
            # the first admin came with the seeded database: it can create a token
            producer, consumer = set_up_members(workstation, url, fingerprint, tmp_path)
            before = Sealer(producer).seal("orders", b"before the rotation")

            def exec_(*command: str) -> str:  # `kubectl exec` into the running pod
                argv = in_container(container, unused, *command, env=config, mounts=mounts)
                return run(*argv).stdout

            # docs/operations.md, "Rotate the master key", steps 2 and 4
            keys = "/run/sealedbus/keys"
            rotated = exec_("sealedbus", "kds", "rotate-master-key", "--data-dir", keys)
            assert "master key k2 is current" in rotated
            after = Sealer(producer).seal("orders", b"after the rotation")
            opener = Opener(consumer)
            assert opener.open("orders", before).body == b"before the rotation"
            assert opener.open("orders", after).body == b"after the rotation"
            assert "retired master keys ['k1']" in exec_(
                "sealedbus", "kds", "rotate-master-key", "--data-dir", keys, "--retire"
            )
            keyring = json.loads((tmp_path / "keys" / "master.keys").read_text())
            assert keyring["current"] == "k2" and set(keyring["keys"]) == {"k2"}
            # "Back up and restore": a consistent SQLite copy while the KDS runs
            backup = (
                "import sqlite3; sqlite3.connect('/var/lib/sealedbus/kds.db')"
                ".backup(sqlite3.connect('/tmp/kds.db')); "
                "print(sqlite3.connect('/tmp/kds.db').execute("
                "'select count(*) from topics').fetchone()[0])"
            )
            assert exec_("/opt/sealedbus/bin/python", "-c", backup).strip() == "1"
            producer.close()
            consumer.close()
        finally:
            stop(serve)


def test_kds_from_the_image_serves_a_round_trip(container: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)  # the image's user owns its data
    data.chmod(0o700)
    init = run(*in_container(container, data, "sealedbus", "kds", "init", "--data-dir", DATA))
    fingerprint = init.stdout.split("root key fingerprint: ")[1].split()[0]
    assert (data / "root.key").stat().st_uid == 10001

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(  # noqa: S603 - our own script and image
        in_container(
            container,
            data,
            "sealedbus",
            "kds",
            "serve",
            "--insecure-http",
            "--port",
            str(port),
            "--data-dir",
            DATA,
            "--scheduler-interval",
            "0.2",
            "--lease",
            "2",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as one below
    )
    try:
        wait_ready(url, serve, tmp_path / "serve.log")
        health = httpx.get(url + "/healthz", timeout=5).json()
        assert health["status"] == "ok"
        assert httpx.get(url + "/readyz", timeout=5).json()["status"] == "ready"

        check = in_container(
            container,
            data,
            "/opt/sealedbus/bin/python",
            "/usr/local/lib/sealedbus/healthcheck.py",
            env={"SEALEDBUS_HEALTHCHECK_URL": url + "/healthz"},
        )
        assert run(*check, check=False).returncode == 0

        producer, consumer = set_up_members(data, url, fingerprint, tmp_path)
        try:
            sealed = [Sealer(producer).seal("orders", b"order %d" % i) for i in range(3)]
            opener = Opener(consumer)
            assert [opener.open("orders", e).body for e in sealed] == [
                b"order 0",
                b"order 1",
                b"order 2",
            ]
        finally:
            producer.close()
            consumer.close()
        metrics = httpx.get(url + "/metrics", timeout=5).text
        assert "sealedbus_kds_enrollments_total 2.0" in metrics
        assert "sealedbus_kds_grants_total" in metrics
        assert "sealedbus_kds_scheduler_leader 1.0" in metrics
    finally:
        stop(serve)
        log.close()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    assert run(*check, check=False).returncode == 1  # the HEALTHCHECK sees it gone


@pytest.fixture
def database(postgres_database: str) -> str:
    return postgres_database


@pytest.mark.postgres
def test_ha_replicas_from_the_image_share_postgresql_and_one_scheduler(
    container: str, tmp_path: Path, database: str
) -> None:
    """HA mode as the chart runs it: replicas of the image on one PostgreSQL database (URL from
    the environment, as from the Secret), one scheduler leader, taken over when it stops."""
    workstation = tmp_path / "workstation"
    fingerprint = host_init(workstation, database)
    keys = tmp_path / "keys"
    keys.mkdir()
    for file in ("root.key", "master.keys"):
        (keys / file).write_bytes((workstation / file).read_bytes())
        os.chown(keys / file, 10001, 10001)
        (keys / file).chmod(0o600)
    os.chown(keys, 10001, 10001)
    unused = tmp_path / "unused"
    unused.mkdir()
    replicas: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for name in ("kds-a", "kds-b"):
            port = free_port()
            log = (tmp_path / f"{name}.log").open("w")
            replicas[name] = (
                f"http://127.0.0.1:{port}",
                subprocess.Popen(  # noqa: S603 - our own script and image
                    in_container(
                        container,
                        unused,
                        "sealedbus",
                        "kds",
                        "serve",
                        "--insecure-http",
                        f"--port={port}",
                        "--data-dir=/run/sealedbus/keys",
                        f"--replica={name}",
                        "--scheduler-interval=0.3",
                        "--lease=2",
                        env={"SEALEDBUS_KDS_DATABASE_URL": database},
                        mounts={keys: "/run/sealedbus/keys"},
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
            )
            log.close()
        for name, (url, process) in replicas.items():
            wait_ready(url, process, tmp_path / f"{name}.log")

        def leaders() -> set[str]:
            found = set()
            for name, (url, process) in replicas.items():
                if (
                    process.poll() is None
                    and httpx.get(url + "/healthz", timeout=5).json()["leader"]
                ):
                    found.add(name)
            return found

        deadline = time.monotonic() + 30
        while len(leaders()) != 1 and time.monotonic() < deadline:
            time.sleep(0.3)
        (leader,) = leaders()
        follower = next(n for n in replicas if n != leader)
        follower_url = replicas[follower][0]
        producer, consumer = set_up_members(workstation, follower_url, fingerprint, tmp_path)
        sealed = Sealer(producer).seal("orders", b"through a follower")
        assert Opener(consumer).open("orders", sealed).body == b"through a follower"

        stop(replicas[leader][1])  # the leader goes: the follower takes the lease over
        deadline = time.monotonic() + 30
        while leaders() != {follower} and time.monotonic() < deadline:
            time.sleep(0.3)
        assert leaders() == {follower}
        metrics = httpx.get(follower_url + "/metrics", timeout=5).text
        assert "sealedbus_kds_scheduler_leader 1.0" in metrics
        producer.close()
        consumer.close()
    finally:
        for _url, process in replicas.values():
            if process.poll() is None:
                stop(process)
