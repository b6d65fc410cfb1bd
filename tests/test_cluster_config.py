"""The cluster files in cluster/ — checked offline, with Ray's own code where Ray has it.

- `ray up` configs (gpu.yaml, cpu.yaml) go through what `ray up` runs before it touches AWS:
  `prepare_config` (merges the AWS defaults file; no boto3 call, no credentials) then
  `validate_config` (Ray's JSON schema plus a few cross-field rules). Deliberately broken copies
  must fail with Ray's specific message. Rules Ray does not enforce but this project relies on
  (head takes no work, spot has an on-demand twin, only SSH is open, S3 through instance profiles,
  per-type min_workers <= max_workers) are checked by `project_problems`.
- The Ray version in every image tag and `rayVersion` equals the `ray[...]==` pin of pyproject.toml.
- KubeRay manifests: structure, images, resources, and the RayJob's runtime env through Ray's own
  `RuntimeEnv` validation.
- Every `python jobs/X.py …` written in cluster/ or docs/full-run.md uses flags the job's argparse
  defines; complete commands are parsed by the job's own `parse_args`, config validation included.
- No credentials anywhere in cluster/.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import os
import re
import shlex
from unittest import mock

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
RAY_UP_CONFIGS = ("gpu.yaml", "cpu.yaml")
RAYJOB = os.path.join(CLUSTER, "kuberay", "rayjob-pretrain.yaml")
RAYCLUSTER = os.path.join(CLUSTER, "kuberay", "raycluster-data.yaml")
FULL_RUN_DOC = os.path.join(ROOT, "docs", "full-run.md")
JOBS = ("prepare_corpus", "train_tokenizer", "tokenize_corpus", "pretrain", "export")


# ---------------------------------------------------------------------------------------------
# helpers


@functools.cache
def pinned_ray_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", d.replace(" ", "")))]
    assert len(pins) == 1, f"pyproject.toml should pin ray exactly once with ==, found {pins}"
    return pins[0]


def load_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def ray_up_config(name: str) -> dict:
    return load_yaml(os.path.join(CLUSTER, name))


def ray_check(config: dict) -> dict:
    """What `ray up` does to a config before any cloud call; returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_rejection(config: dict) -> BaseException:
    try:
        ray_check(config)
    except Exception as e:  # noqa: BLE001 - the caller asserts the exact type and message
        return e
    pytest.fail("Ray accepted a broken cluster config")


def is_spot(node_type: dict) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def project_problems(config: dict) -> list[str]:
    """This project's rules for a prepared `ray up` config (Ray itself does not check these)."""
    problems = []
    types, head = config["available_node_types"], config["head_node_type"]
    for name, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", config["max_workers"])
        if lo > hi:
            problems.append(f"{name}: min_workers {lo} > max_workers {hi}")
        if "IamInstanceProfile" not in t["node_config"]:
            problems.append(f"{name}: no IamInstanceProfile (S3 access goes through instance profiles)")
    res = types[head]["resources"]
    if res.get("CPU") != 0 or res.get("GPU", 0) != 0:
        problems.append(f"head: must advertise CPU 0 and GPU 0 so no work lands on it, has {res}")
    if is_spot(types[head]):
        problems.append("head: must be on-demand (losing the head loses the cluster)")
    workers = {n: t for n, t in types.items() if n != head}
    spot = {n: t for n, t in workers.items() if is_spot(t)}
    if not spot:
        problems.append("no spot worker type")
    for name, t in spot.items():
        shape = (t["node_config"]["InstanceType"], t["resources"])
        twins = [
            n
            for n, u in workers.items()
            if not is_spot(u)
            and (u["node_config"]["InstanceType"], u["resources"]) == shape
            and u.get("priority", 0) < t.get("priority", 0)
        ]
        if not twins:
            problems.append(f"{name}: no on-demand fallback type of the same shape with a lower priority")
    extra = config["provider"].get("security_group", {}).get("IpPermissions")
    if extra:
        problems.append(f"security group: ingress beyond Ray's SSH + intra-cluster rules: {extra}")
    start = " ".join(config["head_start_ray_commands"])
    if "--dashboard-host=127.0.0.1" not in start:
        problems.append("head start: the dashboard must bind 127.0.0.1 (reached through `ray dashboard`)")
    return problems


def worker_type(config: dict, spot: bool) -> str:
    return next(
        n
        for n, t in config["available_node_types"].items()
        if n != config["head_node_type"] and is_spot(t) == spot
    )


