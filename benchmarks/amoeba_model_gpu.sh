#!/usr/bin/env bash
# The data half of building the embedded AMOEBA water model, as one GPU-node call: the teacher's
# own MD on CUDA (17 trajectories at once) and, with LABEL=node, its labels on the node's cores;
# the result is packed under $OUT for the next step (benchmarks/amoeba_model_gpu_train.sh, after
# the split files are in systems/data).
#
#   source .gpu/env.sh && bash benchmarks/amoeba_model_gpu.sh              # frames only (label here:
#       python -m openmm_mace_lp.systems.recipes.amoeba_data --stage label --workdir build/amoeba_data ...)
#   source .gpu/env.sh && LABEL=node bash benchmarks/amoeba_model_gpu.sh   # frames + labels + splits
#
# Measured on one H200 (2026-12-01): the MD took 99 s with EQUILIBRATION=1500 SAMPLING=3000
# (172 s with the recipe's defaults 3000/6000); labelling the 570 frames took 175 s on the node's
# 16 cores and 634 s on a 2-core CPU machine; mace training (train script) 4.1 min for 20 epochs.
# Data and training do not fit one 10-minute call together.
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT" build
EQUILIBRATION=${EQUILIBRATION:-1500}; SAMPLING=${SAMPLING:-3000}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
stages=generate
[ "${LABEL:-}" = node ] && stages=all
python3 -m openmm_mace_lp.systems.recipes.amoeba_data --stage "$stages" --workdir build/amoeba_data --platform CUDA \
  --md-workers 17 --label-platform Reference --workers "$(nproc)" \
  --equilibration-steps "$EQUILIBRATION" --sampling-steps "$SAMPLING" > build/amoeba_data.log 2>&1
stamp "amoeba_data --stage $stages exit $?"
tail -3 build/amoeba_data.log
tar -cJf "$OUT/amoeba_data.tar.xz" build/amoeba_data build/amoeba_data.log systems/data/water_amoeba_* 2>/dev/null
ls -la "$OUT"; stamp packed
