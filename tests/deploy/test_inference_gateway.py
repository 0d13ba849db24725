"""deploy/components/inference-gateway: an InferencePool of the server's pods, the endpoint
picker, and an HTTPRoute to the pool, composed with each serving overlay. The custom resources
validate against the CRD schemas of ../shared/data/k8s-crds/ (per version); the built-in kinds go
through kubernetes-validate, checkov and yamllint with the other optional components
(tests/deploy/test_checks.py)."""

from __future__ import annotations

import functools
import jsonschema
import pytest
import yaml

from server.settings import Settings
from tests.conftest import SHARED_DIR
from tests.support.deploy_tools import SERVING_OVERLAYS, documents, render_with_components, server_container

CRD_DIR = SHARED_DIR / "data" / "k8s-crds"
COMPONENT = "inference-gateway"
PICKER = "airoboros-endpoint-picker"


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the CRD's openAPIV3Schema for that version."""
    if not CRD_DIR.is_dir():
        pytest.fail(f"the CRD schemas are missing: {CRD_DIR}")
    schemas = {}
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="module", params=SERVING_OVERLAYS)
def docs(request, tmp_path_factory) -> list[dict]:
    overlay = request.param
    return documents(render_with_components(overlay, [COMPONENT], tmp_path_factory.mktemp(f"{overlay}-gateway")))


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def server_deployment(docs: list[dict]) -> dict:
    return named(docs, "Deployment", "airoboros-server")


def container_port(container: dict, port: int | str) -> dict:
    """The container port a Service or pool names, by number or by name."""
    key = "name" if isinstance(port, str) else "containerPort"
    found = [p for p in container.get("ports", []) if p[key] == port]
    assert len(found) == 1, f"{container['name']} has no port {port!r}"
    return found[0]


@pytest.mark.parametrize(("kind", "name"), [("InferencePool", "airoboros-server"), ("HTTPRoute", "airoboros-server")])
def test_custom_resources_validate_against_their_crd_schema(docs, kind, name):
    doc = named(docs, kind, name)
    schema = crd_schemas().get((doc["apiVersion"], kind))
    assert schema is not None, f"no CRD schema for {doc['apiVersion']} {kind} in {CRD_DIR}"
    jsonschema.validate(doc, schema)
    assert doc["metadata"]["namespace"] == "airoboros"


