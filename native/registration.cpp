// The schema of the mace_lp operators. This file is part of the CPU library, which is always
// built and loaded first; the CUDA library only adds kernels for the CUDA dispatch key.
#include <torch/library.h>

TORCH_LIBRARY(mace_lp, m) {
  // neighbors.cell_list with fixed capacities: edges [2, edge_capacity] int64, shifts
  // [edge_capacity, 3] (dtype of positions), stats [3] int64 (edges needed, atoms in the fullest
  // cell, 1 if the grid still covers the cutoff).
  m.def("cell_list(Tensor positions, Tensor? cell, float cutoff, int[] grid, Tensor stencil, int cell_capacity, "
        "int edge_capacity) -> (Tensor edges, Tensor shifts, Tensor stats)");
  // linears.PolicyDense under the tf32 policy on CUDA: x rounded to TF32, float32 sum and
  // result (tf32_mm.cpp: TF32 tensor cores on CUDA, the exact emulation on the CPU).
  m.def("tf32_mm(Tensor x, Tensor weight) -> Tensor");
}
