"""``python -m services.router``: consume omni.inbound.v1, serve health and metrics."""

from services.router.app import create_app
from shared.serve import serve
from shared.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    serve(
        create_app(settings),
        settings=settings,
        service="router",
        host=settings.router_host,
        port=settings.router_port,
    )
