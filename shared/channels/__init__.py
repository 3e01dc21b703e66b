"""The channel-adapter SDK: protocol, registry (entry points), contract test kit.

Adapter packages import from here; see ``docs/channels.md`` ("Writing a channel
adapter"). The contract kit is ``shared.channels.contract`` (needs pytest).
"""

from shared.channels.attachments import AttachmentStore, MemoryAttachmentStore
from shared.channels.protocol import (
    BaseChannelAdapter,
    ChannelAccount,
    ChannelAdapter,
    ChannelContext,
    ChannelLimits,
    ChannelRequestError,
    ChannelRuntime,
    DeliveryReceipt,
    DeliveryState,
    InboundRequest,
    PermanentDeliveryError,
    ProviderResponse,
    ProviderUnavailableError,
    SendResult,
    SmtpEnvelope,
    Verification,
)
from shared.channels.registry import ENTRY_POINT_GROUP, ChannelRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttachmentStore",
    "BaseChannelAdapter",
    "ChannelAccount",
    "ChannelAdapter",
    "ChannelContext",
    "ChannelLimits",
    "ChannelRegistry",
    "ChannelRequestError",
    "ChannelRuntime",
    "DeliveryReceipt",
    "DeliveryState",
    "InboundRequest",
    "MemoryAttachmentStore",
    "PermanentDeliveryError",
    "ProviderResponse",
    "ProviderUnavailableError",
    "SendResult",
    "SmtpEnvelope",
    "Verification",
]
