"""Every Python example of README.md and docs/*.md runs, against the shipped models; `make demo` works.

How the collector reads a page:
- each ```python block is one example, run with `exec` in a fresh namespace, with the working
  directory set to a temporary folder (files the example writes land there) in which `assets/` and
  `benchmarks/` point at the repository's;
- a block preceded by `<!-- continued -->` runs in the namespace of the block before it (one test);
- a block preceded by `<!-- not-run: REASON -->` is skipped, and counted: `NOT_RUN` below lists every
  such block, so none hides silently;
- a block preceded by `<!-- slow -->` (over 30 s) is marked `pytest.mark.slow` (`make slow` runs it);
- shell commands go in ```bash blocks, job files in ```jsonl blocks (parsed with the batch tool's own
  reader, prompts checked); any other ``` language must be in `LANGUAGES`.

Real checkpoints cannot be downloaded here, so hub ids in `from_pretrained("...")` are replaced by the
shipped model of the same family (`SUBSTITUTIONS`); any other hub id fails the test. Examples must use
prompts the shipped models know (worlds/shapes/vocab.py): while they run, every small-vocabulary
tokenizer refuses a word outside that vocabulary (the shipped models would split it into letters).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# hub id of a real checkpoint -> the shipped model of the same family (folder relative to the repo root)
SUBSTITUTIONS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "assets/shapes-sd",
    "stabilityai/stable-diffusion-2-1": "assets/shapes-sd",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "assets/moving-shapes-wan",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "assets/moving-shapes-wan",
}
LANGUAGES = {"python", "bash", "jsonl", "json", "text", ""}
# (page, block number on that page, 1-based) -> why it does not run. Every not-run block is listed.
NOT_RUN: dict[tuple[str, int], str] = {}

MARKER = re.compile(r"<!--\s*(not-run|continued|slow)\s*(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    page: str  # path relative to the repository root
    number: int  # 1-based among the page's code blocks
    line: int
    language: str
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the `<!-- ... -->` markers just above each."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i, pending = 0, {}
    while i < len(lines):
        text = lines[i].strip()
        m = MARKER.fullmatch(text)
        if m:
            pending[m.group(1)] = m.group(2) or ""
        elif FENCE.match(text) and not text.startswith("````"):
            lang, start, body = FENCE.match(text).group(1), i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
            code = "\n".join(b[indent:] for b in body) + "\n"
            blocks.append(Block(str(page.relative_to(ROOT)), len(blocks) + 1, start, lang, code, pending))
            pending = {}
        elif text:
            pending = {}
        i += 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in read_blocks(page)]


def examples() -> list[list[Block]]:
    """Python blocks grouped into examples: a block and the `continued` blocks after it."""
    groups: list[list[Block]] = []
    for b in ALL_BLOCKS:
        if b.language != "python" or "not-run" in b.markers:
            continue
        if "continued" in b.markers:
            assert groups and groups[-1][-1].page == b.page, f"{b.id}: 'continued' follows no python block"
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def _param(group: list[Block]):
    slow = any("slow" in b.markers for b in group)
    return pytest.param(group, id=group[0].id, marks=[pytest.mark.slow] if slow else [])


def substitute(code: str, where: str) -> str:
    """Hub ids -> shipped model folders; every from_pretrained("...") must then name a folder here."""
    for hub_id, local in SUBSTITUTIONS.items():
        code = code.replace(f'"{hub_id}"', f'"{local}"')
    for name in re.findall(r'from_pretrained\(\s*"([^"]+)"', code):
        assert (ROOT / name).is_dir(), (
            f"{where}: from_pretrained({name!r}) is neither a folder of this repository nor a hub id in "
            "tests/test_docs_examples.py SUBSTITUTIONS; add it there with the shipped model to use"
        )
    return code


@pytest.fixture
def example_dir(tmp_path, monkeypatch):
    """cwd = a scratch folder with assets/ and benchmarks/ linked; small-vocabulary tokenizers strict;
    the technique registry restored after the example."""
    for name in ("assets", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    from transformers import PreTrainedTokenizerBase

    from worlds.shapes.styles import STYLE_WORDS
    from worlds.shapes.vocab import WORDS

    original = PreTrainedTokenizerBase.__call__

    def strict_call(self, text=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - the base signature
        if len(self) < 1000 and text is not None:  # the shipped models' closed vocabularies
            texts = [text] if isinstance(text, str) else list(text)
            vocab = self.get_vocab()  # the style model also knows the style words; shapes-sd does not
            known = set(WORDS) | {w for w in STYLE_WORDS if w + "</w>" in vocab}
            unknown = sorted({w for t in texts if isinstance(t, str) for w in t.replace(",", " , ").split()
                              if w.lower() not in known})
            assert not unknown, (f"an example prompt uses words outside the shipped models' vocabulary: "
                                 f"{unknown} (worlds/shapes/vocab.py, worlds/shapes/styles.py)")
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", strict_call)
    yield tmp_path
    # a page may register an example technique: it leaves the registry with the example (technique
    # modules the example imported for the first time stay registered)
    from attn_processors.core import registry

    for table in (getattr(registry, name, None) for name in ("_INSTALLERS", "_JSON_TYPES", "_CLASHES")):
        if isinstance(table, dict):
            for key in [k for k, v in table.items() if EXAMPLE_MODULE in (_module(k), _module(v))]:
                del table[key]


EXAMPLE_MODULE = "__docs_example__"


def _module(obj) -> str | None:
    return getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None


@pytest.mark.parametrize("group", [_param(g) for g in examples()])
def test_example_runs(group: list[Block], example_dir, monkeypatch):
    module = types.ModuleType(EXAMPLE_MODULE)  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for b in group:
        code = substitute(b.code, b.id)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{ROOT / b.page}:{b.line}", "exec", dont_inherit=True), module.__dict__)  # noqa: S102


def test_example_techniques_leave_the_registry():
    """Runs after the examples: a technique a page registers is gone, the shipped ones remain."""
    from attn_processors.core.registry import registered_configs

    names = {c.__name__ for c in registered_configs()}
    assert not [c for c in registered_configs() if c.__module__ == EXAMPLE_MODULE]
    assert {"StoreConfig"} <= names


def test_every_block_has_a_known_language_and_every_skip_is_listed():
    unknown = [f"{b.id} ```{b.language}" for b in ALL_BLOCKS if b.language not in LANGUAGES]
    assert not unknown, f"code blocks in an unknown language (use one of {sorted(LANGUAGES)}): {unknown}"
    untagged_python = [b.id for b in ALL_BLOCKS if b.language in ("", "text") and _parses(b.code)
                       and re.search(r"^\s*(import|from) \w", b.code, re.M)]
    assert not untagged_python, f"Python code in blocks not tagged ```python: {untagged_python}"
    skipped = {(b.page, b.number): b.markers["not-run"] for b in ALL_BLOCKS if "not-run" in b.markers}
    assert all(skipped.values()), "every <!-- not-run: REASON --> needs its reason"
    assert set(skipped) == set(NOT_RUN), (
        f"not-run blocks {sorted(skipped)} differ from NOT_RUN {sorted(NOT_RUN)}: list each one there"
    )
    assert examples(), "no python examples found"


def test_the_vocabulary_guard_refuses_a_word_outside_it(example_dir):
    from transformers import AutoTokenizer

    for model in ("shapes-sd", "moving-shapes-wan"):
        tok = AutoTokenizer.from_pretrained(ROOT / "assets" / model / "tokenizer")
        tok("a red circle moving right")
        with pytest.raises(AssertionError, match="cat"):
            tok(["a red circle", "a red cat on a blue car"])


def test_readme_is_a_short_first_page():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 250


@pytest.mark.parametrize("page", ["layout.md", "sage.md", "tile_sparse.md", "attention_maps.md"])
def test_technique_pages_show_the_plain_path_first(page):
    """Users arrive with `set_attn_processor`; `apply` is the convenience shown second."""
    code = [b.code for b in read_blocks(ROOT / "docs" / page) if b.language == "python"]
    assert "set_attn_processor(processors(" in code[0] or "set_attn_processor(procs)" in code[0], code[0]
    assert "stock_processors(" in code[0], "the plain-path example shows how to go back"
    assert "apply(" not in code[0] and any("apply(" in c for c in code[1:])


def test_job_files_in_the_docs_parse_and_use_the_vocabulary(tmp_path):
    from apps.batch_video import read_jobs
    from worlds.moving_shapes.tokenizer import unknown_words

    blocks = [b for b in ALL_BLOCKS if b.language == "jsonl"]
    for b in blocks:
        path = tmp_path / "jobs.jsonl"
        path.write_text(b.code)
        for job in read_jobs(path):
            for text in (job.prompt, job.negative_prompt):
                assert not (text and unknown_words(text)), f"{b.id}: {text!r} uses {unknown_words(text)}"


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


# -- the pictures and `make demo` -----------------------------------------------------------------
def _pictures(page: Path) -> set[str]:
    """images/NAME.png shown by a page, as ![...](...) or <img src="...">."""
    text = page.read_text(encoding="utf-8")
    return set(re.findall(r"(?:\]\(|src=\")(?:docs/)?(images/[\w.-]+\.png)", text))


def test_relative_links_point_to_files():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", page.read_text(encoding="utf-8")):
            target = (target[0] or target[1]).split("#")[0]
            if target and not re.match(r"[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to missing files: {broken}"


def test_every_picture_shown_is_made_by_make_demo_or_the_app_test():
    from apps import demo

    shown = set().union(*(_pictures(p) for p in PAGES))
    screenshots = re.findall(r'"(app_\w+\.png)"', (ROOT / "tests" / "test_app_browser.py").read_text())
    made = {f"images/{name}" for name in (*demo.PICTURES, *screenshots)}
    # a benchmark's figure: its committed result JSON records the command that drew it (--grid FILE)
    results = "".join(p.read_text() for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    made |= set(re.findall(r"--grid docs/(images/[\w.-]+\.png)", results))
    assert shown, "README shows no picture"
    assert shown <= made, (f"pictures shown but made neither by `make demo`, by the app test, nor by a "
                           f"benchmark whose result JSON records it: {sorted(shown - made)}")
    assert all((ROOT / "docs" / p).is_file() for p in shown), "run `make demo` to write docs/images/"


def _demo(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "apps.demo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_refuses_a_missing_model_folder(tmp_path):
    from apps import demo

    with pytest.raises(SystemExit) as err:
        demo.main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "no such folder" in str(err.value.code) and "assets/shapes-sd" in str(err.value.code)
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_demo_refuses_a_video_model_as_the_image_model(tmp_path):
    from apps import demo

    with pytest.raises(SystemExit) as err:
        demo.main(["--model", str(ROOT / "assets" / "moving-shapes-wan"), "--out", str(tmp_path)])
    assert "WanPipeline" in str(err.value.code) and "--video-model" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        demo.main(["--video-model", str(ROOT / "assets" / "shapes-sd"), "--out", str(tmp_path)])
    assert "StableDiffusionPipeline" in str(err.value.code)


def test_demo_error_is_one_line_and_a_failing_exit_code(tmp_path):
    run = _demo("--model", str(tmp_path / "missing"))
    assert run.returncode != 0
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("apps.demo: error: --model")


@pytest.mark.slow
def test_make_demo_is_quiet_and_deterministic(tmp_path):
    """The full demo (~35 s on 2 cores): no warning line, and the committed pictures are what it draws
    (to a few grey levels: float results may differ in the last bits between CPUs)."""
    run = _demo("--out", str(tmp_path), timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", f"make demo printed on stderr:\n{run.stderr}"
    assert not re.search(r"warn", run.stdout, re.I), run.stdout
    from apps import demo

    for name in demo.PICTURES:
        new, shipped = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                        for p in (tmp_path / name, ROOT / "docs" / "images" / name))
        assert new.shape == shipped.shape and np.abs(new - shipped).mean() < 2.0, (
            f"docs/images/{name} differs from what `make demo` draws now; run `make demo`"
        )
