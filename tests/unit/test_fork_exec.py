"""
Forking to exec while gRPC is busy: with gRPC core's fork support on (its
default), a child that forks to run as another user (as the embedded servers'
pg_ctl does under root) could crash in gRPC's post-fork handler before its exec
(grpc/grpc#43055). Importing lake turns fork support off first.
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import asyncio, os, subprocess
import lake  # first, as every Lake entry point is
import grpc

async def main():
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    busy = True

    async def calls():
        while busy:
            try:
                await channel.unary_unary("/x/y")(b"", timeout=1)
            except grpc.aio.AioRpcError:
                pass

    def forks():
        bad = 0
        for _ in range(200):
            done = subprocess.run(
                ["/bin/true"], capture_output=True,
                user=os.getuid(), group=os.getgid(), extra_groups=[],
            )
            bad += done.returncode != 0 or bool(done.stderr)
        return bad

    task = asyncio.create_task(calls())
    bad = await asyncio.to_thread(forks)
    busy = False
    await task
    await channel.close()
    await server.stop(None)
    print(bad)

asyncio.run(main())
"""


def test_forks_to_exec_survive_a_busy_grpc():
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    assert out.stdout.strip() == "0", out.stderr[-2000:]
