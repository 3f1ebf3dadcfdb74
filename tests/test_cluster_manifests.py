"""cluster/: every manifest parses and holds what a cluster needs to run this package.

Images and Ray versions agree with the Ray this package is tested with; pods have
resources; entrypoints name jobs of ``ray_jobs.cli.JOBS`` and existing ``configs/``
files, and their overrides validate; clusters use token authentication; no file holds
a credential.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.runtime_env import RuntimeEnv

from ray_jobs.cli import JOBS
from sepcore.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
APP_DIR = "/home/ray/sep"  # where cluster/Dockerfile puts the repository in the image
RAY_VERSION = ray.__version__
PACKAGE_VERSION = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
IMAGE = f"registry.example.com/sep/sep:{PACKAGE_VERSION}-ray{RAY_VERSION}-py311-gpu"
RAYJOBS = {"rayjob-train.yaml": "train", "rayjob-tune.yaml": "tune", "rayjob-separate.yaml": "separate"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p) if d["kind"] == kind]


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every RayCluster spec: the RayCluster's, each RayJob's rayClusterSpec and each
    RayService's rayClusterConfig."""
    specs = [(name, d["spec"]) for name, d in _kuberay("RayCluster")]
    specs += [(name, d["spec"]["rayClusterConfig"]) for name, d in _kuberay("RayService")]
    return specs + [(name, d["spec"]["rayClusterSpec"]) for name, d in _kuberay("RayJob")]


def _groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(doc: Any) -> list[dict[str, Any]]:
    """Every container spec anywhere in a manifest."""
    if isinstance(doc, dict):
        found = list(doc["containers"]) if isinstance(doc.get("containers"), list) else []
        return found + [c for key, v in doc.items() if key != "containers" for c in _containers(v)]
    if isinstance(doc, list):
        return [c for v in doc for c in _containers(v)]
    return []


def test_every_manifest_parses_and_the_set_is_complete():
    kinds = {p.name: [d["kind"] for d in _docs(p)] for p in sorted(KUBERAY.glob("*.yaml"))}
    assert kinds == {
        "nightly-separate.yaml": ["ServiceAccount", "Role", "RoleBinding", "CronJob"],
        "raycluster.yaml": ["RayCluster"],
        "rayjob-separate.yaml": ["RayJob"],
        "rayjob-train.yaml": ["RayJob"],
        "rayjob-tune.yaml": ["RayJob"],
        "rayservice-serve.yaml": ["RayService"],
        "serviceaccount.yaml": ["ServiceAccount"],
    }
    for name in ("aws.yaml", "runtime_env.yaml"):
        assert isinstance(yaml.safe_load((CLUSTER / name).read_text()), dict)
    for _, doc in [*_kuberay("RayCluster"), *_kuberay("RayJob"), *_kuberay("RayService")]:
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "sep"


