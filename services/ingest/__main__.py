"""``python -m services.ingest``: channel webhooks, web chat, outbound dispatcher."""

from services.ingest.app import create_app
from shared.serve import serve
from shared.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    serve(
        create_app(settings),
        settings=settings,
        service="ingest",
        host=settings.ingest_host,
        port=settings.ingest_port,
    )
