"""The test harness itself: finding ComfyUI, loading packs the way ComfyUI does, the tiny Wan models,
and the REAL ComfyUI server.

Note: ComfyUI's stock CLIPLoader cannot build the tiny UMT5 of these tests (it always builds UMT5-XXL),
so the server prompts below use the TEST-ONLY node DreamShotTestTinyUMT5Loader in its place
(tests/support/test_nodes_pack, installed by make_base_dir).
"""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import pytest

from support import comfy_host
from support.comfy_host import PackLoadError, find_comfyui, load_pack_in_process
from support.server import ComfyServer, PromptFailed, PromptRejected, ServerError, make_base_dir

log = logging.getLogger("DreamShot.tests")


# ---- finding ComfyUI (no ComfyUI needed) --------------------------------------------------------
def _fake_comfy(path: Path) -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "main.py").write_text("")
    return path


def test_comfyui_path_wins(tmp_path, monkeypatch):
    fake = _fake_comfy(tmp_path / "MyComfy")
    monkeypatch.setenv("COMFYUI_PATH", str(fake))
    assert find_comfyui() == fake.resolve()


def test_a_comfyui_path_that_is_not_comfyui_is_ignored(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))  # no main.py / comfy/
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with caplog.at_level(logging.WARNING, logger="DreamShot.tests"):
        assert find_comfyui(repo=tmp_path / "repo") is None
    assert "not a ComfyUI checkout" in caplog.text


def test_the_enclosing_comfyui_is_found(tmp_path, monkeypatch):
    comfy = _fake_comfy(tmp_path / "ComfyUI")
    pack = comfy / "custom_nodes" / "ComfyUI-DreamShot"
    pack.mkdir(parents=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find_comfyui(repo=pack) == comfy.resolve()


def test_the_enclosing_comfyui_is_found_through_a_symlinked_install(tmp_path, monkeypatch):
    repo = tmp_path / "checkout"
    (repo / "tests").mkdir(parents=True)
    comfy = _fake_comfy(tmp_path / "ComfyUI")
    (comfy / "custom_nodes").mkdir()
    (comfy / "custom_nodes" / "ComfyUI-DreamShot").symlink_to(repo, target_is_directory=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PWD", str(comfy / "custom_nodes" / "ComfyUI-DreamShot" / "tests"))
    assert find_comfyui(repo=repo) == comfy.resolve()


def test_home_comfyui_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    comfy = _fake_comfy(tmp_path / "ComfyUI")
    assert find_comfyui(repo=tmp_path / "elsewhere" / "repo") == comfy.resolve()


# ---- headless ComfyUI and pack loading ----------------------------------------------------------
@pytest.mark.comfyui
def test_bootstrap_is_idempotent_and_cpu_only(comfy_headless):
    import nodes
    from comfy.cli_args import args

    assert comfy_host.bootstrap_headless(comfy_headless) == comfy_headless
    assert args.cpu is True
    assert Path(nodes.__file__).resolve() == comfy_headless / "nodes.py"  # not this repo's nodes/ package
    with pytest.raises(RuntimeError, match="already imported"):
        comfy_host.bootstrap_headless(Path("/nonexistent/ComfyUI"))


@pytest.fixture
def scratch_registry(comfy_headless):
    """Undo what a throwaway pack registers in ComfyUI's global node tables."""
    import nodes

    comfy_host.init_core_nodes(comfy_headless)  # before the snapshot: core nodes stay
    tables = (nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS, nodes.EXTENSION_WEB_DIRS)
    saved = [dict(t) for t in tables]
    packs = dict(comfy_host._PACKS)
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)
    comfy_host._PACKS.clear()
    comfy_host._PACKS.update(packs)


def _write_pack(root: Path, name: str, init: str, web: bool = False) -> Path:
    pack = root / name
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(init))
    if web:
        (pack / "js").mkdir()
        (pack / "js" / "ext.js").write_text("// test\n")
    return pack