@functools.cache
def job_module(name: str):
    spec = importlib.util.spec_from_file_location(
        f"electra_ray_job_{name}", os.path.join(ROOT, "jobs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Captured(Exception):
    pass


@functools.cache
def job_flags(name: str) -> frozenset[str]:
    """The option strings of the parser that jobs/<name>.py's parse_args builds (captured, not run)."""
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise _Captured

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with pytest.raises(_Captured):
            job_module(name).parse_args([])
    return frozenset(s for action in seen["parser"]._actions for s in action.option_strings)


SHELL_STOP = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&", ")"}
PLACEHOLDERS = ("...", "…")
JOB_CALL = re.compile(r"python3?\s+jobs/(\w+)\.py\b([^\n`]*)")


def job_commands(text: str) -> list[tuple[str, list[str]]]:
    """(job, argv) for every `python jobs/<job>.py …` in text; shell continuations are joined, also
    inside `#` comment blocks, and the argv ends at the first shell operator."""
    text = re.sub(r"\\\n[ \t]*(?:#[ \t]*)?", " ", text)
    found = []
    for m in JOB_CALL.finditer(text):
        argv = []
        for tok in shlex.split(m.group(2).split(" #")[0], posix=True):
            if tok in SHELL_STOP or tok.startswith((">", "2>")):
                break
            argv.append(tok)
        found.append((m.group(1), argv))
    return found


def strings_in(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return []


def fenced_code(markdown: str) -> str:
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M))


def cluster_files() -> list[str]:
    out = []
    for dirpath, _, names in os.walk(CLUSTER):
        out += [os.path.join(dirpath, n) for n in sorted(names)]
    return out


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def check_flags(job: str, argv: list[str], where: str) -> None:
    assert job in JOBS, f"{where}: jobs/{job}.py does not exist"
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    unknown = flags - job_flags(job)
    assert not unknown, f"{where}: jobs/{job}.py has no flag(s) {sorted(unknown)}"


def parse_job(job: str, argv: list[str], where: str):
    """The job's own parse_args (argparse + config validation); a clear failure instead of SystemExit."""
    try:
        return job_module(job).parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: jobs/{job}.py rejects {shlex.join(argv)} (argparse exit {e.code})")
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{where}: jobs/{job}.py rejects {shlex.join(argv)}: {e}")


