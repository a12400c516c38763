"""The soak (issue 9, not in CI): mtproxy under mixed traffic, random faults and disconnects for
minutes on end, then checked for leaks. ``python -m bench.soak`` (bench/soak/run.py); see
bench/README.md.

- run.py: the runner (fakes, mtproxy, warm-up, traffic, rest, leak checks, the report file);
- faulty_runtime.py: the fake runtime that fails on purpose, built on bench/fake_runtime.py;
- traffic.py, rawhttp.py: the clients, and the bare connections of those that walk away;
- watch.py, analysis.py, report.py: the proxy seen from outside; both sides' records read
  against each other; verdicts and markdown.
"""
