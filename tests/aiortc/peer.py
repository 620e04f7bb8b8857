"""Publishers and one watcher on aiortc, a second WebRTC stack against the relay.

Each publisher sends a VP8 camera (a moving test picture, 320x240 at 15 fps) and Opus through
WHIP; then one watcher opens a WHEP session with SLOTS recvonly video transceivers and one audio
transceiver and counts the frames it decodes on each. Prints one JSON line:

    {"publishers": [{"ice": "completed", ...}], "watcher": {"ice": ..., "video": [frames, ...],
     "sizes": [[w, h], ...], "audio": frames}}

Candidates are held to 127.0.0.1 and no STUN server is asked: every packet stays on loopback.
"""

import argparse
import asyncio
import json
import sys
import urllib.request

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

# aioice leaves out 127.0.0.1 and gathers every other address; here it is the only one.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Picture(VideoStreamTrack):
    """A test picture whose brightness moves every frame, so the encoder has work each frame."""

    def __init__(self, shade):
        super().__init__()
        self.shade = shade
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        from av import VideoFrame

        frame = VideoFrame(width=320, height=240, format="yuv420p")
        self.n += 1
        luma = bytes(((x + self.n * 4 + self.shade) & 0xFF) for x in range(320)) * 240
        frame.planes[0].update(luma)
        frame.planes[1].update(bytes([128]) * (160 * 120))
        frame.planes[2].update(bytes([self.shade]) * (160 * 120))
        frame.pts = pts
        frame.time_base = time_base
        return frame


def post_offer(url, token, sdp):
    request = urllib.request.Request(
        url,
        data=sdp.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        if answer.status != 201:
            raise RuntimeError(f"{url}: status {answer.status}")
        return answer.read().decode()


async def negotiate(pc, url, token):
    await pc.setLocalDescription(await pc.createOffer())
    sdp = await asyncio.get_running_loop().run_in_executor(
        None, post_offer, url, token, pc.localDescription.sdp
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


async def count(track, into, index, sizes):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        into[index] += 1
        if sizes is not None:
            sizes[index] = [frame.width, frame.height]


async def wait_connected(pc, seconds):
    for _ in range(int(seconds * 10)):
        if pc.iceConnectionState in ("completed", "connected"):
            return
        await asyncio.sleep(0.1)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--room", required=True)
    parser.add_argument("--publisher", action="append", default=[], help="a publisher's token")
    parser.add_argument("--watcher", required=True, help="the watcher's token")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()

    config = RTCConfiguration(iceServers=[])
    publishers = []
    for i, token in enumerate(args.publisher):
        pc = RTCPeerConnection(config)
        pc.addTrack(Picture(shade=40 + 60 * i))
        pc.addTrack(AudioStreamTrack())
        await negotiate(pc, f"{args.base}/whip/{args.room}?source=camera", token)
        publishers.append(pc)
    for pc in publishers:
        await wait_connected(pc, 10)

    watcher = RTCPeerConnection(config)
    video = [0] * args.slots
    sizes = [None] * args.slots
    audio = [0]
    tasks = []
    for _ in range(args.slots):
        watcher.addTransceiver("video", direction="recvonly")
    watcher.addTransceiver("audio", direction="recvonly")

    @watcher.on("track")
    def on_track(track):
        if track.kind == "video":
            index = sum(1 for t in tasks if t[0] == "video")
            tasks.append(("video", asyncio.ensure_future(count(track, video, index, sizes))))
        else:
            tasks.append(("audio", asyncio.ensure_future(count(track, audio, 0, None))))

    await negotiate(watcher, f"{args.base}/whep/{args.room}?layout=grid", args.watcher)
    await wait_connected(watcher, 10)
    await asyncio.sleep(args.seconds)

    result = {
        "publishers": [{"ice": pc.iceConnectionState} for pc in publishers],
        "watcher": {
            "ice": watcher.iceConnectionState,
            "video": video,
            "sizes": sizes,
            "audio": audio[0],
        },
    }
    for _, task in tasks:
        task.cancel()
    await watcher.close()
    for pc in publishers:
        await pc.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the test reads the reason from standard error
        print(f"aiortc peer: {e!r}", file=sys.stderr)
        sys.exit(1)
