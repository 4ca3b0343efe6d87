"""`lingvla embodiment inspect|template`: the mapping of a dataset onto an embodiment and the unified
space is shown dim by dim, and nothing is guessed (unknown robot, missing column, no camera)."""

import json

import pytest
import yaml

from lingvla.cli import main
from lingvla.data.embodiments import load_registry
from lingvla.data.errors import EmbodimentMismatchError
from lingvla.data.inspect import inspect_dataset, template
from lingvla.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def aloha(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("inspect") / "aloha", num_episodes=2,
                                   episode_length=12, image_hw=(16, 16), cameras=("top", "left_wrist", "extra"))


@pytest.fixture(scope="module")
def robot16(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("inspect") / "r16", num_episodes=1, episode_length=12,
                                   image_hw=(16, 16), dim=16, robot_type="my_arm_pair", cameras=("front", "wrist_l"))


def test_inspect_shows_every_dim_and_camera(aloha, capsys):
    report = inspect_dataset(aloha, width=32)
    assert report["embodiment"] == "aloha" and report["chosen_by"] == "robot_type 'aloha'"
    assert [r["unified"] for r in report["action"]] == list(range(14))
    assert report["state"][6] == {"name": "left_gripper", "column": "observation.state", "index": 6, "unified": 6}
    assert report["cameras"]["head"]["key"] == "observation.images.top"
    assert report["cameras"]["right_wrist"]["key"] is None and report["missing_cameras"] == ["right_wrist"]
    assert report["unused_cameras"] == ["observation.images.extra"]
    assert report["tasks"] == ["pick up the cube", "transfer the cube"]
    assert main(["embodiment", "inspect", str(aloha), "--width", "32"]) == 0
    text = capsys.readouterr().out
    assert "left_gripper           <- observation.state[6]  -> unified[6]" in text
    assert "right_wrist  <- (none: masked out)" in text and "cameras nothing reads: ['observation.images.extra']" in text
    assert main(["embodiment", "inspect", str(aloha), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 75


def test_inspect_refuses_to_guess(robot16, aloha, tmp_path, capsys):
    with pytest.raises(EmbodimentMismatchError, match="robot_type 'my_arm_pair' names no embodiment"):
        inspect_dataset(robot16)
    assert main(["embodiment", "inspect", str(robot16)]) == 2
    assert "pass --embodiment (known: [" in capsys.readouterr().out
    # aloha's layout reads 14 dims of a 16-wide column fine, but its camera names match none here
    with pytest.raises(EmbodimentMismatchError, match="training would see no images"):
        inspect_dataset(robot16, "aloha")
    # a layout reading a column the dataset lacks
    spec = {"wide": {"state": [{"name": "arm", "column": "observation.joints", "start": 0, "stop": 7}],
                     "action": [{"name": "arm", "column": "action", "start": 0, "stop": 7}],
                     "cameras": {"head": "observation.images.top"}}}
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(EmbodimentMismatchError, match="no column 'observation.joints'"):
        inspect_dataset(aloha, "wide", load_registry([path]))
    assert main(["embodiment", "inspect", str(aloha), "--embodiment", "nobody"]) == 2
    assert "unknown embodiment 'nobody'" in capsys.readouterr().out


def test_template_is_a_starting_point_that_inspect_accepts_once_filled(robot16, tmp_path, capsys):
    text = template(robot16, "my_arm_pair")
    assert "#   observation.images.front" in text
    spec = yaml.safe_load(text)
    entry = spec["my_arm_pair"]
    assert entry["state"] == [{"name": "joints", "column": "observation.state", "start": 0, "stop": 16}]
    assert entry["robot_types"] == ["my_arm_pair"] and entry["status"] == "assumed"
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(EmbodimentMismatchError, match="no images"):  # the camera slots are left to fill
        inspect_dataset(robot16, registry=load_registry([path]))
    entry["cameras"]["head"] = "observation.images.front"
    path.write_text(yaml.safe_dump(spec))
    report = inspect_dataset(robot16, registry=load_registry([path]))
    assert report["embodiment"] == "my_arm_pair" and len(report["action"]) == 16
    assert report["unused_cameras"] == ["observation.images.wrist_l"]
    assert main(["embodiment", "template", str(robot16), "x", "--out", str(tmp_path / "x.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "x.yaml").read_text())["x"]["state"][0]["stop"] == 16
