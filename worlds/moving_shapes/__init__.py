"""The moving-shapes world: clips of 2D shapes moving in a direction, and the tiny Wan model trained on it.

data (clips and captions), tokenizer (one token per word for UMT5), detect (per-frame detection,
motion direction), models (Wan 2.1 configs), attention_check (frame-tile attention probes), train /
export (training and export of ``assets/moving-shapes-wan``). Submodules are imported explicitly.
"""
