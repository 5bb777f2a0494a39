"""Shared test set-up: one intra-op thread (2-core CI machines), offline hub, tiny model caches."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Without CUDA our Triton kernels run under the interpreter; the flag must be set before anything
# (diffusers included) imports triton, so it is set here rather than in the Sage tests.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_pipe_cache():
    """Build each tiny pipeline once per session: {family: pipeline}."""
    from attn_processors.testing.tiny import tiny_pipeline

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_pipeline(family)
        return cache[family]

    return get
