"""LoRA: adapted == merged outputs, only the adapters train in the targeted streams (their base
weights stay exactly as loaded), the export is a plain merged model, and bad settings are errors."""

import pytest
import torch
from safetensors.torch import load_file

from lingvla.config import tiny_config
from lingvla.model.lingvla import LingVLA
from lingvla.model.lora import apply_lora, merge_lora_state
from lingvla.train.config import load_train_config
from lingvla.train.loop import export_checkpoint, train


def batch():
    return {"images": torch.randint(0, 256, (2, 3, 3, 56, 56), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0)),
            "image_mask": torch.ones(2, 3, dtype=torch.bool), "prompt": ["open", "pick up the cube"],
            "state": torch.randn(2, 32, generator=torch.Generator().manual_seed(1)),
            "action_dim_mask": torch.ones(2, 32, dtype=torch.bool)}


def test_adapted_model_equals_its_merged_weights():
    torch.manual_seed(0)
    model = LingVLA(tiny_config(image_size=56)).eval()
    adapted = apply_lora(model, rank=4, alpha=8.0, targets=("vision", "vlm", "expert"))
    assert any(n.startswith("vision.") for n in adapted) and any(".expert." in n for n in adapted)
    with torch.no_grad():  # B starts at zero: give the adapters something to say
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    noise = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted_out = model.sample_actions(batch(), noise=noise, num_steps=3)
    merged = merge_lora_state(model.state_dict(), scale=2.0)
    assert not any("lora" in k for k in merged)
    plain = LingVLA(tiny_config(image_size=56)).eval()
    plain.load_state_dict(merged)
    with torch.no_grad():
        plain_out = plain.sample_actions(batch(), noise=noise, num_steps=3)
        torch.manual_seed(0)
        base_out = LingVLA(tiny_config(image_size=56)).eval().sample_actions(batch(), noise=noise, num_steps=3)
    torch.testing.assert_close(adapted_out, plain_out, atol=1e-5, rtol=1e-5)
    assert (adapted_out - base_out).abs().max() > 1e-3  # the adapters did change the outputs
    with pytest.raises(ValueError, match="LoRA targets \\['llm'\\]"):
        apply_lora(model, 4, 8.0, targets=("llm",))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from lingvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("lora") / "aloha", num_episodes=2, episode_length=30,
                                   image_hw=(56, 56))


def test_lora_training_touches_only_adapters_in_its_streams_and_exports_merged(dataset, tmp_path):
    torch.manual_seed(4)
    start = LingVLA(tiny_config(image_size=56))
    start.save_pretrained(tmp_path / "start")
    out = tmp_path / "run"
    config = load_train_config(None, [
        "model.preset=tiny", "model.image_size=56", "batch_size=2", "steps=3", f"output_dir={out}",
        "data.num_workers=0", "save_every=3", "tensorboard=false", "optim.lr=1e-2", "optim.warmup_steps=0",
        f"data.datasets=[{{path: {dataset}, embodiment: aloha}}]", f"init_from={tmp_path / 'start'}",
        "optim.lora_rank=4", "optim.lora_alpha=8", "optim.lora_targets=[vision, vlm]"])
    summary = train(config, progress=False)
    assert summary["final_loss"] == summary["final_loss"]  # finite (NaN stops the run anyway)
    exported = load_file(out / "export" / "model.safetensors")
    assert not any("lora" in k for k in exported)
    before = start.state_dict()
    changed = {k for k in before if not torch.equal(before[k], exported[k])}
    vlm_or_vision = {k for k in changed if k.startswith(("vision.", "embed_tokens", "vlm_norm")) or ".vlm." in k}
    # the targeted streams moved only through merged adapters: only adapted linear weights differ
    assert vlm_or_vision and all(k.endswith(".weight") and any(p in k for p in ("_proj.", ".qkv.", ".proj.", ".fc"))
                                 for k in vlm_or_vision), sorted(vlm_or_vision)[:5]
    assert any(".expert." in k for k in changed) and "state_proj.weight" in changed  # the rest trained fully
    # the training checkpoint holds base weights as loaded plus adapters; merging it gives the export
    raw = export_checkpoint(out, layout="lingvla")
    again = load_file(raw / "model.safetensors")
    assert all(torch.equal(again[k], exported[k]) for k in exported)
    LingVLA.from_pretrained(out / "export")
    with pytest.raises(ValueError, match="lora_targets"):
        load_train_config(None, ["optim.lora_rank=4", "optim.lora_targets=[head]"])
