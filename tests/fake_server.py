"""A fake runtime as a process of its own, for managed-backend tests:
``python tests/fake_server.py --port P --models m1,m2 --version 0.11.0``; stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import Behaviour, FakeRuntime  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default="m1")
    parser.add_argument("--version", default="0.11.0", help="what GET /version reports (vLLM's shape)")
    args = parser.parse_args()
    rt = FakeRuntime("managed", Behaviour(models=args.models.split(","), routes={"/version": {"version": args.version}}))
    rt.port = args.port
    await rt.start()
    print(f"fake runtime listening on {rt.url}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await rt.stop()


if __name__ == "__main__":
    asyncio.run(main())
