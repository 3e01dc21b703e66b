"""Delivery status notifications (RFC 3464 bounces) as delivery receipts.

A DSN is a ``multipart/report; report-type=delivery-status`` whose
``message/delivery-status`` part says per recipient what happened (``Action``,
``Status``, ``Diagnostic-Code``) and whose returned headers carry our ``Message-ID``.
"""

from __future__ import annotations

import email
from email.message import Message
from email.policy import default as default_policy

from shared.channels.email.headers import first_message_id
from shared.channels.protocol import DeliveryReceipt, DeliveryState

_STATE_OF_ACTION = {
    "failed": DeliveryState.FAILED,
    "delivered": DeliveryState.DELIVERED,
    "relayed": DeliveryState.SENT,
    "expanded": DeliveryState.SENT,
}


def is_delivery_report(msg: Message) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type", "")).lower() == "delivery-status"
    )


def _original_message_id(msg: Message) -> str | None:
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return first_message_id(str(inner[0].get("Message-ID", "")) or None)
        if kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                headers = email.message_from_bytes(payload, policy=default_policy)
                return first_message_id(str(headers.get("Message-ID", "")) or None)
    return None


def delivery_receipts(msg: Message) -> list[DeliveryReceipt]:
    """Receipts in a DSN (empty for any other message)."""
    if not is_delivery_report(msg):
        return []
    original = _original_message_id(msg)
    if original is None:
        return []
    receipts: list[DeliveryReceipt] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks[1:]:  # the first block is about the message, the rest per recipient
            if not isinstance(block, Message):
                continue
            state = _STATE_OF_ACTION.get(str(block.get("Action", "")).strip().lower())
            if state is None:
                continue
            status = str(block.get("Status", "")).strip()
            diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
            reason = "; ".join(x for x in (status, diagnostic) if x) or None
            receipts.append(
                DeliveryReceipt(provider_message_id=original, state=state, reason=reason)
            )
    return receipts
