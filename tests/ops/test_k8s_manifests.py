"""Render every kustomize overlay, validate it offline and hold it to the project's rules.

Built-in kinds are validated against the Kubernetes JSON schemas shipped by the
``kubernetes-validate`` package (strict: unknown fields fail). The CRD kinds (Strimzi
KafkaTopic, KEDA ScaledObject, Prometheus Operator ServiceMonitor) have no schema there;
the project rules below check what matters about them. ``check_rules`` returns every
violation as text, and the mutation tests prove it catches each kind of mistake.

The overlays are rendered with ``deploy/kustomize.sh``; its first run installs kustomize
with ``go install`` (30-70 s), later runs take milliseconds. The last tests read the
Dockerfile and the Compose file, which cannot be built or run without a Docker engine.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]

from shared.events import ALL_TOPICS, Topic
from shared.settings import Settings

# The first test may install kustomize (go install): allow it more than the default 120 s.
pytestmark = pytest.mark.timeout(900)

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kustomize.sh"
OVERLAYS = sorted(
    path.name
    for path in (REPO / "k8s" / "overlays").iterdir()
    if (path / "kustomization.yaml").is_file()
)
# Oldest and newest Kubernetes minor we claim to support, both shipped by kubernetes-validate.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
CRD_GROUPS = frozenset({"kafka.strimzi.io", "keda.sh", "monitoring.coreos.com"})
# OMNI_ROUTER_GROUP_ID when the ConfigMap has none (shared/settings.py)
DEFAULT_ROUTER_GROUP_ID = str(Settings.model_fields["router_group_id"].default)
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
REQUIRED_SECRET_ENV = ("OMNI_DATABASE_URL", "OMNI_JWT_SECRET", "OMNI_CHAT_SESSION_SECRET")
SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|TOKEN|DATABASE_URL|PRIVATE_KEY", re.IGNORECASE)
DEFAULT_SHUTDOWN_GRACE_SECONDS = 20  # OMNI_SHUTDOWN_GRACE_SECONDS when the ConfigMap has none
PRE_DEPLOY = ("omniroute.io/phase", "pre-deploy")
WORKLOAD_KINDS = ("Deployment", "Job")
WEBSOCKET_INGRESS = "omniroute"  # web chat and agent sockets; provider webhooks have their own


# --------------------------------------------------------------------------- rendering


def render(overlay: str) -> list[Doc]:
    result = subprocess.run(  # noqa: S603 - fixed script, overlay names from the repo
        ["bash", str(KUSTOMIZE), "build", f"k8s/overlays/{overlay}"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert docs, f"overlay {overlay} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture
def prod(rendered: dict[str, list[Doc]]) -> list[Doc]:
    """A private copy of the prod render that a test may mutate."""
    return copy.deepcopy(rendered["prod"])


# --------------------------------------------------------------------------- helpers


def ref(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def named(docs: Iterable[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in of_kind(docs, kind) if d["metadata"]["name"] == name), None)


def labels(doc: Doc) -> dict[str, str]:
    found: dict[str, str] = doc.get("metadata", {}).get("labels") or {}
    return found


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    found: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels") or {}
    return found


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def command_of(container: Doc) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def runs(workload: Doc, module: str) -> bool:
    return any(command_of(c).endswith(f"-m {module}") for c in pod_spec(workload)["containers"])


def selects(selector: Doc | None, target: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector selects everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if target.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and target.get(key) not in values:
            return False
        if operator == "NotIn" and target.get(key) in values:
            return False
        if operator == "Exists" and key not in target:
            return False
        if operator == "DoesNotExist" and key in target:
            return False
    return True


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: str | int | float) -> float:
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def config_data(docs: list[Doc]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for config_map in of_kind(docs, "ConfigMap"):
        merged.update(config_map.get("data") or {})
    return merged


def topic_name(kafka_topic: Doc) -> str:
    name: str = kafka_topic["spec"].get("topicName") or kafka_topic["metadata"]["name"]
    return name


def topics_by_name(docs: list[Doc]) -> dict[str, Doc]:
    return {topic_name(t): t for t in of_kind(docs, "KafkaTopic")}


def image_tag(image: str) -> str | None:
    if "@" in image:
        return None  # pinned by digest
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def sleep_seconds(container: Doc) -> int:
    handler = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in handler:
        return int(handler["sleep"]["seconds"])
    command = handler.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return int(command[1])
    return 0


# --------------------------------------------------------------------------- rules


def rule_namespace(docs: list[Doc]) -> Iterator[str]:
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(namespaces) != 1 or None in namespaces:
        yield f"every resource must be in the overlay's one namespace, found {namespaces}"


def rule_probes(docs: list[Doc]) -> Iterator[str]:
    shutdown = int(
        config_data(docs).get("OMNI_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS)
    )
    for deployment in of_kind(docs, "Deployment"):
        spec = pod_spec(deployment)
        for container in spec["containers"]:
            where = f"{ref(deployment)} container {container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            expected = {
                "startupProbe": HEALTH_PATHS,
                "readinessProbe": {"/readyz"},
                "livenessProbe": {"/healthz"},
            }
            for probe_name, allowed in expected.items():
                probe = container.get(probe_name)
                if not probe:
                    yield f"{where}: no {probe_name}"
                    continue
                http = probe.get("httpGet") or {}
                if http.get("path") not in allowed:
                    path = http.get("path")
                    yield f"{where}: {probe_name} path {path!r} not in {sorted(allowed)}"
                if http.get("port") not in ports:
                    yield f"{where}: {probe_name} port {http.get('port')!r} is not a container port"
            pause = sleep_seconds(container)
            if pause <= 0:
                yield f"{where}: no preStop sleep (endpoints must drain before SIGTERM)"
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace <= pause + shutdown:
                yield (
                    f"{where}: terminationGracePeriodSeconds {grace} <= preStop {pause} s"
                    f" + OMNI_SHUTDOWN_GRACE_SECONDS {shutdown} s"
                )


def rule_resources(docs: list[Doc]) -> Iterator[str]:
    for workload in (d for kind in WORKLOAD_KINDS for d in of_kind(docs, kind)):
        for container in containers(workload):
            where = f"{ref(workload)} container {container['name']}"
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(bound) or {}):
                        yield f"{where}: no {bound}.{resource}"
            for resource in ("cpu", "memory"):
                request = (resources.get("requests") or {}).get(resource)
                limit = (resources.get("limits") or {}).get(resource)
                if request is not None and limit is not None:
                    if quantity(request) > quantity(limit):
                        yield f"{where}: requests.{resource} {request} > limits.{resource} {limit}"


def rule_security(docs: list[Doc]) -> Iterator[str]:
    for workload in (d for kind in WORKLOAD_KINDS for d in of_kind(docs, kind)):
        spec = pod_spec(workload)
        pod_context = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            yield f"{ref(workload)}: automountServiceAccountToken must be false"
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(workload):
            where = f"{ref(workload)} container {container['name']}"
            context = container.get("securityContext") or {}

            def setting(key: str, context: Doc = context, pod: Doc = pod_context) -> Any:
                return context.get(key, pod.get(key))

            if setting("runAsNonRoot") is not True:
                yield f"{where}: runAsNonRoot must be true"
            if setting("runAsUser") == 0:
                yield f"{where}: runAsUser 0"
            if context.get("readOnlyRootFilesystem") is not True:
                yield f"{where}: readOnlyRootFilesystem must be true"
            if context.get("allowPrivilegeEscalation") is not False:
                yield f"{where}: allowPrivilegeEscalation must be false"
            if "ALL" not in (context.get("capabilities") or {}).get("drop", []):
                yield f"{where}: capabilities must drop ALL"
            if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
                yield f"{where}: seccompProfile must be RuntimeDefault"
            if not any(
                m["mountPath"] == "/tmp" and m["name"] in tmp_volumes  # noqa: S108
                for m in container.get("volumeMounts", [])
            ):
                yield f"{where}: /tmp must be an emptyDir (the root filesystem is read-only)"


def rule_images(docs: list[Doc]) -> Iterator[str]:
    for workload in (d for kind in WORKLOAD_KINDS for d in of_kind(docs, kind)):
        for container in containers(workload):
            tag = image_tag(container["image"])
            if tag == "latest":
                yield (
                    f"{ref(workload)} container {container['name']}: image"
                    f" {container['image']!r} has no pinned tag (latest)"
                )


def rule_secrets(docs: list[Doc]) -> Iterator[str]:
    rendered_secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    for secret in of_kind(docs, "Secret"):
        yield f"{ref(secret)}: Secret objects must not be in the repository, only referenced"
    for key in config_data(docs):
        if SECRET_LOOKING.search(key):
            yield f"ConfigMap key {key} looks secret: reference it from a Secret"
    for workload in (d for kind in WORKLOAD_KINDS for d in of_kind(docs, kind)):
        for container in containers(workload):
            where = f"{ref(workload)} container {container['name']}"
            env = {e["name"]: e for e in container.get("env", [])}
            for name, entry in env.items():
                if SECRET_LOOKING.search(name) and "value" in entry:
                    yield f"{where}: {name} has a literal value; use a secretKeyRef"
                secret_ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if secret_ref and secret_ref["name"] in rendered_secrets:
                    yield f"{where}: {name} refers to a Secret rendered from the repository"
        # prod settings refuse to load without these, in every process of the image
        for container in pod_spec(workload)["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            for name in REQUIRED_SECRET_ENV:
                if "secretKeyRef" not in (env.get(name, {}).get("valueFrom") or {}):
                    yield f"{ref(workload)}: {name} must come from a Secret (secretKeyRef)"


def rule_topics(docs: list[Doc]) -> Iterator[str]:
    topics = topics_by_name(docs)
    for name in ALL_TOPICS:
        if name not in topics:
            yield f"topic {name} has no KafkaTopic"
    for name, topic in topics.items():
        spec = topic["spec"]
        config = spec.get("config") or {}
        if "strimzi.io/cluster" not in labels(topic):
            yield f"{ref(topic)}: no strimzi.io/cluster label"
        if int(spec.get("partitions", 0)) < 1 or int(spec.get("replicas", 0)) < 1:
            yield f"{ref(topic)}: partitions and replicas must be set"
        for key in ("retention.ms", "cleanup.policy"):
            if key not in config:
                yield f"{ref(topic)}: config {key} missing"
        if name.endswith(".dlq") and name[: -len(".dlq")] in topics:
            source = topics[name[: -len(".dlq")]]["spec"].get("config") or {}
            if int(config.get("retention.ms", 0)) < int(source.get("retention.ms", 0)):
                yield f"{ref(topic)}: a dead-letter topic must be kept at least as long"
    inbound = topics.get(Topic.INBOUND.value)
    configured = config_data(docs).get("OMNI_TOPIC_PARTITIONS")
    if inbound is not None and configured is not None:
        if int(configured) != int(inbound["spec"]["partitions"]):
            yield (
                f"OMNI_TOPIC_PARTITIONS {configured} != partitions of {Topic.INBOUND.value}"
                f" ({inbound['spec']['partitions']})"
            )


def rule_autoscaling(docs: list[Doc]) -> Iterator[str]:
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    topics = topics_by_name(docs)
    bootstrap = config_data(docs).get("OMNI_KAFKA_BOOTSTRAP_SERVERS")
    router_group = config_data(docs).get("OMNI_ROUTER_GROUP_ID", DEFAULT_ROUTER_GROUP_ID)
    scaled: dict[str, list[str]] = {name: [] for name in deployments}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") != "Deployment" or target.get("name") not in deployments:
            yield f"{ref(hpa)}: scaleTargetRef {target} is not a Deployment of this overlay"
            continue
        scaled[target["name"]].append(ref(hpa))
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            yield f"{ref(hpa)}: minReplicas > maxReplicas"
        if not any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
            for m in hpa["spec"].get("metrics", [])
        ):
            yield f"{ref(hpa)}: no CPU metric"
    for scaled_object in of_kind(docs, "ScaledObject"):
        spec = scaled_object["spec"]
        target_name = spec["scaleTargetRef"].get("name")
        if target_name not in deployments:
            yield f"{ref(scaled_object)}: scaleTargetRef {target_name!r} is not a Deployment"
            continue
        scaled[target_name].append(ref(scaled_object))
        maximum = int(spec.get("maxReplicaCount", 100))
        if int(spec.get("minReplicaCount", 0)) < 1:
            yield f"{ref(scaled_object)}: minReplicaCount must be >= 1 (outbox sweeper)"
        for trigger in spec.get("triggers", []):
            if trigger.get("type") != "kafka":
                continue
            meta = trigger["metadata"]
            topic = topics.get(meta.get("topic", ""))
            if topic is None:
                yield f"{ref(scaled_object)}: trigger topic {meta.get('topic')!r} has no KafkaTopic"
            elif maximum > int(topic["spec"]["partitions"]):
                yield (
                    f"{ref(scaled_object)}: maxReplicaCount {maximum} > {topic_name(topic)}"
                    f" partitions {topic['spec']['partitions']} (extra consumers sit idle)"
                )
            if meta.get("bootstrapServers") != bootstrap:
                yield f"{ref(scaled_object)}: bootstrapServers differ from the ConfigMap's"
            if runs(deployments[target_name], "services.router") and (
                meta.get("consumerGroup") != router_group
                or meta.get("topic") != Topic.INBOUND.value
            ):
                yield (
                    f"{ref(scaled_object)}: the router scales on group {router_group}"
                    f" (OMNI_ROUTER_GROUP_ID) lag on {Topic.INBOUND.value}"
                )
    for name, deployment in deployments.items():
        if len(scaled[name]) != 1:
            yield f"{ref(deployment)}: needs exactly one autoscaler, has {scaled[name]}"
        elif "replicas" in deployment["spec"]:
            yield f"{ref(deployment)}: sets replicas although {scaled[name][0]} owns the count"
    wanted = {
        "services.ingest": "HorizontalPodAutoscaler",
        "services.agent_api": "HorizontalPodAutoscaler",
        "services.router": "ScaledObject",
    }
    for module, kind in wanted.items():
        matching = [d for d in deployments.values() if runs(d, module)]
        if len(matching) != 1:
            yield f"expected one Deployment running {module}, found {len(matching)}"
            continue
        name = matching[0]["metadata"]["name"]
        if not any(r.startswith(f"{kind}/") for r in scaled[name]):
            yield f"{ref(matching[0])} ({module}) must be scaled by a {kind}"


def rule_disruption_budgets(docs: list[Doc]) -> Iterator[str]:
    deployments = of_kind(docs, "Deployment")
    budgets = of_kind(docs, "PodDisruptionBudget")
    for budget in budgets:
        if not any(selects(budget["spec"].get("selector"), pod_labels(d)) for d in deployments):
            yield f"{ref(budget)}: its selector matches no Deployment"
    for deployment in deployments:
        if not any(selects(b["spec"].get("selector"), pod_labels(deployment)) for b in budgets):
            yield f"{ref(deployment)}: no PodDisruptionBudget"


def rule_services(docs: list[Doc]) -> Iterator[str]:
    deployments = of_kind(docs, "Deployment")
    services = of_kind(docs, "Service")

    def backing(service: Doc) -> list[Doc]:
        selector = {"matchLabels": service["spec"].get("selector") or {}}
        if not selector["matchLabels"]:
            return []
        return [d for d in deployments if selects(selector, pod_labels(d))]

    for service in services:
        pods = backing(service)
        if not pods:
            yield f"{ref(service)}: selects no Deployment"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for deployment in pods:
                names = {
                    p.get("name") if isinstance(target, str) else p["containerPort"]
                    for c in pod_spec(deployment)["containers"]
                    for p in c.get("ports", [])
                }
                if target not in names:
                    yield f"{ref(service)}: targetPort {target!r} not in {ref(deployment)}"
    monitors = of_kind(docs, "ServiceMonitor")
    monitored: set[str] = set()
    for monitor in monitors:
        matched = [s for s in services if selects(monitor["spec"].get("selector"), labels(s))]
        if not matched:
            yield f"{ref(monitor)}: its selector matches no Service"
        for endpoint in monitor["spec"].get("endpoints", []):
            for service in matched:
                if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                    yield f"{ref(monitor)}: port {endpoint.get('port')!r} not in {ref(service)}"
        monitored |= {s["metadata"]["name"] for s in matched}
    for deployment in deployments:
        if not any(
            deployment in backing(s) and s["metadata"]["name"] in monitored for s in services
        ):
            yield f"{ref(deployment)}: no ServiceMonitor scrapes it"


def rule_ingress(docs: list[Doc]) -> Iterator[str]:
    ingresses = of_kind(docs, "Ingress")
    if not ingresses:
        yield "no Ingress"
    routes: dict[str, Doc] = {}
    for ingress in ingresses:
        annotations = ingress["metadata"].get("annotations") or {}
        # the Ingress of the WebSockets (test_edge_routing.py: every socket path lands on it)
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = annotations.get(f"nginx.ingress.kubernetes.io/{key}")
            if ingress["metadata"]["name"] == WEBSOCKET_INGRESS and (
                value is None or int(value) < 3600
            ):
                yield f"{ref(ingress)}: {key} must keep WebSockets open (>= 3600 s)"
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(docs, "Service", backend["name"])
                if service is None:
                    yield f"{ref(ingress)}: backend Service {backend['name']} does not exist"
                    continue
                port = backend["port"].get("name", backend["port"].get("number"))
                if port not in {p.get("name") for p in service["spec"]["ports"]} | {
                    p["port"] for p in service["spec"]["ports"]
                }:
                    yield f"{ref(ingress)}: {ref(service)} has no port {port!r}"
                routes[path["path"]] = service
    expected = {
        "/v1/webchat": "services.ingest",
        "/v1/channels": "services.ingest",
        "/v1": "services.agent_api",
    }
    deployments = of_kind(docs, "Deployment")
    for path, module in expected.items():
        service = routes.get(path)
        selector = {"matchLabels": (service or {}).get("spec", {}).get("selector") or {}}
        if service is None or not any(
            runs(d, module) and selects(selector, pod_labels(d)) for d in deployments
        ):
            yield f"Ingress: {path} must route to the Service of {module}"


ANY_PORT = "*"


def allowed_ports(policies: list[Doc], direction: str) -> set[int | str]:
    """Ports the policies' rules allow in one direction; a rule without ports allows all."""
    ports: set[int | str] = set()
    for policy in policies:
        for rule in policy["spec"].get(direction) or []:
            if not rule.get("ports"):
                ports.add(ANY_PORT)
            ports |= {port["port"] for port in rule.get("ports") or [] if "port" in port}
    return ports


