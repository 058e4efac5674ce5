"""deploy/k8s: every manifest is valid against a current Kubernetes schema (kubernetes-validate), every
container runs a real `bookrec` command, and the manifests keep the compose file's promises (one TensorFlow
thread per serving replica, the model store on the shared claim, metrics Services on the ports the settings
give, secrets only from Secrets) plus the KEDA ScaledObject scaling workers on RQ's recommend list.

No cluster is needed: the manifests are read with PyYAML. KEDA's objects are custom resources that
kubernetes-validate has no schema for; their fields are checked here against what KEDA's Redis list scaler
reads (https://keda.sh/docs/latest/scalers/redis-lists/).
"""

from __future__ import annotations

import copy
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from rq import Queue

from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.shared.settings import Settings
from tests.unit.conftest import parse_bookrec

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
KEDA_API = "keda.sh/v1alpha1"
SHARED_CLAIM = "bookrec-data"
SECRET = "bookrec"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object in deploy/k8s but the kustomization."""
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


DOCUMENTS = _documents()
OBJECTS = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in DOCUMENTS}
CORE = [(name, doc) for name, doc in DOCUMENTS if doc["apiVersion"] != KEDA_API]
WORKLOADS = {name: doc for (kind, name), doc in OBJECTS.items() if kind in ("Deployment", "Job")}
SETTINGS_DATA = OBJECTS[("ConfigMap", "bookrec-settings")]["data"]


def pod_spec(name: str) -> dict[str, Any]:
    return WORKLOADS[name]["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    (only,) = pod_spec(name)["containers"]
    return only


def environment(name: str) -> dict[str, str]:
    """The plain settings a workload's container sees: the ConfigMap, then its own `env` values."""
    own = {e["name"]: e["value"] for e in container(name).get("env", []) if "value" in e}
    return {**SETTINGS_DATA, **own}


def settings(name: str) -> Settings:
    return Settings.from_env(environment(name))


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{argv} has no {flag}"
    return argv[argv.index(flag) + 1]


