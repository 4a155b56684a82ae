"""Optional integrations, each behind its extra: Prometheus (``writebehind[prometheus]``),
OpenTelemetry (``writebehind[otel]``) and the local stats endpoint that ``writebehind top``
reads. Importing this package imports none of them."""
