#!/bin/bash
# One lease of a GPU machine (H200, ~10 minutes of command time), prepared to run once:
#   1. time-boxed fine-tunes of both embedded models, side by side on the one GPU:
#      the moving-shapes Wan model (motion) and the shapes SD model (attribute binding), each from
#      its shipped folder in assets/, with a fresh latent cache rendered on the machine's CPUs;
#   2. the kernel checks: tile-sparse flex vs SDPA (F = 8, then F = 24), then SageAttention's prepared
#      run of issue 20 (benchmarks/gpu_sage_check.py: kernel table vs cuDNN / flash / xformers, parity,
#      Wan-1.3B-shaped step time), written to $OUT/sage_gpu_<gpu>.json.
# Everything lands under $OUT: the exported models as a split tarball (models.tgz.part-*; rejoin with
# `cat models.tgz.part-* | tar xz`), the checks' JSON and one session log. Each part is time-boxed so
# that a slow step costs only its own results.
#
#   OUT=/tmp/out PY=.venv/bin/python DEVICE=cpu TRAIN_END=60 SMALL=1 benchmarks/gpu_session.sh  # CPU rehearsal
#   bash benchmarks/gpu_session.sh      # on the device, with .whl/ carried (installed by this script)
#   SAGE_ONLY=1 OUT=$OUT bash benchmarks/gpu_session.sh   # only the Sage run of issue 20 (~6-9 min)
#   OUT=/tmp/out PY=.venv/bin/python DEVICE=cpu SAGE_ONLY=1 benchmarks/gpu_session.sh  # its CPU rehearsal
# Run again on the still-warm machine, it resumes both fine-tunes from their checkpoints under $WORK
# with a fresh budget (set TILE_S=1 SAGE_S=1 to skip the checks).
set -u
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:?set OUT to the results folder}
TRAIN_END=${TRAIN_END:-330}   # seconds after start when both trainings must have stopped
TILE_S=${TILE_S:-100}         # time box of the tile-sparse check
SAGE_ONLY=${SAGE_ONLY:-0}     # 1: skip the fine-tunes and the tile-sparse check, run only the Sage check
if [ "$SAGE_ONLY" = 1 ]; then SAGE_S=${SAGE_S:-560}; else SAGE_S=${SAGE_S:-100}; fi  # Sage check time box
SMALL=${SMALL:-0}
W=${WORK:-/tmp/gpu_session}
START=$(date +%s)
mkdir -p "$OUT" "$W"
LOG="$OUT/session.log"
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

if [ "$SMALL" = 1 ]; then
  VCACHE=128; ICACHE=256; VB=4; IB=4; WORKERS=2
else
  VCACHE=30000; ICACHE=60000; VB=128; IB=128; WORKERS=12
fi
. benchmarks/gpu_wheels.sh  # carried wheels (.whl/): diffusers, and our transformers where it builds these
install_carried_wheels "from worlds.moving_shapes.tokenizer import build_video_tokenizer
from worlds.shapes.tokenizer import build_tokenizer
build_video_tokenizer(); build_tokenizer()"
{ nvidia-smi 2>/dev/null | head -15; $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__,
'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"; nproc; free -g; } >> "$LOG" 2>&1

sage_check() {  # issue 20's prepared run; on CPU its rehearsal (tiny shapes under the Triton interpreter)
  if [ "$DEVICE" = cuda ]; then
    timeout "$SAGE_S" $PY benchmarks/gpu_sage_check.py >> "$OUT/sage_gpu.log" 2>&1
  else
    TRITON_INTERPRET=1 timeout "$SAGE_S" $PY benchmarks/gpu_sage_check.py --small >> "$OUT/sage_gpu.log" 2>&1
  fi
  say "sage check rc $? ($(ls "$OUT" | grep '^sage_gpu_' | tr '\n' ' '))"
}
if [ "$SAGE_ONLY" = 1 ]; then
  sage_check
  say "done"
  exit 0
fi

# ---- 1a. latent caches (CPU rendering + VAE encoding on the GPU), both at once
say "caches"
$PY -m worlds.moving_shapes.train --device "$DEVICE" --out "$W/video" --stage cache \
  --init-pipeline assets/moving-shapes-wan --cache-size $VCACHE --workers $WORKERS --threads 4 \
  > "$W/video_cache.log" 2>&1 &
VPID=$!
$PY -m worlds.shapes.train --device "$DEVICE" --out "$W/image" --phase cache \
  --init-pipeline assets/shapes-sd --scenes $ICACHE --threads 4 > "$W/image_cache.log" 2>&1 &
IPID=$!
wait $VPID; say "video cache rc $?"; wait $IPID; say "image cache rc $?"

# ---- 1b. both fine-tunes until TRAIN_END (the LR decays over the last 30 % of each budget)
LEFT=$(( TRAIN_END - ($(date +%s) - START) ))
[ "$LEFT" -lt 20 ] && LEFT=20
say "training for ${LEFT}s"
$PY -m worlds.moving_shapes.train --device "$DEVICE" --out "$W/video" --stage dit \
  --init-pipeline assets/moving-shapes-wan --cache-size $VCACHE --dit-batch $VB --time-limit "$LEFT" \
  --decay-tail 0.3 --save-every 60 --export-every 60 --threads 4 > "$W/video_train.log" 2>&1 &
VPID=$!
$PY -m worlds.shapes.train --device "$DEVICE" --out "$W/image" --phase unet \
  --init-pipeline assets/shapes-sd --scenes $ICACHE --batch $IB --lr 6e-4 --time-limit "$LEFT" --decay-tail 0.3 \
  --save-every 60 --threads 4 > "$W/image_train.log" 2>&1 &
IPID=$!
wait $VPID; say "video training rc $?"; wait $IPID; say "image training rc $?"
tail -n 3 "$W/video_train.log" "$W/image_train.log" >> "$LOG" 2>&1

# ---- 1c. export and pack (the video pipeline was exported by the trainer)
$PY -m worlds.shapes.export --run "$W/image" --out "$W/image_export" >> "$LOG" 2>&1
say "image export rc $?"
(cd "$W" && tar czf - --ignore-failed-read video/pipeline video/log.jsonl video/args.json image_export \
  image/train.log video_cache.log image_cache.log video_train.log image_train.log 2>/dev/null) \
  | split -b 15m - "$OUT/models.tgz.part-"
say "packed: $(ls "$OUT" | tr '\n' ' ')"

# ---- 2. kernel checks, on an otherwise idle GPU
if [ "$DEVICE" = cuda ]; then
  timeout "$TILE_S" $PY benchmarks/gpu_tile_sparse_check.py --frames 8,24 --out "$OUT" \
    > "$OUT/tile_sparse.log" 2>&1
  say "tile-sparse check rc $?"
  sage_check
fi
say "done"
