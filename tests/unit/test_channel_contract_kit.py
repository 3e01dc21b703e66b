"""The contract kit must fail adapters that break the contract, naming the case.

A small signed-JSON adapter with one planted mistake at a time, and a contract whose
author forgot the forgeries that would have shown it: the kit's own checks catch it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest

from shared.channels.contract import ChannelAdapterContract, with_header
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelRequestError,
    InboundRequest,
    Verification,
)
from shared.events import Channel, MessageReceived, Sender

SECRET = "kit-test-secret"
ACCOUNT = ChannelAccount(
    id=uuid.UUID("00000000-0000-4000-8000-00000000c1a1"),
    workspace_id=uuid.UUID("00000000-0000-4000-8000-00000000c1a2"),
    channel=Channel.SOCIAL,
    adapter="planted",
    address="partner",
    secret=SECRET,
)


def mac(stamp: str, body: bytes, *, over_body: bool = True) -> str:
    signed = stamp.encode() + (b"." + body if over_body else b"")
    return "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()


class PlantedAdapter(BaseChannelAdapter):
    """Right unless ``mistake`` names what it gets wrong."""

    name = "planted"
    channel = Channel.SOCIAL

    def __init__(self, mistake: str | None = None) -> None:
        self.mistake = mistake

    def _check(self, request: InboundRequest) -> None:
        stamp = request.headers.get("x-stamp", "")
        given = request.headers.get("x-signature")
        if given is None and self.mistake == "signature optional":
            return
        over_body = self.mistake != "signature ignores the body"
        if not stamp or not given:
            raise ChannelRequestError(401, "unsigned")
        if not hmac.compare_digest(given, mac(stamp, request.body, over_body=over_body)):
            raise ChannelRequestError(403, "bad signature")

    async def verify(self, request: InboundRequest, ctx: ChannelContext) -> Verification:  # noqa: ARG002
        if self.mistake != "verified in parse":
            self._check(request)
        if self.mistake == "message id as replay key":
            return Verification(replay_key=json.loads(request.body)["id"])
        return Verification()

    async def parse(self, request: InboundRequest, ctx: ChannelContext) -> list[MessageReceived]:
        if self.mistake == "verified in parse":
            self._check(request)
        if self.mistake == "bare json.loads":
            data: Any = json.loads(request.body)
        else:
            try:
                data = json.loads(request.body)
            except ValueError as exc:
                raise ChannelRequestError(400, "not JSON") from exc
        if self.mistake != "fields unchecked" and (
            not isinstance(data, dict)
            or not all(isinstance(data.get(k), str) and data[k] for k in ("id", "from"))
        ):
            raise ChannelRequestError(422, "id and from are required")
        account = ctx.require_account()
        return [
            MessageReceived(
                workspace_id=account.workspace_id,
                channel=self.channel,
                provider_message_id=data["id"],
                thread_key=data["from"],
                sender=Sender(address=data["from"]),
                text=str(data.get("text", "")),
                received_at=ctx.now,
                channel_account_id=account.id,
            )
        ]


class PlantedContract(ChannelAdapterContract):
    """An integrator's contract: one forgery of their own, no tampered body."""

    mistake: str | None = None

    def make_adapter(self) -> ChannelAdapter:
        return PlantedAdapter(self.mistake)

    def account(self) -> ChannelAccount:
        return ACCOUNT

    def sign(self, request: InboundRequest) -> InboundRequest:
        over_body = self.mistake != "signature ignores the body"
        value = mac(request.headers["x-stamp"], request.body, over_body=over_body)
        return with_header(request, "x-signature", value)

    def valid_request(self) -> InboundRequest:
        body = json.dumps({"id": "m-1", "from": "user-1", "text": "Hello"}).encode()
        headers = {"content-type": "application/json", "x-stamp": str(int(time.time()))}
        unsigned = InboundRequest(body=body, url="https://ingest.example/p", headers=headers)
        return self.sign(unsigned)

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        return [("wrong key", with_header(valid, "x-signature", "sha256=" + "0" * 64))]


async def run_kit(test: str, mistake: str | None) -> None:
    contract = PlantedContract()
    contract.mistake = mistake
    await getattr(contract, test)()


async def test_the_correct_adapter_passes_the_kits_new_checks() -> None:
    await run_kit("test_forged_requests_are_refused_before_parsing", None)
    await run_kit("test_malformed_requests_are_refused_with_a_4xx", None)


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ("signature ignores the body", "kit: body tampered (one byte changed): accepted"),
        ("signature optional", "kit: x-signature header removed: accepted"),
        ("verified in parse", "wrong key: accepted by verify"),
    ],
)
async def test_forgeries_the_author_did_not_list_are_caught(mistake: str, named: str) -> None:
    with pytest.raises(AssertionError, match="forged requests not refused") as failed:
        await run_kit("test_forged_requests_are_refused_before_parsing", mistake)
    assert named in str(failed.value)


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        ("bare json.loads", "invalid JSON (parse): raised JSONDecodeError"),
        ("bare json.loads", "empty body (signed, verify + parse): raised JSONDecodeError"),
        ("fields unchecked", "JSON {} (parse): raised KeyError"),
        ("fields unchecked", "JSON null (parse): raised TypeError"),
    ],
)
async def test_malformed_requests_that_escape_as_other_errors_are_caught(
    mistake: str, named: str
) -> None:
    with pytest.raises(AssertionError, match="malformed requests not refused cleanly") as failed:
        await run_kit("test_malformed_requests_are_refused_with_a_4xx", mistake)
    assert named in str(failed.value)


async def test_a_signed_adapter_must_say_where_its_signature_travels() -> None:
    class Undeclared(PlantedContract):
        def valid_request(self) -> InboundRequest:
            request = super().valid_request()
            return with_header(
                with_header(request, "x-signature", None), "x-hmac", request.headers["x-signature"]
            )

    with pytest.raises(AssertionError, match="declare signature_headers"):
        await Undeclared().test_forged_requests_are_refused_before_parsing()


async def test_a_replay_key_that_refuses_provider_retries_is_caught() -> None:
    await run_kit("test_dedupe_ids_are_stable_across_redelivery", None)
    with pytest.raises(AssertionError, match="carries the first delivery's replay_key"):
        await run_kit("test_dedupe_ids_are_stable_across_redelivery", "message id as replay key")
