// mace_lp::cell_list for the CUDA dispatch key: checks the arguments, allocates the outputs and
// scratch buffers (fixed shapes, from torch's caching allocator, so a CUDA graph can capture the
// call) and enqueues the kernels of cell_list_cuda.cu on torch's current stream.
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cell_list_checks.h"
#include "cell_list_kernels.h"

namespace mace_lp {
namespace {

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_list_typed(const at::Tensor& positions,
                                                               const c10::optional<at::Tensor>& cell, double cutoff,
                                                               const at::Tensor& stencil, int64_t cell_capacity,
                                                               int64_t edge_capacity, const CellListShape& shape) {
  const auto real = positions.options();
  const auto int32 = positions.options().dtype(at::kInt);
  const auto int64 = positions.options().dtype(at::kLong);
  const int64_t n = shape.n_atoms;
  at::Tensor edges = at::empty({2, edge_capacity}, int64);
  at::Tensor shifts = at::empty({edge_capacity, 3}, real);
  at::Tensor stats = at::empty({3}, int64);
  at::Tensor frame = at::empty({16}, real);
  at::Tensor wrapped = at::empty({n, 3}, real);
  at::Tensor atom_image = at::empty({n, 3}, real);
  at::Tensor atom_cell = at::empty({n, 3}, int32);
  at::Tensor cell_table = at::empty({3, shape.n_cells}, int32);
  at::Tensor cell_atoms = at::empty({n}, int32);
  at::Tensor atom_edges = at::empty({n}, int32);
  at::Tensor atom_offset = at::empty({n}, int64);
  at::Tensor keys = at::empty({edge_capacity}, int64);

  CellListBuffers<T> b;
  b.positions = positions.data_ptr<T>();
  b.cell = cell.has_value() ? cell->data_ptr<T>() : nullptr;
  b.stencil = stencil.data_ptr<int64_t>();
  b.n_atoms = static_cast<int>(n);
  b.n_offsets = static_cast<int>(shape.n_offsets);
  for (int k = 0; k < 3; ++k) b.dims[k] = static_cast<int>(shape.dims[k]);
  b.n_cells = static_cast<int>(shape.n_cells);
  b.cutoff = cutoff;
  b.cell_capacity = static_cast<int>(cell_capacity);
  b.edge_capacity = edge_capacity;
  b.frame = frame.data_ptr<T>();
  b.wrapped = wrapped.data_ptr<T>();
  b.atom_image = atom_image.data_ptr<T>();
  b.atom_cell = atom_cell.data_ptr<int>();
  b.cell_count = cell_table[0].data_ptr<int>();
  b.cell_start = cell_table[1].data_ptr<int>();
  b.cell_cursor = cell_table[2].data_ptr<int>();
  b.cell_atoms = cell_atoms.data_ptr<int>();
  b.atom_edges = atom_edges.data_ptr<int>();
  b.atom_offset = atom_offset.data_ptr<int64_t>();
  b.keys = keys.data_ptr<int64_t>();
  b.edges = edges.data_ptr<int64_t>();
  b.shifts = shifts.data_ptr<T>();
  b.stats = stats.data_ptr<int64_t>();
  const char* error = launch_cell_list<T>(b, c10::cuda::getCurrentCUDAStream(positions.device().index()).stream());
  TORCH_CHECK(error == nullptr, "mace_lp::cell_list: the CUDA kernels failed to launch: ", error);
  return {edges, shifts, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_list_cuda(const at::Tensor& positions_in,
                                                              const c10::optional<at::Tensor>& cell_in, double cutoff,
                                                              c10::IntArrayRef grid, const at::Tensor& stencil_in,
                                                              int64_t cell_capacity, int64_t edge_capacity) {
  const CellListShape shape =
      check_cell_list_arguments(positions_in, cell_in, cutoff, grid, stencil_in, cell_capacity, edge_capacity);
  const c10::cuda::CUDAGuard device_guard(positions_in.device());
  const at::Tensor positions = positions_in.detach().contiguous();
  const at::Tensor stencil = stencil_in.contiguous();
  c10::optional<at::Tensor> cell;
  if (cell_in.has_value()) cell = cell_in->detach().contiguous();
  if (positions.scalar_type() == at::kFloat) {
    return cell_list_typed<float>(positions, cell, cutoff, stencil, cell_capacity, edge_capacity, shape);
  }
  return cell_list_typed<double>(positions, cell, cutoff, stencil, cell_capacity, edge_capacity, shape);
}

}  // namespace
}  // namespace mace_lp

TORCH_LIBRARY_IMPL(mace_lp, CUDA, m) { m.impl("cell_list", &mace_lp::cell_list_cuda); }
