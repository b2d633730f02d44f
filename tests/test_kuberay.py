"""cluster/kuberay/: the RayCluster and RayJob manifests validate against KubeRay's CRDs as
the API server would with strict field validation (an unknown or misspelt field is an error),
and say what the deployment needs: token auth, a GPU worker group, outputs in object storage,
the pipeline as the entrypoint, MLflow with its artifacts in the bucket; the job retried with a
--resume entrypoint, the worker groups autoscaled from none."""
import copy
import gzip
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).parent / "kuberay-crds"
SHARED = ROOT.parent / "shared" / "kuberay-crds"
MANIFESTS = ROOT / "cluster" / "kuberay"


def strict(schema):
    """Close every object that lists its properties and does not preserve unknown fields, as
    the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(name):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress((CRDS / f"{name}.yaml.gz").read_bytes()), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return crd["spec"]["names"]["kind"], strict(version["schema"]["openAPIV3Schema"])


@pytest.fixture(scope="module")
def schemas():
    return dict(crd_schema(n) for n in ("ray.io_rayjobs", "ray.io_rayclusters"))


def documents():
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def validate(doc, schemas):
    assert doc["apiVersion"] == "ray.io/v1"
    jsonschema.validate(doc, schemas[doc["kind"]])


def test_every_ray_manifest_validates(schemas):
    ray_docs = [(name, d) for name, d in documents() if d["apiVersion"].startswith("ray.io")]
    assert {d["kind"] for _, d in ray_docs} == {"RayJob", "RayCluster"}
    for name, doc in ray_docs:
        validate(doc, schemas)


@pytest.mark.parametrize("path_to_field, misspelt", [
    (("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinish"),
    (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams"), "rayStartParam"),
    (("spec", "rayClusterSpec", "authOptions", "mode"), "Mode"),
])
def test_a_misspelt_field_fails_validation(schemas, path_to_field, misspelt):
    job = copy.deepcopy(next(d for _, d in documents() if d["kind"] == "RayJob"))
    parent = job
    for key in path_to_field[:-1]:
        parent = parent[key]
    parent[misspelt] = parent.pop(path_to_field[-1])
    with pytest.raises(jsonschema.ValidationError, match=misspelt):
        validate(job, schemas)


def test_a_wrong_type_fails_validation(schemas):
    job = copy.deepcopy(next(d for _, d in documents() if d["kind"] == "RayJob"))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate(job, schemas)


def test_the_deployment_is_what_the_docs_say():
    docs = dict(((name, d["kind"]), d) for name, d in documents())
    job = docs[("rayjob.yaml", "RayJob")]["spec"]
    for spec in (job["rayClusterSpec"], docs[("raycluster.yaml", "RayCluster")]["spec"]):
        assert spec["authOptions"]["mode"] == "token"
        workers = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]
        assert {"secretRef": {"name": "goldnas-storage"}} in workers["envFrom"]
    assert "pipelines/pipeline.py" in job["entrypoint"] and "--out s3://" in job["entrypoint"]
    assert "--mlflow-uri http://goldnas-mlflow:5000" in job["entrypoint"]
    assert job["shutdownAfterJobFinishes"] is True
    mlflow = docs[("mlflow.yaml", "Deployment")]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert mlflow[mlflow.index("--artifacts-destination") + 1].startswith("s3://")
    assert docs[("mlflow.yaml", "Service")]["metadata"]["name"] == "goldnas-mlflow"
    secrets = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "Secret"}
    assert set(secrets) == {"goldnas-storage", "goldnas-ray-token"}
    assert "auth_token" in secrets["goldnas-ray-token"]["stringData"]


def test_the_job_is_resubmittable_and_the_clusters_autoscale_from_no_worker(schemas):
    """KubeRay retries the job (backoffLimit > 0) with an entrypoint that continues or starts
    its run in one fixed place (--resume --out s3://...); both clusters run KubeRay's autoscaler,
    their worker groups start from 0 and the head holds no CPU for Ray (no worker or trial lands
    there), as cluster/aws-gpu.yaml's."""
    docs = dict(((name, d["kind"]), d) for name, d in documents())
    job = docs[("rayjob.yaml", "RayJob")]["spec"]
    assert job["backoffLimit"] > 0
    words = job["entrypoint"].split()
    assert "--resume" in words and words[words.index("--out") + 1].startswith("s3://")
    for spec in (job["rayClusterSpec"], docs[("raycluster.yaml", "RayCluster")]["spec"]):
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0
            assert group["maxReplicas"] >= 2  # room to grow: a retrain runs trials side by side
    # an autoscaler option KubeRay does not know fails, as a misspelt field does
    broken = copy.deepcopy(docs[("rayjob.yaml", "RayJob")])
    broken["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeout"] = 300
    with pytest.raises(jsonschema.ValidationError, match="idleTimeout"):
        validate(broken, schemas)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/kuberay-crds beside this checkout")
def test_the_vendored_crds_are_the_shared_ones():
    for name in ("ray.io_rayjobs", "ray.io_rayclusters"):
        assert gzip.decompress((CRDS / f"{name}.yaml.gz").read_bytes()) == (SHARED / f"{name}.yaml").read_bytes()
