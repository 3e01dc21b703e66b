"""The committed AsyncAPI document matches the event contracts."""

from __future__ import annotations

from pathlib import Path

from shared.asyncapi import build_document, render
from shared.events import ALL_TOPICS, PAYLOAD_TYPES

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_the_committed_document_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == render(), "run: python -m shared.asyncapi > docs/asyncapi.json"


def test_every_topic_and_event_type_is_documented() -> None:
    document = build_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert addresses == set(ALL_TOPICS)
    assert names == set(PAYLOAD_TYPES)
