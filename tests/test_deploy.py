"""The deployment files: cluster.yaml (`ray up`), deploy/rayjob.yaml and deploy/rayservice.yaml.

Offline and fast: nothing here starts Ray, reaches a cloud or imports serve/app.py (its
import binds the app). cluster.yaml goes through the cluster launcher's own steps:
`prepare_config` (fills Ray's AWS defaults, merges the setup commands) then `validate_config`
(Ray's JSON schema), as `ray up` does before it touches AWS.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")
AUTH_MODE = re.compile(r"RAY_AUTH_MODE=(\w+)")
# KubeRay manifest -> (its kind, the field that holds its RayCluster spec)
KUBERAY = {
    "deploy/rayjob.yaml": ("RayJob", "rayClusterSpec"),
    "deploy/rayservice.yaml": ("RayService", "rayClusterConfig"),
}


def load(rel: str):
    return yaml.safe_load((ROOT / rel).read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    cfg = prepare_config(load("cluster.yaml"))
    validate_config(cfg)
    return cfg


def gpu_worker_types(cfg: dict) -> dict[str, dict]:
    return {
        name: t
        for name, t in cfg["available_node_types"].items()
        if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1
    }


def setup_commands(cfg: dict, node_type: str) -> list[str]:
    """What the launcher runs on a node of this type (a type's own list replaces the rest)."""
    if node_type == cfg["head_node_type"]:
        return cfg["head_setup_commands"]
    return cfg["available_node_types"][node_type].get(
        "worker_setup_commands", cfg["worker_setup_commands"]
    )


def test_cluster_yaml_passes_rays_schema(cluster):
    assert cluster["provider"]["type"] == "aws"
    assert cluster["cluster_name"] == "r2ps"


def test_rays_schema_is_strict():
    # The check above has teeth: a misspelt key fails Ray's schema.
    bad = load("cluster.yaml")
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(bad))


