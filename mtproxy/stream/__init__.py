"""The bottom layer: one stream's events as the proxy carries them (``events``), SSE framing and
the proxy's own SSE events (``sse``), and the tap that observes a relayed OpenAI stream without
altering it, with its fast paths (``tap``).

May import: nothing else of mtproxy.
"""
