"""Measuring every request (``meter``), the 5-second token window (``window``), and the
Prometheus instruments with their names and buckets, declared once (``instruments``)."""
