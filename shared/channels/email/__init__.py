"""The email kit of the channel SDK: MIME parsing, threading headers, SMTP sending."""