def schema_errors(doc: dict[str, Any]) -> str | None:
    """kubernetes-validate's complaint about `doc` (strict: unknown fields are errors), or None."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


# ---- valid against Kubernetes ---------------------------------------------------------------------


def test_the_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    assert [image["name"] for image in kustomization["images"]] == ["bookrec"]


@pytest.mark.parametrize(
    "doc", [doc for _, doc in CORE], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in CORE]
)
def test_every_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    assert schema_errors(doc) is None, schema_errors(doc)


def test_the_schema_check_catches_a_broken_manifest() -> None:
    broken = copy.deepcopy(WORKLOADS["bookrec-worker"])
    broken["spec"]["replicas"] = "two"
    assert schema_errors(broken)
    typo = copy.deepcopy(WORKLOADS["bookrec-worker"])
    typo["spec"]["template"]["spec"]["containers"][0]["arg"] = ["worker"]
    assert schema_errors(typo), "strict validation must refuse an unknown field"


def test_the_deployment_runs_every_part() -> None:
    assert set(WORKLOADS) == {
        "bookrec-init",
        "bookrec-worker",
        "bookrec-trainer",
        "bookrec-ingest",
        "bookrec-scheduler",
    }
    assert WORKLOADS["bookrec-init"]["kind"] == "Job"
    assert pod_spec("bookrec-init")["restartPolicy"] == "OnFailure"


# ---- every container runs a real bookrec command -------------------------------------------------


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_container_runs_a_real_bookrec_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = container(name)
    assert spec["image"] == "bookrec", "one image, set with `kustomize edit set image`"
    assert "command" not in spec, f"{name} replaces the image's `bookrec` entrypoint"
    args = parse_bookrec(spec["args"], capsys)
    assert callable(getattr(args, "handler", None)), f"`bookrec {' '.join(spec['args'])}` names no runnable command"


def test_workers_serve_requests_first_and_only_the_trainer_trains() -> None:
    worker, trainer = container("bookrec-worker")["args"], container("bookrec-trainer")["args"]
    assert worker[0] == trainer[0] == "worker"
    assert option(worker, "--queues").split(",") == ["recommend", "fresh", "refresh"]
    assert option(trainer, "--queues").split(",") == ["retrain"]
    assert option(worker, "--processes") == option(trainer, "--processes") == "1", "replicas are what scale"
    assert settings("bookrec-worker").tf_threads == 1
    assert settings("bookrec-trainer").tf_threads == settings("bookrec-init").tf_threads == 0


def test_singletons_never_run_twice_during_a_rollout() -> None:
    for name in ("bookrec-trainer", "bookrec-scheduler"):
        spec = WORKLOADS[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name


@pytest.mark.parametrize(("name", "grace"), [("bookrec-worker", 30), ("bookrec-trainer", 120), ("bookrec-ingest", 30)])
def test_processes_get_time_to_finish_their_job_on_sigterm(name: str, grace: int) -> None:
    assert pod_spec(name)["terminationGracePeriodSeconds"] >= grace


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_pod_runs_as_a_user(name: str) -> None:
    assert pod_spec(name)["securityContext"]["runAsNonRoot"] is True


# ---- the shared model store and the settings -----------------------------------------------------


@pytest.mark.parametrize("name", ["bookrec-init", "bookrec-worker", "bookrec-trainer"])
def test_the_model_store_and_data_dir_are_on_the_shared_claim(name: str) -> None:
    volumes = {v["name"]: v for v in pod_spec(name)["volumes"]}
    (mount,) = container(name)["volumeMounts"]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == SHARED_CLAIM
    root = PurePosixPath(mount["mountPath"])
    assert PurePosixPath(settings(name).model_store).parent == root
    assert root in PurePosixPath(settings(name).data_dir).parents
    claim = OBJECTS[("PersistentVolumeClaim", SHARED_CLAIM)]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "worker replicas on several nodes read one store"


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_container_reads_the_settings_and_the_secret(name: str) -> None:
    sources = container(name)["envFrom"]
    assert {"configMapRef": {"name": "bookrec-settings"}} in sources
    assert {"secretRef": {"name": SECRET}} in sources


def test_no_secret_is_written_in_a_manifest() -> None:
    assert not any(doc["kind"] == "Secret" for _, doc in DOCUMENTS), "Secrets are created by the operator"
    plain = dict(SETTINGS_DATA)
    for name in WORKLOADS:
        plain.update(environment(name))
    for key in ("BOOKREC_REDIS_URL", "BOOKREC_DATABASE_URL", "BOOKREC_DASHBOARD_TOKEN"):
        assert key not in plain, f"{key} must come from the Secret {SECRET!r}"
    assert not [k for k in plain if any(word in k for word in ("PASSWORD", "TOKEN", "SECRET"))]


# ---- metrics ---------------------------------------------------------------------------------------

METRICS = {
    "bookrec-worker": "metrics_port",
    "bookrec-trainer": "metrics_port",
    "bookrec-ingest": "ingest_metrics_port",
    "bookrec-scheduler": "scheduler_metrics_port",
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_service_exposes_each_part_s_metrics_at_the_port_it_serves_on(name: str) -> None:
    port = getattr(settings(name), METRICS[name])
    assert settings(name).metrics_host == "0.0.0.0", "metrics must be reachable from outside the pod"
    declared = {p["name"]: p["containerPort"] for p in container(name).get("ports", [])}
    assert declared.get("metrics") == port, f"{name} declares {declared}, serves on {port}"
    service = OBJECTS[("Service", f"{name}-metrics")]
    pod_labels = WORKLOADS[name]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "metrics"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_each_metrics_service_selects_one_part_only() -> None:
    services = [doc for (kind, _), doc in OBJECTS.items() if kind == "Service"]
    for service in services:
        selected = [
            name
            for name, workload in WORKLOADS.items()
            if service["spec"]["selector"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"{service['metadata']['name']} selects {selected}"


# ---- KEDA scales the workers on the recommend queue --------------------------------------------------


def test_keda_scales_the_worker_deployment_on_rq_s_recommend_list() -> None:
    scaled = OBJECTS[("ScaledObject", "bookrec-worker")]
    assert scaled["apiVersion"] == KEDA_API
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and ("Deployment", target["name"]) in OBJECTS
    assert target["name"] == "bookrec-worker"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis", "KEDA's Redis list scaler"
    queue = Keys(settings("bookrec-worker").key_prefix).queue(QUEUE_RECOMMEND)
    assert trigger["metadata"]["listName"] == Queue.redis_queue_namespace_prefix + queue == "rq:queue:recommend"
    assert int(trigger["metadata"]["listLength"]) > 0
    assert all(isinstance(value, str) for value in trigger["metadata"].values()), "KEDA's metadata is strings"


def test_keda_reads_redis_s_address_and_password_from_a_secret() -> None:
    scaled = OBJECTS[("ScaledObject", "bookrec-worker")]
    (trigger,) = scaled["spec"]["triggers"]
    assert not {"address", "host", "password"} & trigger["metadata"].keys(), "credentials in plain metadata"
    auth = OBJECTS[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    assert auth["apiVersion"] == KEDA_API
    parameters = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(parameters) == {"address", "password"}
    assert {ref["name"] for ref in parameters.values()} == {"bookrec-keda"}
