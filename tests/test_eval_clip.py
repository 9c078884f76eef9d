"""CLIP score from a local Hugging Face folder: a TINY random CLIP built here (CLIPConfig with tiny
dims, save_pretrained, a byte-pair tokenizer from a hand-written vocabulary), so nothing is
downloaded; the scores are checked against the model's own logits and the 100 * max(cos, 0) rule."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np
import pytest

from dreamshot.errors import DreamShotInputError
from dreamshot.eval.clip_score import ClipScorer
from dreamshot.eval.storyboard import StoryToMeasure, measure_story

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def write_tiny_clip(folder: Path) -> Path:
    """A random CLIP (text: vocab 60, width 32; vision: 32 px, patch 8; projection 16) with its
    tokenizer and image processor, as save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]


PROMPTS = ["a red disc waits", "the green square", "blue triangle in the rain", "amber diamond"]


def test_scores_match_the_models_own_logits(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    imgs = images(4)
    scores = scorer.score(imgs, PROMPTS)
    # Independent path: CLIPModel.forward's logits_per_image = logit_scale * cos(image, text).
    inputs = scorer.processor(text=PROMPTS, images=imgs, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = scorer.model(**inputs)
        cos = (out.logits_per_image / scorer.model.logit_scale.exp()).numpy()
    expected = 100 * np.maximum(np.diag(cos), 0)
    assert scores == pytest.approx(expected, abs=1e-3)
    assert ((scores >= 0) & (scores <= 100)).all()
    # The image whose embedding matches the prompt's better scores higher: for each prompt, the
    # ranking of the four images by score is the ranking by cosine.
    all_pairs = np.array([[scorer.score([img], [p])[0] for img in imgs] for p in PROMPTS])
    for k in range(4):
        clipped = 100 * np.maximum(cos[:, k], 0)
        assert all_pairs[k] == pytest.approx(clipped, abs=1e-3)
        if clipped.max() > clipped.min():
            assert int(all_pairs[k].argmax()) == int(cos[:, k].argmax())


def test_an_image_made_to_match_a_prompt_scores_highest(tiny_clip):
    """A constructed case: optimise an image's pixels towards one prompt's text embedding; its score
    for that prompt rises above the untouched image's and above the other prompts'."""
    scorer = ClipScorer(tiny_clip)
    target = PROMPTS[2]
    start = images(1, seed=3)[0][:32, :32]
    before = scorer.score([start] * len(PROMPTS), PROMPTS)
    tok = scorer.processor(text=[target], return_tensors="pt", padding=True)
    text = scorer._features(scorer.model.get_text_features(**tok)).detach()
    pixels = torch.from_numpy(start).float().div(255).permute(2, 0, 1)[None].clone().requires_grad_(True)
    mean = torch.tensor(scorer.processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(scorer.processor.image_processor.image_std).view(1, 3, 1, 1)
    opt = torch.optim.Adam([pixels], lr=0.05)
    for _ in range(60):
        feats = scorer._features(scorer.model.get_image_features(pixel_values=(pixels.clamp(0, 1) - mean) / std))
        loss = -torch.nn.functional.cosine_similarity(feats, text).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    made = (pixels.detach().clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    after = scorer.score([made] * len(PROMPTS), PROMPTS)
    assert after[2] > before[2] + 10
    assert int(np.argmax(after)) == 2


def test_measure_story_uses_the_scorer_per_shot(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    imgs = images(3, seed=5)
    story = StoryToMeasure("s", (), (), tuple(PROMPTS[:3]), ((), (), ()))
    r = measure_story(story, imgs, None, scorer)
    direct = scorer.score(imgs, PROMPTS[:3])
    assert [s.clip_score for s in r.shots] == pytest.approx(list(direct))
    assert r.clip_score == pytest.approx(float(np.mean(direct)))


def test_folder_problems_are_clear_errors_and_nothing_is_fetched(tmp_path, tiny_clip):
    with pytest.raises(DreamShotInputError, match="is not a folder"):
        ClipScorer(tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_clip / "config.json").read_text())
    (partial / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DreamShotInputError) as e:
        ClipScorer(partial, input_name="clip_model")
    msg = str(e.value)
    assert "input 'clip_model'" in msg and "model.safetensors" in msg and "preprocessor_config.json" in msg
    assert "tokenizer.json (or vocab.json + merges.txt)" in msg and "pickled weights are not loaded" in msg
    # Offline mode is set only while loading, then restored for the rest of the process.
    before = os.environ.get("HF_HUB_OFFLINE")
    ClipScorer(tiny_clip)
    assert os.environ.get("HF_HUB_OFFLINE") == before


def test_a_corrupt_weights_file_is_a_clear_error(tmp_path, tiny_clip):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_clip.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DreamShotInputError, match="cannot load a CLIP model"):
        ClipScorer(broken)


def test_cli_run_with_only_a_clip_model_writes_the_reports(tmp_path, tiny_clip, capsys):
    from dreamshot.eval.__main__ import main
    from test_eval_runner import make_outputs

    bench, out = make_outputs(tmp_path)
    report = tmp_path / "report"
    assert main(["run", "--benchmark", str(bench), "--outputs", str(out), "--clip-model", str(tiny_clip),
                 "--method", "dreamshot", "--report-dir", str(report)]) == 0
    printed = capsys.readouterr().out
    assert printed == (report / "metrics.md").read_text(encoding="utf-8")
    runs = (report / "metrics_runs.csv").read_text().splitlines()
    header, row = runs[0].split(","), runs[1].split(",")
    assert len(runs) == 2 and row[0] == "dreamshot"
    values = dict(zip(header, row))
    assert values["identity_similarity"] == "" and 0.0 <= float(values["clip_score"]) <= 100.0
    # --run: one folder of <story>/<N>.png (python -m dreamshot.vistory's layout), alongside --outputs.
    flat = out / "dreamshot" / "base" / "en" / "20260102_120000"
    assert main(["run", "--benchmark", str(bench), "--run", str(flat), "--outputs", str(out), "--method", "swapper",
                 "--clip-model", str(tiny_clip), "--report-dir", str(report)]) == 0
    runs = (report / "metrics_runs.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in runs[1:]] == ["20260102_120000", "swapper"]
