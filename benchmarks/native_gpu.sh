#!/usr/bin/env bash
# The native library's measurements of issue 16 in one GPU-node call (at most ~9 minutes):
#
#   1  mace-lp bench, MACE-OFF24(M) architecture (random weights), ATOMS atoms (1029; ATOMS=3000
#      in a second call), CUDA graphs, fp32 / tf32 / bf16 against FastMACE in the same run
#      (speed-up vs FastMACE per row);
#   2  benchmarks/kernel_profile.py at ATOMS: our kernels (fp32) against FastMACE's;
#   3  the GPU tests of what this package runs natively on CUDA: mace_lp::tf32_mm (TF32 tensor
#      cores), the AOTInductor path (compiler="inductor", e3nn), the cell-list kernel, and the
#      tf32 exports against float64 CPU.
#
#   source .gpu/env.sh && bash benchmarks/native_gpu.sh      (carry .gpu, with EXTRA="fastmace==1.0.0")
#
# Each stage has its own time limit, so a stage that hangs or crashes leaves the others'
# results; everything lands in $OUT, the last lines are a short table.
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

timeout 230 python3 -m openmm_mace_lp.cli bench --atoms ${ATOMS:-1029} --policies fp32,tf32,bf16 --backends cueq-fused \
  --graphs on --no-anchor --fastmace -o "$OUT/bench.json" > "$OUT/bench.log" 2>&1
stamp "1: bench exit $?"

timeout 150 python3 benchmarks/kernel_profile.py --atoms ${ATOMS:-1029} --policy fp32 --backend cueq-fused --fastmace \
  -o "$OUT/kernel_profile.json" > "$OUT/kernel_profile.log" 2>&1
stamp "2: kernel profile exit $?"

# The tests last: the bench rows carry their own force errors against fp64 eager mace.
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_tf32_gpu.py tests/gpu/test_compiled_gpu.py \
  tests/gpu/test_native_gpu.py "tests/gpu/test_gpu.py::test_cuda_module_matches_cpu_float64" -k "tf32 or compiled or native" \
  > "$OUT/gpu_tests.log" 2>&1
stamp "3: GPU tests exit $? $(tail -1 "$OUT/gpu_tests.log")"

grep -E "^\[[0-9]+ atoms\]" "$OUT/bench.log" | cut -c1-140
grep -A12 "^| family" "$OUT/kernel_profile.md" 2>/dev/null | head -14
