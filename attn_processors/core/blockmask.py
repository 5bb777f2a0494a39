"""Group-structured sparse attention shared by techniques: analytic BlockMasks, compiled flex, gathered SDPA.

A structured mask is described by a *group label per token* (``groups``: LongTensor [S], values
0..G-1) and a *group-level keep matrix* (``keep``: BoolTensor [G, G], True = query group attends key
group). Tile-sparse video attention uses one group per latent frame plus one for the text tokens; the
same description fits any mask that is constant on group x group tiles.

Why analytic: ``create_block_mask`` evaluates ``mask_mod`` on all S^2 pairs (44 s at S = 28 800 on a
CPU). Here a block (query block i, key block j) is

    partial  iff some (gq, gk) with gq in groups(i), gk in groups(j) is kept,
    full     iff every such pair is kept,

which is exact because a block is the product of its query and key token sets, so every pair of
groups present is realised by some token pair. Membership matrices M [nb, G] make this two small
matrix products, O(S + nb^2 G) instead of O(S^2).

Why compiled: eager ``flex_attention`` materialises the full score matrix (slower than SDPA and
out of memory at video sizes). ``flex_attend`` only ever calls ``torch.compile(flex_attention,
dynamic=False)``, compiled once per process; shapes that change recompile (cached by torch). On CPU
``tune_cpu_flex_template`` rewrites Inductor's stock template (fp32 q @ k^T on a 1 x 16 micro-GEMM,
~0.45x SDPA per block) to run q @ k^T on brgemm (~0.93x SDPA per block).

The same description gives two more exact kernels: ``gather_attend`` (one SDPA, or any attend
kernel, per distinct kept-key set over the gathered keys; no compiler and no S^2 mask) and the
dense reference ``dense_group_mask``. ``group_mass`` gives the dense softmax mass per key group,
from which the recall of any group mask follows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 128
# Each new geometry (S, dtype, head dim, G) is one compiled graph; torch's default of 8 would
# silently drop later geometries to *eager* flex, which materialises S^2 scores.
_RECOMPILE_LIMIT = 64

_lock = threading.Lock()
_compiled: dict[str | None, Callable] = {}  # torch.compile mode -> compiled flex_attention
_compile_error: str | None = None

# Register blocking (rows, cols) of the q @ k^T micro-GEMM that Inductor's CPU flex template keeps for
# unpacked bf16/fp16 (stock: 1 x 16); see tune_cpu_flex_template. 12 x 16: 12 accumulators + 16
# transposed-key registers fit the 32 AVX-512 registers (AVX2 has 16: 4 rows). On fp32, before the
# brgemm rewrite, 12 x 16 measured 1.6x faster than 1 x 16, 8 x 16 1.4x, 16 x 16 as 12 x 16.
CPU_QK_BLOCKING_AVX512 = (12, 16)
CPU_QK_BLOCKING_AVX2 = (4, 16)
_cpu_template: dict[str, object] = {}  # "tuned": bool, "why": str, "salt": CustomGraphPass


def group_mask_mod(groups: torch.Tensor, keep: torch.Tensor) -> Callable:
    """``mask_mod(b, h, q_idx, kv_idx) = keep[groups[q_idx], groups[kv_idx]]``.

    ``groups`` must cover every index flex may evaluate (pad it to a multiple of the block size).
    Built by one factory so all masks share one code object (one compiled graph per shape).
    """

    def mask_mod(b, h, q_idx, kv_idx):
        return keep[groups[q_idx], groups[kv_idx]]

    return mask_mod


def block_membership(groups: torch.Tensor, num_groups: int, block_size: int) -> torch.Tensor:
    """M [nb, G] bool: block i holds at least one token of group g. O(S)."""
    seq_len = groups.numel()
    num_blocks = -(-seq_len // block_size)
    member = torch.zeros(num_blocks, num_groups, dtype=torch.bool, device=groups.device)
    block_of_token = torch.arange(seq_len, device=groups.device) // block_size
    member[block_of_token, groups] = True
    return member


def block_structure(
    groups: torch.Tensor, keep: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [nb, nb] for the self-attention mask keep[groups[i], groups[j]].

    ``partial`` marks blocks with some but not all pairs kept (they evaluate mask_mod), ``full``
    blocks with all pairs kept (no mask_mod); the rest are skipped.
    """
    if keep.dim() != 2 or keep.shape[0] != keep.shape[1]:
        raise ValueError(f"keep must be a square [G, G] bool matrix, got shape {tuple(keep.shape)}")
    member = block_membership(groups, keep.shape[0], block_size).float()  # [nb, G]
    kept = member @ keep.float() @ member.T  # [nb, nb]: number of kept group pairs present
    dropped = member @ (~keep).float() @ member.T  # number of dropped group pairs present
    full = (kept > 0) & (dropped == 0)
    partial = (kept > 0) & (dropped > 0)
    if groups.numel() % block_size:
        # blocks touching the padded tail stay partial, as create_block_mask marks them
        edge = torch.zeros_like(full)
        edge[-1, :] = True
        edge[:, -1] = True
        partial |= full & edge
        full &= ~edge
    return partial, full


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [nq, nkv] -> (num [1, 1, nq] int32, indices [1, 1, nq, nkv] int32).

    Row i lists its kept block indices ascending in its first num[i] entries (flex reads only those;
    the rest stay 0). Built from nonzero() in O(nq nkv), no sort.
    """
    num = blocks.sum(-1, dtype=torch.int32)
    rows, cols = blocks.nonzero(as_tuple=True)  # row-major: each row's columns ascending
    starts = torch.cumsum(num, 0) - num  # first nonzero of each row
    rank = torch.arange(rows.numel(), device=blocks.device) - starts[rows]
    idx = torch.zeros(blocks.shape, dtype=torch.int32, device=blocks.device)
    idx[rows, rank] = cols.to(torch.int32)
    return num[None, None], idx[None, None]


def group_block_mask(
    groups: torch.Tensor,
    keep: torch.Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    for_backward: bool = False,
) -> BlockMask:
    """BlockMask (B = H = 1, broadcast) for keep[groups[i], groups[j]], built without create_block_mask.

    groups: LongTensor [S] on the target device; keep: BoolTensor [G, G] on the same device.
    for_backward: also build the transposed (query-block) index only the backward pass reads;
    inference skips it (it is most of the build: ~100 ms at S = 86 400 on a CPU).
    """
    if groups.dim() != 1 or groups.dtype != torch.long:
        raise ValueError(
            f"groups must be a 1-D LongTensor of group labels, got {groups.dtype} {tuple(groups.shape)}"
        )
    keep = keep.to(device=groups.device, dtype=torch.bool)
    seq_len = groups.numel()
    partial, full = block_structure(groups, keep, block_size)
    kv_num, kv_idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    # flex may evaluate mask_mod on the padding of the last block: repeat the last label there
    pad = partial.shape[0] * block_size - seq_len
    padded = torch.cat([groups, groups[-1:].expand(pad)]) if pad else groups
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=group_mask_mod(padded, keep),
        seq_lengths=(seq_len, seq_len),
        compute_q_blocks=for_backward,
    )


def has_partial_blocks(block_mask: BlockMask) -> bool:
    """Whether any block evaluates mask_mod. Without partial blocks (group spans aligned to the block
    size, e.g. tokens per frame a multiple of 128 and no text) the CPU kernel may skip mask_mod and
    score_mod entirely (``SKIP_MASK_SCORE``): every computed block is full."""
    return bool(block_mask.kv_num_blocks.any())


def block_density(block_mask: BlockMask) -> float:
    """Fraction of (query block, key block) pairs computed (partial + full): 1 - block sparsity."""
    total = block_mask.kv_num_blocks.sum().item()
    if block_mask.full_kv_num_blocks is not None:
        total += block_mask.full_kv_num_blocks.sum().item()
    nq = block_mask.kv_num_blocks.shape[-1]
    nkv = block_mask.kv_indices.shape[-1]
    return total / (nq * nkv * block_mask.kv_num_blocks.shape[0] * block_mask.kv_num_blocks.shape[1])


def compiled_flex(mode: str | None = None) -> Callable | None:
    """The process-wide ``torch.compile(flex_attention, dynamic=False, mode=mode)``; None if compile is
    unusable. ``mode="max-autotune-no-cudagraphs"`` autotunes the GPU kernel (a slower first call)."""
    global _compile_error
    with _lock:
        if mode not in _compiled and _compile_error is None:
            try:
                _compiled[mode] = torch.compile(flex_attention, dynamic=False, mode=mode)
            except Exception as exc:  # torch.compile unsupported on this build / platform
                _compile_error = f"{type(exc).__name__}: {exc}"
                logger.warning("torch.compile(flex_attention) unavailable (%s); block-sparse falls back", exc)
    return _compiled.get(mode)


def tune_cpu_flex_template() -> bool:
    """Patch Inductor's CPU flex-attention template (x86) for speed; True if it is (now) patched.

    The stock template (torch/_inductor/codegen/cpp_flex_attention_template.py) computes each fp32
    (query block x key block) product q @ k^T with a 1 x 16 register-blocked micro-GEMM: one query row
    at a time, a horizontal vector reduction per score. That is ~3x slower than the GEMM inside dense
    SDPA and caps flex at ~0.4x SDPA per computed block, i.e. at 1.5x over SDPA at 72.9% sparsity.
    No kernel_options knob reaches it (the template reads only SKIP_MASK_SCORE, PARTITION_SIZE and the
    BlockMask block sizes), so this rewrites the generated C++, exactly (same math, same order of
    softmax updates):

    * fp32: k^T is written once per call, per key block, into the key buffer the template already
      allocates (and uses only for bf16 packing), and q @ k^T runs on ``cpublas::brgemm``, the oneDNN
      kernel the template already uses for softmax @ v;
    * without score_mod / mask_mod (``SKIP_MASK_SCORE``, see ``flex_attend``) the softmax scale is
      fused into the row-max pass instead of a separate pass over the block's scores;
    * the q @ k^T micro-GEMM left for unpacked bf16/fp16 (CPUs without AMX/AVX512-BF16) gets a
      ``CPU_QK_BLOCKING_*`` register blocking (12 x 16 on AVX-512) instead of 1 x 16.

    Measured at S = 6144, 4 heads, head dim 64, 1 thread: fully dense flex ~0.45 -> ~0.93x SDPA. Applied
    only if the template source still has the expected shape (else nothing changes and this returns
    False); ``ATTN_PROCESSORS_STOCK_CPU_FLEX=1`` keeps the stock template. Compiled graphs are salted
    with a no-op post-grad pass whose uuid names the patch, so Inductor's on-disk caches never mix
    patched and stock kernels.
    """
    with _lock:
        if "tuned" in _cpu_template:
            return bool(_cpu_template["tuned"])
        if os.environ.get("ATTN_PROCESSORS_STOCK_CPU_FLEX") == "1":  # A/B against the stock template
            _cpu_template.update(tuned=False, why="ATTN_PROCESSORS_STOCK_CPU_FLEX=1")
            return False
        try:
            _patch_cpu_template()
            _cpu_template["tuned"] = True
        except Exception as exc:  # torch changed the template, or Inductor is unavailable
            _cpu_template.update(tuned=False, why=f"{type(exc).__name__}: {exc}")
            logger.info("CPU flex template left stock (%s)", exc)
        return bool(_cpu_template["tuned"])


# fp32 only (jinja, at render time): k^T per key block, [headSize, cur_kvSplitSize] each, as the bf16
# pack lays it out, into key_reorder_ptr (allocated by the template for every dtype).
_KEY_TRANSPOSE = r"""
{%- if kernel.dtype(query) == "float" %}
  at::parallel_for(0, batchSize_k * num_head_k * kvSlice, 1, [&](int64_t begin, int64_t end) {
    int64_t i = 0, j = 0, l = 0;
    at::native::data_index_init(begin, i, batchSize_k, j, num_head_k, l, kvSlice);
    for ([[maybe_unused]] auto z : c10::irange(begin, end)) {
      int64_t n = l * kvSplitSize;
      int64_t cur_kvSplitSize = std::min(kvSplitSize, kvSize - n);
      at::native::utils::transpose<float>(
          cur_kvSplitSize, headSize, k_data + i * kStrideB + j * kStrideH + n * kStrideN, kStrideN,
          key_reorder_ptr + i * num_head_k * eheadSize * kvSize + j * eheadSize * kvSize + n * eheadSize,
          cur_kvSplitSize);
      at::native::data_index_step(i, batchSize_k, j, num_head_k, l, kvSlice);
    }
  });
{%- endif %}
"""
_QK_BRGEMM = r"""
{%- if kernel.dtype(query) == "float" %}
        if (true) {
          at::native::cpublas::brgemm(
              cur_qSplitSize, cur_kvSplitSize, headSize, qStrideM, cur_kvSplitSize, cur_kvSplitSize, false,
              q_data + i * qStrideB + j * qStrideH + m * qStrideM,
              key_reorder_ptr + i_kv * num_head_k * eheadSize * kvSize + j_kv * eheadSize * kvSize
                  + n * eheadSize,
              qk_data, false);
        } else
{%- endif %}
"""


def _replace_once(src: str, old: str, new: str) -> str:
    if src.count(old) != 1:
        raise RuntimeError(f"unexpected FLEX_ATTENTION_TEMPLATE near {old.strip()[:40]!r}")
    return src.replace(old, new)


def _patch_cpu_template() -> None:
    import inspect

    import torch._inductor.select_algorithm  # noqa: F401  (imports the flex lowering first: no cycle)
    from torch._inductor.codegen import cpp_flex_attention_template as tpl
    from torch._inductor.codegen.cpp_micro_gemm import CppMicroGemmFP32Vec
    from torch._inductor.codegen.cpp_utils import GemmBlocking
    from torch._inductor.custom_graph_pass import CustomGraphPass

    cls = tpl.CppFlexAttentionTemplate
    if inspect.getsource(cls.micro_gemm_define).count("GemmBlocking(1, 16, 1)") != 2:
        raise RuntimeError("unexpected micro_gemm_define")
    src = tpl.FLEX_ATTENTION_TEMPLATE
    # 1. fp32 q @ k^T: transpose keys once, then brgemm (the template's own GEMM for softmax @ v)
    src = _replace_once(src, "  // Attention loop below\n", _KEY_TRANSPOSE + "  // Attention loop below\n")
    qk = "        if (!need_pack) {\n          auto k_addr =\n"
    src = _replace_once(src, qk, _QK_BRGEMM + qk)
    # 2. the scale pass only where score_mod needs scaled scores; else scale inside the row-max pass
    call = ("        {{kernel.kernel_name}}_mul_scale_kernel<accum_t>(qk_data, scaling_factor, "
            "cur_qSplitSize*cur_kvSplitSize);\n")
    guard = "{%- if score_mod and mask_mod %}\n"
    src = _replace_once(src, call + "\n" + guard, guard + call)
    unit_scale = "qk_data + row * cur_kvSplitSize,\n              static_cast<accum_t>(1),\n"
    src = _replace_once(src, unit_scale, unit_scale.replace(
        "static_cast<accum_t>(1)",
        "{% if score_mod and mask_mod %}static_cast<accum_t>(1){% else %}scaling_factor{% endif %}"))
    # 3. register blocking of the q @ k^T micro-GEMM still used by unpacked bf16 / fp16
    rows, cols = CPU_QK_BLOCKING_AVX512 if torch.cpu._is_avx512_supported() else CPU_QK_BLOCKING_AVX2

    def micro_gemm_define(self, kernel_name: str) -> str:
        from torch._inductor.codegen.cpp_gemm_template import CppTemplateKernel, parallel_num_threads
        from torch._inductor.virtualized import V

        def gemm(suffix: str, blocking: tuple[int, int], trans_b: bool):
            return CppMicroGemmFP32Vec(kernel_name + suffix, self.input_dtype, self.input_dtype,
                                       self.accumulate_dtype, self.accumulate_dtype,
                                       GemmBlocking(*blocking, 1), 1, True, trans_b)

        with V.set_graph_handler(V.graph):
            kernel = CppTemplateKernel("cpp_micro_gemm", parallel_num_threads())
            return (gemm("_kernel_micro_gemm", (1, 16), False).codegen_define(kernel)
                    + gemm("_kernel_micro_gemm_transpose_b", (rows, cols), True).codegen_define(kernel))

    class _Salt(CustomGraphPass):  # no-op; its uuid keys Inductor's caches on the patch
        def __call__(self, graph) -> None:
            pass

        def uuid(self) -> str:
            return f"attn_processors.cpu_flex_template/v2/fp32_qk_brgemm/fused_scale/qk{rows}x{cols}"

    tpl.FLEX_ATTENTION_TEMPLATE = src
    cls.micro_gemm_define = micro_gemm_define
    _cpu_template["salt"] = _Salt()


def flex_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: BlockMask,
    *,
    scale: float | None = None,
    mode: str | None = None,
) -> torch.Tensor:
    """Compiled flex attention [B, H, S, D] under ``block_mask``. Raises RuntimeError if it cannot compile.

    Never calls eager flex: compile failures propagate so callers take their SDPA fallback.
    """
    fn = compiled_flex(mode)
    if fn is None:
        raise RuntimeError(f"compiled flex attention unavailable: {_compile_error}")
    import contextlib

    import torch._dynamo
    import torch._inductor.config

    options = None
    inductor = contextlib.nullcontext()
    if q.device.type == "cpu":
        if not has_partial_blocks(block_mask):
            options = {"SKIP_MASK_SCORE": True}  # exact: no block evaluates mask_mod (CPU template only)
        salt = _cpu_template.get("salt") if tune_cpu_flex_template() else None
        if salt is not None and torch._inductor.config.post_grad_custom_post_pass is None:
            inductor = torch._inductor.config.patch(post_grad_custom_post_pass=salt)
    # past the limit, raise instead of dynamo's silent eager fallback (callers catch and use SDPA)
    dynamo = torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True)
    with dynamo, inductor:
        return fn(q, k, v, block_mask=block_mask, scale=scale, kernel_options=options)


def dense_group_mask(groups: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The element-wise reference: BoolTensor [S, S], mask[i, j] = keep[groups[i], groups[j]]."""
    keep = keep.to(device=groups.device, dtype=torch.bool)
    mask = torch.empty(groups.numel(), groups.numel(), dtype=torch.bool, device=groups.device)
    runs, lengths = torch.unique_consecutive(groups, return_counts=True)  # one broadcast row copy per span
    start = 0
    for g, n in zip(runs.tolist(), lengths.tolist(), strict=True):
        mask[start : start + n] = keep[g][groups]
        start += n
    return mask


