#!/usr/bin/env bash
# The GPU half of building the embedded AMOEBA model once its labelled data set is in
# systems/data (benchmarks/amoeba_model_gpu.sh makes it in one call where time allows; the
# labels can also be made on a CPU machine from the frames it generates): train the model,
# continue the teacher's closed-loop NPT runs and start the model's, all pausing at a checkpoint
# END_S seconds after the start so the call ends in time. Continue with the same command.
#   source .gpu/env.sh && bash benchmarks/amoeba_model_gpu_train.sh
# FROM_MODEL=systems/models/mace-water-amoeba.model continues training from that model (mace's
# --foundation_model, same architecture) on the current data set, e.g. after run_frames.py added
# the frames of a model's own NPT runs; WHO=model runs only the model's closed-loop NPT.
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT" build
EPOCHS=${EPOCHS:-20}; END_S=${END_S:-440}; WHO=${WHO:-teacher,model}; FROM_MODEL=${FROM_MODEL:-}
continue_from=()
if [ -n "$FROM_MODEL" ]; then
  continue_from=(--set "foundation_model=$PWD/$FROM_MODEL" --set multiheads_finetuning=False --set lr=0.005)
fi
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
minutes_left() { python3 -c "print(max(0.5, ($END_S - ($(date +%s) - $t0)) / 60))"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
teacher=
if [[ "$WHO" == *teacher* ]]; then
  python3 benchmarks/closed_loop.py run -o build/closed_loop --who teacher --max-minutes "$(minutes_left)" \
    > build/closed_loop_teacher.log 2>&1 &
  teacher=$!
fi
model=build/models/mace-water-amoeba.model
if [ ! -f "$model" ]; then
  python3 -m openmm_mace_lp.systems.recipes.train_water --device cuda --epochs "$EPOCHS" \
    "${continue_from[@]}" --work-dir build/train --models-dir build/models > build/train.log 2>&1
  stamp "train exit $?"; grep "^test:" build/train.log
fi
if [ -f "$model" ] && [[ "$WHO" == *model* ]]; then
  python3 benchmarks/closed_loop.py run -o build/closed_loop --who model --model "$PWD/$model" \
    --max-minutes "$(minutes_left)" > build/closed_loop_model.log 2>&1
  stamp "model runs paused or done"
fi
if [ -n "$teacher" ]; then wait "$teacher"; stamp "teacher runs paused or done"; fi
for d in build/closed_loop/*_*K; do
  python3 -c "import json;m=json.load(open('$d/manifest.json'));print('$d', m.get('status'), m.get('steps_completed'), m.get('ns_per_day'))"
done
tar -cJf "$OUT/model.tar.xz" build/models build/*.log build/train/logs 2>/dev/null
tar -cJf "$OUT/closed_loop.tar.xz" build/closed_loop
ls -la "$OUT"; stamp packed
