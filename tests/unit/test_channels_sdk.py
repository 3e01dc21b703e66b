"""The SDK's pieces: entry-point registry, attachment store, secrets, identities, forms."""

from __future__ import annotations

import uuid
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import httpx
import pytest

from services.ingest.adapters.webchat import WebChatConfig
from services.ingest.app import BUILTIN_ADAPTERS, channel_limits, create_app
from services.ingest.webchat_hub import WebChatHub
from shared.bus.memory import MemoryBus
from shared.channels.attachments import (
    DirectoryAttachmentStore,
    UnsafeFilenameError,
    check_filename,
    safe_filename,
)
from shared.channels.forms import parse_form
from shared.channels.identities import InvalidIdentityError, normalize_email, normalize_phone
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelRequestError,
    ChannelRuntime,
)
from shared.channels.registry import (
    ENTRY_POINT_GROUP,
    AdapterLoadError,
    ChannelRegistry,
    UnknownAdapterError,
)
from shared.channels.secrets import SecretReferenceError, resolve_secret
from shared.db.session import Database
from shared.events import Channel
from shared.settings import Settings
from tests.conftest import served


class PigeonAdapter(BaseChannelAdapter):
    """What a third-party package would register."""

    name = "pigeon"
    channel = Channel.SOCIAL

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.runtime = runtime


class MisnamedAdapter(PigeonAdapter):
    name = "crow"


class CrowAdapter(PigeonAdapter):
    name = "crow"


def not_an_adapter(runtime: ChannelRuntime) -> object:
    return object()


def point(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{target}", group=ENTRY_POINT_GROUP)


def runtime() -> ChannelRuntime:
    return ChannelRuntime(
        services={WebChatHub: WebChatHub(), WebChatConfig: WebChatConfig("s" * 40)}
    )


def test_the_built_in_adapters_are_installed_entry_points() -> None:
    installed = {p.name: p.value for p in entry_points(group=ENTRY_POINT_GROUP)}

    assert set(BUILTIN_ADAPTERS) <= set(installed), "run: pip install -e ."
    registry = ChannelRegistry.discover(runtime())
    assert registry.names() == sorted(installed)
    assert registry.get("webchat").channel is Channel.WEBCHAT
    assert registry.for_outbound(Channel.EMAIL, "mailgun").name == "mailgun"
    assert registry.for_outbound(Channel.EMAIL, None).name == "email"


def test_a_third_party_adapter_is_discovered_and_built_with_the_runtime() -> None:
    shared_runtime = runtime()

    registry = ChannelRegistry.discover(shared_runtime, found=[point("pigeon", "PigeonAdapter")])

    adapter = registry.get("pigeon")
    assert isinstance(adapter, PigeonAdapter)
    assert adapter.runtime.services is shared_runtime.services
    assert adapter.runtime.limits is shared_runtime.limits
    assert adapter.runtime.options == {}
    with pytest.raises(UnknownAdapterError):
        registry.for_outbound(Channel.EMAIL, "pigeon")
    with pytest.raises(UnknownAdapterError):
        registry.get("owl")


def test_each_adapter_gets_its_own_options_from_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNI_CHANNEL_OPTIONS", '{"pigeon": {"loft": "north"}, "owl": {"x": 1}}')

    registry = ChannelRegistry.discover(
        runtime(),
        found=[point("pigeon", "PigeonAdapter"), point("crow", "CrowAdapter")],
        options=Settings().channel_options,
    )

    pigeon, crow = registry.get("pigeon"), registry.get("crow")
    assert isinstance(pigeon, PigeonAdapter)
    assert isinstance(crow, PigeonAdapter)
    assert pigeon.runtime.options == {"loft": "north"}
    assert crow.runtime.options == {}


@pytest.mark.parametrize(
    ("points", "message"),
    [
        pytest.param([point("raven", "MisnamedAdapter")], "calls itself", id="name mismatch"),
        pytest.param([point("bad", "not_an_adapter")], "does not implement", id="not an adapter"),
        pytest.param([point("gone", "NoSuchThing")], "failed to load", id="import fails"),
        pytest.param(
            [point("pigeon", "PigeonAdapter"), point("pigeon", "PigeonAdapter")],
            "two channel adapters",
            id="duplicate",
        ),
    ],
)
def test_broken_entry_points_fail_loudly(points: list[EntryPoint], message: str) -> None:
    with pytest.raises(AdapterLoadError, match=message):
        ChannelRegistry.discover(runtime(), found=points)


def test_builtins_fill_in_for_a_stale_installation() -> None:
    registry = ChannelRegistry.discover(runtime(), found=[], builtins=BUILTIN_ADAPTERS)

    assert registry.names() == sorted(BUILTIN_ADAPTERS)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("invoice.pdf", "invoice.pdf"),
        ("Reçu février.pdf", "Reçu février.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("...", "attachment"),
        ("a<b>c|d?.txt", "a_b_c_d_.txt"),
        ("x" * 300 + ".pdf", "x" * 116 + ".pdf"),
        (None, "attachment"),
    ],
)
def test_file_names_are_made_safe(name: str | None, safe: str) -> None:
    assert safe_filename(name) == safe


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", "C:x", "a\x00b", "a\nb"])
def test_traversing_names_are_refused_outright(name: str) -> None:
    with pytest.raises(UnsafeFilenameError):
        check_filename(name)


