"""The committed OpenAPI document matches the code, and documents what clients need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.agent_api.openapi import render

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "agent-api.json"


def test_the_committed_agent_api_document_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == render(), (
        "run: python -m services.agent_api.openapi > docs/openapi/agent-api.json"
    )


def test_every_operation_is_described_and_documents_problem_responses() -> None:
    document: dict[str, Any] = json.loads(render())
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("description") or operation.get("summary"), where
            responses = operation["responses"]
            assert "application/problem+json" in responses["401"]["content"], where
            assert "application/problem+json" in responses["422"]["content"], where
