"""README.md and docs/*.md: every relative link and image points to a file of the repository, and
README stays a short manual (the rest lives in docs/)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages():
    return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def test_every_relative_link_exists():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or REPO not in path.parents:
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_readme_is_short_and_names_the_test_command():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) < 15_000
    assert "node --test tests/js/ && python -m pytest -q tests" in text
    assert "node --test tests/js/ && python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()


def test_readme_headless_command_resolves_from_the_pack_folder(comfy_root, tmp_path):
    """README's headless command, run where its comment says (the pack's folder inside ComfyUI): every
    flag is one the CLI takes, the story file is the pack's, and each model path lands in the ComfyUI
    models folder its loader reads (the folders of the real checkout), the output in ComfyUI's output/."""
    import shlex

    from dreamshot.generate.__main__ import build_parser

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "dreamshot.generate" in b)
    where = re.search(r"from the pack's folder \((ComfyUI/custom_nodes/[^)]+)\)", block)
    assert where, "README's headless command must say the folder it runs from"
    command = block[block.index("python -m dreamshot.generate"):].replace("\\\n", " ").splitlines()[0]
    argv = shlex.split(command)[3:]
    args = build_parser().parse_args(argv)
    assert (REPO / args.story).is_file()
    pack = tmp_path / where.group(1)          # ComfyUI/custom_nodes/ComfyUI-DreamShot, laid out as installed
    comfy = tmp_path / "ComfyUI"
    for given, folder in ((args.dit, "diffusion_models"), (args.vae, "vae"), (args.text_encoder, "text_encoders")):
        assert (comfy_root / "models" / folder).is_dir()          # a folder this ComfyUI's loaders read
        assert (pack / given).resolve().parent == (comfy / "models" / folder).resolve(), given
    assert (pack / args.out).resolve().parent == (comfy / "output").resolve()
