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


async def test_a_body_the_signature_does_not_cover_is_named_with_the_way_to_say_so() -> None:
    """An adapter whose provider signs only some fields is right to accept a changed
    body; the kit cannot know, so its failure tells the author what to declare."""
    with pytest.raises(AssertionError, match="forged requests not refused") as failed:
        await run_kit(
            "test_forged_requests_are_refused_before_parsing", "signature ignores the body"
        )
    assert "declare signature_covers_body = False" in str(failed.value)


def hub_signature(body: bytes, algorithm: str = "sha256", secret: str = SECRET) -> str:
    return f"{algorithm}=" + hmac.new(secret.encode(), body, algorithm).hexdigest()


class MetaLikeAdapter(PlantedAdapter):
    """Checks X-Hub-Signature-256 only, as it should: Meta also sends the SHA-1
    X-Hub-Signature, which a correct adapter may ignore."""

    def _check(self, request: InboundRequest) -> None:
        given = request.headers.get("x-hub-signature-256", "")
        if not hmac.compare_digest(given, hub_signature(request.body)):
            raise ChannelRequestError(401, "bad signature")


class MetaLikeContract(PlantedContract):
    signature_headers: tuple[str, ...] | None = ("x-hub-signature-256",)

    def make_adapter(self) -> ChannelAdapter:
        return MetaLikeAdapter()

    def sign(self, request: InboundRequest) -> InboundRequest:
        sha1 = with_header(request, "x-hub-signature", hub_signature(request.body, "sha1"))
        return with_header(sha1, "x-hub-signature-256", hub_signature(request.body))

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        return [("wrong key", with_header(valid, "x-hub-signature-256", "sha256=" + "0" * 64))]


async def test_an_adapter_checking_one_of_two_signature_headers_passes_once_it_says_which() -> None:
    await MetaLikeContract().test_forged_requests_are_refused_before_parsing()
    await MetaLikeContract().test_malformed_requests_are_refused_with_a_4xx()


async def test_the_kit_does_not_guess_between_several_signature_headers() -> None:
    """Forging the removal of X-Hub-Signature would fail the correct adapter above."""

    class Undeclared(MetaLikeContract):
        signature_headers = None

    with pytest.raises(AssertionError, match="declare signature_headers") as failed:
        await Undeclared().test_forged_requests_are_refused_before_parsing()
    assert "x-hub-signature, x-hub-signature-256" in str(failed.value)


OLD_SECRET = "kit-test-secret-before-rotation"


class RotatingAdapter(PlantedAdapter):
    """Accepts a request that any of its signatures matches, as providers rotating a
    key send one signature per key (``t=…,v1=…,v1=…``, like Stripe's header)."""

    def _check(self, request: InboundRequest) -> None:
        header = request.headers.get("x-signature", "")
        fields = [(k, v) for k, _, v in (f.partition("=") for f in header.split(","))]
        stamp = next((v for k, v in fields if k == "t"), "")
        given = [v for k, v in fields if k == "v1"]
        expected = {rotation_mac(stamp, request.body, s) for s in (SECRET, OLD_SECRET)}
        if not stamp or not any(hmac.compare_digest(g, e) for g in given for e in expected):
            raise ChannelRequestError(401, "bad signature")


def rotation_mac(stamp: str, body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class RotatingContract(PlantedContract):
    def make_adapter(self) -> ChannelAdapter:
        return RotatingAdapter()

    def sign(self, request: InboundRequest) -> InboundRequest:
        stamp = request.headers["x-stamp"]
        macs = ",".join(f"v1={rotation_mac(stamp, request.body, s)}" for s in (SECRET, OLD_SECRET))
        return with_header(request, "x-signature", f"t={stamp},{macs}")

    def forged_requests(self, valid: InboundRequest) -> list[tuple[str, InboundRequest]]:
        return [("wrong key", with_header(valid, "x-signature", "t=1,v1=" + "0" * 64))]


async def test_a_header_with_several_signatures_is_altered_in_every_one() -> None:
    """Changing one signature of two leaves the other valid: a correct adapter accepts
    that, so the kit's altered header must invalidate them all."""
    await RotatingContract().test_forged_requests_are_refused_before_parsing()
