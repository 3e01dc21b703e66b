"""``python -m services.agent_api.openapi > docs/openapi/agent-api.json``: the committed
OpenAPI document of the agent API (a test fails when it drifts from the code)."""

from __future__ import annotations

import json

from services.agent_api.app import create_app
from shared.settings import Settings


def render() -> str:
    app = create_app(Settings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")  # noqa: T201