@pytest.mark.comfyui
def test_load_pack_in_process_with_a_v1_pack(scratch_registry, tmp_path):
    import nodes

    pack = _write_pack(tmp_path, "FakePackV1", '''
        class FakeV1:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"n": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "run"
            CATEGORY = "testing"
            def run(self, n):
                return (n + 1,)

        class NotAllowedToReplaceCore:
            pass

        NODE_CLASS_MAPPINGS = {"DreamShotHarnessFakeV1": FakeV1, "KSampler": NotAllowedToReplaceCore}
        WEB_DIRECTORY = "./js"
    ''', web=True)
    core_ksampler = nodes.NODE_CLASS_MAPPINGS["KSampler"]
    got = load_pack_in_process(pack_dir=pack)
    assert set(got) == {"DreamShotHarnessFakeV1"}
    assert nodes.NODE_CLASS_MAPPINGS["KSampler"] is core_ksampler  # core ids are protected, as in the server
    assert got["DreamShotHarnessFakeV1"]().run(2) == (3,)
    assert got["DreamShotHarnessFakeV1"].RELATIVE_PYTHON_MODULE == "custom_nodes.FakePackV1"
    assert Path(nodes.EXTENSION_WEB_DIRS["FakePackV1"]) == pack / "js"
    assert load_pack_in_process(pack_dir=pack) is got  # cached


@pytest.mark.comfyui
def test_load_pack_in_process_with_a_v3_entrypoint_pack(scratch_registry, tmp_path):
    """The shape of this repo's __init__.py: comfy_entrypoint + WEB_DIRECTORY, nodes in a subpackage."""
    import nodes

    pack = _write_pack(tmp_path, "FakePackV3", '''
        from comfy_api.v0_0_2 import ComfyExtension
        from .impl import NODES

        WEB_DIRECTORY = "./js"

        class Ext(ComfyExtension):
            async def get_node_list(self):
                return list(NODES)

        async def comfy_entrypoint():
            return Ext()
    ''', web=True)
    (pack / "impl.py").write_text(textwrap.dedent('''
        from comfy_api.v0_0_2 import io

        class Double(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="DreamShotHarnessFakeV3", display_name="Fake V3", category="testing",
                                 inputs=[io.Int.Input("n", default=1)], outputs=[io.Int.Output()])

            @classmethod
            def execute(cls, n):
                return io.NodeOutput(2 * n)

        NODES = [Double]
    '''))
    got = load_pack_in_process(pack_dir=pack)
    assert set(got) == {"DreamShotHarnessFakeV3"}
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["DreamShotHarnessFakeV3"] == "Fake V3"
    assert Path(nodes.EXTENSION_WEB_DIRS["FakePackV3"]) == pack / "js"
    info = comfy_host.object_info_for(["DreamShotHarnessFakeV3"])["DreamShotHarnessFakeV3"]
    assert info["input"]["required"]["n"][0] == "INT" and info["category"] == "testing"


@pytest.mark.comfyui
def test_a_pack_that_fails_to_import_raises_with_the_reason(scratch_registry, tmp_path):
    pack = _write_pack(tmp_path, "FakeBrokenPack", 'raise ImportError("dreamshot harness: boom")\n')
    with pytest.raises(PackLoadError, match="dreamshot harness: boom"):
        load_pack_in_process(pack_dir=pack)


@pytest.mark.comfyui
def test_test_only_loader_node_loads_in_process_too(scratch_registry):
    from support.server import TEST_LOADER, TEST_NODES_DIR
    from support.tiny_models import TINY_UMT5_CONFIG

    got = load_pack_in_process(pack_dir=TEST_NODES_DIR)
    assert set(got) == {TEST_LOADER}
    assert got[TEST_LOADER].CATEGORY == "testing"
    assert got[TEST_LOADER].RETURN_TYPES == ("CLIP",)
    import sys

    # ComfyUI names the module after its path, with "." replaced (e.g. in /tmp/tmp.XYZ/...)
    pack_module = sys.modules[got[TEST_LOADER].__module__]
    assert pack_module.TINY_UMT5_CONFIG == TINY_UMT5_CONFIG


# ---- tiny models --------------------------------------------------------------------------------
@pytest.mark.comfyui
def test_writes_are_atomic(comfy_headless, tmp_path, monkeypatch):
    import safetensors.torch

    from support import tiny_models

    path = tiny_models.write_tiny_wan_dit(tmp_path / "dit.safetensors", num_layers=1)
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny_models.write_tiny_wan_dit(path, num_layers=1, seed=1)
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["dit.safetensors"]  # no temp file left


@pytest.mark.comfyui
def test_tiny_dit_loads_as_wan21_t2v_and_samples(tiny_wan_model):
    import torch

    import comfy.model_base
    import comfy.sample

    m = tiny_wan_model
    assert type(m.model) is comfy.model_base.WAN21
    dm = m.model.diffusion_model
    assert (dm.dim, dm.num_heads, len(dm.blocks), dm.model_type) == (256, 2, 2, "t2v")
    latent = torch.zeros(1, 16, 2, 8, 8)
    cond = [[torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0)), {}]]
    uncond = [[torch.zeros(1, 512, 4096), {}]]
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(m, noise, 2, 5.0, "euler", "simple", cond, uncond, latent, denoise=1.0,
                              disable_pbar=True, seed=0)
    assert out.shape == latent.shape
    assert torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.comfyui