def rule_network_policies(docs: list[Doc]) -> Iterator[str]:
    policies = of_kind(docs, "NetworkPolicy")
    for workload in (d for kind in WORKLOAD_KINDS for d in of_kind(docs, kind)):
        pod = pod_labels(workload)
        mine = [p for p in policies if selects(p["spec"].get("podSelector"), pod)]
        if not any(
            set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
            for p in mine
        ):
            yield f"{ref(workload)}: no default-deny NetworkPolicy selects its pods"
        egress_ports = allowed_ports(mine, "egress")
        for needed, what in ((53, "DNS"), (9092, "Kafka"), (5432, "PostgreSQL")):
            if needed not in egress_ports and ANY_PORT not in egress_ports:
                yield f"{ref(workload)}: no egress to {what} (port {needed})"
        if workload["kind"] == "Deployment":
            ingress_ports = allowed_ports(mine, "ingress")
            for container in pod_spec(workload)["containers"]:
                for port in container.get("ports", []):
                    if {port["containerPort"], ANY_PORT}.isdisjoint(ingress_ports):
                        yield f"{ref(workload)}: port {port['containerPort']} is unreachable"


def rule_migration(docs: list[Doc]) -> Iterator[str]:
    jobs = [j for j in of_kind(docs, "Job") if runs(j, "shared.db.migrate")]
    if len(jobs) != 1:
        yield f"expected one migration Job, found {len(jobs)}"
        return
    job = jobs[0]
    images = {c["image"] for d in of_kind(docs, "Deployment") for c in containers(d)}
    job_images = {c["image"] for c in containers(job)}
    if job_images != images or len(images) != 1:
        yield f"{ref(job)}: must run the Deployments' one image, {job_images} vs {images}"
    tag = image_tag(next(iter(job_images)))
    if tag and not job["metadata"]["name"].endswith("-" + re.sub(r"[^a-z0-9]+", "-", tag.lower())):
        yield f"{ref(job)}: a migration Job's name must end with the image tag {tag!r}"
    needed = [job, *of_kind(docs, "NetworkPolicy")]
    spec = pod_spec(job)
    needed += [
        d
        for d in of_kind(docs, "ServiceAccount")
        if d["metadata"]["name"] == spec.get("serviceAccountName")
    ]
    config_maps = {
        source["configMapRef"]["name"]
        for c in containers(job)
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }
    needed += [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] in config_maps]
    for doc in needed:
        if labels(doc).get(PRE_DEPLOY[0]) != PRE_DEPLOY[1]:
            label = "=".join(PRE_DEPLOY)
            yield f"{ref(doc)}: the migration needs it first: label it {label}"


