#!/usr/bin/env bash
# The native library's measurements of issue 16 in one GPU-node call (at most ~9 minutes):
#
#   1  mace-lp bench, MACE-OFF24(M) architecture (random weights), ATOMS atoms (1029; ATOMS=3000
#      in a second call), CUDA graphs, fp32 / tf32 / bf16 / fp16 with the native cell list against
#      FastMACE in the same run (speed-up vs FastMACE per row; FastMACE's setup alone takes ~90 s);
#   2  benchmarks/kernel_profile.py at ATOMS: our kernels (fp32, TorchScript and native lists)
#      and the operators that launched them;
#   3  the GPU tests of what this package runs natively on CUDA: mace_lp::tf32_mm (TF32 tensor
#      cores), the cell-list kernel and the tf32 exports against float64 CPU (the compiled-path
#      tests skip unless OPENMM_MACE_LP_CUDA_AOTI=1: CUDA packages crash on torch 2.11);
#   4  benchmarks/aoti_cuda_probe.py on the smallest package, as carried and with PYTHONPATH and
#      LD_LIBRARY_PATH emptied (a cold machine's first Inductor compile took > 40 s; the second
#      run finds Inductor's cache), with gdb's backtrace of the crash (benchmarks/results/aoti_probe_2026-12-01_h200.md).
#
#   source .gpu/env.sh && bash benchmarks/native_gpu.sh      (carry .gpu, with EXTRA="fastmace==1.0.0")
#
# Each stage has its own time limit, so a stage that hangs or crashes leaves the others'
# results; everything lands in $OUT, the last lines are a short table. About 9.5 minutes.
set -uo pipefail
OUT=${OUT:-build/out}; mkdir -p "$OUT"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # tests.plugin.helpers, for the probe
# BENCH_S, POLICIES and PROBE=0 (skip stage 4) fit the call to the device time that is left.
timeout ${BENCH_S:-260} python3 -m openmm_mace_lp.cli bench --atoms ${ATOMS:-1029} --policies ${POLICIES:-fp32,tf32,bf16,fp16} \
  --backends cueq-fused --graphs on --neighbor-lists native --no-anchor --fastmace -o "$OUT/bench.json" \
  > "$OUT/bench.log" 2>&1
stamp "1: bench exit $?"

timeout 80 python3 benchmarks/kernel_profile.py --atoms ${ATOMS:-1029} --policy fp32 --backend cueq-fused \
  --neighbor-lists torchscript,native -o "$OUT/kernel_profile.json" > "$OUT/kernel_profile.log" 2>&1
stamp "2: kernel profile exit $?"

# The tests after the bench: the bench rows carry their own force errors against fp64 eager mace.
timeout 80 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_tf32_gpu.py tests/gpu/test_compiled_gpu.py \
  tests/gpu/test_native_gpu.py "tests/gpu/test_gpu.py::test_cuda_module_matches_cpu_float64" -k "tf32 or compiled or native" \
  > "$OUT/gpu_tests.log" 2>&1
stamp "3: GPU tests exit $? $(tail -1 "$OUT/gpu_tests.log")"

if [ "${PROBE:-1}" != 0 ]; then
  timeout 80 python3 benchmarks/aoti_cuda_probe.py --only "tiny, torch|compile tiny" --timeout-s 75 \
    -o "$OUT/aoti_probe.json" > "$OUT/aoti_probe.log" 2>&1
  env -u PYTHONPATH LD_LIBRARY_PATH= timeout 80 python3 benchmarks/aoti_cuda_probe.py --only "tiny, torch|compile tiny" \
    --timeout-s 75 --work build/aoti_probe_clean -o "$OUT/aoti_probe_clean.json" > "$OUT/aoti_probe_clean.log" 2>&1
  stamp "4: probe: $(tr '\n' ' ' < "$OUT/aoti_probe.log") | emptied environment: $(tr '\n' ' ' < "$OUT/aoti_probe_clean.log")"
fi

grep -E "^\[[0-9]+ atoms\]" "$OUT/bench.log" | cut -c1-140
grep -A12 "^| family" "$OUT/kernel_profile.md" 2>/dev/null | head -14
