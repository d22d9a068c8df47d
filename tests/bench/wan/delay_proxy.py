#!/usr/bin/env python3
"""A delaying TCP proxy for the WAN benchmark (tests/bench/wan/wan_bench.sh).

Listens on 127.0.0.1:LISTEN and forwards each connection to 127.0.0.1:TARGET.
Every chunk of data is held for DELAY_MS (half the emulated round trip) before
it is written on, in each direction, so a request/response pays one full RTT.
Reading continues while chunks wait (the delay is a pipe, not a stop-and-wait
gate), bounded by a per-direction buffer, so the proxy does not cap throughput;
the rate itself is imposed by tc tbf on the namespace's loopback device.

Counters of the bytes sent to clients (down) and to the target (up) are
appended as "unix_time down_bytes up_bytes connections" to --trace every
100 ms, and the latest line is also written atomically to --stats. Fails by
exiting non-zero when it cannot listen; a broken connection only ends that
connection.
"""
import argparse
import asyncio
import os
import signal
import time

CHUNK = 256 * 1024


class Counters:
    def __init__(self):
        self.down = 0
        self.up = 0
        self.conns = 0


async def pump(reader, writer, delay_s, limit, counters, down):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    queued = 0

    async def sender():
        nonlocal queued
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                queued -= len(data)
                if down:
                    counters.down += len(data)
                else:
                    counters.up += len(data)
                if queued < limit:
                    room.set()
        except (ConnectionError, OSError):
            return

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(CHUNK)
            await queue.put((loop.time() + delay_s, data if data else None))
            if not data:
                break
            queued += len(data)
            if queued >= limit:
                room.clear()
                await room.wait()
    except (ConnectionError, OSError):
        await queue.put((loop.time(), None))
    await task


async def handle(client_r, client_w, args, counters):
    counters.conns += 1
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", args.target)
    except OSError:
        client_w.close()
        return
    delay = args.delay_ms / 1000.0
    try:
        await asyncio.gather(
            pump(client_r, up_w, delay, args.buffer, counters, down=False),
            pump(up_r, client_w, delay, args.buffer, counters, down=True))
    finally:
        for w in (client_w, up_w):
            w.close()


async def report(args, counters):
    trace = open(args.trace, "a") if args.trace else None
    while True:
        line = "%.3f %d %d %d\n" % (time.time(), counters.down, counters.up,
                                     counters.conns)
        if trace:
            trace.write(line)
            trace.flush()
        if args.stats:
            tmp = args.stats + ".tmp"
            with open(tmp, "w") as f:
                f.write(line)
            os.replace(tmp, args.stats)
        await asyncio.sleep(0.1)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--buffer", type=int, default=8 << 20,
                   help="bytes one direction may hold in flight")
    p.add_argument("--stats", default="")
    p.add_argument("--trace", default="")
    args = p.parse_args()
    counters = Counters()
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args, counters), "127.0.0.1", args.listen,
        reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    rep = asyncio.create_task(report(args, counters))
    async with server:
        await stop.wait()
    rep.cancel()


if __name__ == "__main__":
    asyncio.run(main())
