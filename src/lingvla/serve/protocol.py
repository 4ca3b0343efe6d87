"""OpenPI's wire format: msgpack, with numpy arrays and scalars as tagged maps.

An array travels as {"__ndarray__": True, "data": raw bytes, "dtype": numpy dtype string,
"shape": [...]} and a numpy scalar as {"__npgeneric__": True, "data": item, "dtype": ...}.
openpi-client writes these tags as byte strings; we write them the same way (its decoder only looks
for byte keys) and read both byte and str keys, so other clients that use str keys work too.
Plain maps with byte-string keys are read as str keys.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

NDARRAY = "__ndarray__"
NPGENERIC = "__npgeneric__"
# Object, void and complex arrays cannot travel (no pickle, as in openpi).
REJECTED_KINDS = ("O", "V", "c")


class ProtocolError(ValueError):
    """A message that is not valid msgpack-numpy; the text says what is wrong."""


def _encode(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in REJECTED_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind in REJECTED_KINDS:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _text(value, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise ProtocolError(f"{what} must be a string; got {type(value).__name__}")


def _field(obj: dict, name: str):
    if name in obj:
        return obj[name]
    key = name.encode()
    if key in obj:
        return obj[key]
    raise ProtocolError(f"array map lacks {name!r}")


def _dtype(obj: dict) -> np.dtype:
    name = _text(_field(obj, "dtype"), "dtype")
    try:
        dtype = np.dtype(name)
    except TypeError as err:
        raise ProtocolError(f"unknown dtype {name!r}") from err
    if dtype.kind in REJECTED_KINDS:
        raise ProtocolError(f"dtype {name!r} is not allowed (object, void and complex arrays are refused)")
    return dtype


def _decode(obj: dict):
    if obj.get(b"__ndarray__", obj.get(NDARRAY)):
        dtype = _dtype(obj)
        shape = _field(obj, "shape")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ProtocolError(f"array shape must be a list of non-negative ints; got {shape!r}")
        data = _field(obj, "data")
        if not isinstance(data, bytes):
            raise ProtocolError(f"array data must be bytes; got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ProtocolError(f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes; "
                                f"got {len(data)}")
        # A copy: the message buffer is read-only and should not stay alive with the array.
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if obj.get(b"__npgeneric__", obj.get(NPGENERIC)):
        try:
            return _dtype(obj).type(_field(obj, "data"))
        except (TypeError, ValueError, OverflowError) as err:
            raise ProtocolError(f"bad numpy scalar: {err}") from err
    if any(isinstance(k, bytes) for k in obj):
        try:
            return {k.decode("utf-8") if isinstance(k, bytes) else k: v for k, v in obj.items()}
        except UnicodeDecodeError as err:
            raise ProtocolError(f"map key is not UTF-8: {err}") from err
    return obj


def packb(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes):
    """Decode one message; any malformation raises ProtocolError naming it."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except ProtocolError:
        raise
    except msgpack.ExtraData as err:
        raise ProtocolError("message is not valid msgpack: extra bytes after the first object") from err
    except Exception as err:  # msgpack raises ValueError, FormatError, StackError, TypeError ...
        raise ProtocolError(f"message is not valid msgpack: {type(err).__name__}: {err}") from err
