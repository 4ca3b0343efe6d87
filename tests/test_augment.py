"""Random-shift augmentation of training images (lingvla/data/augment.py)."""
import pytest
import torch

from lingvla.data.augment import shift_images, shift_offsets


def images(b=3, n=2, size=10):
    return torch.randint(0, 256, (b, n, 3, size, size), dtype=torch.uint8)


def test_centre_offset_is_the_identity_and_others_move_the_scene():
    x = images()
    pad = 3
    centre = torch.full((3, 2, 2), pad)
    assert torch.equal(shift_images(x, centre, pad), x)
    # offset (pad + 1, pad - 2): the image moves up by one row and right by two columns; away from
    # the edges every pixel is its neighbour's.
    off = centre.clone()
    off[1, 0] = torch.tensor([pad + 1, pad - 2])
    y = shift_images(x, off, pad)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y[1, 0, :, :-1, 2:], x[1, 0, :, 1:, :-2])
    # the repeated edge fills what came in from outside
    assert torch.equal(y[1, 0, :, -1, 2:], x[1, 0, :, -1, :-2])
    assert torch.equal(y[1, 0, :, :-1, 0], x[1, 0, :, 1:, 0])
    # the other images are untouched
    assert torch.equal(y[0], x[0]) and torch.equal(y[1, 1], x[1, 1]) and torch.equal(y[2], x[2])
    assert not torch.equal(y[1, 0], x[1, 0])


def test_offsets_are_keyed_by_step_and_split_by_rows():
    a = shift_offsets(0, 5, 0, range(8), 8, 1, 4)
    assert a.shape == (8, 1, 2) and int(a.min()) >= 0 and int(a.max()) <= 8
    assert torch.equal(a, shift_offsets(0, 5, 0, range(8), 8, 1, 4))
    assert not torch.equal(a, shift_offsets(0, 6, 0, range(8), 8, 1, 4))
    assert not torch.equal(a, shift_offsets(1, 5, 0, range(8), 8, 1, 4))
    # two ranks' rows are the one process's rows
    assert torch.equal(shift_offsets(0, 5, 0, range(1, 8, 2), 8, 1, 4), a[1::2])
    assert torch.equal(shift_offsets(0, 5, 0, range(0, 8, 2), 8, 1, 4), a[0::2])


def test_bad_shapes_and_settings_are_named():
    with pytest.raises(ValueError, match="offsets"):
        shift_images(images(), torch.zeros(3, 2), 2)
    from lingvla.train.config import load_train_config

    with pytest.raises(ValueError, match="image_shift"):
        load_train_config(None, ["data.image_shift=-1"]).validate()
    with pytest.raises(ValueError, match="depth targets"):
        load_train_config(None, ["data.image_shift=2", "model.depth.enabled=true"]).validate()
