"""An example third-party omniroute channel: HMAC-SHA256 signed JSON webhooks."""

from omniroute_signed_webhook.adapter import SignedWebhookAdapter, signature, signed_headers

__all__ = ["SignedWebhookAdapter", "signature", "signed_headers"]
