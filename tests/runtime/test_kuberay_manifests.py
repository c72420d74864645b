"""The KubeRay manifests (``cluster/kuberay/``), validated, not launched: the RayJob against KubeRay's own
RayJob schema (the CRD's openAPIV3Schema, kept in ``schemas/``, unknown fields refused as the API server's
strict field validation does), the PersistentVolumeClaim, Deployment and Service against Kubernetes' schemas
(kubernetes-validate, strict); and what ties them together: one claim mounted everywhere, the MLflow
service the job logs to, the study config the job runs, the Ray version of the image."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "cluster" / "kuberay"
SCHEMA = Path(__file__).parent / "schemas" / "kuberay-rayjob-v1.json"
KUBERNETES = "1.33"


def documents() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def strict(schema):
    """The CRD schema with unknown fields refused (the API server's ``fieldValidation=Strict``, kubectl's
    default): every object with declared properties and no ``x-kubernetes-preserve-unknown-fields``."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@pytest.fixture(scope="module")
def rayjob_validator():
    crd = json.loads(SCHEMA.read_text())
    assert (crd["group"], crd["kind"], crd["version"]) == ("ray.io", "RayJob", "v1")
    return jsonschema.Draft7Validator(strict(crd["openAPIV3Schema"]))


def rayjob() -> dict:
    return next(d for d in documents() if d["kind"] == "RayJob")


def test_the_rayjob_is_valid_against_kuberays_rayjob_schema(rayjob_validator):
    errors = sorted(rayjob_validator.iter_errors(rayjob()), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_refuses_a_misspelt_field_and_a_wrong_type(rayjob_validator):
    misspelt = copy.deepcopy(rayjob())
    misspelt["spec"]["rayClusterSpec"]["workerGroupSpec"] = misspelt["spec"]["rayClusterSpec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e.message for e in rayjob_validator.iter_errors(misspelt))
    wrong = copy.deepcopy(rayjob())
    wrong["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "one"
    assert list(rayjob_validator.iter_errors(wrong))


@pytest.mark.parametrize("kind", ["PersistentVolumeClaim", "Deployment", "Service"])
def test_the_kubernetes_objects_are_valid_against_kubernetes_schemas(kind):
    for doc in (d for d in documents() if d["kind"] == kind):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def pods(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def test_every_pod_mounts_the_one_shared_claim_at_mnt_shared():
    claims = {d["metadata"]["name"] for d in documents() if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"sbmoe-shared"}
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    for spec in pods(rayjob()) + [deployment["spec"]["template"]["spec"]]:
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert mounts["/mnt/shared"] == "sbmoe-shared"


def test_the_job_runs_the_guides_study_and_logs_to_the_mlflow_service():
    job = rayjob()
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["sbmoe", "study"]
    config = Path(args[args.index("--config") + 1])
    assert config.parts[:4] == ("/", "home", "ray", "sbmoe-ray")            # the Dockerfile's checkout
    from sbmoe_ray.config import load_config
    from sbmoe_ray.study.config import StudyConfig

    study = load_config(StudyConfig, ROOT.joinpath(*config.parts[4:]))
    assert study.storage_path.startswith("/mnt/shared/") and study.finetune.use_gpu
    service = next(d for d in documents() if d["kind"] == "Service")
    port = service["spec"]["ports"][0]["port"]
    assert args[args.index("--tracking-uri") + 1] == f"http://{service['metadata']['name']}:{port}"
    assert service["spec"]["type"] == "ClusterIP"                            # not exposed beyond the cluster


def test_the_cluster_runs_this_ray_with_token_auth_and_a_gpu_worker_group():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert f"rayproject/ray:{ray.__version__}" in (MANIFESTS / "Dockerfile").read_text()
    gpu = [g for g in cluster["workerGroupSpecs"]
           if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert [g["groupName"] for g in gpu] == ["gpu"]
