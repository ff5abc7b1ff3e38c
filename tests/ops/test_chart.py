"""The Helm chart: ``helm lint --strict``, ``helm template`` with four value sets plus ones the
schema must refuse, every rendered manifest validated offline against the Kubernetes schemas
(``kubernetes-validate``) and the ServiceMonitor/PrometheusRule against their CRD schemas."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ._tools import CHART, HELM_TESTS, run, tool

pytestmark = pytest.mark.ops

VALUES = HELM_TESTS / "values"
KUBERNETES = "1.30"  # the oldest minor the chart is checked against (kubeVersion allows 1.25+)
CRDS = {
    "ServiceMonitor": HELM_TESTS / "crds" / "servicemonitors.v1.json",
    "PrometheusRule": HELM_TESTS / "crds" / "prometheusrules.v1.json",
}
Manifest = dict[str, Any]
# go-installed helm defaults to Kubernetes 1.20 (its version is set at release builds only)
TARGET = ("--namespace", "sealed", "--kube-version", f"{KUBERNETES}.0")


@cache
def render(values: str | None, *sets: str) -> tuple[Manifest, ...]:
    args: list[str | Path] = [tool("helm"), "template", "kds", CHART, *TARGET]
    if values:
        args += ["--values", VALUES / values]
    for assignment in sets:
        args += ["--set", assignment]
    docs = yaml.safe_load_all(run(*args).stdout)
    return tuple(d for d in docs if d)


def kinds(docs: tuple[Manifest, ...]) -> dict[str, Manifest]:
    by_kind: dict[str, Manifest] = {}
    for doc in docs:
        key = (
            doc["kind"]
            if doc["kind"] not in by_kind
            else f"{doc['kind']}/{doc['metadata']['name']}"
        )
        by_kind[key] = doc
    return by_kind


def pod(docs: tuple[Manifest, ...]) -> Manifest:
    spec: Manifest = kinds(docs)["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("values", [None, "ha.yaml", "full.yaml"])
def test_lint_strict(values: str | None) -> None:
    args: list[str | Path] = [tool("helm"), "lint", "--strict", CHART]
    if values:
        args += ["--values", VALUES / values]
    assert "0 chart(s) failed" in run(*args).stdout


@pytest.mark.parametrize("values", [None, "ha.yaml", "full.yaml"])
def test_every_manifest_validates_offline(values: str | None) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        schema = CRDS.get(doc["kind"])
        if schema is not None:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            jsonschema.validate(doc, json.loads(schema.read_text()))
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validators_catch_a_broken_manifest() -> None:
    """The checks can fail: a misspelt field fails each validator."""
    deployment = json.loads(json.dumps(kinds(render(None))["Deployment"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    monitor = json.loads(json.dumps(kinds(render("full.yaml"))["ServiceMonitor"]))
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, json.loads(CRDS["ServiceMonitor"].read_text()))


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ("bad-sqlite-replicas.yaml", "/replicaCount"),
        ("bad-postgresql-no-secret.yaml", "/postgresql/existingSecret"),
        ("bad-root.yaml", "/podSecurityContext/runAsUser"),
        ("bad-unknown-key.yaml", "'enable' not allowed"),
    ],
)
def test_the_schema_refuses_bad_values(values: str, complaint: str) -> None:
    result = run(
        tool("helm"), "template", "kds", CHART, *TARGET, "--values", VALUES / values, check=False
    )
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_default_is_one_sqlite_replica_on_a_claim() -> None:
    docs = kinds(render(None))
    assert set(docs) == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    }
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in pod(render(None))["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "kds-sealedbus-kds-data"
    assert docs["ConfigMap"]["data"]["SEALEDBUS_KDS_DATABASE_URL"].startswith("sqlite:////var/")
    assert docs["PersistentVolumeClaim"]["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }


def test_sqlite_volume_is_seeded_once_from_the_bootstrap_secret() -> None:
    docs = render(None, "sqlite.bootstrap.existingSecret=kds-seed")
    spec = pod(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["bootstrap"]["secret"]["secretName"] == "kds-seed"
    (init,) = spec["initContainers"]
    script = init["command"][-1]
    assert "if [ ! -e /var/lib/sealedbus/kds.db ]; then" in script  # never over a database
    assert "cp /etc/sealedbus/bootstrap/kds.db /var/lib/sealedbus/kds.db" in script
    assert "bootstrap" not in {v["name"] for v in pod(render(None))["volumes"]}
    for doc in docs:
        if doc["kind"] in CRDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_ha_runs_three_replicas_on_postgresql_from_a_secret() -> None:
    docs = kinds(render("ha.yaml"))
    assert "PersistentVolumeClaim" not in docs and "HorizontalPodAutoscaler" not in docs
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    (kds,) = pod(render("ha.yaml"))["containers"]
    env = {e["name"]: e for e in kds["env"]}
    assert env["SEALEDBUS_KDS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "sealedbus-kds-db",
        "key": "url",
    }
    assert "SEALEDBUS_KDS_DATABASE_URL" not in docs["ConfigMap"]["data"]
    assert "--replica=$(POD_NAME)" in kds["args"]  # each replica its own lease holder name


def test_everything_on_renders_every_optional_part() -> None:
    docs = kinds(render("full.yaml"))
    for kind in ("HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"):
        assert kind in docs, kind
    assert "replicas" not in docs["Deployment"]["spec"]  # the autoscaler owns it
    policy = docs["NetworkPolicy"]["spec"]
    sources = [rule["from"][0] for rule in policy["ingress"]]
    assert sources[0]["podSelector"]["matchLabels"] == {"sealedbus.io/kds-client": "true"}
    assert sources[1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"
    }
    rules = docs["PrometheusRule"]["spec"]["groups"]
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
    assert [g["name"] for g in rules] == [g["name"] for g in source]
    for group, original in zip(rules, source, strict=True):
        for rule, raw in zip(group["rules"], original["rules"], strict=True):
            assert rule["expr"] == raw["expr"]  # no template ran over {{ $labels }}
            assert rule["annotations"]["summary"] == raw["annotations"]["summary"]
            anchor = raw["annotations"]["runbook_url"].partition("#")[2]
            assert rule["annotations"]["runbook_url"] == (
                f"https://docs.example.org/sealedbus/operations.md#{anchor}"
            )
    dashboard = docs["ConfigMap/kds-sealedbus-kds-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["sealedbus.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )


@pytest.mark.parametrize("values", [None, "ha.yaml", "full.yaml"])
def test_hardened_pod(values: str | None) -> None:
    docs = render(values)
    spec = pod(docs)
    assert spec["automountServiceAccountToken"] is False
    assert kinds(docs)["ServiceAccount"]["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    for container in spec["initContainers"] + spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["cpu"]
    (kds,) = spec["containers"]
    assert kds["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert kds["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert kds["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["httpGet"]["scheme"] for p in (kds["startupProbe"], kds["livenessProbe"])} == {
        "HTTPS"
    }
    assert kinds(docs)["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("values", [None, "ha.yaml", "full.yaml"])
def test_keys_only_come_from_existing_secrets(values: str | None) -> None:
    """No Secret is rendered, no ConfigMap holds key material: the master keyring, the root key
    and the TLS certificate are volumes of Secrets the operator created."""
    docs = render(values)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            text = json.dumps(doc["data"]).lower()
            for word in ("root.key", "master.keys", "private", "password", "begin"):
                assert word not in text, (doc["metadata"]["name"], word)
    volumes = {v["name"]: v for v in pod(docs)["volumes"]}
    assert volumes["root-key"]["secret"]["secretName"] == "sealedbus-kds-root"
    assert volumes["master-keys"]["secret"]["secretName"] == "sealedbus-kds-master"
    assert volumes["tls"]["secret"]["secretName"] == "sealedbus-kds-tls"
    assert volumes["keys"]["emptyDir"]["medium"] == "Memory"  # owner-only copies, never on disk


def test_notes_say_how_to_enroll_the_first_member(tmp_path: Path) -> None:
    chart = tmp_path / "chart"  # helm template skips NOTES.txt: render a copy as a named
    shutil.copytree(CHART, chart)  # template, in a manifest of its own
    templates = chart / "templates"
    text = (templates / "NOTES.txt").read_text()
    (templates / "_notes.tpl").write_text('{{- define "notes" -}}' + text + "{{- end }}")
    (templates / "NOTES.txt").unlink()
    (templates / "notes.yaml").write_text('notes: {{ include "notes" . | toJson }}\n')
    out = run(
        tool("helm"), "template", "kds", chart, *TARGET, "--show-only", "templates/notes.yaml"
    )
    notes = yaml.safe_load(out.stdout)["notes"]
    assert "sealedbus admin" in notes and "token billing --out billing.token" in notes
    assert "sealedbus enroll" in notes and "--token-file billing.token" in notes
