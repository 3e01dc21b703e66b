"""The adapter registry: adapters found through the ``omniroute.channels`` entry points.

A package adds a channel by declaring, in its ``pyproject.toml``::

    [project.entry-points."omniroute.channels"]
    mychannel = "my_package.adapter:MyChannelAdapter"

where the object is a factory ``(ChannelRuntime) -> ChannelAdapter`` (a class taking
the runtime works) and the adapter's ``name`` equals the entry point's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

import structlog

from shared.channels.protocol import ChannelAdapter, ChannelRuntime
from shared.events import Channel

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP: Final = "omniroute.channels"

AdapterFactory = Callable[[ChannelRuntime], ChannelAdapter]


class UnknownAdapterError(LookupError):
    pass


class AdapterLoadError(RuntimeError):
    """An entry point that does not load or does not build a valid adapter."""


def build_adapter(name: str, factory: object, runtime: ChannelRuntime) -> ChannelAdapter:
    if not callable(factory):
        raise AdapterLoadError(f"channel adapter {name!r} is not a factory")
    adapter = factory(runtime)
    if not isinstance(adapter, ChannelAdapter):
        raise AdapterLoadError(f"channel adapter {name!r} does not implement ChannelAdapter")
    if adapter.name != name:
        raise AdapterLoadError(f"channel adapter {name!r} calls itself {adapter.name!r}")
    if not isinstance(adapter.channel, Channel):
        raise AdapterLoadError(f"channel adapter {name!r} has no valid channel")
    return adapter


class ChannelRegistry:
    def __init__(self, adapters: Iterable[ChannelAdapter] = ()) -> None:
        self._adapters: dict[str, ChannelAdapter] = {}
        for adapter in adapters:
            self.add(adapter)

    def add(self, adapter: ChannelAdapter) -> None:
        if adapter.name in self._adapters:
            raise AdapterLoadError(f"two channel adapters are named {adapter.name!r}")
        self._adapters[adapter.name] = adapter

    @classmethod
    def discover(
        cls,
        runtime: ChannelRuntime,
        *,
        found: Iterable[EntryPoint] | None = None,
        builtins: dict[str, AdapterFactory] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ChannelRegistry:
        """Every adapter of the entry-point group, built with ``runtime``.

        ``options`` (adapter name → its configuration, ``OMNI_CHANNEL_OPTIONS``) become
        that adapter's ``runtime.options``; an adapter without an entry gets ``{}``.

        ``builtins`` (name → factory) fill in for built-in entry points missing from
        the installed metadata (a checkout whose ``pip install -e .`` predates them);
        that is logged, since it means the installation is stale.
        """
        registry = cls()
        configured = dict(options or {})

        def runtime_of(name: str) -> ChannelRuntime:
            return replace(runtime, options=dict(configured.get(name, {})))

        points = list(found if found is not None else entry_points(group=ENTRY_POINT_GROUP))
        for point in sorted(points, key=lambda p: p.name):
            try:
                factory = point.load()
            except Exception as exc:
                raise AdapterLoadError(f"channel adapter {point.name!r} failed to load") from exc
            registry.add(build_adapter(point.name, factory, runtime_of(point.name)))
        for name, factory in (builtins or {}).items():
            if name not in registry:
                log.warning(
                    "built-in channel adapter missing from entry points; reinstall the package",
                    adapter=name,
                )
                registry.add(build_adapter(name, factory, runtime_of(name)))
        for name in sorted(set(configured) - set(registry.names())):
            log.warning("channel options name an adapter that is not installed", adapter=name)
        return registry

    def __contains__(self, name: object) -> bool:
        return name in self._adapters

    def __iter__(self) -> Iterator[ChannelAdapter]:
        return iter(self._adapters.values())

    def names(self) -> list[str]:
        return sorted(self._adapters)

    def get(self, name: str) -> ChannelAdapter:
        try:
            return self._adapters[name]
        except KeyError as exc:
            raise UnknownAdapterError(f"no channel adapter named {name!r}") from exc

    def for_outbound(self, channel: Channel, adapter_name: str | None) -> ChannelAdapter:
        """The adapter that sends on ``channel``: the account's, else the channel's own."""
        name = adapter_name or channel.value
        adapter = self.get(name)
        if adapter.channel is not channel:
            raise UnknownAdapterError(f"adapter {name!r} does not serve channel {channel.value}")
        return adapter