def test_cpu_head_and_autoscaled_gpu_workers(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    workers = gpu_worker_types(cluster)
    assert workers, "no worker node type declares a GPU"
    for t in workers.values():
        assert t["node_config"]["InstanceType"].split(".")[0] in GPU_FAMILIES
        assert t["min_workers"] == 0 < t["max_workers"] <= cluster["max_workers"]


def test_every_node_installs_the_gpu_extra_and_this_ray(cluster):
    ray_pin = re.compile(rf"ray\[[a-z,]+\]=={re.escape(ray.__version__)}\b")
    for node_type in cluster["available_node_types"]:
        text = "\n".join(setup_commands(cluster, node_type))
        assert re.search(r"pip install .*-e \"?\.\[gpu\]", text), node_type
        assert ray_pin.search(text), f"{node_type}: Ray is not pinned to {ray.__version__}"
        # The CPU build of torch and faiss-cpu belong to the laptop, never to a GPU node.
        assert "[cpu]" not in text and "whl/cpu" not in text, node_type
    assert cluster["file_mounts"].get("~/r2ps") == "."
    assert ".gitignore" in cluster["rsync_filter"]


def test_storage_is_an_s3_uri(cluster):
    text = "\n".join(cluster["setup_commands"])
    assert re.search(r"export R2PS_STORAGE=s3://\S+", text)


def test_one_auth_mode_everywhere(cluster):
    commands = [
        c
        for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
        for c in cluster[key]
    ]
    modes = {m for c in commands for m in AUTH_MODE.findall(c)}
    assert len(modes) == 1, f"RAY_AUTH_MODE differs between commands: {modes}"
    (mode,) = modes
    for c in commands:
        if "ray start" in c:
            assert f"RAY_AUTH_MODE={mode}" in c, c
    if mode == "token":
        assert "~/.ray/auth_token" in cluster["file_mounts"]
    for rel in KUBERAY:
        assert ray_cluster_spec(rel)["authOptions"]["mode"] == mode, rel


# --- KubeRay ---


def ray_cluster_spec(rel: str) -> dict:
    return load(rel)["spec"][KUBERAY[rel][1]]


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def gpu_groups(cluster_spec: dict) -> list[dict]:
    return [
        g
        for g in cluster_spec["workerGroupSpecs"]
        if any(
            int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
            for c in g["template"]["spec"]["containers"]
        )
    ]


@pytest.mark.parametrize("rel", KUBERAY)
def test_kuberay_manifest(rel):
    doc = load(rel)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", KUBERAY[rel][0])
    spec = ray_cluster_spec(rel)
    assert spec["rayVersion"] == ray.__version__
    assert len({c["image"] for c in containers(spec)}) == 1, "one image for head and workers"
    for g in gpu_groups(spec):
        assert g["minReplicas"] == 0 < g["maxReplicas"]


def test_rayjob_runs_the_pipeline_on_gpus():
    spec = load("deploy/rayjob.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"] and "--preset" in argv
    assert (ROOT / argv[1]).is_file(), f"the RayJob runs {argv[1]}, which does not exist"
    assert gpu_groups(spec["rayClusterSpec"]), "no worker group asks for nvidia.com/gpu"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert runtime_env["env_vars"]["R2PS_STORAGE"].startswith("s3://")


def mounted_claims(cluster_spec: dict, path: str) -> set[tuple[str, str]]:
    """(volume claim, mount path) holding `path`, over every container; fails where one lacks it."""
    found = set()
    for group in [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for c in pod["containers"]:
            mounts = [
                m
                for m in c.get("volumeMounts", [])
                if PurePosixPath(path).is_relative_to(m["mountPath"]) and m["name"] in claims
            ]
            assert mounts, f"{c['name']}: {path} is not on a mounted volume claim"
            found.add((claims[mounts[0]["name"]], mounts[0]["mountPath"]))
    return found


def test_rayservice_serves_what_the_rayjob_wrote(tmp_path, monkeypatch):
    """The RayService reads `<the RayJob's --out>/serve.yaml`, named as the pipeline names it."""
    import r2ps.pipeline.run as pipeline_run
    from r2ps.config import parse_config
    from r2ps.pipeline.config import PipelineConfig
    from r2ps.serving.settings import CONFIG_ENV

    job = parse_config(
        PipelineConfig, shlex.split(load("deploy/rayjob.yaml")["spec"]["entrypoint"])[2:]
    )
    assert PurePosixPath(job.out).is_absolute(), f"the RayJob writes to {job.out!r}: pass --out"

    # Where the pipeline puts serve.yaml under its --out: its own run_pipeline, stages not
    # run but the evaluation's served choice (served.json: the retriever alone).
    from r2ps.search.cascade import SERVED_FILE

    def no_run(stages, after=None):
        evaluation = Path(next(s for s in stages if s.name == "evaluate").config.out)
        evaluation.mkdir(parents=True, exist_ok=True)
        (evaluation / SERVED_FILE).write_text("{}")
        return {}

    monkeypatch.setattr(pipeline_run, "run_stages", no_run)
    monkeypatch.delenv("R2PS_STORAGE", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    run = pipeline_run.run_pipeline(dataclasses.replace(job, out=str(out)))
    written = Path(run["serve_config"]).relative_to(out.resolve())
    expected = str(PurePosixPath(job.out) / written.as_posix())
    # ... and every path in it lies under --out, so on the shared volume.
    for key, value in yaml.safe_load(Path(run["serve_config"]).read_text()).items():
        if isinstance(value, str) and value.startswith("/"):
            assert Path(value).is_relative_to(out.resolve()), (key, value)

    service = ray_cluster_spec("deploy/rayservice.yaml")
    for c in containers(service):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get(CONFIG_ENV) == expected, f"{c['name']}: {CONFIG_ENV}={env.get(CONFIG_ENV)}"
    # serve.yaml holds absolute paths: the same claim at the same mount path on both sides.
    shared = mounted_claims(ray_cluster_spec("deploy/rayjob.yaml"), job.out)
    assert len(shared) == 1 and shared == mounted_claims(service, expected)


def served_config() -> dict:
    return yaml.safe_load(load("deploy/rayservice.yaml")["spec"]["serveConfigV2"])


def test_rayservice_serves_what_serve_build_wrote():
    # serve/config.yaml, except that the proxy listens on the pod's address.
    expected = copy.deepcopy(load("serve/config.yaml"))
    expected["http_options"]["host"] = "0.0.0.0"
    assert served_config() == expected


def module_source(import_path: str) -> tuple[ast.Module, str]:
    module, attr = import_path.split(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{import_path}: no {path.relative_to(ROOT)}"
    return ast.parse(path.read_text()), attr


def deployment_classes(tree: ast.Module) -> set[str]:
    """Classes decorated with `serve.deployment` (bare or called), in the module and in the
    repository modules it imports from (serve/app.py binds serve/deployments.py's)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serve."):
            names |= deployment_classes(module_source(f"{node.module}:_")[0])
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                d = d.func if isinstance(d, ast.Call) else d
                if ast.unparse(d) == "serve.deployment":
                    names.add(node.name)
    return names


@pytest.mark.parametrize("rel", ["serve/config.yaml", "deploy/rayservice.yaml"])
def test_import_paths_and_deployment_names_match_the_app(rel):
    config = served_config() if rel.startswith("deploy/") else load(rel)
    for app in config["applications"]:
        tree, attr = module_source(app["import_path"])
        bound = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        assert attr in bound, f"{app['import_path']}: no module-level `{attr} = ...`"
        assert {d["name"] for d in app["deployments"]} == deployment_classes(tree)


@pytest.mark.parametrize("rel", ["serve/config.yaml", "deploy/rayservice.yaml"])
def test_serve_configs_leave_gpus_to_detection(rel):
    """A deployment's ray_actor_options in a Serve config replace the code's whole dict:
    a num_gpus written by `serve build` on a CPU machine would keep the Ranker off the GPUs
    of the cluster it is deployed to (serve/app.py asks for them when there are some)."""
    config = served_config() if rel.startswith("deploy/") else load(rel)
    for app in config["applications"]:
        for deployment in app["deployments"]:
            if deployment["name"] in ("Retriever", "Ranker"):
                assert "ray_actor_options" not in deployment, deployment["name"]