@pytest.mark.slow
def test_wan_vae_encodes_5_frames_to_2_latents_and_back(tiny_vae):
    import torch

    video = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(0))  # [T, H, W, C] in 0..1
    t0 = time.perf_counter()
    latent = tiny_vae.encode(video)
    t1 = time.perf_counter()
    assert latent.shape == (1, 16, 2, 8, 8) and torch.isfinite(latent).all()
    images = tiny_vae.decode(latent)
    t2 = time.perf_counter()
    log.info("Wan VAE (random, CPU): encode 5x64x64 %.1f s, decode %.1f s", t1 - t0, t2 - t1)
    assert images.shape == (1, 5, 64, 64, 3)  # VAEDecode then flattens this to [5, 64, 64, 3]
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert images.std() > 0.01  # not a constant image: the random weights are stable, not saturated


@pytest.mark.comfyui
def test_tiny_umt5_encodes_a_prompt_like_umt5(tiny_clip):
    import torch

    tokens = tiny_clip.tokenize("Mira waits at a rainy bus stop at night, wide shot; 日本 ✓")
    ids = [t[0] for t in tokens["umt5xxl"][0]]
    assert len(ids) == 512 and 2 not in ids  # padded to 512; byte fallback: no <unk>
    n = ids.index(1)  # eos = 1, then pad = 0
    assert n > 5 and set(ids[n + 1:]) == {0}
    cond, pooled = tiny_clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 512, 4096) and torch.isfinite(cond).all()
    assert cond[0, : n + 1].abs().sum(-1).min() > 0 and cond[0, n + 1:].abs().max() == 0  # zeroed padding


# ---- the real server ----------------------------------------------------------------------------
TEST_ONLY_NODES = {"dreamshot_harness_nodes.py": '''
import time

import comfy.model_management


class DreamShotHarnessFail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"message": ("STRING", {"default": "kaboom"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, message):
        raise RuntimeError(f"harness failure: {message}")


class DreamShotHarnessSleep:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 30.0}), "nonce": ("INT", {"default": 0})},
                "optional": {"started": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, seconds, nonce, started=""):
        if started:  # a file that says the node runs (the executor is past clearing the interrupt flag)
            with open(started, "w") as f:
                f.write("running")
        end = time.time() + seconds
        while time.time() < end:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.05)
        return {}


NODE_CLASS_MAPPINGS = {"DreamShotHarnessFail": DreamShotHarnessFail, "DreamShotHarnessSleep": DreamShotHarnessSleep}
''', "dreamshot_harness_broken": 'raise ImportError("a broken test pack")\n'}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir, comfy_root):
    base = make_base_dir(tmp_path_factory.mktemp("harness_base"),
                         models={"diffusion_models": [tiny_models_dir / "dit.safetensors"],
                                 "vae": [tiny_models_dir / "vae.safetensors"],
                                 "text_encoders": [tiny_models_dir / "umt5.safetensors"]},
                         extra_custom_nodes=TEST_ONLY_NODES)
    with ComfyServer(base, root=comfy_root) as s:
        log.info("ComfyUI server started in %.1f s", s.startup_seconds)
        yield s


