"""Email bodies for display: HTML to text, quoted replies and signatures stripped.

The stripping is email-reply-parser's (GitHub's heuristics); the original text is
always kept next to the display text.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Final

from email_reply_parser import EmailReplyParser

_BLOCK_TAGS: Final = frozenset(
    {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}
)
_SKIPPED_TAGS: Final = frozenset({"script", "style", "head", "title"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    text = "".join(extractor.parts)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_quoted_reply(text: str) -> str:
    """The new part of a reply: quoted history and signature removed.

    Falls back to the whole text when the heuristics would leave nothing (a message
    that is all quote, or a signature-looking first line).
    """
    normalized = text.replace("\r\n", "\n")
    try:
        reply: str = EmailReplyParser.parse_reply(normalized)
    except Exception:  # a third-party heuristic must never lose a message
        return normalized.strip()
    reply = reply.strip()
    return reply or normalized.strip()