async def test_the_directory_store_keeps_content_inside_its_root(tmp_path: Path) -> None:
    store = DirectoryAttachmentStore(tmp_path / "store")
    workspace = uuid.uuid4()

    key = await store.put(workspace, "../../../escape.txt", b"content")
    again = await store.put(workspace, "../../../escape.txt", b"content")

    assert key == again
    assert key.startswith(f"{workspace}/")
    assert key.endswith("/escape.txt")
    assert await store.get(key) == b"content"
    assert not (tmp_path / "escape.txt").exists()
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert len(files) == 1
    for forged in ("../../etc/passwd", f"{workspace}/../../x", "a/b/../../../../etc", "a//b"):
        with pytest.raises(KeyError):
            await store.get(forged)


def test_secrets_resolve_from_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CHANNEL_SECRET", "from-env")
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")

    assert resolve_secret("env:TEST_CHANNEL_SECRET") == "from-env"
    assert resolve_secret(f"file:{secret_file}") == "from-file"
    assert resolve_secret(None) is None
    for bad in ("env:TEST_UNSET_SECRET_XYZ", "vault:x", f"file:{tmp_path / 'none'}"):
        with pytest.raises(SecretReferenceError):
            resolve_secret(bad)


def test_identities_are_normalized() -> None:
    assert normalize_email('"Grace" <Grace@Example.COM>') == "grace@example.com"
    assert normalize_phone("+1 (415) 555-0100") == "+14155550100"
    for bad in ("not-an-email", "a@", "@b.c", "a b@c.d"):
        with pytest.raises(InvalidIdentityError):
            normalize_email(bad)
    with pytest.raises(InvalidIdentityError):
        normalize_phone("12+34")


def test_forms_are_read_with_binary_files_intact() -> None:
    content = bytes(range(256)) * 4
    request = httpx.Request(
        "POST",
        "http://x",
        data={"text": "héllo\r\nworld"},
        files={"attachment1": ("bin.dat", content, "application/octet-stream")},
    )

    form = parse_form(request.read(), request.headers["content-type"])

    assert form.text("text") == "héllo\r\nworld"
    [upload] = form.files()
    assert (upload.filename, upload.value) == ("bin.dat", content)
    with pytest.raises(ChannelRequestError) as wrong_type:
        parse_form(b"{}", "application/json")
    assert wrong_type.value.status == 415


async def test_ingest_hands_an_installed_adapter_its_options(
    settings: Settings,
    memory_bus: MemoryBus,
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A third-party package installed for real: a module and its distribution metadata.
    (tmp_path / "kit_pigeon.py").write_text(
        "from shared.channels import BaseChannelAdapter\n"
        "from shared.events import Channel\n\n"
        "class Pigeon(BaseChannelAdapter):\n"
        "    name = 'pigeon'\n"
        "    channel = Channel.SOCIAL\n\n"
        "    def __init__(self, runtime):\n"
        "        self.options = runtime.options\n"
    )
    info = tmp_path / "kit_pigeon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-pigeon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\npigeon = kit_pigeon:Pigeon\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    configured = settings.model_copy(update={"channel_options": {"pigeon": {"loft": "north"}}})

    app = create_app(configured, bus=memory_bus, database=database)
    async with served(app):
        pigeon = app.state.ingest.registry.get("pigeon")
        email = app.state.ingest.registry.get("email")

    assert pigeon.options == {"loft": "north"}
    assert email.limits == channel_limits(configured)
