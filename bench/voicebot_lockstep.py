"""CPU per frame pair of the voicebot path, in lockstep: a fixed workload for callgrind.

N calls, each an ``RtpSession`` with a ``VoicebotStream`` attached, stream
to ``media.bots.EchoBot`` in another process. The harness drives the
sessions' clock itself (no timer): each tick every session gets one RTP
packet of mu-law tone (``_on_rtp``) and one ``on_frames`` (one frame sent
from the bot's audio, one frame played out to the bot), and the tick ends
when every stream has had its echo back. The work per tick is the same on
a loaded machine as on an idle one, so instruction counts compare:

    valgrind --tool=callgrind python bench/voicebot_lockstep.py TREE N K

run for a short and a long K; (long - short) / (N x (K_long - K_short)) is
the instructions per frame pair, without start-up and imports. Without
valgrind it prints the worker's CPU time per frame pair. ``TREE`` is the
checkout to import (so two trees compare with one harness).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import socket
import struct
import sys
import time
from typing import Any

import numpy as np

WARMUP_TICKS = 50


def _bot_main(ready: Any, stop: Any) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def serve() -> None:
        from media.bots import EchoBot, serve_bot

        server = await serve_bot(EchoBot(keep_sessions=False))
        ready.put(server.url)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.close()

    loop.run_until_complete(serve())


async def _run(url: str, calls: int, ticks: int) -> None:
    import aiohttp

    from media.g711 import ulaw_encode
    from media.playback import PlaybackQueue
    from media.ports import PortAllocator, bind_pair
    from media.session import MediaParams, RtpSession, SessionConfig
    from media.ticker import FrameTicker
    from media.voicebot import VoicebotCall, VoicebotConfig, VoicebotStream

    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer = sink.getsockname()
    allocator = PortAllocator(40000, 49999)
    ticker = FrameTicker(loop)
    rng = random.Random(1)
    echoes = {"count": 0, "target": 0}
    waiter: list[asyncio.Future[None]] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    pairs: list[tuple[RtpSession, VoicebotStream]] = []
    for i in range(calls):
        session = await RtpSession.create(
            bind_pair(allocator, "127.0.0.1"),
            SessionConfig(media_timeout_s=None, rtcp=False),
            source=PlaybackQueue(),
            rng=rng,
            ticker=ticker,
        )
        session.start(MediaParams(remote_rtp=peer))
        call = VoicebotCall(f"CA{i:032x}", "AC" + "0" * 32, f"MZ{i:032x}", {"call": i})
        # No playout hold: every echo plays at the next tick, whatever the timing.
        config = VoicebotConfig(url, playout_hold_ms=0.0, max_playout_hold_ms=0.0)
        stream = VoicebotStream(config, call, session.source, http=http)  # type: ignore[arg-type]
        stream.attach(session)
        play = stream._play

        def counted(payload: bytes, lp: asyncio.AbstractEventLoop, play: Any = play) -> None:
            play(payload, lp)
            echoes["count"] += 1
            if echoes["count"] >= echoes["target"] and waiter and not waiter[0].done():
                waiter[0].set_result(None)

        stream._play = counted  # type: ignore[method-assign]
        pairs.append((session, stream))
    ticker.close()  # the harness is the clock
    tasks = [asyncio.ensure_future(stream.run()) for _, stream in pairs]
    while not all(stream.connect_ms is not None for _, stream in pairs):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    t = np.arange(160) / 8000
    payload = ulaw_encode((6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)).tobytes()
    header = struct.Struct("!BBHII")
    base = loop.time()
    frame = 0

    async def run_ticks(count: int) -> None:
        nonlocal frame
        for _ in range(count):
            now = base + frame * 0.020
            echoes["target"] += calls
            waiter[:] = [loop.create_future()]
            for i, (session, _) in enumerate(pairs):
                seq, ts = frame & 0xFFFF, (frame * 160) & 0xFFFFFFFF
                session._on_rtp(header.pack(0x80, 0, seq, ts, 1234 + i) + payload, peer)
                session.on_frames(0, 1, now, now)
            frame += 1
            await asyncio.wait_for(waiter[0], 30)

    await run_ticks(WARMUP_TICKS)
    cpu0 = time.process_time()
    await run_ticks(ticks)
    cpu = time.process_time() - cpu0
    print(f"N={calls} K={ticks}: {cpu / max(1, calls * ticks) * 1e6:.2f} us CPU per frame pair")
    for _, stream in pairs:
        stream.stop()
    results = await asyncio.gather(*tasks)
    sent = sum(r.frames_sent for r in results)
    echoed = sum(r.bot_media_messages for r in results)
    print(f"frames to the bot {sent}, echoes {echoed}")
    for session, stream in pairs:
        stream.detach()
        session.close()
    await http.close()


def main() -> None:
    tree, calls, ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, tree)
    context = mp.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    bot = context.Process(target=_bot_main, args=(ready, stop))
    bot.start()
    url = ready.get(timeout=60)
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_run(url, calls, ticks))
    finally:
        stop.set()
        bot.join(5)


if __name__ == "__main__":
    main()
