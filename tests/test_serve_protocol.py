"""msgpack-numpy: openpi-client's encoding both ways, str or bytes keys, malformed messages."""

import msgpack
import numpy as np
import pytest

from lingvla.serve.protocol import ProtocolError, packb, unpackb


def test_round_trip_and_openpi_client_compatibility():
    openpi = pytest.importorskip("openpi_client.msgpack_numpy")
    obs = {"images": {"top": np.arange(24, dtype=np.uint8).reshape(2, 4, 3)},
           "state": np.linspace(-1, 1, 14, dtype=np.float32), "prompt": "go", "seed": np.int64(7),
           "nested": [np.zeros((0, 3), np.float64), {"x": np.float32(1.5)}]}
    for data in (packb(obs), openpi.packb(obs)):
        for decoded in (unpackb(data), openpi.unpackb(data)):
            np.testing.assert_array_equal(decoded["images"]["top"], obs["images"]["top"])
            assert decoded["state"].dtype == np.float32 and decoded["state"].shape == (14,)
            np.testing.assert_array_equal(decoded["state"], obs["state"])
            assert decoded["prompt"] == "go" and decoded["seed"] == 7 and isinstance(decoded["seed"], np.int64)
            assert decoded["nested"][0].shape == (0, 3) and decoded["nested"][1]["x"] == np.float32(1.5)
    # Arrays we decode are writable copies, not views of the message buffer.
    assert unpackb(packb(obs))["state"].flags.writeable


def test_str_keys_and_bytes_map_keys_are_accepted():
    arr = np.arange(6, dtype="<i4").reshape(2, 3)
    str_tagged = msgpack.packb({"state": {"__ndarray__": True, "data": arr.tobytes(), "dtype": "<i4",
                                          "shape": [2, 3]}, b"prompt": "hi"})
    out = unpackb(str_tagged)
    np.testing.assert_array_equal(out["state"], arr)
    assert out["prompt"] == "hi"


@pytest.mark.parametrize("data, words", [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb(1) + b"\x01", "extra bytes"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 7, b"dtype": "<f4", b"shape": [2]}), "needs 8 bytes"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}), "not allowed"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}), "unknown dtype"),
    (msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}), "shape"),
    (msgpack.packb({b"__ndarray__": True, b"dtype": "<f4", b"shape": [0]}), "lacks 'data'"),
])
def test_malformed_messages_name_the_problem(data, words):
    with pytest.raises(ProtocolError, match=words):
        unpackb(data)


def test_unsendable_objects_are_refused():
    with pytest.raises(TypeError, match="dtype object"):
        packb({"x": np.array([object()])})
    with pytest.raises(TypeError, match="set"):
        packb({"x": {1, 2}})
