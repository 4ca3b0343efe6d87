"""Tool-point tracking against the scripted demonstration (lingvla.sim.tracking)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_aloha")
pytest.importorskip("mujoco")

from conftest import HoldStill, ReplayPolicy  # noqa: E402
from lingvla.sim.env import make_env  # noqa: E402
from lingvla.sim.tracking import track  # noqa: E402

SEED = 100_003
STEPS = [10, 79]


@pytest.fixture(scope="module")
def env():
    with make_env("transfer_cube", image_size=32, max_steps=100, stop_on_success=False) as e:
        yield e


def test_a_policy_replaying_the_demonstration_tracks_it_exactly(env):
    result = track(env, ReplayPolicy("transfer_cube", SEED, every=50), [SEED], STEPS)
    assert result.gaps_cm.shape == (1, 2, 2)
    assert np.all(result.gaps_cm < 1e-6)
    assert result.stages == result.demo_stages


def test_a_policy_that_holds_still_is_measured_off_the_path(env):
    seen = []
    result = track(env, HoldStill(), [SEED, SEED + 1], STEPS, on_seed=lambda i, r: seen.append(i))
    assert seen == [0, 1]
    # by step 79 the scripted right arm is well on its way to the cube, and both arms' gaps grow
    assert np.all(result.gaps_cm[:, 1, 1] > 5.0)
    assert np.all(result.gaps_cm[:, 0] < result.gaps_cm[:, 1])
    np.testing.assert_allclose(result.mean_cm(), result.gaps_cm.mean(0))


def test_bad_steps_and_chunk_lengths_are_refused(env):
    with pytest.raises(ValueError, match="past the environment"):
        track(env, HoldStill(), [SEED], [100])
    with pytest.raises(ValueError, match="non-negative"):
        track(env, HoldStill(), [SEED], [-1])
    with pytest.raises(ValueError, match="execute_horizon must be >= 1; got 0"):
        track(env, HoldStill(), [SEED], [10], per_chunk=0)
    with pytest.raises(ValueError, match="a chunk of 50 actions cannot cover 60 steps"):
        track(env, HoldStill(), [SEED], [10], per_chunk=60)
    with make_env("transfer_cube", image_size=32, max_steps=100) as stopping:
        with pytest.raises(ValueError, match="stop_on_success=False"):
            track(stopping, HoldStill(), [SEED], [10])
