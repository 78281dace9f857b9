"""media.bridge: two calls' sessions joined frame by frame, over real loopback sockets.

Four sessions: a "callee" phone talks to our leg A, our leg B talks to a
"target" phone; the bridge joins A and B. Each phone plays its own tone and
must hear the other's, and a key the callee presses reaches the target.
"""

from __future__ import annotations

import numpy as np
import pytest

from media.bridge import FrameBridge, FrameQueue
from media.playback import PlaybackQueue, prompt_from_samples
from media.ports import PortAllocator, bind_pair
from media.session import MediaParams, RtpSession, SessionConfig

from .test_session import HOST, Collector, make_session, peak_frequency, tone


def test_frame_queue_is_bounded_and_copies() -> None:
    queue = FrameQueue(max_frames=2)
    frame = np.arange(160, dtype=np.int16)
    queue.push(frame)
    frame[:] = 0  # the session reuses its arrays: the queue kept its own copy
    queue.push(np.ones(160, np.int16))
    queue.push(np.full(160, 2, np.int16))
    assert len(queue) == 2 and queue.dropped == 1 and queue.frames_in == 3
    first = queue.read_frame()
    assert first is not None and int(first[0]) == 1  # the oldest was dropped
    assert queue.read_frame() is not None and queue.read_frame() is None
    assert (queue.frames_out, queue.empty_reads) == (2, 1)
    with pytest.raises(ValueError):
        FrameQueue(0)


@pytest.fixture
def allocator() -> PortAllocator:
    return PortAllocator(43000, 43999)


async def test_each_leg_hears_the_other_and_dtmf_is_relayed(allocator: PortAllocator) -> None:
    config = SessionConfig(rtcp=False, media_timeout_s=None)
    callee_heard, target_heard = Collector(), Collector()
    callee_says, target_says = PlaybackQueue(), PlaybackQueue()
    callee_says.enqueue(prompt_from_samples(tone(440, 3.0)))
    target_says.enqueue(prompt_from_samples(tone(1000, 3.0)))
    callee = await make_session(allocator, callee_heard, config, source=callee_says)
    target = await make_session(allocator, target_heard, config, source=target_says)
    a = await RtpSession.create(bind_pair(allocator, HOST), config)
    b = await RtpSession.create(bind_pair(allocator, HOST), config)
    saved_source = object()
    a.source = saved_source  # type: ignore[assignment]
    bridge = FrameBridge(a, b)
    try:
        bridge.join()
        for one, other in ((callee, a), (a, callee), (target, b), (b, target)):
            one.start(MediaParams((HOST, other.local_rtp_port)))
        await target_heard.frames_more(25)
        await callee_heard.frames_more(25)
        callee.send_dtmf("5")
        await target_heard.until(lambda: [d.digit for d in target_heard.digits] == ["5"])
        # Let the audio settle past the first frames of silence, then listen.
        await target_heard.frames_more(20)
        await callee_heard.frames_more(20)
        assert abs(peak_frequency(target_heard.audio()[-1600:]) - 440) < 20
        assert abs(peak_frequency(callee_heard.audio()[-1600:]) - 1000) < 20
        stats = bridge.stats().as_dict()
        assert stats["a_to_b_frames"] > 40 and stats["b_to_a_frames"] > 40
        assert stats["dtmf_relayed"] == 1
        # Never more than the queue bound behind, whatever the two clocks do.
        assert len(bridge.a_to_b) <= bridge.a_to_b.max_frames
    finally:
        bridge.close()
        for session in (callee, target, a, b):
            session.close()
    assert a.source is saved_source and a.on_audio is None and b.source is None
