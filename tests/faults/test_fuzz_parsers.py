"""Fuzzing (hypothesis) of every channel adapter's parser and of the event decoder.

The property: whatever arrives, a parser either yields messages that keep the event
invariants or refuses with ``ChannelRequestError`` carrying a 4xx — never another
exception (which ingest would answer with a 500). The decoder either yields an event or
raises ``EventDecodeError`` (the consumer then dead-letters the record).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.unit.test_channels_contract as channel_contracts
from shared.bus.port import BusRecord
from shared.channels.contract import ChannelAdapterContract, check_invariants, form_request
from shared.channels.protocol import ChannelRequestError, InboundRequest
from shared.events import (
    Channel,
    Event,
    EventDecodeError,
    MessageReceived,
    Sender,
    Topic,
    decode_event,
    encode_event,
)
from tests.unit.test_sms_twilio import TwilioContract
from tests.unit.test_social_meta import MetaContract

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONTRACTS: dict[str, type[ChannelAdapterContract]] = {
    "twilio": TwilioContract,
    "meta": MetaContract,
    "webchat": channel_contracts.TestWebChatContract,
    "smtp": channel_contracts.TestSmtpEmailContract,
    "sendgrid": channel_contracts.TestSendGridContract,
    "mailgun": channel_contracts.TestMailgunContract,
}

text = st.text(max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=30,
)


def parse_or_refuse(contract: ChannelAdapterContract, request: InboundRequest) -> None:
    """Parse ``request`` (past verification): messages keep the invariants, or a 4xx."""
    adapter = contract.make_adapter()
    ctx = contract.make_context()

    async def parse() -> None:
        status = None
        try:
            messages = await adapter.parse(request, ctx)
        except ChannelRequestError as refused:
            status = refused.status
        if status is None:
            check_invariants(adapter, ctx, messages)
        else:
            assert 400 <= status < 500, status

    asyncio.run(parse())


def mutated_json(document: Any, path_value: Any, data: st.DataObject) -> Any:
    """``document`` with one value somewhere inside replaced by ``path_value``."""
    if isinstance(document, dict) and document:
        key = data.draw(st.sampled_from(sorted(document)))
        if data.draw(st.booleans()):
            return {**document, key: path_value}
        return {**document, key: mutated_json(document[key], path_value, data)}
    if isinstance(document, list) and document:
        index = data.draw(st.integers(0, len(document) - 1))
        copy = list(document)
        copy[index] = mutated_json(document[index], path_value, data)
        return copy
    return path_value


@pytest.mark.parametrize("name", ["meta", "webchat"])
@FUZZ
@given(data=st.data(), value=json_values)
def test_json_adapters_refuse_mutated_documents_cleanly(
    name: str, data: st.DataObject, value: Any
) -> None:
    contract = CONTRACTS[name]()
    valid = contract.valid_request()
    document = mutated_json(json.loads(valid.body), value, data)
    parse_or_refuse(contract, replace(valid, body=json.dumps(document).encode()))


@pytest.mark.parametrize("name", ["meta", "webchat", "twilio", "sendgrid", "mailgun", "smtp"])
@FUZZ
@given(body=st.binary(max_size=4096))
def test_every_adapter_refuses_random_bytes_cleanly(name: str, body: bytes) -> None:
    contract = CONTRACTS[name]()
    parse_or_refuse(contract, replace(contract.valid_request(), body=body))


@pytest.mark.parametrize("name", ["twilio", "mailgun"])
@FUZZ
@given(data=st.data(), value=text)
def test_form_adapters_refuse_mutated_fields_cleanly(
    name: str, data: st.DataObject, value: str
) -> None:
    contract = CONTRACTS[name]()
    valid = contract.valid_request()
    if name == "twilio":
        from urllib.parse import parse_qsl, urlencode

        fields = dict(parse_qsl(valid.body.decode(), keep_blank_values=True))
        key = data.draw(st.sampled_from(sorted(fields)))
        if data.draw(st.booleans()):
            fields.pop(key)
        else:
            fields[key] = value
        request = replace(valid, body=urlencode(fields).encode())
    else:
        fields = channel_contracts.TestMailgunContract().fields()
        key = data.draw(st.sampled_from(sorted(fields)))
        if data.draw(st.booleans()):
            fields.pop(key)
        else:
            fields[key] = value
        request = form_request(fields)
    parse_or_refuse(contract, request)


@FUZZ
@given(
    header=st.sampled_from(["Subject", "From", "To", "Message-ID", "In-Reply-To", "References"]),
    value=st.text(max_size=300),
    payload=st.binary(max_size=500),
)
def test_the_smtp_adapter_refuses_mangled_mail_cleanly(
    header: str, value: str, payload: bytes
) -> None:
    contract = channel_contracts.TestSmtpEmailContract()
    valid = contract.valid_request()
    head, _, body = valid.body.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith(header.lower().encode() + b":")
    ]
    lines.append(header.encode() + b": " + value.encode("utf-8", "surrogateescape"))
    mangled = b"\r\n".join(lines) + b"\r\n\r\n" + body + payload
    parse_or_refuse(contract, replace(valid, body=mangled))


# The event decoder -------------------------------------------------------------------

header_names = st.sampled_from(
    ["ce_id", "ce_source", "ce_specversion", "ce_type", "ce_time", "content-type", "ce_subject"]
)


def valid_record() -> BusRecord:
    message = MessageReceived(
        workspace_id=uuid.uuid4(),
        channel=Channel.WEBCHAT,
        provider_message_id="p-1",
        thread_key="t-1",
        sender=Sender(address="wcs_1"),
        text="hello",
        received_at=datetime.now(UTC),
    )
    out = encode_event(Event.of(message, source="fuzz"), topic=Topic.INBOUND.value, key="k")
    return BusRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )


def decode_or_refuse(record: BusRecord) -> None:
    try:
        decode_event(record)
    except EventDecodeError:
        pass


@FUZZ
@given(
    value=st.binary(max_size=2048),
    headers=st.lists(st.tuples(header_names | st.text(max_size=20), st.binary(max_size=80))),
)
def test_the_decoder_refuses_random_records_with_its_own_error(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    decode_or_refuse(replace(valid_record(), value=value, headers=tuple(headers)))


@FUZZ
@given(data=st.data(), value=json_values, header=header_names, header_value=st.binary(max_size=80))
def test_the_decoder_refuses_mutated_events_with_its_own_error(
    data: st.DataObject, value: Any, header: str, header_value: bytes
) -> None:
    valid = valid_record()
    document = mutated_json(json.loads(valid.value), value, data)
    headers = [(k, header_value if k == header else v) for k, v in valid.headers]
    decode_or_refuse(replace(valid, value=json.dumps(document).encode(), headers=tuple(headers)))


@FUZZ
@given(
    text_value=st.text(min_size=1, max_size=500),
    name=st.text(max_size=80),
    address=st.text(min_size=1, max_size=80).filter(str.strip),
)
def test_any_message_survives_the_kafka_encoding(text_value: str, name: str, address: str) -> None:
    message = MessageReceived(
        workspace_id=uuid.uuid4(),
        channel=Channel.SMS,
        provider_message_id="p",
        thread_key=address,
        sender=Sender(address=address, display_name=name or None),
        text=text_value,
        received_at=datetime.now(UTC),
    )
    out = encode_event(Event.of(message, source="fuzz"), topic=Topic.INBOUND.value, key="k")
    record = BusRecord(
        topic=out.topic, partition=0, offset=0, key=out.key, value=out.value, headers=out.headers
    )
    assert decode_event(record).data == message
