"""Event envelope: CloudEvents 1.0 binary mode, interoperable with the cloudevents package."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from shared.bus.port import BusRecord
from shared.events import (
    Channel,
    Event,
    EventDecodeError,
    MessageReceived,
    Sender,
    Topic,
    decode_event,
    encode_event,
    inbound_key,
    to_cloudevent,
)

WORKSPACE = uuid.UUID("00000000-0000-4000-8000-000000000001")


def sample_payload() -> MessageReceived:
    return MessageReceived(
        workspace_id=WORKSPACE,
        channel=Channel.WEBCHAT,
        provider_message_id="wcs_1:abc",
        thread_key="wcs_1",
        sender=Sender(address="wcs_1", display_name="Grace"),
        text="Hello — ünïcode ok",
        received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def as_consumed(
    record_topic: str, key: bytes, value: bytes, headers: dict[str, bytes]
) -> BusRecord:
    return BusRecord(
        topic=record_topic,
        partition=0,
        offset=0,
        key=key,
        value=value,
        headers=tuple(headers.items()),
    )


def test_round_trip_keeps_every_attribute_and_the_payload() -> None:
    event = Event.of(sample_payload(), source="test/source", subject="wcs_1").with_sequence(42)
    key = inbound_key(WORKSPACE, Channel.WEBCHAT, "wcs_1")
    record = encode_event(event, topic=Topic.INBOUND.value, key=key)

    consumed = as_consumed(record.topic, record.key, record.value, dict(record.headers))
    decoded = decode_event(consumed)

    assert record.key == f"{WORKSPACE}:webchat:wcs_1".encode()
    assert decoded == event
    assert isinstance(decoded.data, MessageReceived)


def test_headers_are_binary_mode_ce_attributes() -> None:
    event = Event.of(sample_payload(), source="test/source")
    record = encode_event(event, topic=Topic.INBOUND.value, key="k")
    headers = dict(record.headers)

    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"omniroute.message.received.v1"
    assert headers["ce_id"] == event.id.encode()
    assert headers["ce_source"] == b"test/source"
    assert headers["content-type"] == b"application/json"
    assert "ce_data" not in headers


def test_a_record_written_by_the_cloudevents_binding_is_read_by_omniroute() -> None:
    data = sample_payload().model_dump(mode="json")
    foreign = CloudEvent(
        attributes={
            "id": "evt-1",
            "source": "/elsewhere",
            "type": MessageReceived.event_type,
            "specversion": "1.0",
            "time": datetime(2026, 1, 1, tzinfo=UTC),
            "datacontenttype": "application/json",
        },
        data=data,
    )
    message = ce_kafka.to_binary(foreign, JSONFormat())

    decoded = decode_event(as_consumed("t", b"k", message.value, message.headers))

    assert decoded.id == "evt-1"
    assert decoded.source == "/elsewhere"
    assert decoded.data == sample_payload()


def test_a_record_written_by_omniroute_is_read_by_the_cloudevents_binding() -> None:
    event = Event.of(sample_payload(), source="test/source", subject="s").with_sequence(7)
    record = encode_event(event, topic="t", key="k")

    parsed = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        JSONFormat(),
        CloudEvent,
    )

    assert parsed.get_id() == event.id
    assert parsed.get_type() == event.type
    assert parsed.get_subject() == "s"
    assert parsed.get_time() == event.time
    assert parsed.get_extension("sequence") == "7"
    assert parsed.get_data() == sample_payload().model_dump(mode="json")


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(Event.of(sample_payload(), source="test/source"), id="plain"),
        pytest.param(
            Event.of(sample_payload(), source="test/source", subject="s").with_sequence(7),
            id="subject and sequence",
        ),
        pytest.param(
            Event(
                source="omniroute/router",
                type=sample_payload().event_type,
                time=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
                correlationid="corr-1",
                data=sample_payload(),
            ),
            id="correlation id and a time not in UTC",
        ),
    ],
)
def test_records_are_byte_for_byte_what_the_cloudevents_binding_writes(event: Event) -> None:
    record = encode_event(event, topic="t", key="k")

    written = ce_kafka.to_binary(to_cloudevent(event), JSONFormat())

    assert list(record.headers) == list(written.headers.items())
    assert record.value == written.value
    assert record.key == b"k"


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        pytest.param({}, b"{}", id="no headers"),
        pytest.param(
            {"ce_specversion": b"1.0", "ce_id": b"1", "ce_source": b"s", "ce_type": b"x.unknown"},
            b"{}",
            id="unknown type",
        ),
        pytest.param(
            {
                "ce_specversion": b"1.0",
                "ce_id": b"1",
                "ce_source": b"s",
                "ce_type": MessageReceived.event_type.encode(),
                "content-type": b"application/json",
            },
            b"{not json",
            id="invalid json",
        ),
        pytest.param(
            {
                "ce_specversion": b"1.0",
                "ce_id": b"1",
                "ce_source": b"s",
                "ce_type": MessageReceived.event_type.encode(),
                "content-type": b"application/json",
            },
            b'{"workspace_id": "not-a-uuid"}',
            id="invalid payload",
        ),
    ],
)
def test_malformed_records_are_refused_as_decode_errors(
    headers: dict[str, bytes], value: bytes
) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(as_consumed("t", b"k", value, headers))