def test_images_and_ray_versions_agree_with_the_tested_ray():
    for name, spec in _cluster_specs():
        assert spec["rayVersion"] == RAY_VERSION, name
        for group in _groups(spec):
            for c in group["template"]["spec"]["containers"]:
                assert c["image"] == IMAGE, f"{name}: {c['image']}"
    (cron,) = [d for _, d in _kuberay("CronJob")]
    assert {c["image"] for c in _containers(cron)} == {IMAGE}

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=rayproject/ray:{RAY_VERSION}-py311-gpu" in dockerfile
    assert f"WORKDIR {APP_DIR}" in dockerfile and "COPY --chown=ray:users configs configs" in dockerfile
    assert f"-t {IMAGE} ." in dockerfile  # the build command documented at the top

    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert aws["docker"]["head_image"] == f"rayproject/ray:{RAY_VERSION}-py311-cpu"
    assert aws["docker"]["worker_image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    assert any(f'"ray=={RAY_VERSION}"' in cmd for cmd in aws["setup_commands"])


def _resources(container: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    res = container.get("resources") or {}
    return res.get("requests") or {}, res.get("limits") or {}


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_clusters_have_resources_token_auth_and_no_work_on_the_head(name, spec):
    assert spec["authOptions"] == {"mode": "token"}, name
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}["dashboard"] == 8265
    assert spec["workerGroupSpecs"], f"{name}: no worker group"
    for group in _groups(spec):
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == "sep-ray"
        gpu_group = group.get("groupName") == "gpu"
        if "groupName" in group:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        for c in pod["containers"]:
            requests, limits = _resources(c)
            assert {"cpu", "memory"} <= set(requests) and requests == limits, f"{name}: {c['name']}"
            assert ("nvidia.com/gpu" in limits) == gpu_group, f"{name}: {group.get('groupName', 'head')}"
            assert {"secretRef": {"name": "sep-s3", "optional": True}} in c["envFrom"]
        if gpu_group:
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_the_long_running_cluster_autoscales_gpu_workers_from_zero():
    ((_, cluster),) = _kuberay("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu = {g["groupName"]: g for g in spec["workerGroupSpecs"]}["gpu"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]


def _entrypoint(doc: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(job, config path in the repository, overrides) of ``python -m ray_jobs.<job> -c <cfg> ...``."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("ray_jobs."), argv
    assert argv[3] == "-c" and argv[4].startswith(f"{APP_DIR}/configs/"), argv
    return argv[2].removeprefix("ray_jobs."), argv[4].removeprefix(f"{APP_DIR}/"), argv[5:]


def _locations(cfg: Any) -> list[tuple[str, str]]:
    """(key, URI) of every input and output location of a job's config."""
    found = [(key, getattr(cfg, key)) for key in ("data", "output", "library", "checkpoint", "variants")
             if getattr(cfg, key, None) is not None]  # fmt: skip
    sources = (getattr(cfg, "prepare", None) or {}).get("sources", []) if hasattr(cfg, "prepare") else []
    return found + [(f"prepare.sources[{i}].uri", s["uri"]) for i, s in enumerate(sources)]


def _gpus_asked(job: str, cfg: Any) -> float:
    if job == "train" and cfg.scaling.use_gpu:
        return cfg.scaling.num_workers * cfg.scaling.gpus_per_worker
    if job == "separate" and cfg.inference.gpus_per_actor:
        return (cfg.inference.pool_size or 1) * cfg.inference.gpus_per_actor
    return 0.0


@pytest.mark.parametrize("file,job", sorted(RAYJOBS.items()))
def test_rayjob_entrypoints_name_existing_jobs_and_configs(file, job):
    (doc,) = _docs(KUBERAY / file)
    name, config, overrides = _entrypoint(doc)
    assert name == job and job in JOBS, f"{file}: ray_jobs.{name} is not a job of ray_jobs/cli.py"
    assert (REPO / config).is_file(), f"{file}: {config} does not exist"
    assert Path(config).name.startswith(f"{job}_"), config
    module = importlib.import_module(JOBS[job][0])
    cfg = load_config(module.JOB.config_cls, str(REPO / config), overrides)  # raises on a bad key
    for key, uri in _locations(cfg):
        assert str(uri).startswith("s3://"), f"{file}: {key} is {uri!r}: on a cluster, locations are s3:// URIs"
    gpus = sum(g["replicas"] * float(_resources(c)[1].get("nvidia.com/gpu", 0))
               for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
               for c in g["template"]["spec"]["containers"])  # fmt: skip
    assert gpus >= _gpus_asked(job, cfg), f"{file}: the job asks for more GPUs than the cluster has"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # a runtime_env Ray accepts


SERVE_TOKEN_SECRET = "sep-serve-token"  # the Secret rayservice-serve.yaml's header creates


def _rayservice() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the RayService manifest, its serveConfigV2 parsed)."""
    (doc,) = _docs(KUBERAY / "rayservice-serve.yaml")
    return doc, yaml.safe_load(doc["spec"]["serveConfigV2"])


def test_rayservice_deploys_the_serve_app_from_the_image():
    from ray.serve.schema import ServeDeploySchema

    _, serve_config = _rayservice()
    ServeDeploySchema(**serve_config)  # a config Serve accepts: raises on an unknown field
    (app,) = serve_config["applications"]
    assert app["import_path"] == "ray_jobs.serve:app_builder" and app["route_prefix"] == "/"
    RuntimeEnv(**app["runtime_env"])
    assert app["runtime_env"]["working_dir"] == f"local://{APP_DIR}"  # the image's repository
    assert not [k for k in app["runtime_env"].get("env_vars", {}) if "TOKEN" in k or k.startswith("AWS_")]
    assert set(app["args"]) == {"config", "overrides"}
    config = app["args"]["config"]
    assert not Path(config).is_absolute() and (REPO / config).is_file(), f"{config} does not exist"
    overrides = dict(o.split("=", 1) for o in app["args"]["overrides"])
    # Bound beyond loopback inside the cluster, so the app requires its token; the app's
    # port is the one Serve's proxies listen on (KubeRay's serve service points there).
    assert overrides["host"] == serve_config["http_options"]["host"] == "0.0.0.0"
    assert int(overrides["port"]) == serve_config["http_options"]["port"] == 8000


def test_rayservice_app_builder_exists_and_its_overrides_validate():
    from ray_jobs import serve as serve_job

    doc, serve_config = _rayservice()
    (app,) = serve_config["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr, None)), f"no {app['import_path']}"
    cfg = serve_job.load(str(REPO / app["args"]["config"]), app["args"]["overrides"])  # raises on a bad key
    tree = cfg.model_dump(mode="json")
    assert tree["host"] == "0.0.0.0"
    locations = [("output", tree["output"])] + [
        (f"{key}[{i}]", uri) for key in ("allowed_prefixes", "library_outputs") for i, uri in enumerate(tree[key])
    ] + [(f"models[{i}].{key}", m[key]) for i, m in enumerate(tree["models"]) for key in ("checkpoint", "evaluation")
         if m[key] is not None]  # fmt: skip
    for key, uri in locations:
        assert str(uri).startswith("s3://"), f"{key} is {uri!r}: on a cluster, locations are s3:// URIs"
    gpus_per_worker = {g["groupName"]: float(_resources(g["template"]["spec"]["containers"][0])[1].get("nvidia.com/gpu", 0))
                       for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}  # fmt: skip
    # Stated, not left to the default (1 when the cluster has a GPU as the app is built: a GPU
    # worker may not be up yet then, and the replicas would stay on CPUs).
    num_gpus = tree["separator"]["num_gpus"]
    assert num_gpus is not None and 0 < num_gpus <= gpus_per_worker["gpu"], f"separator.num_gpus is {num_gpus}"


def test_rayservice_pods_get_the_app_token_from_a_secret():
    doc, _ = _rayservice()
    header = (KUBERAY / "rayservice-serve.yaml").read_text()
    assert f"kubectl create secret generic {SERVE_TOKEN_SECRET}" in header  # how to make it
    containers = _containers(doc)
    assert len(containers) == len(_groups(doc["spec"]["rayClusterConfig"]))
    for c in containers:
        (var,) = [v for v in c.get("env", []) if v["name"] == "SEP_SERVE_TOKEN"]
        assert var == {"name": "SEP_SERVE_TOKEN",
                       "valueFrom": {"secretKeyRef": {"name": SERVE_TOKEN_SECRET, "key": "token"}}}, c["name"]  # fmt: skip
        assert {"containerPort": 8000, "name": "serve"} in c["ports"], c["name"]


def test_runtime_env_installs_the_package_from_the_working_dir():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on an unknown or malformed field
    assert "working_dir" not in env  # given by `ray job submit --working-dir .`
    packages = env["pip"]["packages"]
    assert "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in packages
    assert "-c ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/constraints.txt" in packages
    assert (REPO / "constraints.txt").is_file() and (REPO / "pyproject.toml").is_file()


def test_cluster_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(yaml.safe_load((CLUSTER / "aws.yaml").read_text())))
    assert raw["provider"]["type"] == "aws"
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")) and gpu["min_workers"] == 0 < gpu["max_workers"]
    for name, node_type in types.items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: S3 access comes from an instance role"
    assert raw["file_mounts"] == {APP_DIR: "."} and raw["rsync_filter"] == [".gitignore"]
    assert any(f"-c {APP_DIR}/constraints.txt" in cmd and cmd.endswith(f" {APP_DIR}") for cmd in raw["setup_commands"])
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in " ".join(raw["worker_start_ray_commands"])


def _create_rayjob_module():
    spec = importlib.util.spec_from_file_location("create_rayjob", KUBERAY / "create_rayjob.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nightly_cronjob_creates_the_separate_rayjob():
    docs = {d["kind"]: d for d in _docs(KUBERAY / "nightly-separate.yaml")}
    cron = docs["CronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5 and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["RoleBinding"]["subjects"][0]["name"] == pod["serviceAccountName"]
    assert docs["Role"]["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "/rayjob/create_rayjob.py", "/rayjob/rayjob-separate.yaml"]
    assert pod["volumes"][0]["configMap"]["name"] == "sep-separate-nightly"
    # The ConfigMap is made from these two files (the command in the manifest's header).
    header = (KUBERAY / "nightly-separate.yaml").read_text()
    for source in ("cluster/kuberay/rayjob-separate.yaml", "cluster/kuberay/create_rayjob.py"):
        assert f"--from-file={source}" in header and (REPO / source).is_file()

    (template,) = _docs(KUBERAY / "rayjob-separate.yaml")
    job = _create_rayjob_module().rayjob_from_template(template, "sep-separate-nightly")
    assert "name" not in job["metadata"] and job["metadata"]["generateName"] == "sep-separate-"
    assert job["metadata"]["labels"]["app.kubernetes.io/created-by"] == "sep-separate-nightly"
    assert job["spec"] == template["spec"] and _entrypoint(job)[0] == "separate"


# A value after a secret-ish name that is written out (not a $VARIABLE or a reference).
_LITERAL_SECRET = re.compile(
    r"(?i)(secret|password|passwd|token|access_key|private_key)[\w-]*[\"']?\s*[:=]\s*[\"']?(?![$<{])[A-Za-z0-9/+=_-]{12,}"
)
_FORBIDDEN = [
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{20,}"),
]


def _scanned_files() -> list[Path]:
    docs = sorted((REPO / "docs").glob("*.md"))
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file()) + [REPO / "README.md", *docs]


@pytest.mark.parametrize("path", _scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credentials_in_files(path):
    text = path.read_text()
    for pattern in [*_FORBIDDEN, _LITERAL_SECRET]:
        match = pattern.search(text)
        assert match is None, f"{path.relative_to(REPO)}: looks like a credential: {match.group(0)!r}"


def test_secrets_reach_pods_only_by_reference():
    docs = [d for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]
    for c in _containers(docs):
        for var in c.get("env", []):
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", var["name"]):
                assert "valueFrom" in var, f"{c['name']}: {var['name']} must come from a secret"
    for env_vars in [yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text()).get("env_vars", {})] + [
        yaml.safe_load(d["spec"]["runtimeEnvYAML"]).get("env_vars", {}) for _, d in _kuberay("RayJob")
    ]:
        assert not [k for k in env_vars if k.startswith("AWS_") or "TOKEN" in k], env_vars
