"""dreamshot.train pieces that need no ComfyUI: config, dataset format, objective, sample packing,
checkpoint files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dreamshot.attention import NO_TEXT
from dreamshot.train import checkpoint as ckpt
from dreamshot.train.cache import CachedSequence, build_sample, feasible_modes
from dreamshot.train.cache_tensors import trim_text
from dreamshot.train.config import ConfigError, TrainConfig, dump_toml, load_config, parse_override
from dreamshot.train.dataset import DatasetError, read_manifest
from dreamshot.train.objective import (choose_mode, denoise_mask, flow_matching_loss, noise_frames,
                                       sample_sigmas, shift_sigma)
from test_train_support import make_dataset


# -- config -----------------------------------------------------------------------------------
def test_config_toml_overrides_paths_and_roundtrip(tmp_path):
    cfg_file = tmp_path / "sub" / "train.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[model]\ndit = "models/dit.safetensors"\n[train]\nsteps = 10\n'
                        '[racl]\nlambda = 0.5\nlayers = [0, 1]\n[lora]\nblocks = "all"\n', encoding="utf-8")
    cfg = load_config(cfg_file, ["train.steps=20", "optimizer.lr=2e-4", "lora.targets=['self_attn.q']",
                                 "train.output_dir=out", "checkpoint.resume=latest"], cwd=tmp_path)
    cfg.validate()
    assert cfg.model.dit == str(cfg_file.parent.resolve() / "models" / "dit.safetensors")   # relative to the file
    assert cfg.train.output_dir == str(tmp_path / "out")                                       # relative to cwd
    assert cfg.checkpoint.resume == "latest"
    assert (cfg.train.steps, cfg.optimizer.lr, cfg.racl.lambda_racl, cfg.racl.layers) == (20, 2e-4, 0.5, [0, 1])
    assert cfg.lora.targets == ["self_attn.q"]
    again = tmp_path / "resolved.toml"
    again.write_text(dump_toml(cfg), encoding="utf-8")
    assert load_config(again).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, message", [
    ("[train]\nstep = 3\n", "unknown key train.step"),
    ("[trian]\nsteps = 3\n", "unknown section [trian]"),
    ("[train]\nsteps = \"x\"\n", "train.steps = 'x': expected an integer"),
    ("[data]\nwidth = 500\n", "data.width = 500: must be a positive multiple of 16"),
    ("[modes]\nr2s = 0\nt2s = 0\ns2s = 0\n", "at least one of r2s, t2s, s2s"),
    ("[lora]\ntargets = [\"self_attn.x\"]\n", "lora.targets"),
    ("[racl]\nlayers = \"some\"\n", "racl.layers"),
    ("[train]\ntimestep_shift = -1\n", "train.timestep_shift"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(f).validate()


def test_override_values_are_toml_or_strings():
    assert parse_override("train.steps=5") == ("train", "steps", 5)
    assert parse_override("lora.blocks=[0, 2]") == ("lora", "blocks", [0, 2])
    assert parse_override("train.output_dir=runs/a b") == ("train", "output_dir", "runs/a b")
    with pytest.raises(ConfigError):
        parse_override("steps=5")
    with pytest.raises(ConfigError, match="model.dit is not set"):
        TrainConfig().validate(need=("model.dit",))


# -- dataset format -----------------------------------------------------------------------------
def test_manifest_errors_give_file_line_and_field(tmp_path):
    root = make_dataset(tmp_path / "ds")
    good = (root / "manifest.jsonl").read_text().splitlines()
    bad_shot = json.loads(good[0])
    bad_shot["shots"][0]["characters"] = ["mira", "nobody"]
    bad_shot["shots"][1]["masks"]["ghost"] = "x.png"
    bad_shot["shots"][2]["image"] = "../outside.png"
    bad_char = json.loads(good[1])
    bad_char["id"] = "alley"                       # duplicate id
    missing = {"id": "gone", "shots": [{"image": "missing.png", "caption": "x", "extra": 1}]}
    (root / "manifest.jsonl").write_text("\n".join([json.dumps(bad_shot), "# comment", json.dumps(bad_char),
                                                    "{not json", json.dumps(missing), ""]))
    with pytest.raises(DatasetError) as info:
        read_manifest(root)
    text = str(info.value)
    m = str(root / "manifest.jsonl")
    for expected in (f"{m}:1: shots[0].characters: 'nobody' is not in this sequence's characters",
                     f"{m}:1: shots[1].masks.ghost: a mask for a character not listed",
                     f"{m}:1: shots[2].image: '../outside.png' must be relative",
                     f"{m}:3: id: 'alley' already used on line 1",
                     f"{m}:4: (line): not valid JSON",
                     f"{m}:5: shots[0].image: file 'missing.png' not found",
                     f"{m}:5: shots[0].extra: unknown field"):
        assert expected in text, (expected, text)


def test_manifest_reference_lists_and_defaults(tmp_path):
    root = make_dataset(tmp_path / "ds")
    line = {"id": "multi", "shots": [{"image": "alley_0.png", "caption": ""}],
            "characters": {"mira": {"reference": ["ref_mira.png", "ref_theo.png"], "mask": ["ref_mira_mask.png", None]}}}
    (root / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    (seq,) = read_manifest(root)
    c = seq.characters[0]
    assert (c.name, c.references, c.masks) == ("mira", ("ref_mira.png", "ref_theo.png"), ("ref_mira_mask.png", None))
    assert seq.shots[0].characters == () and seq.shots[0].masks == ()


def test_check_command(tmp_path, caplog):
    from dreamshot.train.__main__ import main

    root = make_dataset(tmp_path / "ds")
    assert main(["check", "--set", f"data.dataset={json.dumps(str(root))}"]) == 0
    (root / "manifest.jsonl").write_text('{"id": "x", "shots": []}\n')
    assert main(["check", "--set", f"data.dataset={json.dumps(str(root))}"]) == 2
    assert "expected a non-empty list of shots" in caplog.text


# -- objective --------------------------------------------------------------------------------
def test_sigmas_follow_comfy_shift():
    t = torch.linspace(0, 1, 11)
    shift = 8.0
    assert torch.allclose(shift_sigma(t, shift), shift * t / (1 + (shift - 1) * t))
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(2000, g, "uniform", shift=3.0, sigma_min=1e-3)
    assert s.min() >= 1e-3 and s.max() <= 1
    assert s.median() > 0.6   # shift 3 moves half the draws above sigma(0.5) = 0.75
    s = sample_sigmas(2000, torch.Generator().manual_seed(0), "logit_normal", shift=1.0)
    assert abs(float(s.median()) - 0.5) < 0.05


def test_noised_frames_and_loss_only_on_noised():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 16, 4, 2, 2, generator=g)
    noise = torch.randn(1, 16, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.3])
    noised = torch.tensor([False, True, False, True])
    xt = noise_frames(x0, noise, sigma, noised)
    assert torch.equal(xt[:, :, [0, 2]], x0[:, :, [0, 2]])
    assert torch.allclose(xt[:, :, 1], 0.3 * noise[:, :, 1] + 0.7 * x0[:, :, 1])
    perfect = xt - sigma * (noise - x0)          # ComfyUI CONST: denoised = x - sigma * v
    perfect[:, :, [0, 2]] += 100                 # garbage on clean frames is not counted
    assert float(flow_matching_loss(perfect, xt, x0, noise, sigma, noised)) < 1e-10
    off = perfect.clone()
    off[:, :, 1] -= sigma * 1.0                  # v_hat off by 1 on one of two noised frames
    assert math.isclose(float(flow_matching_loss(off, xt, x0, noise, sigma, noised)), 0.5, rel_tol=1e-5)
    m = denoise_mask(noised, 2, 2)
    assert m.shape == (1, 1, 4, 2, 2) and m[0, 0, :, 0, 0].tolist() == [0, 1, 0, 1]


def test_choose_mode_renormalises_over_feasible():
    ratios = {"reference_to_shot": 0.5, "text_to_shot": 0.0, "shot_to_shot": 0.5}
    g = torch.Generator().manual_seed(0)
    assert {choose_mode(g, ratios, ["text_to_shot", "shot_to_shot"]) for _ in range(50)} == {"shot_to_shot"}
    with pytest.raises(ValueError):
        choose_mode(g, ratios, ["text_to_shot"])


# -- sample packing ---------------------------------------------------------------------------
def _seq(num_shots=3, refs=(0, 1), masks=True) -> CachedSequence:
    g = torch.Generator().manual_seed(1)
    grid = torch.zeros(4, 4)
    grid[1:3, 1:3] = 1
    return CachedSequence(
        id="s", shots_latent=torch.randn(16, num_shots, 8, 8, generator=g),
        refs_latent=torch.randn(16, len(refs), 8, 8, generator=g),
        shot_texts=[torch.ones(3 + j, 8) * (j + 1) for j in range(num_shots)], char_texts={0: torch.ones(2, 8) * 9},
        ref_characters=list(refs), ref_masks=[grid, None][: len(refs)],
        shot_characters=[[0], [0, 1], [1]][:num_shots], shot_masks=[{0: grid}, {0: grid, 1: grid}, {}][:num_shots]
        if masks else [{} for _ in range(num_shots)], width=64, height=64, repeat=4)


def test_build_sample_modes():
    seq, g, empty = _seq(), torch.Generator().manual_seed(0), torch.zeros(1, 8)
    r2s = build_sample(seq, "reference_to_shot", g, empty, max_shots=6, max_latent_frames=21, text_min_length=4)
    assert r2s.layout.num_refs == 2 and r2s.noised.tolist() == [False, False, True, True, True]
    assert torch.equal(r2s.latent[0, :, :2], seq.refs_latent) and torch.equal(r2s.latent[0, :, 2:], seq.shots_latent)
    # shot prompts, then Mira's description; Theo has none -> NO_TEXT
    assert r2s.num_segments == 4 and r2s.frame_segments == [3, NO_TEXT, 0, 1, 2]
    assert r2s.segment_length == 5 and r2s.context.shape == (1, 20, 8)
    assert torch.equal(r2s.context[0, 15:17], torch.full((2, 8), 9.0)) and not r2s.context[0, 17:].any()
    assert [sorted(r) for r in r2s.shot_regions] == [[0], [0, 1], []]
    t2s = build_sample(seq, "text_to_shot", g, empty, 6, 21, 4)
    assert t2s.layout.num_refs == 0 and t2s.noised.all() and t2s.frame_segments == [0, 1, 2]
    for _ in range(10):
        s2s = build_sample(seq, "shot_to_shot", g, empty, 6, 21, 4)
        clean = s2s.noised.logical_not()[2:].tolist()
        n_clean = sum(clean)
        assert 1 <= n_clean <= 2 and clean == [True] * n_clean + [False] * (3 - n_clean)
        assert all(not s2s.shot_regions[j] for j in range(n_clean))   # RACL only on generated shots
    assert feasible_modes(seq, 6, 21) == ["text_to_shot", "reference_to_shot", "shot_to_shot"]


def test_build_sample_limits_and_dropout():
    seq, g, empty = _seq(), torch.Generator().manual_seed(0), torch.zeros(1, 8)
    # 2 refs + 3 shots > 4 frames: shots are cut to a prefix; then only Mira (in shots 0-1) keeps... both refs
    s = build_sample(seq, "reference_to_shot", g, empty, max_shots=6, max_latent_frames=4, text_min_length=4)
    assert (s.layout.num_refs, s.layout.num_shots) == (2, 2)
    s = build_sample(seq, "reference_to_shot", g, empty, max_shots=1, max_latent_frames=21, text_min_length=4)
    assert (s.layout.num_refs, s.layout.num_shots) == (1, 1)   # only the characters of the kept shots
    s = build_sample(seq, "text_to_shot", g, empty, 6, 21, 4, caption_dropout=1.0)
    assert not s.context.any()
    assert feasible_modes(_seq(num_shots=1, refs=()), 6, 21) == ["text_to_shot"]


def test_trim_text_drops_only_trailing_zero_rows():
    t = torch.zeros(1, 10, 4)
    t[0, :3] = 1
    t[0, 1] = 0
    assert trim_text(t).shape == (3, 4)
    assert trim_text(torch.zeros(1, 5, 4)).shape == (1, 4)


# -- checkpoint files ---------------------------------------------------------------------------
def test_optimizer_state_roundtrip_without_pickle(tmp_path):
    p = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.9))
    for _ in range(2):
        sum(x.square().sum() for x in p).backward()
        opt.step()
    tensors, info = ckpt.optimizer_to_files(opt.state_dict(), ["a", "b"])
    json.dumps(info)
    p2 = [torch.nn.Parameter(x.detach().clone()) for x in p]
    opt2 = torch.optim.AdamW(p2, lr=1.0)
    tensors = {k: v.clone() for k, v in tensors.items()}   # as if read back from the file (no aliasing)
    opt2.load_state_dict(ckpt.optimizer_from_files(tensors, info, ["a", "b"]))
    for o in (opt, opt2):
        o.zero_grad()
        sum(x.square().sum() for x in o.param_groups[0]["params"]).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(p, p2))
    with pytest.raises(ValueError, match="other trainable parameters"):
        ckpt.optimizer_from_files(tensors, info, ["a", "c"])


def test_checkpoint_publish_prune_and_interrupted_save(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path, total_limit=2)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    gen = torch.Generator().manual_seed(3)

    def save(step):
        return mgr.save(step, trainable={"w": p.detach() * step}, lora_metadata={"k": "v"},
                        optimizer_state=opt.state_dict(), param_names=["w"], scheduler_state={"last_epoch": step},
                        data_generator=gen, trainer_state={"micro_step": step * 2})

    for step in (1, 2, 3):
        save(step)
    root = tmp_path / "checkpoints"
    assert sorted(x.name for x in ckpt.complete_checkpoints(root)) == ["checkpoint-2", "checkpoint-3"]
    assert ckpt.resolve_resume("latest", tmp_path).name == "checkpoint-3"

    real = ckpt.atomic_write_json

    def crash(path, obj):   # the process dies while writing the checkpoint's state.json
        if path.name == "state.json":
            raise KeyboardInterrupt("killed")
        return real(path, obj)

    monkeypatch.setattr(ckpt, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save(4)
    monkeypatch.setattr(ckpt, "atomic_write_json", real)
    assert (root / ".tmp-checkpoint-4").is_dir() and not (root / "checkpoint-4").exists()
    assert (root / "latest").read_text().strip() == "checkpoint-3"
    loaded = mgr.load(ckpt.resolve_resume("latest", tmp_path), ["w"])
    assert loaded["state"] == {"micro_step": 6, "step": 3, "world_size": 1}
    assert torch.equal(loaded["trainable"]["w"], torch.full((2,), 3.0))
    g2 = torch.Generator()
    ckpt.set_rng_state(*loaded["rng"], data_generator=g2)
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=gen))
    ckpt.CheckpointManager(tmp_path, total_limit=2)          # a new run cleans the half-written folder
    assert not (root / ".tmp-checkpoint-4").exists()
    # "latest" naming a vanished folder falls back to the newest complete checkpoint
    (root / "latest").write_text("checkpoint-9\n")
    assert ckpt.resolve_resume("latest", tmp_path).name == "checkpoint-3"
    assert ckpt.resolve_resume("latest", tmp_path / "elsewhere") is None


def test_atomic_safetensors_saves_shared_tensors(tmp_path):
    """Two shots with the same caption share one cached encoding; safetensors alone refuses that."""
    import safetensors.torch

    from dreamshot.atomic import atomic_save_safetensors

    t = torch.arange(6.0).view(2, 3)
    path = atomic_save_safetensors(tmp_path / "c.safetensors", {"text.shot.0": t, "text.shot.1": t, "x": t[0]})
    back = safetensors.torch.load_file(str(path))
    assert torch.equal(back["text.shot.0"], t) and torch.equal(back["text.shot.1"], t)
    assert torch.equal(back["x"], t[0])
