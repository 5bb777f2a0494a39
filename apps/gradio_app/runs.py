"""What every tab's run shares: loading models once, per-step progress and cancel, seeds, readable errors,
and a folder of downloadable outputs.

Why one module: each tab is then only its inputs, one pipeline call and its outputs. The mechanics here
are pipeline-agnostic because every pipeline we drive (ours and Diffusers') walks its denoising loop
through ``self.progress_bar(...)``; :func:`stepping` swaps that one method on the loaded pipeline for
the duration of a run, so each step reports progress and is the point where a cancel takes effect.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import random
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "owner/name"
MAX_SEED = 2**31 - 1
PROGRESS = gr.Progress()  # the default that tells Gradio to hand a run its progress tracker


class Cancelled(Exception):
    """Raised between denoising steps once the user pressed Cancel."""


# -- models ---------------------------------------------------------------------------------------
def model_source(text: str | None, default: Path) -> str:
    """The model a tab should load: a local folder (absolute path) or a hub id; empty text: ``default``.

    ValueError naming the text when it is neither an existing folder nor of the form owner/name.
    """
    text = (text or "").strip()
    if not text:
        text = str(default)
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
        path = ROOT / path  # repo-relative names such as assets/shapes-sd work from any directory
    if path.exists():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ValueError(f"model {text!r}: the folder has no model_index.json; give a folder written by "
                             "pipe.save_pretrained() or a hub id such as owner/name")
        return str(path.resolve())
    if text.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(text):
        raise ValueError(f"model {text!r}: there is no such folder; give an existing model folder "
                         f"(e.g. {default}) or a hub id such as owner/name")
    return text


@dataclass
class Loaded:
    """A loaded pipeline and the lock that keeps one generation at a time on it."""

    pipe: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelCache:
    """Pipelines loaded on first use, one per (loader, source), shared by every session."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Loaded] = {}
        self._lock = threading.Lock()

    def get(self, source: str, loader: Callable[[str], Any]) -> Loaded:
        key = (f"{loader.__module__}.{loader.__qualname__}", source)
        with self._lock:  # loads are rare and short next to a generation: one at a time keeps it simple
            if key not in self._items:
                try:
                    pipe = loader(source)
                except (OSError, ValueError) as err:
                    raise ValueError(f"could not load model {source!r}: {first_line(err)}") from err
                self._items[key] = Loaded(pipe)
            return self._items[key]


MODELS = ModelCache()  # process-wide: a second app in the same process (tests) reuses loaded models


def shipped_or_given(text: str | None, default: Path, needs: str) -> str:
    """``model_source``, with a clear message while the shipped ``default`` has not been exported yet."""
    if (not (text or "").strip() or Path(text.strip()) == default) and not default.is_dir():
        raise ValueError(f"the shipped model {default.relative_to(ROOT)} is not there yet; give {needs}")
    return model_source(text, default)


def default_model_note(default: Path, needs: str) -> str:
    """What a tab says about its default model (the shipped one may not have been exported yet)."""
    if default.is_dir():
        return f"Model: `{default}`."
    return f"**The default model `{default}` is not there yet.** Give {needs}."


def run_panel(config_label: str, status_id: str | None = None,
              files_id: str | None = None) -> tuple[Any, Any, Any, Any, Any]:
    """The outputs every run shows, in this order: status, the seed used, the config as JSON, the
    copy-as-code script and the downloads."""
    status = gr.Markdown(elem_id=status_id)
    used_seed = gr.Number(label="seed used", precision=0, interactive=False)
    config = gr.Code(label=f"{config_label} (JSON)", language="json", max_lines=12)
    code = gr.Code(label="copy as code", language="python", max_lines=16)
    files = gr.File(label="downloads", file_count="multiple", elem_id=files_id)
    return status, used_seed, config, code, files


# -- cancel and progress --------------------------------------------------------------------------
class CancelFlags:
    """One cancel flag per (browser session, tab): the Cancel button sets the flag of the run going on."""

    def __init__(self) -> None:
        self._flags: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str, tab: str) -> threading.Event:
        with self._lock:
            flag = self._flags[(session, tab)] = threading.Event()
            return flag

    def cancel(self, session: str, tab: str) -> bool:
        """Set the flag of the session's running run on ``tab``; False when none is running."""
        with self._lock:
            flag = self._flags.get((session, tab))
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: str, tab: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get((session, tab)) is flag:
                del self._flags[(session, tab)]


FLAGS = CancelFlags()


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


