// mace_lp::cell_list on the CPU: neighbors.cell_list (fixed capacities) as one pass over the
// candidates of each atom instead of [atoms, stencil, cell slots] tensors.
//
// Bit-for-bit equality with the TorchScript list: everything per atom or per edge that goes
// through a matrix product (fractional coordinates, wrapped positions, the final shifts) is
// computed with the same ATen calls on tensors of the same shapes, so the same BLAS kernels
// round it the same way; the per-candidate arithmetic is written out in the order ATen
// evaluates it (image shift as an in-order sum, then (w_j + shift) - w_i, then
// (x*x + y*y) + z*z) and compiled without contraction into fused multiply-adds
// (-ffp-contract=off). The image shift of a candidate is exact like ATen's as long as the
// stencil reaches at most two images along a box vector (products by 0, 1 or 2 are exact);
// wider stencils (boxes thinner than half the cutoff) may differ from it in the last bit.
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cell_list_checks.h"
#include "edge_key.h"

namespace mace_lp {
namespace {

// What neighbors.cell_list computes per atom before its candidate loop, with the same ATen ops.
struct AtomFrame {
  at::Tensor box;            // [3, 3]; zeros for a non-periodic system
  at::Tensor wrapped;        // [N, 3] contiguous
  at::Tensor image_of_atom;  // [N, 3] contiguous, integer-valued
  at::Tensor atom_cell;      // [N, 3] int64 contiguous
  int64_t grid_ok;
};

at::Tensor reciprocal_rows(const at::Tensor& cell) {
  at::Tensor cross = at::stack({at::linalg_cross(cell[1], cell[2]), at::linalg_cross(cell[2], cell[0]),
                                at::linalg_cross(cell[0], cell[1])});
  return cross / (cell[0] * cross[0]).sum();
}

AtomFrame atom_frame(const at::Tensor& positions, const c10::optional<at::Tensor>& cell, double cutoff,
                     c10::IntArrayRef grid, const at::Tensor& stencil) {
  const auto dtype = positions.scalar_type();
  at::Tensor dims = at::tensor(grid.vec(), at::TensorOptions().dtype(at::kLong));
  at::Tensor dims_f = dims.to(dtype);
  AtomFrame frame;
  frame.box = at::zeros({3, 3}, positions.options());
  frame.grid_ok = 1;
  at::Tensor grid_coord;
  if (!cell.has_value()) {
    at::Tensor origin = std::get<0>(positions.min(0));
    at::Tensor extent = std::get<0>(positions.max(0)) - origin;
    at::Tensor cell_size = at::maximum(extent / dims_f, at::full_like(extent, cutoff));
    grid_coord = (positions - origin) / cell_size;
    frame.image_of_atom = at::zeros_like(positions);
    frame.wrapped = positions;
  } else {
    frame.box = *cell;
    at::Tensor reciprocal = reciprocal_rows(*cell);
    at::Tensor frac_raw = at::matmul(positions, reciprocal.t());
    frame.image_of_atom = at::floor(frac_raw);
    at::Tensor frac = frac_raw - frame.image_of_atom;
    frame.wrapped = at::matmul(frac, *cell);
    at::Tensor widths = at::reciprocal(at::linalg_vector_norm(reciprocal, 2, {1})) * 1.0;
    at::Tensor reach = std::get<0>(stencil.abs().max(0)).to(dtype) * widths / dims_f;
    frame.grid_ok = at::ge(reach, cutoff).all().item<bool>() ? 1 : 0;
    grid_coord = frac * dims_f;
  }
  frame.atom_cell = at::minimum(at::floor(grid_coord).to(at::kLong).clamp_min(0), dims - 1).contiguous();
  frame.wrapped = frame.wrapped.contiguous();
  frame.image_of_atom = frame.image_of_atom.contiguous();
  return frame;
}

// Atoms sorted by cell, ascending index within a cell (a stable counting sort: the order of
// neighbors.cell_list's stable argsort).
struct CellTable {
  std::vector<int64_t> count, start, atoms;
  int64_t fullest = 0;
};

CellTable bin_atoms(const int64_t* atom_cell, int64_t n_atoms, const CellListShape& shape) {
  CellTable table;
  table.count.assign(shape.n_cells, 0);
  table.start.assign(shape.n_cells, 0);
  table.atoms.resize(n_atoms);
  std::vector<int64_t> cell_of(n_atoms);
  for (int64_t i = 0; i < n_atoms; ++i) {
    const int64_t* c = atom_cell + 3 * i;
    cell_of[i] = (c[0] * shape.dims[1] + c[1]) * shape.dims[2] + c[2];
    ++table.count[cell_of[i]];
  }
  int64_t running = 0;
  for (int64_t c = 0; c < shape.n_cells; ++c) {
    table.start[c] = running;
    running += table.count[c];
    table.fullest = std::max(table.fullest, table.count[c]);
  }
  std::vector<int64_t> cursor(table.start);
  for (int64_t i = 0; i < n_atoms; ++i) table.atoms[cursor[cell_of[i]]++] = i;
  return table;
}

inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

template <typename T>
struct CandidateScan {
  const T* wrapped;
  const int64_t* atom_cell;
  const T* box;  // row-major [3, 3]
  const int64_t* stencil;
  const CellTable* cells;
  CellListShape shape;
  int64_t cell_capacity;
  bool periodic;
  T cutoff2;

