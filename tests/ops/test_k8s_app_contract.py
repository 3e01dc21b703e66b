"""Hold the rendered manifests (and the Compose file) to what the services' code does.

``test_k8s_manifests.py`` checks the manifests against Kubernetes and against rules of
their own; these tests read the other side from the code and the settings: the services
that use the attachment store, the topics the services would create, the consumer group
KEDA must watch, the ports ingest sends through. (The public edge against the apps' route
tables: ``test_edge_routing.py``.)
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from tests.ops.test_k8s_manifests import (
    DEFAULT_ROUTER_GROUP_ID,
    OVERLAYS,
    REPO,
    Doc,
    config_data,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    render,
    runs,
    selects,
    topic_name,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


# --------------------------------------------------------------------------- attachment store


def services_using_attachment_store() -> set[str]:
    found = {
        "services." + service.name
        for service in (REPO / "services").iterdir()
        if service.is_dir()
        and any("attachment_store_dir" in source.read_text() for source in service.rglob("*.py"))
    }
    assert "services.ingest" in found, "the scan found no user of the store: it is broken"
    return found


def effective_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config_map = named(docs, "ConfigMap", source["configMapRef"]["name"])
            env.update((config_map or {}).get("data") or {})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_attachment_store_is_a_shared_writable_volume(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    users = services_using_attachment_store()
    claims = {c["metadata"]["name"]: c for c in of_kind(docs, "PersistentVolumeClaim")}
    checked = 0
    for deployment in of_kind(docs, "Deployment"):
        if not any(runs(deployment, module) for module in users):
            continue
        volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
        for container in pod_spec(deployment)["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            store = effective_env(docs, container).get("OMNI_ATTACHMENT_STORE_DIR")
            assert store is not None, f"{where}: no OMNI_ATTACHMENT_STORE_DIR (/app is read-only)"
            assert PurePosixPath(store).is_absolute(), f"{where}: relative store {store}"
            mounts = [
                m
                for m in container.get("volumeMounts", [])
                if PurePosixPath(store).is_relative_to(m["mountPath"]) and m["mountPath"] != "/"
            ]
            assert mounts, f"{where}: nothing mounted at {store}"
            mount = max(mounts, key=lambda m: len(m["mountPath"]))
            assert not mount.get("readOnly", False), f"{where}: {store} mounted read-only"
            claim = volumes[mount["name"]].get("persistentVolumeClaim") or {}
            claim_name = claim.get("claimName")
            assert claim_name in claims, f"{where}: {store} is not on a PersistentVolumeClaim"
            # several replicas (and services) write and read the same files
            assert "ReadWriteMany" in claims[claim_name]["spec"]["accessModes"], claim_name
            checked += 1
    assert checked >= 1


def test_compose_gives_the_attachment_store_a_volume() -> None:
    import yaml  # type: ignore[import-untyped]

    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    for module in services_using_attachment_store():
        name = module.removeprefix("services.")
        service = compose["services"][name]
        store = service["environment"].get("OMNI_ATTACHMENT_STORE_DIR")
        assert store is not None, name
        assert Path(store).is_absolute(), name
        targets = [v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str)]
        assert store in targets, f"{name}: no volume at {store} (the container is read-only)"


# --------------------------------------------------------------------------- Kafka


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_what_the_services_would_create(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """The services create a missing topic (a .dlq one too) with OMNI_TOPIC_PARTITIONS
    partitions and OMNI_TOPIC_REPLICATION_FACTOR replicas; a declared topic that differs
    is either shrunk (impossible) or silently different from what a restart recreates."""
    docs = rendered[overlay]
    config = config_data(docs)
    partitions = int(config["OMNI_TOPIC_PARTITIONS"])
    replicas = int(config.get("OMNI_TOPIC_REPLICATION_FACTOR", "1"))
    differing = {
        topic_name(t): (t["spec"]["partitions"], t["spec"]["replicas"])
        for t in of_kind(docs, "KafkaTopic")
        if (int(t["spec"]["partitions"]), int(t["spec"]["replicas"])) != (partitions, replicas)
    }
    assert differing == {}, f"expected ({partitions}, {replicas})"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_routers_own_group_and_brokers(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    router = next(d for d in of_kind(docs, "Deployment") if runs(d, "services.router"))
    env = effective_env(docs, pod_spec(router)["containers"][0])
    group = env.get("OMNI_ROUTER_GROUP_ID", DEFAULT_ROUTER_GROUP_ID)
    scaled = next(
        s
        for s in of_kind(docs, "ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == router["metadata"]["name"]
    )
    triggers = [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
    assert triggers
    for trigger in triggers:
        assert trigger["bootstrapServers"] == env["OMNI_KAFKA_BOOTSTRAP_SERVERS"]
        assert trigger["consumerGroup"] == group


# --------------------------------------------------------------------------- egress


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingest_may_reach_every_smtp_relay_port(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """STARTTLS relays listen on 587, implicit-TLS ones (OMNI_SMTP_RELAY_TLS) on 465."""
    docs = rendered[overlay]
    ingest = next(d for d in of_kind(docs, "Deployment") if runs(d, "services.ingest"))
    ports = {
        port["port"]
        for policy in of_kind(docs, "NetworkPolicy")
        if selects(policy["spec"].get("podSelector"), pod_labels(ingest))
        for rule in policy["spec"].get("egress") or []
        for port in rule.get("ports") or []
    }
    assert {443, 465, 587} <= ports


def test_image_defaults_the_attachment_store_to_a_directory_it_may_write() -> None:
    """/app is read-only at run time: the store must default elsewhere, to a directory
    that exists owned by the runtime user (a fresh Docker volume copies its owner)."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    runtime = text.split(" AS runtime", 1)[1]
    store = re.search(r"OMNI_ATTACHMENT_STORE_DIR=(\S+)", runtime)
    assert store is not None
    assert PurePosixPath(store.group(1)).is_absolute()
    user = re.findall(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE)[-1]
    created = re.search(
        rf"install -d -o {user[0]} -g {user[1]} .*{re.escape(store.group(1))}", runtime
    )
    assert created is not None, "the image must create the store owned by its user"
