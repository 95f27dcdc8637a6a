#!/usr/bin/env bash
# One seed of the precision study (simulations/examples/water_1029_precision_study.toml) in one
# GPU-node call: the seed's four arms (fp64, fp32, bf16, fp16) side by side on one card through
# `mace-lp campaign`, each paused at a checkpoint by --max-minutes if the call's time runs out.
# Why one seed per call: a call lasts at most 10 minutes and nothing stays on the node, so a
# seed's arms run start to finish together; four runs per card is the measured best packing
# (campaign_packing_2026-12-01_h200.md), and each seed pays its equilibration only once.
#
#   source .gpu/env.sh && SEED=1 bash benchmarks/precision_study_gpu.sh
#   # later seeds reuse the first seed's fp64-minimised start (carry build/precision_study_start):
#   source .gpu/env.sh && SEED=2 bash benchmarks/precision_study_gpu.sh
#
# Environment: SEED (1), MINUTES (the campaign's --max-minutes, 8), PLAN (the study plan),
# SETS (more `--set KEY=VALUE` for the base run config, space-separated; a CPU dry run uses
# "platform.name=CPU platform.device=cpu ..." with GPUS=none).
# Everything lands in build/precision_study/seed$SEED/ and, packed with the runs' checkpoints, in
# $OUT/precision_study_seed$SEED.tar.xz; the shared starts in $OUT/precision_study_start.tar.xz
# (unpack it into build/precision_study_start/ for the next seed). To continue a seed's paused
# runs in a later call, copy its tarball into build/precision_study_carry/ and carry that folder:
# the campaign resumes every run from its checkpoint (the carry limit of a call favours
# SETS="output.trajectory_interval_steps=1000" for runs meant to be continued).
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT"
SEED=${SEED:-1}; MINUTES=${MINUTES:-8}; GPUS=${GPUS:-auto}
PLAN=${PLAN:-simulations/examples/water_1029_precision_study.toml}
work=build/precision_study; dir=$work/seed$SEED; start_in=build/precision_study_start
mkdir -p "$work"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

# The plan with this seed alone; `base` made absolute, since the copy lives elsewhere.
plan=$work/plan_seed$SEED.toml
base=$(python3 -c "import sys,tomllib,pathlib; p=pathlib.Path(sys.argv[1]); print((p.parent/tomllib.loads(p.read_text())['base']).resolve())" "$PLAN") || exit 1
sed -e "s/^seeds = .*/seeds = [$SEED]/" -e "s|^base = .*|base = \"$base\"|" "$PLAN" > "$plan"
python3 -c "import sys,tomllib; p=tomllib.load(open(sys.argv[1],'rb')); assert p['axes']['seeds']==[int(sys.argv[2])], p['axes']" "$plan" "$SEED" || exit 1

# A carried earlier call of this seed: its run directories, resumed by the campaign below.
carried=build/precision_study_carry/precision_study_seed$SEED.tar.xz
if [ -f "$carried" ] && [ ! -e "$dir" ]; then
  tar -xJf "$carried" "$dir" && echo "continuing: $carried -> $dir" || exit 1
fi

# The first seed's starts (starts/<system>/: the fp64-minimised structure and its state), when
# they were carried here; the campaign minimises its own otherwise.
if [ -d "$start_in" ] && [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
  mkdir -p "$dir/starts" && cp -r "$start_in"/. "$dir/starts/" && echo "starts: $start_in -> $dir/starts"
fi

sets=(); read -r -a set_values <<< "${SETS:-}"
for kv in "${set_values[@]}"; do sets+=(--set "$kv"); done
gpu_args=(); [ "$GPUS" = none ] && gpu_args=(--gpus none --cpu-workers 4)
t0=$(date +%s)
mace-lp campaign "$plan" -o "$dir" --max-minutes "$MINUTES" --quiet "${sets[@]}" "${gpu_args[@]}" > "$work/seed$SEED.log" 2>&1
echo "campaign exit $? after $(( $(date +%s) - t0 )) s"; tail -5 "$work/seed$SEED.log"

tar -cJf "$OUT/precision_study_seed$SEED.tar.xz" "$dir" "$work/seed$SEED.log" "$plan"
[ -d "$dir/starts" ] && tar -cJf "$OUT/precision_study_start.tar.xz" -C "$dir/starts" .
python3 - "$dir" <<'EOF'
import json, sys
from pathlib import Path
print(f"{'run':<32} {'status':<10} {'prod steps':>10} {'ns/day':>8}")
for manifest in sorted(Path(sys.argv[1]).glob("*/*/manifest.json")):
    m = json.loads(manifest.read_text())
    print(f"{manifest.parent.parent.name + '/' + manifest.parent.name:<32} {m.get('status', '?'):<10} "
          f"{m.get('steps_completed', 0):>10} {m.get('ns_per_day') or 0:>8.2f}")
EOF
ls -la "$OUT"
