"""The synthetic "shapes" world and the small Stable Diffusion model trained on it.

vocab (words, colours, captions), render + data (scenes), tokenizer (one token per word),
detector (colour, shape, box), models (SD 1.x configs), train / export (training and
export of ``assets/shapes-sd``), attention_check (is cross-attention localised?), pipeline
(``load_pipeline``). Submodules are imported explicitly; importing this package loads nothing heavy.
"""
