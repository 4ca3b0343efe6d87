"""Video: encode frames into MP4 (H.264 or AV1) and decode single frames fast, with PyAV.

Decoding seeks to the nearest keyframe at or before the requested time and decodes forward to
it, so a random frame costs at most one GOP of decoding (our writer uses GOP 2, like LeRobot).
Open containers are kept in a small per-process LRU, so DataLoader workers each reuse their own.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np

from lingvla.data.errors import VideoDecodeError

# codec name -> (PyAV encoder, default options). CRF values keep smooth synthetic images within a
# few levels of the source; GOP 2 and no B-frames keep random access to at most two decoded frames.
CODECS = {
    "h264": ("libx264", {"crf": "20", "preset": "veryfast", "bf": "0"}),
    "av1": ("libsvtav1", {"crf": "30", "preset": "10"}),
}


class VideoEncoder:
    """Appends frames to one MP4 file; pts count frames, so frame k sits at time k / fps."""

    def __init__(self, path: str | Path, fps: int, width: int, height: int, *, codec: str = "h264",
                 gop: int = 2, crf: int | None = None, options: dict[str, str] | None = None):
        import av

        if codec not in CODECS:
            raise ValueError(f"unknown video codec {codec!r}; choose from {sorted(CODECS)}")
        if width % 2 or height % 2:
            raise ValueError(f"{path}: yuv420p video needs even width and height; got {width}x{height}")
        encoder, defaults = CODECS[codec]
        opts = dict(defaults)
        if crf is not None:
            opts["crf"] = str(crf)
        opts["g"] = str(gop)
        opts.update(options or {})
        if codec == "av1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.width, self.height, self.codec = fps, width, height, codec
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(encoder, rate=fps, options=opts)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._time_base = Fraction(1, fps)  # the stream's own changes once the muxer starts
        self._stream.time_base = self._time_base
        self._stream.codec_context.gop_size = gop
        self.num_frames = 0

    def write(self, frames: np.ndarray) -> tuple[float, float]:
        """Encode frames [T, H, W, 3] uint8; return the (from, to) timestamps they occupy."""
        import av

        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"{self.path}: frames must be uint8 [T, {self.height}, {self.width}, 3]; "
                             f"got {frames.dtype} {frames.shape}")
        start = self.num_frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = self._time_base
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1
        return start / self.fps, self.num_frames / self.fps

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None


RESIZE_MODES = ("pad", "squash")


def fit_image(image: np.ndarray, size: int, resize: str = "pad") -> np.ndarray:
    """An RGB image [H, W, 3] uint8 onto the model's size x size square. "pad": resized to fit with
    its aspect ratio kept (area averaging when shrinking) and padded with black, centred; "squash":
    stretched to the square by bilinear interpolation, aspect ratio lost (how the released
    LingBot-VLA was trained). The training loader (decoded frames) and inference (live frames)
    both come through here, so a policy sees at run time what it saw in training."""
    import av

    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"fit_image expects uint8 [H, W, 3]; got {image.dtype} {image.shape}")
    return _frame_to_square(av.VideoFrame.from_ndarray(image, format="rgb24"), size, resize=resize)


def resize_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """fit_image(image, size, "pad")."""
    return fit_image(image, size, "pad")


def _frame_to_square(frame, size: int | None, reformatter=None, resize: str = "pad") -> np.ndarray:
    if resize not in RESIZE_MODES:
        raise ValueError(f"image resize {resize!r}; expected one of {RESIZE_MODES}")
    h, w = frame.height, frame.width
    if size is None or (h == size and w == size):
        return frame.to_ndarray(format="rgb24")
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()
    if resize == "squash":
        return reformatter.reformat(frame, width=size, height=size, format="rgb24", interpolation="BILINEAR",
                                    threads=1).to_ndarray()
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # Area averaging when shrinking: no aliasing, the same result for decoded and live frames.
    # A reused reformatter keeps its scaler, which is costly to set up for every frame.
    # threads=1: swscale's own thread pool would not survive a fork into DataLoader workers.
    rgb = reformatter.reformat(frame, width=nw, height=nh, format="rgb24", interpolation="AREA",
                               threads=1).to_ndarray()
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


class VideoFrameReader:
    """Decodes single frames by timestamp; keeps up to ``max_open`` containers open (LRU).

    Not shared between processes: each DataLoader worker builds its own on first use.
    """

    def __init__(self, max_open: int = 12, threads: int = 1):
        self.max_open = max_open
        self.threads = threads
        self._open: OrderedDict[str, object] = OrderedDict()
        self._reformatter = None
        self._pid = os.getpid()

    def __getstate__(self):
        return {"max_open": self.max_open, "threads": self.threads}

    def __setstate__(self, state):
        self.__init__(**state)

    def close(self) -> None:
        while self._open:
            _, container = self._open.popitem()
            container.close()

    def _container(self, path: str, where: dict):
        import av

        if self._pid != os.getpid():
            # Forked (a DataLoader worker): containers inherited from the parent share its file
            # offsets; drop them unclosed and open our own.
            self._open, self._reformatter, self._pid = OrderedDict(), None, os.getpid()
        container = self._open.get(path)
        if container is not None:
            self._open.move_to_end(path)
            return container
        if not os.path.exists(path):
            raise VideoDecodeError("video file is missing", **where)
        try:
            container = av.open(path)
            stream = container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as e:
            raise VideoDecodeError(f"cannot open video ({type(e).__name__}: {e})", **where) from e
        stream.thread_count = self.threads
        self._open[path] = container
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return container

    def _evict(self, path: str) -> None:
        container = self._open.pop(path, None)
        if container is not None:
            try:
                container.close()
            except Exception:  # a broken container may fail to close; it is dropped either way
                pass

    def frame(self, path: str | Path, timestamp: float, tolerance_s: float, *, size: int | None = None,
              resize: str = "pad", episode: int | None = None, frame_index: int | None = None) -> np.ndarray:
        """The frame nearest ``timestamp`` seconds as [H, W, 3] uint8 (fitted onto size x size by
        ``resize``, fit_image's modes, when size is given). Raises VideoDecodeError naming file, episode and frame when
        the file is missing or corrupt or no frame lies within ``tolerance_s``."""
        import av

        path = str(path)
        where = dict(path=path, episode=episode, frame=frame_index)
        container = self._container(path, where)
        stream = container.streams.video[0]
        tb = stream.time_base
        best, best_dt, last_t = None, math.inf, None
        try:
            container.seek(max(0, int(round(timestamp / tb))), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                last_t = t
                dt = abs(t - timestamp)
                if dt < best_dt:
                    best, best_dt = frame, dt
                if t >= timestamp - 1e-9:
                    break
            if self._reformatter is None:
                from av.video.reformatter import VideoReformatter

                self._reformatter = VideoReformatter()
            image = None if best is None or best_dt > tolerance_s else \
                _frame_to_square(best, size, self._reformatter, resize)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._evict(path)
            raise VideoDecodeError(f"corrupt video, decoding at t={timestamp:.4f}s failed "
                                   f"({type(e).__name__}: {e})", **where) from e
        if image is None:
            self._evict(path)  # leave no half-consumed demuxer behind
            got = "no frame decoded" if last_t is None else f"nearest frame at t={float(best.pts * tb):.4f}s"
            raise VideoDecodeError(f"no video frame within {tolerance_s:.4f}s of t={timestamp:.4f}s "
                                   f"({got}; the video may be shorter than the episode)", **where)
        return image


    def frames(self, path: str | Path, timestamps: np.ndarray, tolerance_s: float, *,
               size: int | None = None, episode: int | None = None, resize: str = "pad") -> np.ndarray:
        """The frames nearest each of ``timestamps`` (ascending seconds) as [N, H, W, 3] uint8,
        decoded in one pass from a single seek: an episode costs one decode of its frames instead
        of one seek per frame. Errors as ``frame``, naming the first frame that has no match."""
        import av

        path = str(path)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        where = dict(path=path, episode=episode, frame=0)
        container = self._container(path, where)
        stream = container.streams.video[0]
        tb = stream.time_base
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        out: list[np.ndarray | None] = [None] * len(timestamps)
        best_dt = np.full(len(timestamps), math.inf)
        best: list = [None] * len(timestamps)
        i = 0
        try:
            container.seek(max(0, int(round(timestamps[0] / tb))), stream=stream, backward=True,
                           any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                j = i  # this frame may be the nearest for requests i.. within tolerance ahead of it
                while j < len(timestamps) and timestamps[j] <= t + tolerance_s:
                    dt = abs(t - timestamps[j])
                    if dt < best_dt[j]:
                        best_dt[j], best[j] = dt, frame
                    j += 1
                while i < len(timestamps) and t >= timestamps[i] - 1e-9:  # later frames are farther
                    if best[i] is not None and best_dt[i] <= tolerance_s:
                        out[i] = _frame_to_square(best[i], size, self._reformatter, resize)
                    best[i] = None
                    i += 1
                if i == len(timestamps):
                    break
            for k in range(i, len(timestamps)):  # the video ended: take what was nearest
                if best[k] is not None and best_dt[k] <= tolerance_s:
                    out[k] = _frame_to_square(best[k], size, self._reformatter)
        except (av.error.FFmpegError, ValueError, OSError) as e:
            self._evict(path)
            raise VideoDecodeError(f"corrupt video, decoding from t={timestamps[0]:.4f}s failed "
                                   f"({type(e).__name__}: {e})", **where) from e
        missing = [k for k, image in enumerate(out) if image is None]
        if missing:
            k = missing[0]
            raise VideoDecodeError(f"no video frame within {tolerance_s:.4f}s of t={timestamps[k]:.4f}s "
                                   f"({len(missing)} of {len(out)} frames unmatched; the video may be "
                                   "shorter than the episode)", path=path, episode=episode, frame=k)
        return np.stack(out)


def video_info(path: str | Path) -> dict:
    """The ``info`` block LeRobot stores for a video feature in meta/info.json."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.codec_context.height,
            "video.width": stream.codec_context.width,
            "video.codec": {"libdav1d": "av1", "libaom-av1": "av1"}.get(stream.codec_context.name,
                                                                          stream.codec_context.name),
            "video.pix_fmt": stream.codec_context.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": float(stream.average_rate) if stream.average_rate else None,
            "video.channels": 3,
            "has_audio": len(container.streams.audio) > 0,
        }
