"""The Gradio app: every technique of the toolkit in one browser page.

    attn-processors-app                 # or: python -m apps.gradio_app [--host H] [--port P]

Tabs (``tabs/``, one module each): Layout, Attention maps, Style / IlluSign, Video, Novel view,
Multi-view edit. The run mechanics they share (model cache, per-step progress and cancel, seeds,
readable errors) are in ``runs.py``.
"""

from .app import build_app, main, serving

__all__ = ["build_app", "main", "serving"]
