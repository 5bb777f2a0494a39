"""The Blocks app: every tab of ``tabs.TABS`` on one page, one queue, served on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import os
import socket
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from .tabs import TABS

HEAD = "Training-free attention controls for Diffusers pipelines: each tab runs one technique on a " \
       "small shipped model (or any model folder / hub id you give it). Every run shows its seed, its " \
       "config as JSON and a script that reproduces it."


def build_app(models: Mapping[str, str | Path] | None = None) -> gr.Blocks:
    """The app; ``models`` maps a tab id (``layout``, ``video``, ...) to the model its box starts with."""
    models = dict(models or {})
    unknown = sorted(set(models) - {tab.TAB for tab in TABS})
    if unknown:
        raise ValueError(f"no tab {unknown}; the tabs are {[tab.TAB for tab in TABS]}")
    with gr.Blocks(title="attn-processors") as app:
        gr.Markdown(f"# attn-processors\n{HEAD}")
        with gr.Tabs():
            for tab in TABS:
                tab.build(models.get(tab.TAB, tab.DEFAULT_MODEL))
    # one generation at a time per tab (each tab's events carry concurrency_id=tab, limit 1)
    return app.queue(max_size=64, default_concurrency_limit=1)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None,
            timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app`` in this process (for tests and scripts), yield its URL once it answers, close after."""
    port = port or free_port(host)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    url = f"http://{host}:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                app.close()
                raise
            time.sleep(0.2)
    try:
        yield url
    finally:
        app.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="attn-processors-app", description=HEAD)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (off by default)")
    for tab in TABS:
        p.add_argument(f"--{tab.TAB.replace('_', '-')}-model", default=None, metavar="PATH_OR_HUB_ID",
                       help=f"{tab.TITLE} tab's starting model (default: {tab.DEFAULT_MODEL})")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """`attn-processors-app` / `python -m apps.gradio_app`."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = parse_args(argv)
    models = {tab.TAB: getattr(args, f"{tab.TAB}_model") for tab in TABS}
    app = build_app({k: v for k, v in models.items() if v})
    app.launch(server_name=args.host, server_port=args.port, share=args.share)