RULES: tuple[Callable[[list[Doc]], Iterator[str]], ...] = (
    rule_namespace,
    rule_probes,
    rule_resources,
    rule_security,
    rule_images,
    rule_secrets,
    rule_topics,
    rule_autoscaling,
    rule_disruption_budgets,
    rule_services,
    rule_ingress,
    rule_network_policies,
    rule_migration,
)


def check_rules(docs: list[Doc]) -> list[str]:
    return [problem for rule in RULES for problem in rule(docs)]


def schema_errors(docs: list[Doc], version: str) -> list[str]:
    errors: list[str] = []
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        if group in CRD_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{ref(doc)} at /{path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{ref(doc)}: {exc.message}")
    return errors


# --------------------------------------------------------------------------- tests


def test_both_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_matches_kubernetes_schemas(
    rendered: dict[str, list[Doc]], overlay: str, version: str
) -> None:
    assert schema_errors(rendered[overlay], version) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_follows_project_rules(rendered: dict[str, list[Doc]], overlay: str) -> None:
    assert check_rules(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_every_expected_object(rendered: dict[str, list[Doc]], overlay: str) -> None:
    kinds: dict[str, int] = {}
    for doc in rendered[overlay]:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    assert kinds["Deployment"] == 3
    assert kinds["HorizontalPodAutoscaler"] == 2
    assert kinds["ScaledObject"] == 1
    assert kinds["PodDisruptionBudget"] == 3
    assert kinds["KafkaTopic"] == len(ALL_TOPICS) == 10
    assert kinds["ServiceMonitor"] == 1
    assert kinds["Job"] == 1
    assert kinds.get("Secret", 0) == 0


def test_prod_runs_twelve_partitions_and_up_to_twelve_routers(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["prod"]
    inbound = topics_by_name(docs)[Topic.INBOUND.value]
    scaled_object = of_kind(docs, "ScaledObject")[0]
    assert inbound["spec"]["partitions"] == 12
    assert scaled_object["spec"]["maxReplicaCount"] == 12
    assert config_data(docs)["OMNI_TOPIC_PARTITIONS"] == "12"


def test_dev_runs_one_replica_of_everything(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    assert {h["spec"]["minReplicas"] for h in of_kind(docs, "HorizontalPodAutoscaler")} == {1}
    assert of_kind(docs, "ScaledObject")[0]["spec"]["minReplicaCount"] == 1
    assert {t["spec"]["replicas"] for t in of_kind(docs, "KafkaTopic")} == {1}


def deployment_running(docs: list[Doc], module: str) -> Doc:
    return next(d for d in of_kind(docs, "Deployment") if runs(d, module))


def first_container(docs: list[Doc], module: str = "services.ingest") -> Doc:
    container: Doc = pod_spec(deployment_running(docs, module))["containers"][0]
    return container


def drop_readiness(docs: list[Doc]) -> None:
    del first_container(docs)["readinessProbe"]


def liveness_on_metrics(docs: list[Doc]) -> None:
    first_container(docs)["livenessProbe"]["httpGet"]["path"] = "/metrics"


def no_memory_limit(docs: list[Doc]) -> None:
    del first_container(docs, "services.router")["resources"]["limits"]["memory"]


def writable_root(docs: list[Doc]) -> None:
    first_container(docs, "services.agent_api")["securityContext"]["readOnlyRootFilesystem"] = False


def runs_as_root(docs: list[Doc]) -> None:
    first_container(docs, "services.router")["securityContext"]["runAsNonRoot"] = False


def latest_image(docs: list[Doc]) -> None:
    container = first_container(docs)
    container["image"] = container["image"].rsplit(":", 1)[0] + ":latest"


def secret_with_data(docs: list[Doc]) -> None:
    namespace = docs[0]["metadata"]["namespace"]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "omniroute-secrets", "namespace": namespace},
            "stringData": {"jwt-secret": "x" * 40},
        }
    )


def literal_secret(docs: list[Doc]) -> None:
    env = first_container(docs)["env"]
    entry = next(e for e in env if e["name"] == "OMNI_JWT_SECRET")
    entry.pop("valueFrom")
    entry["value"] = "y" * 40


def missing_dlq_topic(docs: list[Doc]) -> None:
    docs.remove(topics_by_name(docs)["omni.delivery.v1.dlq"])


def keda_beyond_partitions(docs: list[Doc]) -> None:
    of_kind(docs, "ScaledObject")[0]["spec"]["maxReplicaCount"] = 13


def keda_wrong_group(docs: list[Doc]) -> None:
    of_kind(docs, "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "x"


def config_other_group(docs: list[Doc]) -> None:
    config_map = of_kind(docs, "ConfigMap")[0]
    config_map["data"]["OMNI_ROUTER_GROUP_ID"] = "omni-router-blue"


def config_other_brokers(docs: list[Doc]) -> None:
    config_map = of_kind(docs, "ConfigMap")[0]
    config_map["data"]["OMNI_KAFKA_BOOTSTRAP_SERVERS"] = "kafka-blue:9092"


def hpa_dangling_target(docs: list[Doc]) -> None:
    of_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]["name"] = "nope"


def pdb_selects_nothing(docs: list[Doc]) -> None:
    budget = of_kind(docs, "PodDisruptionBudget")[0]
    budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "gone"


def monitor_selects_nothing(docs: list[Doc]) -> None:
    of_kind(docs, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"] = {"app": "other"}


def job_not_renamed(docs: list[Doc]) -> None:
    of_kind(docs, "Job")[0]["metadata"]["name"] = "omniroute-migrate-0-0-9"


def short_grace_period(docs: list[Doc]) -> None:
    pod_spec(deployment_running(docs, "services.ingest"))["terminationGracePeriodSeconds"] = 15


def no_default_deny(docs: list[Doc]) -> None:
    policy = named(docs, "NetworkPolicy", "omniroute-default-deny")
    assert policy is not None
    docs.remove(policy)


def ingress_short_timeout(docs: list[Doc]) -> None:
    ingress = named(docs, "Ingress", WEBSOCKET_INGRESS)
    assert ingress is not None
    annotations = ingress["metadata"]["annotations"]
    annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] = "60"


MUTATIONS: list[tuple[Callable[[list[Doc]], None], str]] = [
    (drop_readiness, "no readinessProbe"),
    (liveness_on_metrics, "livenessProbe path '/metrics'"),
    (no_memory_limit, "no limits.memory"),
    (writable_root, "readOnlyRootFilesystem must be true"),
    (runs_as_root, "runAsNonRoot must be true"),
    (latest_image, "(latest)"),
    (secret_with_data, "Secret objects must not be in the repository"),
    (literal_secret, "OMNI_JWT_SECRET has a literal value"),
    (missing_dlq_topic, "topic omni.delivery.v1.dlq has no KafkaTopic"),
    (keda_beyond_partitions, "maxReplicaCount 13 > omni.inbound.v1 partitions 12"),
    (keda_wrong_group, "the router scales on group omni-router"),
    (config_other_group, "the router scales on group omni-router-blue"),
    (config_other_brokers, "bootstrapServers differ from the ConfigMap's"),
    (hpa_dangling_target, "is not a Deployment of this overlay"),
    (pdb_selects_nothing, "its selector matches no Deployment"),
    (monitor_selects_nothing, "ServiceMonitor/omniroute: its selector matches no Service"),
    (job_not_renamed, "must end with the image tag '0.1.0'"),
    (short_grace_period, "terminationGracePeriodSeconds 15"),
    (no_default_deny, "no default-deny NetworkPolicy"),
    (ingress_short_timeout, "proxy-read-timeout must keep WebSockets open"),
]


@pytest.mark.parametrize(("mutate", "expected"), MUTATIONS, ids=[m.__name__ for m, _ in MUTATIONS])
def test_rules_catch_a_broken_manifest(
    prod: list[Doc], mutate: Callable[[list[Doc]], None], expected: str
) -> None:
    assert check_rules(prod) == []
    mutate(prod)
    problems = check_rules(prod)
    assert any(expected in problem for problem in problems), problems


def test_schema_validation_catches_a_misspelled_field(prod: list[Doc]) -> None:
    container = first_container(prod)
    container["livenesProbe"] = container.pop("livenessProbe")
    errors = schema_errors(prod, KUBERNETES_VERSIONS[0])
    assert any("livenesProbe" in error for error in errors), errors


def test_schema_validation_catches_a_wrong_type(prod: list[Doc]) -> None:
    of_kind(prod, "HorizontalPodAutoscaler")[0]["spec"]["maxReplicas"] = "twenty"
    errors = schema_errors(prod, KUBERNETES_VERSIONS[0])
    assert any("twenty" in error for error in errors), errors


def test_kustomize_wrapper_runs_the_pinned_version() -> None:
    result = subprocess.run(  # noqa: S603
        ["bash", str(KUSTOMIZE), "version"],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=800,
        check=True,
    )
    pinned = re.search(r'KUSTOMIZE_VERSION="(v[0-9.]+)"', KUSTOMIZE.read_text())
    assert pinned is not None
    assert result.stdout.strip() == pinned.group(1)


# --------------------------------------------------------------------------- image and compose
# Neither can be built or run on machines without a Docker engine; these read them instead.

SERVICE_PORTS = {"services.ingest": 8001, "services.agent_api": 8002, "services.router": 8003}


def test_dockerfile_runtime_is_slim_non_root_and_read_only_friendly() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", runtime, re.MULTILINE)
    assert user, "the runtime stage must switch to a non-root user"
    uid = user[-1].split(":")[0]
    assert uid.isdigit(), "numeric uid, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    exposed = re.search(r"^EXPOSE (.+)$", runtime, re.MULTILINE)
    assert exposed is not None
    assert {int(p) for p in exposed.group(1).split()} == set(SERVICE_PORTS.values())


def test_compose_runs_migrations_first_and_the_services_hardened() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    services: dict[str, Doc] = compose["services"]
    kafka_script = (REPO / "deploy" / "kafka.sh").read_text()
    local_kafka = re.search(r"OMNI_KAFKA_VERSION:-([0-9.]+)", kafka_script)
    assert local_kafka is not None
    assert services["kafka"]["image"] == f"apache/kafka:{local_kafka.group(1)}"
    assert services["migrate"]["command"] == ["python", "-m", "shared.db.migrate"]
    ours = {name: s for name, s in services.items() if s.get("image") == "omniroute:local"}
    assert set(ours) == {"migrate", "ingest", "router", "agent_api"}
    for name, service in ours.items():
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name  # noqa: S108
        assert service["cap_drop"] == ["ALL"], name
        env = service["environment"]
        assert env["OMNI_ENVIRONMENT"] == "prod", name
        for secret in ("OMNI_JWT_SECRET", "OMNI_CHAT_SESSION_SECRET"):
            assert env[secret].startswith("${" + secret + ":?"), f"{name}: {secret} required"
        if name == "migrate":
            continue
        module = service["command"][-1]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert f":{SERVICE_PORTS[module]}/readyz" in " ".join(service["healthcheck"]["test"])
