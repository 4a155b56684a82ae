"""Optional integrations, each behind its extra: Prometheus (``writebehind[prometheus]``),
OpenTelemetry (``writebehind[otel]``), and the stats endpoint that ``writebehind top``
reads, either standalone (``serve``) or mounted in your own server (``asgi.asgi_app`` for
FastAPI/Starlette, ``wsgi.wsgi_app`` for Django/Flask). Importing this package imports none
of them."""
