"""What the rendered manifests must say, per deploy.md's table and the server's own settings."""

from __future__ import annotations

import functools
import os

import pytest

from server.settings import Settings
from tests.support.deploy_tools import (
    GPU_OVERLAYS,
    OPTIONAL_COMPONENTS,
    SERVING_OVERLAYS,
    dockerfile_env,
    dockerfile_stages,
    documents,
    only,
    quantity_bytes,
    render,
    render_with_components,
    server_container,
)

SETTING_VARIABLES = {f"AIROBOROS_{name.upper()}" for name in Settings.model_fields}
STARTUP_BUDGET_S = 10 * 180


@functools.cache
def app_route_paths() -> set[str]:
    """The paths the server's app factory routes (the app is built, never started)."""
    from prometheus_client import CollectorRegistry

    from server.app import create_app
    from server.metrics import Metrics

    app = create_app(Settings(), metrics=Metrics(CollectorRegistry()))
    return {route.path for route in app.routes}


def rendered(overlay: str) -> list[dict]:
    return documents(render(overlay))


def deployment(overlay: str) -> dict:
    return only(rendered(overlay), "Deployment")


def pod_spec(overlay: str) -> dict:
    return deployment(overlay)["spec"]["template"]["spec"]


def config(overlay: str) -> dict[str, str]:
    return only(rendered(overlay), "ConfigMap")["data"]


def container_env(overlay: str) -> dict[str, str]:
    """The server's environment as the pod sees it: the ConfigMap, then explicit `env`."""
    container = server_container(deployment(overlay))
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in rendered(overlay) if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def volume(overlay: str, name: str) -> dict:
    return next(v for v in pod_spec(overlay)["volumes"] if v["name"] == name)


def mount(overlay: str, name: str) -> dict:
    return next(m for m in server_container(deployment(overlay))["volumeMounts"] if m["name"] == name)


serving = pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
gpu = pytest.mark.parametrize("overlay", GPU_OVERLAYS)


# --- probes ------------------------------------------------------------------------------


@serving
def test_probe_paths_are_routes_of_the_server(overlay: str) -> None:
    routes = app_route_paths()
    container = server_container(deployment(overlay))
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths["readinessProbe"] == "/health/ready"
    assert paths["livenessProbe"] == "/health/live"
    assert set(paths.values()) <= routes, f"probe paths {paths} not among the app's routes"


@serving
def test_probes_use_the_container_port(overlay: str) -> None:
    container = server_container(deployment(overlay))
    port_names = {port["name"] for port in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


@serving
def test_startup_probe_allows_thirty_minutes_to_load_weights(overlay: str) -> None:
    startup = server_container(deployment(overlay))["startupProbe"]
    assert startup["periodSeconds"] == 10 and startup["failureThreshold"] == 180


@serving
def test_liveness_needs_three_misses_before_a_restart(overlay: str) -> None:
    assert server_container(deployment(overlay))["livenessProbe"]["failureThreshold"] >= 3


# --- shutdown and rollout ------------------------------------------------------------------


@serving
def test_grace_period_covers_prestop_drain_and_engine_shutdown(overlay: str) -> None:
    container = server_container(deployment(overlay))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0].endswith("sleep"), "preStop must be an exec sleep"
    prestop_s = float(command[1])
    drain_s = float(container_env(overlay)["AIROBOROS_DRAIN_TIMEOUT"])
    grace_s = pod_spec(overlay)["terminationGracePeriodSeconds"]
    assert (prestop_s, drain_s, grace_s) == (15, 45, 75)
    assert grace_s >= prestop_s + drain_s + 15


def test_drain_timeout_key_is_the_servers_setting() -> None:
    assert "drain_timeout" in Settings.model_fields
    assert Settings.model_fields["drain_timeout"].default == 45
    assert "AIROBOROS_DRAIN_TIMEOUT" in SETTING_VARIABLES


