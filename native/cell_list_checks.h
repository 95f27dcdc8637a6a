// Argument checks of mace_lp::cell_list shared by the CPU and CUDA implementations: each names
// the problem and what to pass instead.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace mace_lp {

struct CellListShape {
  int64_t n_atoms;
  int64_t n_offsets;
  int64_t n_cells;
  std::array<int64_t, 3> dims;
};

inline CellListShape check_cell_list_arguments(const at::Tensor& positions, const c10::optional<at::Tensor>& cell,
                                               double cutoff, c10::IntArrayRef grid, const at::Tensor& stencil,
                                               int64_t cell_capacity, int64_t edge_capacity) {
  TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3 && positions.size(0) > 0,
              "mace_lp::cell_list: positions must have shape [N, 3] with N >= 1, got ", positions.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
              "mace_lp::cell_list: positions must be float32 or float64, got ", positions.scalar_type());
  if (cell.has_value()) {
    TORCH_CHECK(cell->dim() == 2 && cell->size(0) == 3 && cell->size(1) == 3,
                "mace_lp::cell_list: cell must hold the three box vectors as rows, shape [3, 3], got ",
                cell->sizes(), "; pass None for a non-periodic system");
    TORCH_CHECK(cell->scalar_type() == positions.scalar_type() && cell->device() == positions.device(),
                "mace_lp::cell_list: cell must have the dtype and device of positions (", positions.scalar_type(),
                ", ", positions.device(), "), got ", cell->scalar_type(), ", ", cell->device());
  }
  TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0.0, "mace_lp::cell_list: cutoff must be positive, got ", cutoff);
  TORCH_CHECK(grid.size() == 3, "mace_lp::cell_list: grid must give the cells along each of the 3 box vectors, got ",
              grid.size(), " numbers");
  CellListShape shape{positions.size(0), 0, 1, {grid[0], grid[1], grid[2]}};
  for (int64_t d : shape.dims) {
    TORCH_CHECK(d >= 1, "mace_lp::cell_list: every grid entry must be >= 1, got ", grid);
    shape.n_cells *= d;
    TORCH_CHECK(shape.n_cells <= std::numeric_limits<int32_t>::max(), "mace_lp::cell_list: grid ", grid,
                " has more than 2^31 cells; use wider cells");
  }
  TORCH_CHECK(stencil.dim() == 2 && stencil.size(1) == 3 && stencil.size(0) > 0,
              "mace_lp::cell_list: stencil must have shape [S, 3] with S >= 1, got ", stencil.sizes());
  TORCH_CHECK(stencil.scalar_type() == at::kLong && stencil.device() == positions.device(),
              "mace_lp::cell_list: stencil must be int64 on the device of positions (", positions.device(), "), got ",
              stencil.scalar_type(), " on ", stencil.device());
  shape.n_offsets = stencil.size(0);
  TORCH_CHECK(shape.n_atoms <= std::numeric_limits<int32_t>::max(), "mace_lp::cell_list: at most 2^31 atoms, got ",
              shape.n_atoms);
  TORCH_CHECK(cell_capacity >= 1 && cell_capacity <= std::numeric_limits<int32_t>::max(),
              "mace_lp::cell_list: cell_capacity must be between 1 and 2^31 - 1, got ", cell_capacity,
              " (the native list has fixed capacities; neighbors.neighbor_list sizes them from the data)");
  TORCH_CHECK(edge_capacity >= 1, "mace_lp::cell_list: edge_capacity must be >= 1, got ", edge_capacity,
              " (the native list has fixed capacities; neighbors.neighbor_list sizes them from the data)");
  return shape;
}

}  // namespace mace_lp
