"""mtproxy's benchmark harness: a fake runtime, a floor proxy, a load generator and a runner.

Run ``python -m bench.run`` (or ``make bench``); see bench/README.md.
"""
