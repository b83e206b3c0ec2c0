"""The deployment files: yamllint-clean, and consistent with the server and with each other.

No Docker engine or Kubernetes cluster runs these tests, so what is checked is what can be
checked without one: the YAML is well-formed and lint-clean (``.yamllint.yaml``), the
manifests match the Kubernetes API schema (``kubernetes-validate``, strict), the image
is the one the Dockerfile builds, the probes ask for health names the server serves (that
they answer SERVING on a live server: ``tests/e2e/test_probes.py``), the Service selects the
Deployment's pods, and every Secret key the Deployment reads exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lookalike.targets import HEALTH_CHECK_SERVICE
from tests.conftest import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML comes with yamllint (the dev extra)")

COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]
    found = [d for d in found if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def _image_built_by_dockerfile() -> str:
    m = re.search(r"docker build -t (\S+) \.", (ROOT / "Dockerfile").read_text())
    assert m, "the Dockerfile's header names the image tag it builds"
    return m.group(1)


def test_yamllint_passes_on_compose_and_deploy() -> None:
    pytest.importorskip("yamllint", reason="yamllint is in the dev extra")
    from yamllint import config, linter

    conf = config.YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))
    files = [COMPOSE, *sorted((ROOT / "deploy").rglob("*.yaml"))]
    assert len(files) >= 6
    problems = [
        f"{f.relative_to(ROOT)}:{p.line}:{p.column} {p.message}" for f in files for p in linter.run(f.open(), conf)
    ]
    assert problems == []


# The oldest Kubernetes the manifests are meant for: gRPC probes are GA since 1.27.
K8S_VERSION = "1.29"


def test_k8s_manifests_match_the_kubernetes_api_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    manifests = [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p) if "apiVersion" in d]
    assert {d["kind"] for d in manifests} == {"Deployment", "PodDisruptionBudget", "Service", "Secret"}
    for doc in manifests:
        # strict: a misspelt field is an error, not silently dropped by the API server.
        kv.validate(doc, K8S_VERSION, strict=True)


def test_compose_runs_two_replicas_on_shared_stores() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("lookalike")}
    assert len(replicas) == 2
    image = _image_built_by_dockerfile()
    for s in replicas.values():
        assert s["image"] == image
        assert s["environment"]["LOOKALIKE_MILVUS_URI"] == "http://milvus:19530"
        assert s["environment"]["LOOKALIKE_REDIS_URL"].startswith("redis://redis:6379")
        assert "lookalike" in s["networks"]["default"]["aliases"]  # dns:///lookalike:50051 names both
        test = s["healthcheck"]["test"]
        assert test[0] == "CMD" and "health" in test and HEALTH_CHECK_SERVICE in test
    assert len({s["volumes"][0] for s in replicas.values()}) == 2, "each replica has its own /data"
    assert len({s["ports"][0].split(":")[0] for s in replicas.values()}) == 2
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert {"etcd", "minio", "milvus"} <= set(services)


def test_k8s_deployment_probes_image_and_secrets() -> None:
    from lookalike_server.app import LIVENESS_SERVICE

    deployment = _k8s("Deployment", "lookalike")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == _image_built_by_dockerfile()
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port, "service": HEALTH_CHECK_SERVICE}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert deployment["spec"]["replicas"] >= 2

    env = {e["name"]: e for e in container["env"]}
    drain = float(env["LOOKALIKE_SHUTDOWN_DELAY_S"]["value"]) + float(env["LOOKALIKE_GRACE_S"]["value"])
    # Clients must reconnect now and then to find pods a scale-up added (docs/deployment.md).
    assert float(env["LOOKALIKE_MAX_CONNECTION_AGE_S"]["value"]) > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain

    secret = _k8s("Secret", "lookalike-secrets")
    refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    refs += [
        {"name": v["secret"]["secretName"], "key": i["key"]}
        for v in pod["spec"]["volumes"]
        if "secret" in v
        for i in v["secret"]["items"]
    ]
    assert refs and all(r["name"] == "lookalike-secrets" for r in refs)
    assert {r["key"] for r in refs} <= set(secret["stringData"])
    # The example store URLs pass the server's own validation (RedisConfig checks the scheme
    # and, for redis+cluster://, the seed list and database).
    from lookalike_server.config import RedisConfig

    assert RedisConfig(url=secret["stringData"]["redis-url"]).url.startswith("redis+cluster://")
    token_dir = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "auth")
    assert env["LOOKALIKE_SECURITY_TOKEN_FILE"]["value"] == f"{token_dir}/tokens"


def test_k8s_headless_service_selects_the_pods() -> None:
    service = _k8s("Service", "lookalike-headless")
    pod_labels = _k8s("Deployment", "lookalike")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (50051, "grpc")
    pdb = _k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_store_values_files_turn_on_what_the_docs_say() -> None:
    milvus = _docs(K8S / "milvus-values.yaml")[0]
    assert milvus["cluster"]["enabled"] is True and milvus["queryNode"]["replicas"] >= 2
    redis = _docs(K8S / "redis-cluster-values.yaml")[0]
    assert redis["redis"]["useAOFPersistence"] == "yes"
    assert redis["cluster"]["nodes"] >= 6 and redis["cluster"]["replicas"] >= 1
