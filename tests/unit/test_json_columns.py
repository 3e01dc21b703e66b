"""JSON columns are written by orjson, with the standard library's meaning."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.db.session import json_text


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"rule": "sticky_owner", "candidates": [{"load_share": 0.3333}]}, id="nested"),
        pytest.param({"text": "Grüße, 你好 😀", "empty": None, "flag": True}, id="unicode"),
        pytest.param([1, 2.5, -0.0, 1e-05, "x"], id="numbers"),
        pytest.param({1: "a", 2.5: "b", False: "c", None: "d"}, id="non-string keys"),
        pytest.param({"big": 2**70}, id="integer beyond 64 bits"),
        pytest.param({"lone": "\ud800"}, id="lone surrogate"),
    ],
)
def test_the_text_means_what_json_dumps_would_have_written(value: Any) -> None:
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))
