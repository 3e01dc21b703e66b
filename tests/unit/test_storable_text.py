"""Text PostgreSQL cannot store is refused as bad input, never a server error."""

from __future__ import annotations

import pytest

from shared.http import unstorable_text


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        pytest.param(rb'{"text": "hello"}', False, id="plain"),
        pytest.param('{"text": "café ✓"}'.encode(), False, id="utf-8"),
        pytest.param(rb'{"text": "smile \ud83d\ude00"}', False, id="surrogate pair"),
        pytest.param(rb'{"text": "a\u0000b"}', True, id="nul escape"),
        pytest.param(b'{"text": "a\x00b"}', True, id="raw nul"),
        pytest.param(rb'{"text": "\ud83d alone"}', True, id="lone high surrogate"),
        pytest.param(rb'{"text": "\ude00 alone"}', True, id="lone low surrogate"),
        pytest.param(b'{"text": "\xff\xfe"}', True, id="not utf-8"),
    ],
)
def test_unstorable_text_is_detected(raw: bytes, refused: bool) -> None:
    assert (unstorable_text(raw) is not None) is refused
