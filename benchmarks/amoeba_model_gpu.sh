#!/usr/bin/env bash
# One GPU-node call that builds the embedded AMOEBA water model and starts its closed loop:
#   1. the AMOEBA data set (systems/recipes/amoeba_data.py: teacher MD on CUDA, labels on the CPUs);
#   2. the teacher's own NPT runs of the closed loop (benchmarks/closed_loop.py, in the background);
#   3. two candidate sizes trained side by side (systems/recipes/train_water.py), each evaluated
#      on the held-out test split.
# Everything it makes is packed under $OUT (the device tool's result folder) or ./build/out.
#
#   source .gpu/env.sh && bash benchmarks/amoeba_model_gpu.sh
#
# Knobs (environment): EPOCHS (training epochs, default 36), TEACHER_END_S (seconds after the
# start at which the teacher runs pause at a checkpoint, default 530), WORKERS (label processes,
# default: all cores).
set -uo pipefail
OUT=${OUT:-build/out}
mkdir -p "$OUT" build
EPOCHS=${EPOCHS:-36}
TEACHER_END_S=${TEACHER_END_S:-530}
WORKERS=${WORKERS:-$(nproc)}
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $CARD  epochs: $EPOCHS  label workers: $WORKERS"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "data: generate + label + assemble"
python3 -m openmm_mace_lp.systems.recipes.amoeba_data --workdir build/amoeba_data --platform CUDA \
  --md-workers 17 --label-platform Reference --workers "$WORKERS" > build/amoeba_data.log 2>&1
data_rc=$?
tail -4 build/amoeba_data.log
stamp "data exit $data_rc"

# The teacher's closed-loop NPT runs share the card with training from here on; they pause at a
# checkpoint so that the call ends in time (continue them with the same command).
left=$(( TEACHER_END_S - ($(date +%s) - t0) ))
stamp "teacher closed-loop runs start (pause after $left s)"
python3 benchmarks/closed_loop.py run -o build/closed_loop --who teacher \
  --max-minutes "$(python3 -c "print(max(1.0, $left / 60))")" > build/closed_loop_teacher.log 2>&1 &
teacher=$!

if [ "$data_rc" = 0 ]; then
  stamp "training two candidates"
  python3 -m openmm_mace_lp.systems.recipes.train_water --device cuda --epochs "$EPOCHS" \
    --work-dir build/train_l1 --models-dir build/models_l1 > build/train_l1.log 2>&1 &
  l1=$!
  python3 -m openmm_mace_lp.systems.recipes.train_water --device cuda --epochs "$EPOCHS" \
    --set hidden_irreps=32x0e --work-dir build/train_l0 --models-dir build/models_l0 > build/train_l0.log 2>&1 &
  l0=$!
  wait $l1; echo "l1 exit $?"; wait $l0; echo "l0 exit $?"
  grep -h "^test:" build/train_l1.log build/train_l0.log
  stamp "training done"
fi

wait $teacher; echo "teacher runs exit $?"
stamp "teacher runs paused or done"
tar -C . -cJf "$OUT/amoeba_build.tar.xz" systems/data/water_amoeba_train.extxyz.xz systems/data/water_amoeba_valid.extxyz.xz \
  systems/data/water_amoeba_test.extxyz.xz systems/data/water_amoeba_e0s.json systems/data/water_amoeba_manifest.json \
  build/models_l1 build/models_l0 build/*.log build/amoeba_data/*.json 2>/dev/null
tar -C build -cJf "$OUT/closed_loop_runs.tar.xz" closed_loop 2>/dev/null
ls -la "$OUT"
stamp "packed"