# ---------------------------------------------------------------------------------------------
# ray up configs: Ray's validation


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_accepts_the_cluster_config(name):
    prepared = ray_check(ray_up_config(name))
    assert project_problems(prepared) == []
    # prepare_config merged the setup lists the way `ray up` runs them
    assert prepared["worker_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def _drop_provider(c):
    del c["provider"]


def _head_is_not_a_type(c):
    c["head_node_type"] = "gpu_head"


def _no_head_type(c):
    del c["head_node_type"]  # the AWS defaults then name "ray.head.default", which is not ours


def _negative_max_workers(c):
    c["max_workers"] = -1


def _unknown_top_level_key(c):
    c["max_worker"] = 4


def _typo_in_node_type(c):
    c["available_node_types"][worker_type(c, spot=True)]["min_worker"] = 1


def _fractional_resources(c):
    c["available_node_types"][worker_type(c, spot=True)]["resources"]["CPU"] = 0.5


def _node_type_without_resources(c):
    del c["available_node_types"][worker_type(c, spot=False)]["resources"]


def _min_workers_over_global_max(c):
    c["max_workers"] = 2
    c["available_node_types"][worker_type(c, spot=False)]["min_workers"] = 3
    c["available_node_types"][worker_type(c, spot=False)]["max_workers"] = 3


def _docker_image_misspelt(c):
    c["docker"]["imag"] = c["docker"].pop("image")  # caught before the schema: a container without an image


def _unknown_docker_key(c):
    c["docker"]["run_option"] = ["--shm-size=8g"]


# (mutation, exception type, text Ray's message must contain)
BROKEN = [
    (_drop_provider, KeyError, "provider"),
    (_head_is_not_a_type, ValueError, "`head_node_type` must be one of `available_node_types`"),
    (_no_head_type, ValueError, "`head_node_type` must be one of `available_node_types`"),
    (_negative_max_workers, jsonschema.ValidationError, "-1 is less than the minimum of 0"),
    (_unknown_top_level_key, jsonschema.ValidationError, "('max_worker' was unexpected)"),
    (_typo_in_node_type, jsonschema.ValidationError, "('min_worker' was unexpected)"),
    (_fractional_resources, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
    (_node_type_without_resources, jsonschema.ValidationError, "'resources' is a required property"),
    (
        _min_workers_over_global_max,
        ValueError,
        "global `max_workers` is smaller than the sum of `min_workers`",
    ),
    (_docker_image_misspelt, AssertionError, "Must provide a container & image name"),
    (_unknown_docker_key, jsonschema.ValidationError, "('run_option' was unexpected)"),
]


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
@pytest.mark.parametrize("mutate,exc_type,message", BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN])
def test_ray_rejects_a_broken_copy(name, mutate, exc_type, message):
    config = ray_up_config(name)
    mutate(config)
    err = ray_rejection(config)
    assert type(err) is exc_type, f"expected {exc_type.__name__}, got {type(err).__name__}: {err}"
    text = err.message if isinstance(err, jsonschema.ValidationError) else str(err)
    assert message in text


def test_without_provider_the_schema_names_it():
    """`ray up` fails on the missing provider in prepare_config (KeyError); the schema says it plainly."""
    from ray.autoscaler._private.util import validate_config

    config = ray_up_config("gpu.yaml")
    del config["provider"]
    with pytest.raises(jsonschema.ValidationError) as err:
        validate_config(config)
    assert err.value.message == "'provider' is a required property"


# ---------------------------------------------------------------------------------------------
# ray up configs: this project's rules


def _min_above_max(c):
    t = c["available_node_types"][worker_type(c, spot=True)]
    t["min_workers"], t["max_workers"] = 3, 2


def _head_takes_work(c):
    c["available_node_types"][c["head_node_type"]]["resources"]["CPU"] = 4


def _no_on_demand_twin(c):
    del c["available_node_types"][worker_type(c, spot=False)]


def _public_dashboard(c):
    c["head_start_ray_commands"] = [
        s.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        for s in c["head_start_ray_commands"]
    ]


def _dashboard_port_open(c):
    c["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]


def _keys_instead_of_profile(c):
    del c["available_node_types"][worker_type(c, spot=True)]["node_config"]["IamInstanceProfile"]


PROJECT_BROKEN = [
    (_min_above_max, "min_workers 3 > max_workers 2"),
    (_head_takes_work, "head: must advertise CPU 0 and GPU 0"),
    (_no_on_demand_twin, "no on-demand fallback type"),
    (_public_dashboard, "the dashboard must bind 127.0.0.1"),
    (_dashboard_port_open, "ingress beyond Ray's SSH"),
    (_keys_instead_of_profile, "no IamInstanceProfile"),
]


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
@pytest.mark.parametrize(
    "mutate,message", PROJECT_BROKEN, ids=[b[0].__name__.strip("_") for b in PROJECT_BROKEN]
)
def test_project_rules_reject_a_broken_copy(name, mutate, message):
    config = ray_up_config(name)
    mutate(config)
    problems = project_problems(ray_check(config))  # Ray itself lets every one of these through
    assert any(message in p for p in problems), problems


# ---------------------------------------------------------------------------------------------
# one Ray version everywhere


def test_every_image_and_ray_version_matches_pyproject():
    version = pinned_ray_version()
    images, ray_versions = [], []
    for path in cluster_files():
        text = read(path)
        images += [(path, tag) for tag in re.findall(r"rayproject/ray(?:-ml)?:([\w.\-]+)", text)]
        ray_versions += [(path, v) for v in re.findall(r"rayVersion:\s*[\"']?([\w.\-]+)", text)]
        ray_versions += [(path, v) for v in re.findall(r"\bray(?:\[[^\]]*\])?==([\w.\-]+)", text)]
    for name in RAY_UP_CONFIGS:  # the image Ray itself will run, not only what the text mentions
        docker = ray_up_config(name)["docker"]
        images += [(name, img.split(":", 1)[1]) for k, img in docker.items() if k.endswith("image")]
    for path in (RAYJOB, RAYCLUSTER):
        doc = load_yaml(path)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        ray_versions.append((path, spec["rayVersion"]))
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images += [(path, c["image"].split(":", 1)[1]) for c in group["template"]["spec"]["containers"]]
    assert len(images) >= 10 and len(ray_versions) >= 2
    wrong = [(p, t) for p, t in images if not t.startswith(f"{version}-")]
    wrong += [(p, v) for p, v in ray_versions if v != version]
    assert not wrong, f"pyproject.toml pins ray=={version}; these differ: {wrong}"


def test_images_are_the_cpu_and_gpu_variants_of_one_family():
    assert ray_up_config("gpu.yaml")["docker"]["image"].endswith("-gpu")
    cpu_image = ray_up_config("cpu.yaml")["docker"]["image"]
    assert cpu_image.endswith("-cpu")
    assert cpu_image.removesuffix("-cpu") == ray_up_config("gpu.yaml")["docker"]["image"].removesuffix("-gpu")


# ---------------------------------------------------------------------------------------------
# KubeRay manifests


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_specs(spec: dict) -> list[dict]:
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


@pytest.mark.parametrize("path,kind", [(RAYJOB, "RayJob"), (RAYCLUSTER, "RayCluster")])
def test_kuberay_manifest_structure(path, kind):
    doc = load_yaml(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP", "the dashboard must not be exposed through a load balancer"
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must take no work"
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert group["maxReplicas"] > group["minReplicas"], f"{group['groupName']}: nothing to autoscale"
    for pod in pod_specs(spec):
        assert pod["serviceAccountName"] == "electra-ray", "S3 access goes through the IRSA service account"
        assert pod["containers"], "a pod template without containers"
        for c in pod["containers"]:
            assert c["image"].startswith("rayproject/ray:"), c["image"]
            limits = c["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), f"{c['name']}: cpu and memory limits are needed"
            names = {e["name"] for e in c.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert "Ingress" not in read(path) and "LoadBalancer" not in read(path)


def test_rayjob_trains_on_gpus_and_cleans_up():
    doc = load_yaml(RAYJOB)
    spec = cluster_spec(doc)
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        gpus = [
            int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            for c in group["template"]["spec"]["containers"]
        ]
        if sum(gpus):
            gpu_groups.append((group, sum(gpus)))
            assert all(c["image"].endswith("-gpu") for c in group["template"]["spec"]["containers"])
    assert gpu_groups, "the pretraining job has no worker group with nvidia.com/gpu limits"

    job, argv = job_commands(doc["spec"]["entrypoint"])[0]
    assert job == "pretrain" and doc["spec"]["entrypoint"].split()[:2] == ["python", "jobs/pretrain.py"]
    check_flags(job, argv, "RayJob entrypoint")
    cfg = parse_job(job, argv, "RayJob entrypoint")
    assert cfg.use_gpu
    assert cfg.storage_path.startswith("s3://"), "runs must outlive the cluster (shutdownAfterJobFinishes)"
    max_gpus = sum(g["maxReplicas"] * n for g, n in gpu_groups)
    assert 1 <= cfg.num_workers_min <= cfg.num_workers_max <= max_gpus


def test_rayjob_runtime_env_passes_rays_validation():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(load_yaml(RAYJOB)["spec"]["runtimeEnvYAML"])
    parsed = RuntimeEnv(**env)  # raises on an unknown field or an unsupported working_dir URI
    assert parsed["working_dir"].endswith(".zip")
    assert parsed["pip"]["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]


def test_data_cluster_has_no_gpus():
    spec = cluster_spec(load_yaml(RAYCLUSTER))
    for pod in pod_specs(spec):
        for c in pod["containers"]:
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
            assert c["image"].endswith("-cpu")


# ---------------------------------------------------------------------------------------------
# commands that call our jobs


def test_every_job_command_uses_real_flags():
    checked = 0
    for path in cluster_files() + [FULL_RUN_DOC]:
        text = read(path)
        for job, argv in job_commands(text):
            check_flags(job, argv, os.path.relpath(path, ROOT))
            checked += 1
        if path.endswith(".yaml"):  # folded YAML strings (entrypoints, setup commands) are whole commands
            for s in strings_in(load_yaml(path)):
                for job, argv in job_commands(s):
                    check_flags(job, argv, os.path.relpath(path, ROOT))
                    parse_job(job, argv, os.path.relpath(path, ROOT))
                    checked += 1
    assert checked >= 10


def test_full_run_doc_commands_parse():
    """Every job command in the runbook's code blocks is complete and accepted by the job itself."""
    seen = set()
    for job, argv in job_commands(fenced_code(read(FULL_RUN_DOC))):
        if any(p in a for a in argv for p in PLACEHOLDERS):
            continue
        parse_job(job, argv, "docs/full-run.md")
        seen.add(job)
    assert seen == set(JOBS), f"docs/full-run.md has no complete command for {sorted(set(JOBS) - seen)}"


def test_job_flag_capture_sees_the_real_parser():
    assert {"--data", "--num-workers", "--use-gpu", "--storage-path", "--name"} <= job_flags("pretrain")
    assert {"--dump", "--index", "--output", "--max-workers"} <= job_flags("prepare_corpus")
    with pytest.raises(AssertionError, match="no flag"):
        check_flags("pretrain", ["--num-gpus", "2"], "a made-up command")


# ---------------------------------------------------------------------------------------------
# no credentials


CREDENTIAL_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",
    r"ASIA[0-9A-Z]{16}",
    r"aws_secret_access_key",
    r"aws_access_key_id",
    r"aws_session_token",
    r"secretKeyRef",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"ssh_private_key",
]


def test_no_credentials_in_cluster_files():
    files = cluster_files()
    assert len(files) >= 5
    for path in files:
        text = read(path)
        for pattern in CREDENTIAL_PATTERNS:
            hit = re.search(pattern, text, flags=re.I)
            assert not hit, f"{os.path.relpath(path, ROOT)}: {hit.group(0)!r} — use instance profiles / IRSA"