def test_the_pool_selects_the_server_pods_on_their_port(docs):
    pool = named(docs, "InferencePool", "airoboros-server")["spec"]
    template = server_deployment(docs)["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    server = next(c for c in template["spec"]["containers"] if c["name"] == "server")
    (target,) = pool["targetPorts"]
    assert container_port(server, target["number"])["name"] == "http"
    # And the pool takes only the server: the picker's own pods are not in it.
    picker_labels = named(docs, "Deployment", PICKER)["spec"]["template"]["metadata"]["labels"]
    assert not pool["selector"]["matchLabels"].items() <= picker_labels.items()


def test_the_pool_names_the_pickers_service_and_its_grpc_port(docs):
    reference = named(docs, "InferencePool", "airoboros-server")["spec"]["endpointPickerRef"]
    service = named(docs, "Service", reference["name"])["spec"]
    (port,) = [p for p in service["ports"] if p["port"] == reference["port"]["number"]]
    picker = named(docs, "Deployment", PICKER)
    assert service["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    assert picker["spec"]["selector"]["matchLabels"] == service["selector"]
    container = picker["spec"]["template"]["spec"]["containers"][0]
    for service_port in service["ports"]:  # every Service port reaches a container port
        container_port(container, service_port["targetPort"])
    assert f"--grpc-port={container_port(container, port['targetPort'])['containerPort']}" in container["args"]


def test_the_route_sends_the_api_to_the_pool(docs):
    rule, = named(docs, "HTTPRoute", "airoboros-server")["spec"]["rules"]
    backend, = rule["backendRefs"]
    assert (backend["group"], backend["kind"]) == ("inference.networking.k8s.io", "InferencePool")
    named(docs, "InferencePool", backend["name"])
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/v1"}


def picker_config(docs: list[dict]) -> dict:
    configmaps = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith(PICKER)]
    assert len(configmaps) == 1
    picker = named(docs, "Deployment", PICKER)
    volumes = picker["spec"]["template"]["spec"]["volumes"]
    assert configmaps[0]["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    (file_name, text), = configmaps[0]["data"].items()
    assert f"--config-file=/config/{file_name}" in picker["spec"]["template"]["spec"]["containers"][0]["args"]
    return yaml.safe_load(text)


def test_the_picker_scores_exact_prefix_queue_and_kv_cache_with_weights(docs):
    config = picker_config(docs)
    assert config["kind"] == "EndpointPickerConfig"
    declared = {plugin["type"] for plugin in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    weights = {ref["pluginRef"]: ref.get("weight") for ref in profile["plugins"]}
    assert set(weights) <= declared
    assert weights["precise-prefix-cache-scorer"] > weights["queue-scorer"] > 0
    assert weights["kv-cache-utilization-scorer"] > 0
    assert "max-score-picker" in weights


def test_the_replicas_send_their_kv_events_to_the_picker_with_the_named_hash(docs):
    config = picker_config(docs)
    (prefix,) = [plugin for plugin in config["plugins"] if plugin["type"] == "precise-prefix-cache-scorer"]
    picker_port = int(prefix["parameters"]["kvEventsConfig"]["zmqEndpoint"].rsplit(":", 1)[1])
    deployment = server_deployment(docs)
    server = server_container(deployment)
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in docs if doc["kind"] == "ConfigMap"}
    env = {}
    for source in server["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]])
    explicit = {item["name"]: item for item in server["env"]}
    host, port = env["AIROBOROS_KV_EVENTS_ENDPOINT"].removeprefix("tcp://").rsplit(":", 1)
    service = named(docs, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    picker = named(docs, "Deployment", PICKER)["spec"]["template"]["spec"]["containers"][0]
    kv_port = next(p for p in service["spec"]["ports"] if p["port"] == int(port))
    assert container_port(picker, kv_port["targetPort"])["containerPort"] == picker_port
    assert env["AIROBOROS_PREFIX_CACHING_HASH_ALGO"] == "sha256_cbor"
    Settings(prefix_caching_hash_algo=env["AIROBOROS_PREFIX_CACHING_HASH_ALGO"])
    # The topic the picker filters on, with the pod and the served model name it reads from it.
    topic = explicit["AIROBOROS_KV_EVENTS_TOPIC"]["value"]
    assert topic.startswith(prefix["parameters"]["kvEventsConfig"]["topicFilter"])
    assert topic == "kv@$(POD_IP)@$(AIROBOROS_SERVED_MODEL_NAME)"
    assert explicit["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert list(explicit).index("POD_IP") < list(explicit).index("AIROBOROS_KV_EVENTS_TOPIC")
    assert env.get("AIROBOROS_SERVED_MODEL_NAME"), "the topic needs the served model name in the ConfigMap"


def test_the_picker_tokenizes_through_the_pools_render_routes(docs):
    """Airoboros prompts have no chat template: the picker's token ids must come from the server's
    own render routes, through its Service, for the served model, with the API key at hand."""
    config = picker_config(docs)
    (producer,) = [plugin for plugin in config["plugins"] if plugin["type"] == "token-producer"]
    host, port = producer["parameters"]["vllm"]["url"].removeprefix("http://").rsplit(":", 1)
    service = named(docs, "Service", host)
    assert service["spec"]["selector"] == server_deployment(docs)["spec"]["selector"]["matchLabels"]
    target = next(p for p in service["spec"]["ports"] if p["port"] == int(port))["targetPort"]
    assert container_port(server_container(server_deployment(docs)), target)
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in docs if doc["kind"] == "ConfigMap"}
    (served,) = {data.get("AIROBOROS_SERVED_MODEL_NAME") for data in configmaps.values()} - {None}
    if served == "smollm2-135m-instruct":
        # The cpu overlay's stand-in: the config says what to set for it, block size included.
        (text,) = [data for name, data in configmaps.items() if name.startswith(PICKER)][0].values()
        assert f"modelName: {served}" in text and "blockSize: 128" in text
    else:
        assert producer["parameters"]["modelName"] == served
    picker = named(docs, "Deployment", PICKER)["spec"]["template"]["spec"]["containers"][0]
    key = next(item for item in picker["env"] if item["name"] == "VLLM_API_KEY")["valueFrom"]["secretKeyRef"]
    assert key["optional"] is True
    assert key["name"] in {volume.get("secret", {}).get("secretName")
                           for volume in server_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
