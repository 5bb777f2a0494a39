"""``sageattn`` dispatch: every SDPA fallback rule, logged once and counted; API shape and errors."""

import logging

import pytest
import torch
import torch.nn.functional as F

from attn_processors.sage import FALLBACKS, choose_kernel, reset_counters, sageattn
from attn_processors.sage import dispatch as sage_dispatch
from attn_processors.sage.synthetic import accuracy, attention_fp64, real_like


@pytest.fixture(autouse=True)
def fresh_counters():
    reset_counters()
    yield
    reset_counters()


def qkv(n=256, d=64, h=2, dtype=torch.float32, seed=0):
    return real_like(1, h, n, d, seed=seed, dtype=dtype)


def test_cuda_auto_without_upstream_runs_sdpa_not_our_slower_kernel(monkeypatch):
    """Decided without a GPU: a tensor stand-in on device "cuda" and a patched architecture probe."""

    class OnCuda:
        def __init__(self, shape):
            self.shape, self.device = torch.Size(shape), torch.device("cuda")

    monkeypatch.setattr(sage_dispatch, "detect_arch", lambda device: "sm90")
    monkeypatch.setattr(sage_dispatch, "upstream_version", lambda: None)
    q = OnCuda((1, 8, 4096, 128))
    kernel, reason = choose_kernel(q, q)
    assert kernel == "sdpa" and reason.startswith("no_upstream") and "backend='triton'" in reason
    assert FALLBACKS["no_upstream"] == 1
    monkeypatch.setattr(sage_dispatch, "upstream_version", lambda: (2, 2, 0))
    assert choose_kernel(q, q)[0] == "upstream"


def test_cpu_auto_falls_back_to_exact_sdpa():
    q, k, v = qkv(n=2048)
    assert choose_kernel(q, k)[0] == "sdpa"
    out = sageattn(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert FALLBACKS["cpu"] == 2  # choose_kernel + sageattn


@pytest.mark.parametrize(
    "case, kwargs, category",
    [
        ("mask", dict(attn_mask=torch.ones(256, 256, dtype=torch.bool)), "mask"),
        ("head_dim", dict(), "head_dim"),
        ("short_kv", dict(min_kv_len=2048), "short_kv"),
    ],
)
def test_fallback_rules_run_sdpa(case, kwargs, category):
    q, k, v = qkv(d=160 if case == "head_dim" else 64)
    kwargs.setdefault("min_kv_len", 0)
    kernel, reason = choose_kernel(q, k, backend="simulate", attn_mask=kwargs.get("attn_mask"),
                                   min_kv_len=kwargs["min_kv_len"])
    assert kernel == "sdpa" and reason.startswith(category)
    out = sageattn(q, k, v, backend="simulate", **kwargs)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=kwargs.get("attn_mask"))
    assert torch.equal(out, ref)
    assert FALLBACKS[category] == 2


def test_autograd_falls_back_and_keeps_gradients():
    q, k, v = qkv()
    q.requires_grad_(True)
    out = sageattn(q, k, v, backend="simulate", min_kv_len=0)
    assert FALLBACKS["autograd"] == 1
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():  # inference: the quantized kernel runs
        sageattn(q, k, v, backend="simulate", min_kv_len=0)
    assert FALLBACKS["autograd"] == 1 and sage_dispatch.KERNEL_CALLS["simulate"] == 1


def test_nan_guard_recomputes_with_sdpa(monkeypatch, caplog):
    q, k, v = qkv()
    monkeypatch.setattr(sage_dispatch, "simulate", lambda q, *a, **kw: torch.full_like(q, float("nan")))
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        out = sageattn(q, k, v, backend="simulate", min_kv_len=0)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert FALLBACKS["nonfinite"] == 1
    assert "simulate produced NaN/Inf from finite inputs" in caplog.text
    raw = sageattn(q, k, v, backend="simulate", min_kv_len=0, nan_guard=False)
    assert torch.isnan(raw).all() and FALLBACKS["nonfinite"] == 1