def tiny_wan_prompt(seed: int = 0, prefix: str = "harness/tiny") -> dict:
    """UNETLoader -> KSampler (2 steps) on EmptyHunyuanLatentVideo 64x64x5 -> VAEDecode -> SaveImage;
    text from CLIPTextEncode on the TEST-ONLY tiny UMT5 loader (CLIPLoader cannot load it)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "dit.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DreamShotTestTinyUMT5Loader",
              "inputs": {"clip_name": "umt5.safetensors", "type": "wan", "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a woman in a red coat, rain"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry"}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                  "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


@pytest.mark.comfyui
@pytest.mark.slow
def test_server_lists_core_and_test_only_nodes(server):
    info = server.object_info()
    assert "KSampler" in info and "EmptyHunyuanLatentVideo" in info
    loader = info["DreamShotTestTinyUMT5Loader"]
    assert loader["category"] == "testing" and loader["output"] == ["CLIP"]
    assert loader["input"]["required"]["clip_name"][0] == ["umt5.safetensors"]
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == ["dit.safetensors"]
    assert {"DreamShotHarnessFail", "DreamShotHarnessSleep"} <= set(info)
    failed = [Path(p).name for p in server.custom_node_import_failures()]
    assert [f for f in failed if f.startswith("dreamshot_")] == ["dreamshot_harness_broken"]  # server goes on


@pytest.mark.comfyui
@pytest.mark.slow
def test_in_process_object_info_equals_the_servers(server):
    from support.comfy_host import init_core_nodes, object_info_for

    init_core_nodes()
    # (nodes without file lists: those differ, this process's folders are not the server's base dir)
    names = ["KSampler", "EmptyHunyuanLatentVideo", "VAEDecode", "SaveImage", "CLIPTextEncode", "WanImageToVideo",
             "SamplerCustomAdvanced", "PrimitiveInt"]
    assert object_info_for(names) == {n: server.object_info(n)[n] for n in names}


@pytest.mark.comfyui
@pytest.mark.slow
def test_tiny_wan_prompt_runs_and_writes_pngs(server):
    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    entry = server.wait(server.queue(tiny_wan_prompt(seed=1)), timeout=300)
    log.info("tiny Wan prompt (2 steps, 64x64x5, VAE decode) ran in %.1f s", time.perf_counter() - t0)
    files = server.output_files(entry)
    assert len(files) == 5 and all(f.suffix == ".png" and f.is_file() for f in files)
    assert all(f.parent == server.base_dir / "output" / "harness" for f in files)
    frames = [np.asarray(Image.open(f)) for f in files]
    assert all(f.shape == (64, 64, 3) for f in frames)


@pytest.mark.comfyui
@pytest.mark.slow
def test_a_bad_prompt_is_rejected_with_http_400(server):
    prompt = tiny_wan_prompt()
    del prompt["6"]["inputs"]["model"]
    prompt["5"]["inputs"]["width"] = "wide"
    with pytest.raises(PromptRejected) as e:
        server.queue(prompt)
    assert e.value.status == 400
    errors = e.value.body["node_errors"]
    assert "Required input is missing" in str(errors["6"]) and "model" in str(errors["6"])
    assert "Required input is missing" in str(e.value)  # the message carries the JSON body


@pytest.mark.comfyui
@pytest.mark.slow
def test_a_failing_node_raises_prompt_failed_with_its_message(server):
    prompt = {"1": {"class_type": "DreamShotHarnessFail", "inputs": {"message": f"boom {time.time()}"}}}
    with pytest.raises(PromptFailed, match=r"node 1 \(DreamShotHarnessFail\) raised RuntimeError: harness failure"):
        server.wait(server.queue(prompt), timeout=60)


@pytest.mark.comfyui
@pytest.mark.slow
def test_interrupt_stops_the_running_prompt(server):
    nonce = time.time_ns() % 2**31
    started = server.base_dir / f"harness-sleep-{nonce}.started"
    prompt_id = server.queue({"1": {"class_type": "DreamShotHarnessSleep",
                                    "inputs": {"seconds": 60.0, "nonce": nonce, "started": str(started)}}})
    # Interrupt once the node itself runs: the executor clears the interrupt flag as it starts a prompt
    # (ComfyUI execution.py, PromptExecutor.execute_async: nodes.interrupt_processing(False)), so one
    # sent while the prompt is merely listed as running can be lost, however long one waits first.
    deadline = time.monotonic() + 120
    while not started.exists():
        assert prompt_id not in server.history(prompt_id), "the sleep node ended without running"
        assert time.monotonic() < deadline, f"the sleep node did not start in 120 s:\n{server.log_tail()}"
        time.sleep(0.05)
    server.interrupt()
    # Stopped by the interrupt, not by its end: wait() gives up (TimeoutError) at 30 s, half the
    # node's 60 s; the node checks the flag every 0.05 s.
    with pytest.raises(PromptFailed, match="interrupted"):
        server.wait(prompt_id, timeout=30)


@pytest.mark.comfyui
def test_a_server_that_cannot_start_reports_its_log(comfy_root, tmp_path):
    with pytest.raises(ServerError, match="unrecognized arguments: --no-such-flag"):
        with ComfyServer(make_base_dir(tmp_path, pack_root=None, test_nodes=False), root=comfy_root,
                         extra_args=["--no-such-flag"], startup_timeout=60):
            pass