  // Calls visit(j, image) for each neighbour of atom i, in the scan order of
  // neighbors.cell_list: stencil offset, then slot in the cell.
  template <typename Visit>
  void neighbours(int64_t i, Visit&& visit) const {
    const T* wi = wrapped + 3 * i;
    for (int64_t s = 0; s < shape.n_offsets; ++s) {
      int64_t target[3];
      int64_t image[3] = {0, 0, 0};
      bool valid = true;
      for (int k = 0; k < 3; ++k) {
        target[k] = atom_cell[3 * i + k] + stencil[3 * s + k];
        if (periodic) {
          image[k] = floor_div(target[k], shape.dims[k]);
          target[k] -= image[k] * shape.dims[k];
        } else {
          valid = valid && target[k] >= 0 && target[k] < shape.dims[k];
        }
      }
      if (!valid) continue;
      const int64_t id = (target[0] * shape.dims[1] + target[1]) * shape.dims[2] + target[2];
      T shift[3];
      for (int c = 0; c < 3; ++c) {
        shift[c] = (static_cast<T>(image[0]) * box[c] + static_cast<T>(image[1]) * box[3 + c]) +
                   static_cast<T>(image[2]) * box[6 + c];
      }
      const bool home = image[0] == 0 && image[1] == 0 && image[2] == 0;
      const int64_t filled = std::min(cells->count[id], cell_capacity);
      const int64_t* members = cells->atoms.data() + cells->start[id];
      for (int64_t m = 0; m < filled; ++m) {
        const int64_t j = members[m];
        const T* wj = wrapped + 3 * j;
        const T x = (wj[0] + shift[0]) - wi[0];
        const T y = (wj[1] + shift[1]) - wi[1];
        const T z = (wj[2] + shift[2]) - wi[2];
        const T d2 = (x * x + y * y) + z * z;
        if (d2 < cutoff2 && !(home && j == i)) visit(j, image);
      }
    }
  }
};

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_list_typed(const at::Tensor& positions,
                                                               const c10::optional<at::Tensor>& cell, double cutoff,
                                                               c10::IntArrayRef grid, const at::Tensor& stencil_in,
                                                               int64_t cell_capacity, int64_t edge_capacity,
                                                               const CellListShape& shape) {
  const at::Tensor stencil = stencil_in.contiguous();
  const AtomFrame frame = atom_frame(positions, cell, cutoff, grid, stencil);
  const int64_t n_atoms = shape.n_atoms;
  const CellTable cells = bin_atoms(frame.atom_cell.data_ptr<int64_t>(), n_atoms, shape);
  const at::Tensor box = frame.box.contiguous();
  const CandidateScan<T> scan{frame.wrapped.data_ptr<T>(), frame.atom_cell.data_ptr<int64_t>(), box.data_ptr<T>(),
                              stencil.data_ptr<int64_t>(), &cells, shape, cell_capacity, cell.has_value(),
                              static_cast<T>(cutoff * cutoff)};

  // Edges per sender, then each sender's first slot: the slots of the TorchScript list's
  // compaction (scan order), so an overflow keeps the same edges.
  std::vector<int64_t> found(n_atoms), offset(n_atoms);
  at::parallel_for(0, n_atoms, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t n = 0;
      scan.neighbours(i, [&n](int64_t, const int64_t*) { ++n; });
      found[i] = n;
    }
  });
  int64_t count = 0;
  for (int64_t i = 0; i < n_atoms; ++i) {
    offset[i] = count;
    count += found[i];
  }