def test_fallback_warning_is_logged_once(caplog):
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        for _ in range(3):
            sageattn(q, k, v, backend="simulate")  # kv 256 < 2048
    assert sum("short_kv" in r.getMessage() for r in caplog.records) == 1
    assert FALLBACKS["short_kv"] == 3
    reset_counters()  # forgets the logged-once memory too
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        sageattn(q, k, v, backend="simulate")
    assert sum("short_kv" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_empty_sequences_raise_one_clear_error(layout):
    q, k, v = qkv()
    axis = 2 if layout == "HND" else 1
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    empty_q, empty_kv = q.narrow(axis, 0, 0), k.narrow(axis, 0, 0)
    for args, got in [((empty_q, k, v), "Nq=0, Nk=256"), ((q, empty_kv, empty_kv), "Nq=256, Nk=0")]:
        for backend in ("auto", "simulate", "sdpa"):
            with pytest.raises(ValueError, match=f"at least one query and one key token, got {got}"):
                sageattn(*args, tensor_layout=layout, backend=backend, min_kv_len=0)


def test_nonfinite_input_is_named_not_blamed_on_the_kernel(caplog):
    q, k, v = qkv()
    k = k.clone()
    k[0, 0, 3, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        out = sageattn(q, k, v, backend="simulate", min_kv_len=0)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "the input k already held NaN/Inf" in message and "not a kernel fault" in message
    assert "produced NaN/Inf from finite inputs" not in message
    assert FALLBACKS == {"nonfinite_input": 1}
    ref = F.scaled_dot_product_attention(q, k, v)  # SDPA carries the NaN through
    torch.testing.assert_close(out, ref, atol=0, rtol=0, equal_nan=True)


def test_simulate_runs_when_allowed_and_matches_fp64():
    q, k, v = qkv(h=4)
    out = sageattn(q, k[:, :2], v[:, :2], backend="simulate", min_kv_len=0)  # GQA 4 -> 2
    assert accuracy(out, attention_fp64(q, k[:, :2], v[:, :2]))["cos"] > 0.9995
    assert sum(FALLBACKS.values()) == 0


def test_nhd_layout_and_dtype_round_trip():
    q, k, v = qkv(dtype=torch.bfloat16)
    hnd = sageattn(q, k, v, backend="simulate", min_kv_len=0)
    nhd = sageattn(*(t.transpose(1, 2) for t in (q, k, v)), tensor_layout="NHD", backend="simulate",
                   min_kv_len=0)
    assert hnd.dtype == torch.bfloat16 and hnd.shape == q.shape
    assert torch.equal(nhd.transpose(1, 2), hnd)


def test_return_lse_on_both_paths():
    q, k, v = qkv()
    ref_lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / 8, dim=-1)
    _, lse_sim = sageattn(q, k, v, backend="simulate", min_kv_len=0, return_lse=True)
    _, lse_sdpa = sageattn(q, k, v, backend="sdpa", return_lse=True)
    assert lse_sim.shape == (1, 2, 256) and (lse_sdpa.double() - ref_lse).abs().max() < 1e-4
    assert (lse_sim.double() - ref_lse).abs().max() < 0.05


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backend="cuda"), "backend"),
        (dict(recipe="int4"), "recipe"),
        (dict(tensor_layout="BHND"), "tensor_layout"),
        (dict(backend="upstream", min_kv_len=0), "sageattention"),
        (dict(backend="simulate", is_causal=True, min_kv_len=0, _kv_len=128), "causal"),
    ],
)
def test_bad_requests_raise_with_a_fix(kwargs, match):
    q, k, v = qkv()
    n_kv = kwargs.pop("_kv_len", None)
    if n_kv:
        k, v = k[:, :, :n_kv], v[:, :, :n_kv]
    with pytest.raises(ValueError, match=match):
        sageattn(q, k, v, **kwargs)


def test_mixed_dtypes_and_bad_heads_raise():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dtype"):
        sageattn(q, k.half(), v)
    with pytest.raises(ValueError, match="multiple"):
        sageattn(q, k[:, :1].expand(1, 3, -1, -1), v[:, :1].expand(1, 3, -1, -1), backend="sdpa")


def test_triton_request_on_cpu_without_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        sageattn(q, k, v, backend="triton", min_kv_len=0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="paper4bit"):
        sageattn(q, k, v, backend="triton", recipe="paper4bit", min_kv_len=0)


def test_long_sequences_switch_to_fp16_pv(monkeypatch):
    seen = []
    original = sage_dispatch.simulate

    def spy(q, k, v, spec, **kw):
        seen.append(spec.pv)
        return original(q, k, v, spec, **kw)

    monkeypatch.setattr(sage_dispatch, "simulate", spy)
    q, k, v = qkv()
    sageattn(q, k, v, backend="simulate", min_kv_len=0, long_seq_fp16_pv=200)  # 256 keys > 200
    sageattn(q, k, v, backend="simulate", min_kv_len=0, long_seq_fp16_pv=None)
    sageattn(q, k, v, backend="simulate", min_kv_len=0)  # default threshold 160K
    assert seen == ["fp16", "fp8", "fp8"] and sage_dispatch.KERNEL_CALLS["long_seq_fp16_pv"] == 1
