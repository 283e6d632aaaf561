"""Camera streams of robot datasets: frames taken out of an MP4 by timestamp, with PyAV.

PyAV (libav* bound in-process) rather than torchcodec: the PyPI torchcodec wheel is a CUDA build
that does not load beside the CPU torch wheel here, and an ffmpeg subprocess or frames on disk are
what the issue rules out. A `VideoFile` is opened once per work unit and decodes forward: the
episodes of a unit lie back to back in a file (LeRobot v3.0), so one seek starts the unit and each
episode goes on from where the last one stopped. A frame is converted to RGB only when a timestamp
asks for it, by one `VideoReformatter` per file: `VideoFrame.to_ndarray(format=...)` makes a new
reformatter, so a new swscale context, for every frame, which costs ~10x the conversion itself at
robot-camera sizes (same bytes either way: the same swscale call with the same defaults).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tokenizer_kit.errors import first_line

TOLERANCE_S = 1e-4  # LeRobot's own `tolerance_s`: a frame further than this from its timestamp is missing


class VideoError(ValueError):
    """A video that cannot give a frame: `detail` says why, `frame` is the position asked for (None
    when the file itself is unreadable); the reader adds the file and episode."""

    def __init__(self, detail: str, frame: int | None = None):
        super().__init__(detail if frame is None else f"frame {frame}: {detail}")
        self.detail, self.frame = detail, frame


class VideoFile:
    """One MP4, decoded forward; `frames_at` returns the frames nearest the given times."""

    def __init__(self, path: str, tolerance_s: float = TOLERANCE_S, size: tuple[int, int] | None = None):
        """`size` (H, W): what the dataset declares; a stream of another size is refused before any
        frame is decoded (no allocation sized by the file)."""
        self.path, self.tolerance = path, tolerance_s
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
        except (OSError, IndexError, av.FFmpegError) as e:
            raise VideoError(f"not a readable video ({getattr(e, 'strerror', None) or first_line(e)})") from None
        got = (self._stream.codec_context.height, self._stream.codec_context.width)
        if size is not None and got != tuple(size):
            self._container.close()
            raise VideoError(f"frames are {got[0]}x{got[1]}, the dataset declares {size[0]}x{size[1]}")
        if self._stream.time_base is None:  # PyAV leaves it unset only for streams it cannot time
            self._container.close()
            raise VideoError("the video stream has no time base")
        self._stream.thread_type = "AUTO"
        self._tb = float(self._stream.time_base)  # a float: Fraction arithmetic per frame costs more than decoding
        self._rgb = _reformatter()
        self._frames: Iterator[Any] | None = None  # the decoding iterator
        self._pending: Any = None  # a decoded frame past the last request, kept for the next one
        self._position = -math.inf  # time of the last frame decoded

    def close(self) -> None:
        self._container.close()

    def reset(self) -> None:
        """After an error: the next request seeks afresh."""
        self._frames, self._pending, self._position = None, None, -math.inf

    def _seek(self, t: float) -> None:
        self._container.seek(max(0, int(math.floor((t - self.tolerance) / self._tb))),
                             stream=self._stream, backward=True)
        self._frames, self._pending, self._position = self._container.decode(self._stream), None, -math.inf

    def _next(self, frame_no: int):
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        assert self._frames is not None  # frames_at seeks before it asks for a frame
        try:
            return next(self._frames, None)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"undecodable data after {self._position:.4f} s ({first_line(e)})", frame_no) from None

    def frames_at(self, times: np.ndarray) -> np.ndarray:
        """(N,) ascending times in seconds -> (N, H, W, 3) uint8 RGB frames.

        Raises VideoError naming the first position whose frame is not within the tolerance."""
        times = np.asarray(times, np.float64)
        if not len(times):
            return np.zeros((0, 0, 0, 3), np.uint8)
        lo, hi = times[0] - self.tolerance, times[-1] + self.tolerance
        if self._frames is None or times[0] < self._position - self.tolerance or times[0] > self._position + 2.0:
            self._seek(float(times[0]))
        got_t: list[float] = []
        got: list[Any] = []  # av.VideoFrame
        while True:
            frame = self._next(len(got))
            if frame is None:
                break
            if frame.pts is None:
                continue
            t = frame.pts * self._tb
            if t > hi:
                self._pending = frame
                break
            self._position = t
            if t >= lo:
                got_t.append(t)
                got.append(frame)
        found = np.asarray(got_t, np.float64)
        if not len(found):
            raise VideoError(f"no frame within {self.tolerance:g} s of {times[0]:.4f} s", 0)
        right = np.clip(np.searchsorted(found, times), 0, len(found) - 1)
        left = np.clip(right - 1, 0, len(found) - 1)
        nearest = np.where(np.abs(found[left] - times) <= np.abs(found[right] - times), left, right)
        miss = np.abs(found[nearest] - times) > self.tolerance
        if miss.any():
            i = int(np.argmax(miss))
            raise VideoError(f"no frame within {self.tolerance:g} s of {times[i]:.4f} s "
                             f"(nearest at {found[nearest[i]]:.4f} s)", i)
        try:
            rgb = {int(j): to_rgb(got[j], self._rgb) for j in np.unique(nearest)}
        except (ValueError, OSError) as e:
            raise VideoError(f"a frame cannot be converted to RGB ({first_line(e)})") from None
        return np.stack([rgb[int(j)] for j in nearest])


def _reformatter():
    return VideoReformatter()


def to_rgb(frame, reformatter) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB through a reused reformatter (its swscale context is
    cached across frames of one size and format)."""
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def decode_all(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of a file with its time, decoded plainly (the fastest way PyAV gives RGB arrays:
    one reformatter for the file): the reference the converter is checked against and the
    decoder-alone speed `make bench` compares with."""
    times, frames = [], []
    rgb = _reformatter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.time_base is None:
            raise VideoError("the video stream has no time base")
        tb = float(stream.time_base)
        for frame in container.decode(stream):
            if frame.pts is None:  # as frames_at: a frame without a time is not one of the video's
                continue
            times.append(frame.pts * tb)
            frames.append(to_rgb(frame, rgb))
    return np.asarray(times), np.stack(frames)