  const int64_t capacity = edge_capacity;
  const int64_t stored = std::min(count, capacity);
  at::Tensor edges = at::empty({2, capacity}, positions.options().dtype(at::kLong));
  at::Tensor lattice = at::zeros({capacity, 3}, positions.options());
  int64_t* sender = edges.data_ptr<int64_t>();
  int64_t* receiver = sender + capacity;
  T* lattice_data = lattice.data_ptr<T>();
  const T* image_of_atom = frame.image_of_atom.data_ptr<T>();
  at::parallel_for(0, n_atoms, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> keys;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t room = std::min(found[i], capacity - offset[i]);
      if (room <= 0) continue;
      keys.clear();
      scan.neighbours(i, [&](int64_t j, const int64_t* image) {
        if (static_cast<int64_t>(keys.size()) < room) keys.push_back(edge_key(j, image[0], image[1], image[2]));
      });
      // The canonical order (sender, receiver, cell image) of the stored edges.
      std::sort(keys.begin(), keys.end());
      for (int64_t e = 0; e < room; ++e) {
        const int64_t slot = offset[i] + e;
        const int64_t j = key_receiver(keys[e]);
        sender[slot] = i;
        receiver[slot] = j;
        for (int k = 0; k < 3; ++k) {
          lattice_data[3 * slot + k] =
              (static_cast<T>(key_image(keys[e], k)) + image_of_atom[3 * i + k]) - image_of_atom[3 * j + k];
        }
      }
    }
  });
  // The same product as neighbors.cell_list's `lattice @ box`, on a tensor of the same shape.
  at::Tensor shifts = at::matmul(lattice, frame.box).contiguous();
  T* shift_data = shifts.data_ptr<T>();
  const T padding = static_cast<T>(2.0 * cutoff);
  for (int64_t slot = stored; slot < capacity; ++slot) {
    // Padding: each atom paired with itself in turn, a shift longer than the cutoff.
    sender[slot] = receiver[slot] = slot % n_atoms;
    shift_data[3 * slot] = padding;
    shift_data[3 * slot + 1] = 0;
    shift_data[3 * slot + 2] = 0;
  }
  at::Tensor stats = at::tensor({count, cells.fullest, frame.grid_ok}, at::TensorOptions().dtype(at::kLong));
  return {edges, shifts, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cell_list_cpu(const at::Tensor& positions_in,
                                                             const c10::optional<at::Tensor>& cell, double cutoff,
                                                             c10::IntArrayRef grid, const at::Tensor& stencil,
                                                             int64_t cell_capacity, int64_t edge_capacity) {
  const CellListShape shape =
      check_cell_list_arguments(positions_in, cell, cutoff, grid, stencil, cell_capacity, edge_capacity);
  const at::Tensor positions = positions_in.detach();
  c10::optional<at::Tensor> box;
  if (cell.has_value()) box = cell->detach();
  if (positions.scalar_type() == at::kFloat) {
    return cell_list_typed<float>(positions, box, cutoff, grid, stencil, cell_capacity, edge_capacity, shape);
  }
  return cell_list_typed<double>(positions, box, cutoff, grid, stencil, cell_capacity, edge_capacity, shape);
}

}  // namespace
}  // namespace mace_lp

TORCH_LIBRARY_IMPL(mace_lp, CPU, m) { m.impl("cell_list", &mace_lp::cell_list_cpu); }
