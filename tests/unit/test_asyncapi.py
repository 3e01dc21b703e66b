"""The committed AsyncAPI document matches the event contracts and the WebSocket frames."""

from __future__ import annotations

from pathlib import Path

from services.agent_api.realtime.hub import FRAME_TYPES
from shared.asyncapi import build_document, render
from shared.events import ALL_TOPICS, PAYLOAD_TYPES

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_the_committed_document_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == render(), "run: python -m shared.asyncapi > docs/asyncapi.json"


def test_every_topic_and_event_type_is_documented() -> None:
    document = build_document()
    kafka = {
        name: channel
        for name, channel in document["channels"].items()
        if not channel["address"].startswith("/")
    }
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert {channel["address"] for channel in kafka.values()} == set(ALL_TOPICS)
    assert set(PAYLOAD_TYPES) <= names


def test_every_websocket_frame_the_hub_sends_is_documented() -> None:
    websocket = document_channel("/v1/ws")
    messages = build_document()["components"]["messages"]
    documented = {messages[ref["$ref"].rsplit("/", 1)[-1]]["name"] for ref in websocket.values()}
    assert set(FRAME_TYPES.values()) | {"ready", "heartbeat", "reset"} == documented


def document_channel(address: str) -> dict[str, dict[str, str]]:
    for channel in build_document()["channels"].values():
        if channel["address"] == address:
            messages: dict[str, dict[str, str]] = channel["messages"]
            return messages
    raise AssertionError(f"no channel {address}")
