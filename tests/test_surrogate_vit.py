"""ViT surrogate (seed 002, Table II): parameter counts of the presets, forward pass, attention, dropout,
the weights file and the surrogate as a Dynamics."""

from __future__ import annotations

import functools
import math
import resource
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from scoreda.config import validate
from scoreda.dynamics import Dynamics
from scoreda.surrogate import (
    ARCH_KEYS,
    ViTDynamics,
    build_vit,
    count_parameters,
    flops_per_sample,
    load_weights,
    save_weights,
)
from scoreda.surrogate.vit import Rollout

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@functools.cache
def _preset(preset: str) -> tuple:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = validate(compose("config", overrides=[f"surrogate={preset}"]))
    return tuple((k, cfg.surrogate[k]) for k in ARCH_KEYS)


def _surrogate(preset: str, **changes) -> dict:
    """Architecture keys of a preset, composed and validated by Hydra as the workflow does."""
    return {**dict(_preset(preset)), **changes}


def _closed_form_count(s) -> int:
    """Parameters from the formula, independent of the model code (mlp_ratio 4, level aggregation)."""
    D, C, P, L, h = s["embed_dim"], s["channels"], s["patch"], s["depth"], s["head_depth"]
    assert s["mlp_ratio"] == 4 and s["level_aggregation"]
    N = (s["img_size"] // P) ** 2
    blocks = L * (12 * D**2 + 13 * D)  # 2 LN (4D), qkv (3D²+3D), proj (D²+D), MLP (8D²+5D)
    embed = C * (P * P * D + D) + C * D  # per-level Conv2d(1, D, P, P) and level embedding [C, D]
    aggregation = D + 4 * D**2 + 4 * D  # query [1, 1, D]; MultiheadAttention in/out projections
    pos, final_norm = N * D, 2 * D
    head = h * (D**2 + D) + D * C * P * P + C * P * P
    return blocks + embed + aggregation + pos + final_norm + head


EXACT = {"vit_tiny": 934_048, "vit_64": 157_787_168, "vit_128": 1_236_019_232, "vit_256": 2_450_909_216}


@pytest.mark.parametrize("preset", list(EXACT))
def test_parameter_count_pinned(preset):
    s = _surrogate(preset)
    assert _closed_form_count(s) == EXACT[preset]
    assert count_parameters(s) == EXACT[preset]


def test_parameter_counts_match_table_ii():
    assert abs(count_parameters(_surrogate("vit_64")) / 157e6 - 1) < 0.02
    assert abs(count_parameters(_surrogate("vit_256")) / 2.5e9 - 1) < 0.02
    # Table II prints "1.2B" for the 128² model: the table rounds 1.236B (the authors' public code,
    # jqyin/sqg_vit src/sqg/model/arch.py, has the same layers and the same count), so it is +3.0%.
    n128 = count_parameters(_surrogate("vit_128"))
    assert round(n128 / 1e8) / 10 == 1.2
    assert abs(n128 / 1.2e9 - 1) < 0.031


def test_count_on_meta_device_allocates_nothing():
    s = _surrogate("vit_256")
    count_parameters(_surrogate("vit_tiny"))  # warm-up (first-call costs of torch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    n = count_parameters(s)
    elapsed = time.perf_counter() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert n > 2e9 and elapsed < 2.0 and grew_mb < 200  # 2.45B fp32 would be 9.8 GB


def test_flops_per_sample():
    s = _surrogate("vit_64")
    N, D = 256, 1024
    assert flops_per_sample(s) == 6 * N * EXACT["vit_64"] + 12 * 12 * N**2 * D


def _tiny(**changes):
    torch.manual_seed(0)
    return build_vit(_surrogate("vit_tiny", **changes))


def test_forward_shape_dtype_and_deterministic_build():
    model = _tiny().eval()
    x = torch.randn(3, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    y = model(x)
    assert y.shape == (3, 2, 64, 64) and y.dtype == torch.float32 and torch.isfinite(y).all()
    other = _tiny()
    pairs = zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_no_level_aggregation_and_no_residual():
    model = _tiny(level_aggregation=False, residual=False).eval()
    D, C, P = 128, 2, 4
    assert count_parameters(_surrogate("vit_tiny", level_aggregation=False)) == EXACT["vit_tiny"] - (
        (C - 1) * D
        + C * D
        + D
        + 4 * D**2
        + 4 * D  # C·P²·D + D conv instead of C convs, level emb, aggregation
    )
    assert sum(p.numel() for p in model.parameters()) == count_parameters(model.arch)
    assert model.patch == P and model(torch.randn(2, C, 64, 64)).shape == (2, C, 64, 64)


def test_residual_with_zero_head_is_identity():
    model = _tiny().eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.zero_()
    x = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(x), x)


def test_attention_matches_hand_written_softmax():
    model = _tiny().eval()
    attn = model.blocks[1].attn
    x = torch.randn(2, 17, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    with torch.no_grad():
        got = attn(x)
        H, dh = attn.heads, 128 // attn.heads
        q, k, v = attn.qkv(x).split(128, dim=-1)
        q, k, v = (t.view(2, 17, H, dh).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        want = attn.proj((a @ v).transpose(1, 2).reshape(2, 17, 128))
    assert (got - want).abs().max() < 1e-5


def test_eval_deterministic_train_dropout_differs():
    model = _tiny(img_size=32, drop_rate=0.1, drop_path=0.1)
    x = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(5)
        a = model(x)
        torch.manual_seed(6)
        b = model(x)
    assert (a - b).abs().max() > 1e-4


def _stats():
    return torch.tensor([0.5, -1.0]), torch.tensor([8.0, 6.0])


def test_weights_round_trip_bit_identical(tmp_path):
    model = _tiny(img_size=32, drop_rate=0.1).eval()
    mean, std = _stats()
    path = save_weights(tmp_path / "w.pt", model, model.arch, mean, std, meta={"step": 7, "loss": [0.5]})
    loaded, mean2, std2, meta = load_weights(path)
    assert not loaded.training and loaded.arch == model.arch
    assert torch.equal(mean2, mean) and torch.equal(std2, std) and meta == {"step": 7, "loss": [0.5]}
    x = torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]  # no temporary left behind


def _member_by_member(model, x, mean, std, n):
    m, s = mean.view(2, 1, 1), std.view(2, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            z = (x[i : i + 1] - m) / s
            for _ in range(n):
                z = model(z)
            out.append(z * s + m)
    return torch.cat(out)


def test_vit_dynamics(tmp_path):
    model = _tiny(img_size=32).eval()  # 64 tokens: the same code, a quarter of the time
    with torch.no_grad():  # a non-trivial head so the forecast moves the state
        model.head[-1].weight.normal_(0, 0.05)
    mean, std = _stats()
    path = save_weights(tmp_path / "w.pt", model, model.arch, mean, std)
    dyn = ViTDynamics.from_weights(path, cycle_seconds=43200.0, batch=2)  # 5 members: slices 2, 2, 1
    assert isinstance(dyn, Dynamics)
    assert dyn.state_shape == (2, 32, 32) and dyn.steps_per_cycle == 1 and dyn.dt == 43200.0
    x = mean.view(2, 1, 1) + std.view(2, 1, 1) * torch.randn(
        5, 2, 32, 32, generator=torch.Generator().manual_seed(8)
    )
    y1 = dyn.step(x)
    assert y1.dtype == torch.float32 and y1.shape == x.shape and (y1 - x).abs().max() > 0.1
    scale = x.abs().max()
    assert (y1 - _member_by_member(model, x, mean, std, 1)).abs().max() <= 1e-6 * scale
    y2 = dyn.step(x, n_steps=2)
    assert (y2 - dyn.step(y1)).abs().max() <= 1e-6 * scale
    assert (y2 - _member_by_member(model, x, mean, std, 2)).abs().max() <= 1e-6 * scale
    assert torch.equal(dyn.step(x, 0), x)

    # swap in other weights of the same architecture
    with torch.no_grad():
        model.head[-1].weight.mul_(-1)
    other = save_weights(tmp_path / "w2.pt", model, model.arch, mean, std, meta={"cycle": 3})
    assert dyn.set_weights(other) == {"cycle": 3}
    assert (dyn.step(x) - _member_by_member(model, x, mean, std, 1)).abs().max() <= 1e-6 * scale
    wrong = _tiny(img_size=32, depth=2)
    bad = save_weights(tmp_path / "w3.pt", wrong, wrong.arch, mean, std)
    with pytest.raises(ValueError, match="depth"):
        dyn.set_weights(bad)


def test_vit_dynamics_rolls_out_shorter_steps(tmp_path):
    """A 3-h surrogate forecasts a 12-h cycle as 4 ViT steps (n cycles: 4n), all members together."""
    model = _tiny(img_size=32).eval()
    with torch.no_grad():
        model.head[-1].weight.normal_(0, 0.05)
    mean, std = _stats()
    path = save_weights(tmp_path / "w.pt", model, {**model.arch, "step_hours": 3}, mean, std)
    loaded = load_weights(path)[0]
    assert loaded.step_hours == 3.0 and torch.load(path, weights_only=True)["step_hours"] == 3.0
    dyn = ViTDynamics.from_weights(path, cycle_seconds=43200.0, batch=2)
    assert dyn.rollout == 4 and dyn.dt == 43200.0 and dyn.steps_per_cycle == 1
    x = mean.view(2, 1, 1) + std.view(2, 1, 1) * torch.randn(
        5, 2, 32, 32, generator=torch.Generator().manual_seed(9)
    )
    scale = x.abs().max()
    assert (dyn.step(x) - _member_by_member(model, x, mean, std, 4)).abs().max() <= 1e-6 * scale
    assert (dyn.step(x, 2) - _member_by_member(model, x, mean, std, 8)).abs().max() <= 1e-6 * scale
    # a 6-h cycle of the same file is 2 steps; a file without step_hours (older) is one step per cycle
    assert ViTDynamics.from_weights(path, cycle_seconds=21600.0).rollout == 2
    blob = torch.load(path, weights_only=True)
    del blob["step_hours"]
    torch.save(blob, tmp_path / "old.pt")
    assert load_weights(tmp_path / "old.pt")[0].step_hours is None
    assert ViTDynamics.from_weights(tmp_path / "old.pt", cycle_seconds=43200.0).rollout == 1
    with pytest.raises(ValueError, match=r"^surrogate\.step_hours: 3\.0 h does not divide the cycle of 1"):
        ViTDynamics.from_weights(path, cycle_seconds=3600.0)
    with pytest.raises(ValueError, match="step_hours must be a positive number"):
        save_weights(tmp_path / "bad.pt", model, {**model.arch, "step_hours": -3}, mean, std)


def test_rollout_applies_the_vit_k_times_and_saves_its_names():
    vit = _tiny(img_size=32).eval()
    x = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(10))
    roll = Rollout(vit, 3)
    with torch.no_grad():
        assert torch.equal(roll(x), vit(vit(vit(x))))
    assert roll.blocks is vit.blocks  # the FSDP units
    sd = Rollout.unwrap_state_dict(roll.state_dict())
    assert list(sd) == list(vit.state_dict()) and all(torch.equal(sd[k], vit.state_dict()[k]) for k in sd)
    with pytest.raises(ValueError, match="positive integer"):
        Rollout(vit, 0)


def _one_line_error(path, match):
    with pytest.raises(ValueError) as info:
        load_weights(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "\n" not in msg and match in msg, msg


def test_bad_files_one_line_error(tmp_path):
    model = _tiny()
    mean, std = _stats()
    _one_line_error(tmp_path / "missing.pt", "no such")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x17not a torch file" * 50)
    _one_line_error(garbage, "not a readable torch")
    good = save_weights(tmp_path / "good.pt", model, model.arch, mean, std)
    blob = torch.load(good, weights_only=True)

    def variant(name, edit):
        b = {**blob, "state_dict": dict(blob["state_dict"]), "surrogate": dict(blob["surrogate"])}
        edit(b)
        torch.save(b, tmp_path / name)
        return tmp_path / name

    nan = variant(
        "nan.pt", lambda b: b["state_dict"]["blocks.0.attn.qkv.weight"].view(-1).__setitem__(0, math.nan)
    )
    _one_line_error(nan, "blocks.0.attn.qkv.weight is not finite")
    _one_line_error(variant("fmt.pt", lambda b: b.update(format="other")), "format")
    _one_line_error(variant("arch.pt", lambda b: b["surrogate"].update(embed_dim=64)), "shape")
    _one_line_error(variant("key.pt", lambda b: b["state_dict"].pop("norm.weight")), "norm.weight")
    _one_line_error(variant("std.pt", lambda b: b.update(std=torch.tensor([1.0, 0.0]))), "std")


def test_save_refuses_and_leaves_no_file(tmp_path):
    model = _tiny()
    mean, std = _stats()
    with torch.no_grad():
        model.norm.weight[0] = math.inf
    with pytest.raises(ValueError, match=r"w\.pt: weight norm\.weight is not finite"):
        save_weights(tmp_path / "w.pt", model, model.arch, mean, std)
    model = _tiny()
    with pytest.raises(ValueError, match="std must be > 0"):
        save_weights(tmp_path / "w.pt", model, model.arch, mean, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="mean is not finite"):
        save_weights(tmp_path / "w.pt", model, model.arch, torch.tensor([0.0, math.nan]), std)
    with pytest.raises(ValueError, match="meta.run has type"):
        save_weights(tmp_path / "w.pt", model, model.arch, mean, std, meta={"run": object()})
    assert list(tmp_path.iterdir()) == []
