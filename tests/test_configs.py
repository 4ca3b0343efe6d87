"""The shipped recipes in configs/ load and validate, and the demo's built-in recipe is still the
demo config (the package cannot read configs/, so sim/demo.py restates it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lingvla.train.config import TrainConfig, load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in CONFIGS}
    assert {"aloha_transfer_cube", "aloha_insertion"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_validates(path):
    config = load_train_config(path)
    config.model.validate()
    assert config.data.datasets, "a recipe names its datasets"
    for spec in config.data.datasets:
        assert spec["embodiment"] == "aloha" and spec["path"].startswith("runs/demos/")
        assert spec["weight"] > 0
    assert sum(spec["weight"] for spec in config.data.datasets) == pytest.approx(1.0)
    assert config.output_dir == f"runs/{path.stem}"  # each recipe writes its own run
    assert "lingvla train configs/" + path.name in path.read_text()  # its header says how to run it


def test_demo_recipe_is_the_demo_config():
    """configs/aloha_transfer_cube_demo.yaml restates what `lingvla demo` trains: the same model,
    batch, optimizer and data settings, and the frame window the demo derives from its data."""
    from lingvla.sim.demo import DEMO_RECIPE, demo_train_config

    recipe = load_train_config(CONFIGS[[p.stem for p in CONFIGS].index("aloha_transfer_cube_demo")])
    demo = TrainConfig.from_dict(DEMO_RECIPE)
    assert demo.model == recipe.model
    for key in ("batch_size", "optim"):
        assert getattr(demo, key) == getattr(recipe, key), key
    for key in ("normalization", "num_workers", "preload_images"):
        assert getattr(demo.data, key) == getattr(recipe.data, key), key
    assert recipe.steps <= demo.steps  # the demo trains up to its recipe's steps, as many as fit
    window = recipe.data.datasets[0]["episode_frames"]
    demo_data = demo_train_config(Path("d"), Path("t"), 112, window_stop=window[1]).data.datasets
    assert [{k: v for k, v in spec.items() if k != "path"} for spec in demo_data] == \
        [{k: v for k, v in spec.items() if k not in ("path", "weight")} for spec in recipe.data.datasets]
