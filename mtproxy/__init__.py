"""mtproxy: one OpenAI-compatible URL for local LLM runtimes, MTP-aware and measured.

The package is layered (tests/test_layers.py reads the imports): from the bottom, stream/, wire,
errors and upstream (what a stream and a request are, the one I/O seam); mtp/; runtimes/ and
formats; config, metrics/, launcher, limits; backends, router, status; proxy, verify, middleware/,
clients; state; front/, handlers, reload; app, server, cli. A module may import only from its own
layer or below. This root module imports nothing.
"""

__version__ = "0.1.0"
