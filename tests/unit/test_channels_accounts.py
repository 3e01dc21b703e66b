"""What a channel account may hold: adapters installed and of the channel, addresses
normalized as ingest looks them up, secret references as shared code resolves them,
bounded settings, webhook paths as ingest routes them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.ingest.app import BUILTIN_ADAPTERS
from shared.channels.accounts import (
    BUILTIN_ADAPTER_CHANNELS,
    MAX_SETTINGS_BYTES,
    InvalidAccountError,
    check_adapter,
    check_secret_ref,
    check_settings,
    installed_adapter_names,
    normalize_account_address,
    webhook_path,
)
from shared.channels.registry import ChannelRegistry
from shared.channels.secrets import resolve_secret
from shared.events import Channel
from tests.unit.test_channels_sdk import runtime


def test_built_in_adapter_channels_are_the_ones_ingest_builds() -> None:
    registry = ChannelRegistry.discover(runtime())

    assert set(BUILTIN_ADAPTER_CHANNELS) == set(BUILTIN_ADAPTERS)
    assert {n: registry.get(n).channel for n in BUILTIN_ADAPTERS} == BUILTIN_ADAPTER_CHANNELS
    assert set(registry.names()) == installed_adapter_names()


def test_adapters_must_be_installed_and_serve_the_channel() -> None:
    assert check_adapter(Channel.EMAIL, "mailgun") == "mailgun"
    assert check_adapter(Channel.SOCIAL, "meta") == "meta"
    with pytest.raises(InvalidAccountError, match="serves channel sms, not email"):
        check_adapter(Channel.EMAIL, "twilio")
    with pytest.raises(InvalidAccountError, match="installed"):
        check_adapter(Channel.SOCIAL, "pigeon")
    for bad in ("Mailgun", "../meta", "meta/x", "", "x" * 65):
        with pytest.raises(InvalidAccountError, match="not an adapter name"):
            check_adapter(Channel.EMAIL, bad)


def test_addresses_are_normalized_as_ingest_looks_them_up() -> None:
    assert normalize_account_address(Channel.EMAIL, " Support@Acme.EXAMPLE ") == (
        "support@acme.example"
    )
    assert normalize_account_address(Channel.EMAIL, '"Acme" <Help@Acme.example>') == (
        "help@acme.example"
    )
    assert normalize_account_address(Channel.SMS, "+1 (415) 555-0100") == "+14155550100"
    assert normalize_account_address(Channel.SMS, "12345") == "12345"  # a short code
    assert normalize_account_address(Channel.SOCIAL, " 1029384756 ") == "1029384756"
    assert normalize_account_address(Channel.SOCIAL, "Acme-Lofts") == "acme-lofts"
    refused = [
        (Channel.EMAIL, "not an email"),
        (Channel.EMAIL, "a@b@c"),
        (Channel.SMS, "4155550100"),  # no country code: not E.164
        (Channel.SMS, "+0123456789"),
        (Channel.SMS, "+1234567890123456"),  # 16 digits
        (Channel.SMS, "call me"),
        (Channel.SOCIAL, "   "),
        (Channel.SOCIAL, "two words"),
        (Channel.WEBCHAT, "tab\there"),
    ]
    for channel, address in refused:
        with pytest.raises(InvalidAccountError):
            normalize_account_address(channel, address)


def test_secret_refs_are_what_shared_code_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("s3cret\n")
    monkeypatch.setenv("PIGEON_KEY", "k")
    for accepted, resolved in ((f"file:{secret_file}", "s3cret"), ("env:PIGEON_KEY", "k")):
        assert check_secret_ref(accepted) == accepted
        assert resolve_secret(accepted) == resolved
    for bad in (
        "s3cret",
        "",
        "env:",
        "env:BAD-NAME",
        "env: PIGEON_KEY",
        "env:OMNI_JWT_SECRET",
        "env:omni_database_url",
        "file:relative/path",
        "file:",
        "file:/run/secrets/key ",
        "vault:secret/data/x",
    ):
        with pytest.raises(InvalidAccountError):
            check_secret_ref(bad)


def test_settings_are_bounded_plain_json() -> None:
    assert check_settings({"verify_token": "t", "nested": {"a": [1, 2]}}) == {
        "verify_token": "t",
        "nested": {"a": [1, 2]},
    }
    with pytest.raises(InvalidAccountError, match="bytes"):
        check_settings({"blob": "x" * MAX_SETTINGS_BYTES})
    with pytest.raises(InvalidAccountError, match="plain JSON"):
        check_settings({"n": float("nan")})


def test_webhook_paths_follow_ingests_routes() -> None:
    account = uuid.uuid4()
    assert webhook_path("mailgun", account) == f"/v1/channels/mailgun/{account}"
    assert webhook_path("meta", account) == f"/v1/channels/meta/{account}"
    assert webhook_path("email", account) is None
    assert webhook_path("webchat", account) is None
