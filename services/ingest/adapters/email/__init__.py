"""Email adapters: the SMTP listener's, SendGrid Inbound Parse and Mailgun routes.

All three parse with ``shared.channels.email`` and send replies through the SMTP
relay, so one email threads the same whichever way it came in.
"""
