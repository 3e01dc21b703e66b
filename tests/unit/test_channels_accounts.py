"""What a channel account may hold: adapters installed and of the channel, addresses
normalized as ingest looks them up, secret references as shared code resolves them,
bounded settings, webhook paths as ingest routes them."""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath

import pytest

from services.ingest.app import BUILTIN_ADAPTERS
from shared.channels.accounts import (
    BUILTIN_ADAPTER_CHANNELS,
    MAX_SECRET_REF_LENGTH,
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
        (Channel.SMS, "+1 415 555 0100 ext. 12 abc"),  # letters were dropped, digits kept
        (Channel.SMS, "+1 415 555 CALL"),
        (Channel.SMS, "+1415\uff15\uff15\uff150100"),  # fullwidth digits
        (Channel.SMS, "\u0661\u0662\u0663\u0664\u0665"),  # Arabic-Indic short code
        (Channel.SMS, "+1\u00a0415\u00a05550100"),  # no-break spaces
        (Channel.SMS, "+1/415/5550100"),
        (Channel.SOCIAL, "   "),
        (Channel.SOCIAL, "two words"),
        (Channel.WEBCHAT, "tab\there"),
    ]
    for channel, address in refused:
        with pytest.raises(InvalidAccountError):
            normalize_account_address(channel, address)


def test_secret_refs_name_files_in_the_workspaces_directory(tmp_path: Path) -> None:
    workspace = uuid.uuid4()
    own = tmp_path / str(workspace)
    own.mkdir()
    (own / "key").write_text("s3cret\n")
    secrets_dir = PurePosixPath(tmp_path)
    for given in ("file:key", f"file:{own}/key", f"file:{own}//./key", "file:./key"):
        stored = check_secret_ref(given, secrets_dir=secrets_dir, workspace_id=workspace)
        assert stored == f"file:{own}/key"
        assert resolve_secret(stored) == "s3cret"
    nested = check_secret_ref("file:sms/twilio", secrets_dir=secrets_dir, workspace_id=workspace)
    assert nested == f"file:{own}/sms/twilio"


def test_secret_refs_outside_the_workspaces_directory_are_refused(tmp_path: Path) -> None:
    workspace, other = uuid.uuid4(), uuid.uuid4()
    secrets_dir = PurePosixPath(tmp_path)
    own = f"{tmp_path}/{workspace}"
    for bad in (
        "s3cret",
        "",
        "file:",
        "file:/dev/zero",
        "file:/proc/self/environ",
        f"file:{tmp_path}/{other}/key",  # another workspace's secret
        f"file:{tmp_path}/key",  # the operator's, not the workspace's
        f"file:{own}",  # the directory itself
        f"file:{own}/../{other}/key",
        f"file:{own}x/key",  # a sibling whose name starts alike
        f"file:/{own}/key",  # "//" at the start is another root on POSIX
        "file:../key",
        "file:sub/../../key",
        "file:key ",
        "file:key\x00",
        "env:TWILIO_OTHER_TENANT",
        "env:OMNI_JWT_SECRET",
        "vault:secret/data/x",
        "file:" + "k" * MAX_SECRET_REF_LENGTH,
    ):
        with pytest.raises(InvalidAccountError):
            check_secret_ref(bad, secrets_dir=secrets_dir, workspace_id=workspace)
    with pytest.raises(InvalidAccountError, match="OMNI_CHANNEL_SECRETS_DIR"):
        check_secret_ref("file:key", secrets_dir=None, workspace_id=workspace)


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
