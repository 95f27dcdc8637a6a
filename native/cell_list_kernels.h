// The CUDA kernels of mace_lp::cell_list, seen from plain C++ (no torch headers: nvcc never
// compiles torch's headers; cell_list_cuda.cpp allocates the buffers and passes raw pointers).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "edge_key.h"

namespace mace_lp {

template <typename T>
struct CellListBuffers {
  // Inputs (device pointers, contiguous).
  const T* positions = nullptr;      // [n_atoms, 3]
  const T* cell = nullptr;           // [3, 3] box vectors as rows, or nullptr (non-periodic)
  const int64_t* stencil = nullptr;  // [n_offsets, 3]
  int n_atoms = 0;
  int n_offsets = 0;
  int dims[3] = {1, 1, 1};
  int n_cells = 1;
  double cutoff = 0.0;
  int cell_capacity = 1;
  int64_t edge_capacity = 1;

  // Scratch (device pointers, sizes fixed by the arguments above).
  T* frame = nullptr;             // [16]: reciprocal rows (9), origin (3), cell size (3)
  T* wrapped = nullptr;           // [n_atoms, 3] positions wrapped into the box
  T* atom_image = nullptr;        // [n_atoms, 3] lattice image of each atom (floor of its fraction)
  int* atom_cell = nullptr;       // [n_atoms, 3] cell of each atom
  int* cell_count = nullptr;      // [n_cells]
  int* cell_start = nullptr;      // [n_cells]
  int* cell_cursor = nullptr;     // [n_cells]
  int* cell_atoms = nullptr;      // [n_atoms] atoms by cell, ascending index within a cell
  int* atom_edges = nullptr;      // [n_atoms] edges found for each sender
  int64_t* atom_offset = nullptr; // [n_atoms] first edge slot of each sender
  int64_t* keys = nullptr;        // [edge_capacity] (receiver, image) of each stored edge

  // Outputs (device pointers).
  int64_t* edges = nullptr;       // [2, edge_capacity]
  T* shifts = nullptr;            // [edge_capacity, 3]
  int64_t* stats = nullptr;       // [3]: edges needed, atoms in the fullest cell, grid valid
};

// Enqueues the whole list on ``stream``: no host synchronisation, no allocation (CUDA-graph
// capturable). Returns nullptr, or the CUDA error's description.
template <typename T>
const char* launch_cell_list(const CellListBuffers<T>& buffers, cudaStream_t stream);

}  // namespace mace_lp