GatherPlan = list[tuple[torch.Tensor, torch.Tensor | None]]  # (query rows, key columns or None = all)


def gather_plan(groups: torch.Tensor, keep: torch.Tensor) -> GatherPlan:
    """Index plan of ``gather_attend``: one (rows, cols) pair per distinct kept-key set.

    Query groups whose kept key groups coincide (text and global frames, which see everything) share
    one entry. Build it once per geometry (it syncs with the device) and reuse it across calls.
    """
    keep = keep.to(device=groups.device, dtype=torch.bool)
    present = torch.unique(groups)
    by_keyset: dict[bytes, list[int]] = {}
    for g in present.tolist():
        by_keyset.setdefault(bytes(keep[g, present].tolist()), []).append(g)
    plan: GatherPlan = []
    for query_groups in by_keyset.values():
        rows = torch.isin(groups, torch.tensor(query_groups, device=groups.device)).nonzero().squeeze(1)
        cols = keep[query_groups[0]][groups].nonzero().squeeze(1)  # key tokens this set attends to
        plan.append((rows, None if cols.numel() == groups.numel() else cols))
    return plan


def gather_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: GatherPlan,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    attend: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Exact group-masked attention without an S^2 mask or compiler: one kernel call per plan entry.

    Each call sees only its kept keys, so the cost is the kept (query, key) pairs plus the key
    gathers: dropped tiles are skipped as in flex. ``mask`` (bool or additive, broadcastable to
    [B, H, S, S], e.g. a key-padding mask [B, 1, 1, S]) is intersected with the group mask.
    ``attend(q, k, v, *, mask=None, scale=None)`` is the kernel run on each group (SDPA by default; a
    quantized kernel composes here). q, k, v: [B, H, S, D]; returns [B, H, S, D].
    """
    out = torch.empty_like(q)
    for rows, cols in plan:
        kk, vv = (k, v) if cols is None else (k.index_select(2, cols), v.index_select(2, cols))
        qq = q.index_select(2, rows)
        m = mask
        if m is not None:
            m = m.index_select(-2, rows) if m.shape[-2] != 1 else m
            m = m.index_select(-1, cols) if cols is not None and m.shape[-1] != 1 else m
        if attend is None:
            part = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=m, scale=scale)
        else:
            part = attend(qq, kk, vv, mask=m, scale=scale)
        out.index_copy_(2, rows, part.to(out.dtype))
    return out


def group_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    *,
    scale: float | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Dense softmax probability mass per key group for every query row: [B, H, S, G], rows sum to 1.

    With it, the recall of any group mask is a gather: recall[i] = sum_g keep[groups[i], g] mass[i, g].
    Queries are processed in chunks so memory is [B, H, chunk, S].
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    onehot = F.one_hot(groups, num_groups).to(torch.float32)  # [S, G]
    parts = []
    for start in range(0, q.shape[2], chunk):
        logits = (
            q[:, :, start : start + chunk].float() @ k.float().transpose(-1, -2)
        ) * scale  # [B, H, c, S]
        parts.append(logits.softmax(-1) @ onehot)  # [B, H, c, G]
    return torch.cat(parts, dim=2)
