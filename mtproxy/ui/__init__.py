"""The page at ``/ui``: backends, models, every request live, charts, actions and a playground.

activity.py: one small record per finished request (built on the request path, nothing else
there); history.py: the optional SQLite history; hub.py: the ring, the chart series, the
markers and the one SSE stream every viewer reads; views.py: the routes; static/: the page.

May import: config, errors, metrics, middleware, proxy, state, status, verify (the proxy's own
structures are read, never copied). reload.py imports it to apply a reloaded ``ui:`` section
(Hub.reopen, Hub.replace), so ui/ never imports reload.
"""

from .views import UI, setup

__all__ = ["UI", "setup"]
