"""Exceptions raised by the data code. Each names what it can: file, episode, frame, key."""

from __future__ import annotations


class DataError(Exception):
    """Base class of every data error."""


class BadSampleError(DataError):
    """One sample cannot be produced (bad video, NaN, frame past the end, ...).

    A loader built with ``on_bad_sample="skip"`` catches these, skips the sample and counts it;
    every other error propagates.
    """

    def __init__(self, message: str, *, path: str | None = None, episode: int | None = None,
                 frame: int | None = None, key: str | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if key is not None:
            where.append(f"key {key!r}")
        if episode is not None:
            where.append(f"episode {episode}")
        if frame is not None:
            where.append(f"frame {frame}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.path, self.episode, self.frame, self.key = path, episode, frame, key


class VideoDecodeError(BadSampleError):
    """A video file is missing or corrupt, or holds no frame near the requested time."""


class NonFiniteValueError(BadSampleError):
    """NaN or inf in a state or action column."""


class DatasetFormatError(DataError):
    """The dataset directory is not a LeRobot dataset we can read, or its metadata is inconsistent."""


class EmbodimentMismatchError(DataError):
    """A dataset's columns do not match the layout its embodiment declares."""


class MissingStatsError(DataError, KeyError):
    """Normalization statistics are missing for an embodiment or key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
