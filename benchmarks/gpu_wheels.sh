# Sourced by the GPU session scripts (benchmarks/gpu_session.sh, benchmarks/gpu_session_worlds.sh): the
# device machine has torch and triton but no diffusers, so the session carries wheels in .whl/.
#   install_carried_wheels "PYTHON LINES"   (needs PY, LOG and say() from the caller)
# installs diffusers (+ importlib_metadata, zipp) into /tmp/site and puts it on PYTHONPATH; our tested
# transformers goes into /tmp/site_tf and joins PYTHONPATH only if the given lines (building the
# tokenizers the session's models use) run with it. Without .whl/ it does nothing.
install_carried_wheels() {
  [ -d .whl ] || return 0
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/diffusers-*.whl .whl/importlib_metadata-*.whl .whl/zipp-*.whl >> "$LOG" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
  if ls .whl/transformers-*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_tf \
      .whl/transformers-*.whl >> "$LOG" 2>&1
    PYTHONPATH=/tmp/site_tf:$PYTHONPATH $PY -c "import transformers, diffusers
$1" >> "$LOG" 2>&1 && export PYTHONPATH=/tmp/site_tf:$PYTHONPATH
  fi
  say "PYTHONPATH=$PYTHONPATH"
}
