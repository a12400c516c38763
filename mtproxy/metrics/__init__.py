"""What the proxy measures and exports: one request's figures (``meter``), the 5-second token
window (``window``), every Prometheus metric with its names and buckets, declared once
(``instruments``), the request families on plain numbers (``lean``) and ``GET /metrics``
(``export``).

May import ``stream/`` (the runtime's report), ``errors`` and prometheus_client; not
``backends``, ``runtimes/``, ``proxy`` or the fronts, which import it: what it reads of them comes
through small protocols (``instruments.Pool``) or a type parameter (``meter.RequestMeter``).
"""
