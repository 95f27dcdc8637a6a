#!/usr/bin/env bash
# Rounds of active learning for the embedded AMOEBA water model, in one GPU-node call: continue
# training from the newest model on the current data set (train_water.py, mace's
# --foundation_model), run that model's NPT at 260/300/350 K (closed_loop.py's recipe, three runs
# side by side) for SAMPLE_MIN minutes, label every frame they made with the teacher on the node's
# cores (run_frames.py: 300 and 260 K into train, 350 K into valid) and go again, until END_S
# seconds after the start. Why: the shipped model and one such round both compress the liquid
# (benchmarks/results/closed_loop_2026-12-01_h200*.md) because they give their own dense
# structures too low an energy (energy_bias_2026-12-01_cpu.md); each round shows the model
# the structures it reached. A run that collapses still leaves the frames before it failed.
#
#   source .gpu/env.sh && FROM_MODEL=systems/models/candidates/mace-water-amoeba-a1409bd5.model \
#       bash benchmarks/amoeba_active_learning_gpu.sh
#
# Everything lands under build/active_learning/round<k>/ and, packed, in $OUT: the data set
# (systems/data/water_amoeba_*), each round's model, card, errors and run directories. Copy the
# data set and the best round's model back, then run the closed loop on it.
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT" build/active_learning
END_S=${END_S:-540}; EPOCHS=${EPOCHS:-16}; SAMPLE_MIN=${SAMPLE_MIN:-1.5}
model=${FROM_MODEL:-systems/models/mace-water-amoeba.model}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
elapsed() { echo $(( $(date +%s) - t0 )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
round=1
# A round takes ~3 min of training, SAMPLE_MIN of MD and ~0.5 min of labels: start one only if it fits.
while [ $(( $(elapsed) + 270 )) -lt "$END_S" ]; do
  dir=build/active_learning/round$round
  python3 -m openmm_mace_lp.systems.recipes.train_water --device cuda --epochs "$EPOCHS" \
    --set "foundation_model=$PWD/$model" --set multiheads_finetuning=False --set lr=0.005 \
    --work-dir "$dir/train" --models-dir "$dir/models" > "$dir.train.log" 2>&1
  stamp "round $round: train exit $? $(grep '^test:' "$dir.train.log")"
  [ -f "$dir/models/mace-water-amoeba.model" ] || break
  model=$dir/models/mace-water-amoeba.model
  python3 benchmarks/closed_loop.py run -o "$dir/npt" --who model --model "$PWD/$model" \
    --max-minutes "$SAMPLE_MIN" > "$dir.npt.log" 2>&1
  runs=()
  for t in 300 260 350; do
    run=$dir/npt/model_${t}K
    split=train; [ "$t" = 350 ] && split=valid
    python3 -c "import json;m=json.load(open('$run/manifest.json'));print('$run', m['status'], m.get('steps_completed'))" 2>/dev/null
    # a run that failed before its first production frame has no trajectory to learn from
    [ -s "$run/trajectory.dcd" ] && [ "$(stat -c %s "$run/trajectory.dcd")" -gt 400 ] && runs+=("$run:$split")
  done
  if [ ${#runs[@]} -gt 0 ]; then
    OMP_NUM_THREADS=1 python3 -m openmm_mace_lp.systems.recipes.run_frames "${runs[@]}" --workers "$(nproc)" \
      --workdir "$dir/labels" > "$dir.labels.log" 2>&1
    stamp "round $round: labels exit $? $(tail -1 "$dir.labels.log")"
  fi
  round=$((round + 1))
done
stamp "rounds done"
tar --exclude="*/checkpoints" --exclude="*.xml" -cJf "$OUT/active_learning.tar.xz" systems/data/water_amoeba_* build/active_learning/*.log \
  build/active_learning/round*/models build/active_learning/round*/npt 2>/dev/null
ls -la "$OUT"; stamp packed
