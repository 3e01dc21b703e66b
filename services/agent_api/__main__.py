"""``python -m services.agent_api``: REST + WebSocket API for agents."""

from services.agent_api.app import create_app
from shared.serve import serve
from shared.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    serve(
        create_app(settings),
        settings=settings,
        service="agent_api",
        host=settings.agent_api_host,
        port=settings.agent_api_port,
    )