class StepBar:
    """Stands in for the tqdm bar a pipeline opens over its steps: reports each step to ``report``,
    which raises :class:`Cancelled` when the run was cancelled (so a run stops between steps)."""

    def __init__(self, iterable: Iterable | None, total: int | None, report: Callable[[int, int], None]):
        self.iterable = iterable
        self.total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        self.n = 0
        self.report = report
        report(0, self.total)

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(() if self.iterable is None else self.iterable):
            if i:
                self.update()
            yield item
        self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.n, self.total)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Steps:
    """Where a run is: the step bar's count, else the denoiser calls (a loop that opens no bar)."""

    def __init__(self, progress: Callable[..., Any] | None, flag: threading.Event, desc: str) -> None:
        self.progress, self.flag, self.desc = progress, flag, desc
        self.bar: StepBar | None = None
        self.calls = 0

    def report(self, done: int, total: int) -> None:
        self.check()
        if self.progress is not None:
            self.progress((done, total), desc=self.desc, unit="steps")

    def check(self) -> None:
        if self.flag.is_set():
            where = f"after {self.bar.n} of {self.bar.total} steps" if self.bar else \
                f"after {self.calls} denoiser calls"
            raise Cancelled(f"cancelled during {self.desc}, {where}")

    def denoiser_call(self, *_: Any) -> None:
        """Forward pre-hook: a cancel also takes effect inside a step with many calls (guidance)."""
        self.check()
        self.calls += 1
        if self.bar is None and self.progress is not None:
            self.progress((self.calls, None), desc=self.desc, unit="denoiser calls")

    def new_bar(self, iterable: Iterable | None = None, total: int | None = None) -> StepBar:
        self.bar = StepBar(iterable, total, self.report)
        return self.bar


@contextlib.contextmanager
def stepping(pipe: Any, progress: Callable[..., Any] | None, flag: threading.Event,
             desc: str) -> Iterator[None]:
    """Within the block, ``pipe``'s step loop reports ``desc`` progress and stops when ``flag`` is set:
    at its next step, or its denoiser's next call."""
    steps = _Steps(progress, flag, desc)
    had_own = "progress_bar" in pipe.__dict__
    own = pipe.__dict__.get("progress_bar")
    pipe.progress_bar = steps.new_bar
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    hook = denoiser.register_forward_pre_hook(steps.denoiser_call) if denoiser is not None else None
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        if had_own:
            pipe.progress_bar = own
        else:
            del pipe.progress_bar


# -- seeds, outputs, errors -----------------------------------------------------------------------
def resolve_seed(seed: float | int | None) -> int:
    """The seed a run uses: the given one, or a fresh random one for an empty or negative value."""
    if seed is None or seed < 0:
        return random.randint(0, MAX_SEED)
    if seed != int(seed) or seed > MAX_SEED:
        raise ValueError(f"seed={seed!r}; give a whole number in [0, {MAX_SEED}] (-1: a random seed)")
    return int(seed)


def positive_int(name: str, value: float | int | None, default: int | None = None) -> int | None:
    """``value`` as a positive int (empty: ``default``); ValueError naming ``name`` otherwise."""
    if value is None:
        return default
    if value != int(value) or value < 1:
        raise ValueError(f"{name}={value!r}; give a whole number >= 1")
    return int(value)


def check_prompt(prompt: str | None) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("the prompt is empty; describe the picture, e.g. 'a red circle and a blue square'")
    return prompt


def run_folder(tab: str) -> Path:
    """A fresh folder for one run's downloadable files (under the system temp folder Gradio serves)."""
    return Path(tempfile.mkdtemp(prefix=f"attn-app-{tab}-"))


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0] if len(text) > 400 else text


def readable_errors(tab: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a tab's run function: a run holds the tab's cancel flag, and every failure reaches
    the browser as one readable ``gr.Error`` (bad input and cancels as they are; anything else with its
    type, traceback in the server log). The server keeps serving either way."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Gradio reads the signature to pass inputs, gr.Progress and gr.Request: show it fn's own
        # parameters without `flag` (given here) plus `request`
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "flag"]
        request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                          annotation=gr.Request)
        signature = inspect.Signature([*params, request_param])

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            request = bound.arguments.pop("request", None)
            session = session_of(request)
            flag = FLAGS.start(session, tab)
            try:
                return fn(**bound.arguments, flag=flag)
            except gr.Error:
                raise
            except (ValueError, Cancelled) as err:
                raise gr.Error(first_line(err), print_exception=False) from None
            except Exception as err:  # a bug, not bad input: keep serving, log the traceback
                logger.exception("%s run failed", tab)
                raise gr.Error(f"{type(err).__name__}: {first_line(err)}", print_exception=False) from None
            finally:
                FLAGS.finish(session, tab, flag)

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {"request": gr.Request}  # only what Gradio must see (it reads type hints)
        return run

    return wrap


def cancel_button(tab: str) -> Callable[..., str]:
    """The Cancel button's handler for ``tab``: stops the session's run there at its next step."""

    def cancel(request: gr.Request) -> str:
        if FLAGS.cancel(session_of(request), tab):
            return "Cancelling: the run stops at its next step."
        return "Nothing is running on this tab."

    cancel.__name__ = f"cancel_{tab}"
    return cancel
