"""deploy/k8s: schema validation with a real validator, plus the cross-references a schema cannot see.

Validator: ``kubernetes-validate`` (PyPI), which bundles the official Kubernetes OpenAPI-derived JSON schemas
per version and validates offline with ``jsonschema``; we use its *strict* schemas (unknown fields are
errors, which catches typos such as ``readinessprobe``). It has no schema for CRDs, so the ServiceMonitor
(monitoring.coreos.com/v1) is checked against the subset of the Prometheus Operator CRD schema we use,
written below, and against the Service it must select.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from embeddings.settings import DailySettings
from streams.settings import ENV_PREFIX, WorkerSettings

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
CRD_GROUPS = ("monitoring.coreos.com/",)


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


DOCS = _docs()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _ids() -> list[str]:
    return [f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS]


@pytest.mark.parametrize("doc", [d for _, d in DOCS if not d["apiVersion"].startswith(CRD_GROUPS)],
                         ids=[i for i, (_, d) in zip(_ids(), DOCS, strict=True)
                              if not d["apiVersion"].startswith(CRD_GROUPS)])
def test_manifest_matches_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_broken_manifests() -> None:
    """The check above can fail: a typo'd field and a wrong type are both rejected."""
    sts = copy.deepcopy(_one("StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    sts = copy.deepcopy(_one("StatefulSet"))
    sts["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_required_objects_exist() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "CronJob", "PodDisruptionBudget",
            "ServiceMonitor", "PersistentVolumeClaim"} <= kinds


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_statefulset_wiring() -> None:
    sts = _one("StatefulSet", "actionstream-worker")
    spec = sts["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert _labels_match(spec["selector"]["matchLabels"], labels)
    headless = _one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert _labels_match(headless["spec"]["selector"], labels)
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "http" in ports
    assert str(ports["http"]) == _one("ConfigMap")["data"]["ACTIONSTREAM_WEB_PORT"]
    for svc in (d for _, d in DOCS if d["kind"] == "Service"):
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {svc['metadata']['name']} targets a missing port"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    # RocksDB state on the claim template, mounted where ACTIONSTREAM_DATA_DIR points.
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == _one("ConfigMap")["data"]["ACTIONSTREAM_DATA_DIR"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert _labels_match(anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(ports["http"])
    pdb = _one("PodDisruptionBudget")
    assert _labels_match(pdb["spec"]["selector"]["matchLabels"], labels)


def _pod_specs() -> list[dict[str, Any]]:
    sts = _one("StatefulSet")["spec"]["template"]["spec"]
    cron = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return [sts, cron]


def test_referenced_objects_exist() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    claim_templates = {c["metadata"]["name"] for c in _one("StatefulSet")["spec"]["volumeClaimTemplates"]}
    for spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for src in container.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in names
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claim_templates, mount
        for vol in volumes.values():
            if "persistentVolumeClaim" in vol:
                assert ("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]) in names
            if "secret" in vol:  # optional secrets (TLS material) are created by the operator of the cluster
                assert vol["secret"].get("optional") is True or ("Secret", vol["secret"]["secretName"]) in names


def _env_names() -> set[str]:
    names = set(_one("ConfigMap")["data"]) | set(_one("Secret")["stringData"])
    for spec in _pod_specs():
        for container in spec["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    return {n for n in names if n.startswith(ENV_PREFIX)}


def test_every_env_variable_is_a_real_setting() -> None:
    """A typo'd ACTIONSTREAM_* name would be silently ignored (extra="ignore"): catch it here."""
    fields = {ENV_PREFIX + f.upper() for cls in (WorkerSettings, DailySettings) for f in cls.model_fields}
    unknown = sorted(_env_names() - fields)
    assert not unknown, f"not a setting of WorkerSettings/DailySettings: {unknown}"


def test_configmap_values_pass_settings_validation() -> None:
    data = dict(_one("ConfigMap")["data"])
    # files inside the pod (CA, model checkpoints on the models volume): the validators check they exist
    for key in ("ACTIONSTREAM_KAFKA_SSL_CAFILE", "ACTIONSTREAM_TRANSACT_CHECKPOINT", "ACTIONSTREAM_REALTIME_CHECKPOINT",
                "ACTIONSTREAM_ITEMS_PATH", "ACTIONSTREAM_DAILY_ITEMS"):
        assert data.pop(key).startswith("/"), key
    values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in data.items()}
    values["kafka_sasl_password"] = "x"
    WorkerSettings.load(**{k: v for k, v in values.items() if k in WorkerSettings.model_fields})
    DailySettings.load(**{k: v for k, v in values.items() if k in DailySettings.model_fields})


def test_secret_is_a_documented_placeholder() -> None:
    secret = _one("Secret")
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}
    assert "PLACEHOLDER" in (K8S_DIR / "secret.yaml").read_text()


# Subset of the Prometheus Operator ServiceMonitor CRD (monitoring.coreos.com/v1) that we use.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$"},
                        "bearerTokenSecret": {"type": "object"},
                    }}},
            }},
    },
}


def test_service_monitor_selects_the_worker_service() -> None:
    monitor = _one("ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    svc = _one("Service", "actionstream-worker")
    assert _labels_match(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in svc_ports
        assert endpoint["path"] == "/metrics"


def test_cronjob_passes_the_daily_commands_required_options() -> None:
    """`actionstream daily` has required options: the CronJob must pass every one of them."""
    import argparse

    from embeddings import daily_job

    parser = argparse.ArgumentParser()
    daily_job.add_arguments(parser)
    required = {a.option_strings[0] for a in parser._actions if a.required}
    (container,) = _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "actionstream daily" in script
    assert {opt for opt in required if opt not in script} == set()
    for var in ("ACTIONSTREAM_DAILY_ARCHIVE", "ACTIONSTREAM_DAILY_CHECKPOINT", "ACTIONSTREAM_DAILY_SNAPSHOTS"):
        assert f"${var}" in script and var in _one("ConfigMap")["data"]