@serving
def test_rollout_adds_one_replica_before_removing_one(overlay: str) -> None:
    spec = deployment(overlay)["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["progressDeadlineSeconds"] >= STARTUP_BUDGET_S


@serving
def test_disruption_budget_allows_one_replica_down(overlay: str) -> None:
    pdb = only(rendered(overlay), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment(overlay)["spec"]["selector"]["matchLabels"]


# --- settings --------------------------------------------------------------------------------


@serving
def test_every_airoboros_variable_is_a_server_setting(overlay: str) -> None:
    names = {name for name in container_env(overlay) if name.startswith("AIROBOROS_")}
    assert names and names <= SETTING_VARIABLES, f"unknown settings: {sorted(names - SETTING_VARIABLES)}"


@serving
def test_every_config_value_parses_as_the_setting(overlay: str) -> None:
    env = {k: v for k, v in container_env(overlay).items() if k != "AIROBOROS_API_KEY_FILE"}
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AIROBOROS_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings()
    assert settings.drain_timeout == 45 and settings.keep_alive_timeout == 75
    assert settings.host == "0.0.0.0"


@serving
def test_keep_alive_outlasts_load_balancer_idle_timeouts(overlay: str) -> None:
    assert config(overlay)["AIROBOROS_KEEP_ALIVE_TIMEOUT"] == "75"
    assert float(config(overlay)["AIROBOROS_KEEP_ALIVE_TIMEOUT"]) > 60


@serving
def test_server_port_is_the_container_port(overlay: str) -> None:
    container = server_container(deployment(overlay))
    http = next(port for port in container["ports"] if port["name"] == "http")
    assert int(container_env(overlay)["AIROBOROS_PORT"]) == http["containerPort"]
    assert container_env(overlay)["AIROBOROS_HOST"] == "0.0.0.0"


def test_tensor_parallel_overlay_serves_bf16_mpt30b_on_two_gpus() -> None:
    env = container_env("gpu-tp2")
    assert env["AIROBOROS_TENSOR_PARALLEL_SIZE"] == "2"
    assert env["AIROBOROS_DTYPE"] == "bfloat16"
    assert env["AIROBOROS_MODEL"].startswith("/models/")


def test_one_gpu_overlay_serves_a_checkpoint_from_the_volume() -> None:
    env = container_env("gpu-1")
    assert env["AIROBOROS_TENSOR_PARALLEL_SIZE"] == "1"
    assert env["AIROBOROS_MODEL"].startswith("/models/")


def test_cpu_overlay_serves_the_embedded_default_model() -> None:
    env = container_env("cpu")
    assert "AIROBOROS_MODEL" not in env and "AIROBOROS_TENSOR_PARALLEL_SIZE" not in env
    assert env["AIROBOROS_CACHE_DIR"].startswith(mount("cpu", "cache")["mountPath"])
    limits = server_container(deployment("cpu"))["resources"]["limits"]
    assert not any("gpu" in name for name in limits)


def test_cpu_overlay_sizes_openmp_to_its_cpu_limit_without_pinning() -> None:
    # vLLM's auto-binding would pin every replica on a node to the same cores (a CPU limit is a
    # quota, not a cpuset); unpinned, with one OpenMP thread per CPU of the limit.
    env = container_env("cpu")
    limits = server_container(deployment("cpu"))["resources"]["limits"]
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert int(env["OMP_NUM_THREADS"]) == int(limits["cpu"])


# --- GPUs, memory, volumes -------------------------------------------------------------------


@gpu
def test_gpu_requests_equal_limits(overlay: str) -> None:
    resources = server_container(deployment(overlay))["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    gpus = int(resources["limits"]["nvidia.com/gpu"])
    assert gpus == int(container_env(overlay)["AIROBOROS_TENSOR_PARALLEL_SIZE"])


@gpu
def test_gpu_pods_tolerate_the_gpu_taint_and_select_gpu_nodes(overlay: str) -> None:
    spec = pod_spec(overlay)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"]


def kv_offload_bytes(overlay: str) -> float:
    """The host-RAM KV tier the overlay sets (0 when none): vLLM maps it in /dev/shm."""
    return float(container_env(overlay).get("AIROBOROS_KV_OFFLOAD_GIB", 0)) * 2**30


def test_tensor_parallel_shared_memory_is_16_to_20_gib() -> None:
    """16-20 GiB for NCCL and IPC, beside the host-RAM KV tier that vLLM maps in /dev/shm too."""
    shm = volume("gpu-tp2", "dshm")["emptyDir"]
    assert shm["medium"] == "Memory"
    assert 16 * 2**30 <= quantity_bytes(shm["sizeLimit"]) - kv_offload_bytes("gpu-tp2") <= 20 * 2**30
    assert mount("gpu-tp2", "dshm")["mountPath"] == "/dev/shm"


@gpu
def test_gpu_overlays_keep_a_host_ram_kv_tier_below_the_memory_limit(overlay: str) -> None:
    """vLLM's CPU offloading maps its whole buffer as one file in /dev/shm
    (vllm/v1/kv_offload/cpu/shared_offload_region.py) and touches all of it at start: the RAM
    emptyDir must hold it beside the IPC share, and the memory limit both and the processes."""
    from server.mpt.sizing import MPT_30B, kv_bytes_per_token

    env = container_env(overlay)
    Settings(kv_offload_gib=env["AIROBOROS_KV_OFFLOAD_GIB"])  # a valid value of the setting
    offload = kv_offload_bytes(overlay)
    limits = server_container(deployment(overlay))["resources"]["limits"]
    limit = quantity_bytes(limits["memory"])
    shm = quantity_bytes(volume(overlay, "dshm")["emptyDir"]["sizeLimit"])
    full_length = int(env["AIROBOROS_MAX_MODEL_LEN"]) * kv_bytes_per_token(MPT_30B, "bfloat16")
    assert offload >= full_length, "the tier should keep at least one full-length conversation"
    assert shm - offload >= 4 * 2**30, "/dev/shm keeps its IPC share beside the tier"
    assert offload + 24 * 2**30 <= limit - (shm - offload), "the processes keep 24 GiB beside both"
    assert offload < limit


@serving
def test_memory_limit_leaves_room_beyond_shared_memory(overlay: str) -> None:
    limit = quantity_bytes(server_container(deployment(overlay))["resources"]["limits"]["memory"])
    shm = quantity_bytes(volume(overlay, "dshm")["emptyDir"]["sizeLimit"])
    assert limit >= 2 * shm, "a RAM-backed /dev/shm counts against the memory limit"


@gpu
def test_weights_come_read_only_from_a_volume(overlay: str) -> None:
    assert mount(overlay, "models") == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert volume(overlay, "models")["persistentVolumeClaim"]["readOnly"] is True
    claim = volume(overlay, "models")["persistentVolumeClaim"]["claimName"]
    assert only(documents(render("weights")), "PersistentVolumeClaim")["metadata"]["name"] == claim


def test_cpu_overlay_mounts_no_weights() -> None:
    assert all(v["name"] != "models" for v in pod_spec("cpu")["volumes"])


@serving
def test_caches_are_on_empty_dirs(overlay: str) -> None:
    for name, path in (("cache", "/var/cache/airoboros"), ("tmp", "/tmp"), ("home", "/home/airoboros")):
        assert "emptyDir" in volume(overlay, name)
        assert mount(overlay, name)["mountPath"] == path


COMPILE_CACHE_PATH = "/var/cache/airoboros/compile"
# Where vLLM, Triton and torch Inductor keep what they compile (vLLM: VLLM_CACHE_ROOT/
# torch_compile_cache, and on CPU hosts VLLM_CACHE_ROOT/torchinductor, server/engine/args.py).
COMPILE_CACHE_VARIABLES = ("VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")


@gpu
def test_compile_cache_outlives_the_pod_on_a_shared_claim(overlay: str) -> None:
    # A rolling restart or a scale-up loads what an earlier pod compiled instead of compiling
    # again: the caches sit on a claim, not on the per-pod `cache` emptyDir around it.
    assert mount(overlay, "compile-cache") == {"name": "compile-cache", "mountPath": COMPILE_CACHE_PATH}
    claim_name = volume(overlay, "compile-cache")["persistentVolumeClaim"]["claimName"]
    env = container_env(overlay)
    for name in COMPILE_CACHE_VARIABLES:
        assert env[name].startswith(COMPILE_CACHE_PATH + "/"), f"{name}={env[name]} is not on the claim"
    # The claim comes with the overlay (no separate apply, unlike the weights) ...
    claim = only(rendered(overlay), "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == claim_name
    # ... and pods on several nodes (replicas, the surge pod) mount it read-write at once.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert 1 * 2**30 <= quantity_bytes(claim["spec"]["resources"]["requests"]["storage"]) <= 50 * 2**30


@gpu
def test_compile_cache_claim_leaves_the_other_caches_per_pod(overlay: str) -> None:
    cache = mount(overlay, "cache")["mountPath"]
    assert COMPILE_CACHE_PATH.startswith(cache + "/")
    env = container_env(overlay)
    assert not env.get("HF_HOME", "").startswith(COMPILE_CACHE_PATH)
    assert env["AIROBOROS_CACHE_DIR"].startswith(cache + "/")
    assert not env["AIROBOROS_CACHE_DIR"].startswith(COMPILE_CACHE_PATH)


def test_gpu_image_keeps_its_compile_caches_where_the_component_mounts_the_claim() -> None:
    image = dockerfile_env(dockerfile_stages()["gpu"])
    for overlay in GPU_OVERLAYS:
        env = container_env(overlay)
        assert {name: image[name] for name in COMPILE_CACHE_VARIABLES} == {
            name: env[name] for name in COMPILE_CACHE_VARIABLES
        }
    # The same paths without the claim (docker run, another overlay): inside the writable cache tree.
    assert all(image[name].startswith(COMPILE_CACHE_PATH + "/") for name in COMPILE_CACHE_VARIABLES)


def test_cpu_overlay_compiles_nothing_and_mounts_no_compile_cache() -> None:
    # enforce-eager: nothing to keep, so no claim (and no RWX storage class) on a laptop cluster.
    assert container_env("cpu")["AIROBOROS_ENFORCE_EAGER"] == "true"
    assert all(v["name"] != "compile-cache" for v in pod_spec("cpu")["volumes"])
    assert not [doc for doc in rendered("cpu") if doc["kind"] == "PersistentVolumeClaim"]
    assert not set(COMPILE_CACHE_VARIABLES) & set(container_env("cpu"))
    # The image's VLLM_CACHE_ROOT lies on the cache emptyDir there.
    image = dockerfile_env(dockerfile_stages()["cpu"])
    assert image["VLLM_CACHE_ROOT"].startswith(mount("cpu", "cache")["mountPath"] + "/")


# --- security --------------------------------------------------------------------------------


@serving
def test_pod_runs_as_uid_1000_with_the_restricted_profile(overlay: str) -> None:
    spec = pod_spec(overlay)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (1000, 1000)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    context = server_container(deployment(overlay))["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True


@pytest.mark.parametrize("overlay, read_only", [("gpu-tp2", False), ("gpu-1", False), ("cpu", True)])
def test_read_only_root_filesystem_except_on_gpu_pods(overlay: str, read_only: bool) -> None:
    assert server_container(deployment(overlay))["securityContext"]["readOnlyRootFilesystem"] is read_only


@serving
def test_service_account_mounts_no_token(overlay: str) -> None:
    account = only(rendered(overlay), "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod_spec(overlay)["serviceAccountName"] == account["metadata"]["name"]


@serving
def test_api_keys_come_from_a_secret_file(overlay: str) -> None:
    secret = volume(overlay, "api-keys")["secret"]
    key_mount = mount(overlay, "api-keys")
    assert key_mount["readOnly"] is True
    key_file = container_env(overlay)["AIROBOROS_API_KEY_FILE"]
    assert key_file == f"{key_mount['mountPath']}/{secret['items'][0]['path']}"
    container = server_container(deployment(overlay))
    assert not any("secretKeyRef" in (item.get("valueFrom") or {}) for item in container.get("env", []))


# --- network ---------------------------------------------------------------------------------


@serving
def test_network_policy_admits_only_the_service_port(overlay: str) -> None:
    policy = only(rendered(overlay), "NetworkPolicy")
    service = only(rendered(overlay), "Service")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert ports == [{"port": service["spec"]["ports"][0]["targetPort"], "protocol": "TCP"}]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]


@serving
def test_service_has_no_session_affinity(overlay: str) -> None:
    service = only(rendered(overlay), "Service")
    assert service["spec"]["sessionAffinity"] == "None"
    assert service["spec"]["selector"] == deployment(overlay)["spec"]["template"]["metadata"]["labels"]


# --- optional components ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_components(tmp_path_factory) -> list[dict]:
    return documents(
        render_with_components("gpu-tp2", OPTIONAL_COMPONENTS, tmp_path_factory.mktemp("optional"))
    )


def server_deployment(docs: list[dict]) -> dict:
    # The optional components bring more (the inference gateway's endpoint picker): the server's by name.
    (found,) = [doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "airoboros-server"]
    return found


def server_service(docs: list[dict]) -> dict:
    (found,) = [doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "airoboros-server"]
    return found


def test_autoscaling_follows_the_engine_queue_never_utilisation(with_components: list[dict]) -> None:
    scaled = only(with_components, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == server_deployment(with_components)["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert [trigger["type"] for trigger in triggers] == ["prometheus"]
    assert "vllm:num_requests_waiting" in triggers[0]["metadata"]["query"]
    assert scaled["metadata"]["namespace"] == "airoboros"


def test_service_monitor_scrapes_the_metrics_route(with_components: list[dict]) -> None:
    monitor = only(with_components, "ServiceMonitor")
    service = server_service(with_components)
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] in app_route_paths()
    assert monitor["metadata"]["namespace"] == "airoboros"
