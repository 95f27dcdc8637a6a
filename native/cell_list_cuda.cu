// mace_lp::cell_list on a CUDA device: the same list as the CPU kernel (cell_list_cpu.cpp) and
// neighbors.cell_list, from kernels enqueued on one stream with fixed shapes and no host
// synchronisation, so that the call can be captured in a CUDA graph.
//
//   frame       box geometry: reciprocal rows and grid check (periodic) or the bounding box
//   bin         each atom's wrapped position, lattice image and cell; atoms per cell
//   scan        first slot of each cell, fullest cell
//   fill, sort  atoms by cell, ascending index within a cell (as the stable argsort)
//   count       neighbours per sender (one warp per sender)
//   scan        first edge slot of each sender, edges needed
//   write       each sender's edges in scan order, ranked into (receiver, image) order
//   pad         unused slots: self-pairs with a shift longer than the cutoff
//
// Edges come out in the canonical order (sender, receiver, image); under an edge overflow the
// stored edges are the first in scan order (sender, stencil offset, slot in the cell), as in
// the TorchScript list. Compiled with --fmad=false: every sum and product rounds on its own, as
// on the CPU.
#include <cuda_runtime.h>

#include "cell_list_kernels.h"

namespace mace_lp {
namespace {

constexpr int kFrameThreads = 256;
constexpr int kScanThreads = 1024;
constexpr int kAtomThreads = 256;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

// frame layout
constexpr int kReciprocal = 0;  // 9: row k is r_k with r_k . a_l = delta_kl
constexpr int kOrigin = 9;      // 3 (non-periodic)
constexpr int kCellSize = 12;   // 3 (non-periodic)

template <typename T>
__device__ T floor_of(T x);
template <>
__device__ float floor_of<float>(float x) { return floorf(x); }
template <>
__device__ double floor_of<double>(double x) { return ::floor(x); }

template <typename T>
__device__ T sqrt_of(T x);
template <>
__device__ float sqrt_of<float>(float x) { return sqrtf(x); }
template <>
__device__ double sqrt_of<double>(double x) { return ::sqrt(x); }

__device__ inline int floor_div(int a, int b) {
  int q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// One block. Periodic: reciprocal rows of the box, and whether the stencil still reaches the
// cutoff across every pair of faces (stats[2]). Non-periodic: the atoms' bounding box.
template <typename T>
__global__ void frame_kernel(CellListBuffers<T> b) {
  __shared__ T low[3][kFrameThreads];
  __shared__ T high[3][kFrameThreads];
  const int t = threadIdx.x;
  if (b.cell == nullptr) {
    for (int k = 0; k < 3; ++k) {
      T lo = b.positions[k], hi = b.positions[k];
      for (int i = t; i < b.n_atoms; i += blockDim.x) {
        const T x = b.positions[3 * i + k];
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
      }
      low[k][t] = lo;
      high[k][t] = hi;
    }
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (t < stride) {
        for (int k = 0; k < 3; ++k) {
          low[k][t] = low[k][t + stride] < low[k][t] ? low[k][t + stride] : low[k][t];
          high[k][t] = high[k][t + stride] > high[k][t] ? high[k][t + stride] : high[k][t];
        }
      }
      __syncthreads();
    }
    if (t == 0) {
      const T cutoff = static_cast<T>(b.cutoff);
      for (int k = 0; k < 3; ++k) {
        const T extent = high[k][0] - low[k][0];
        const T size = extent / static_cast<T>(b.dims[k]);
        b.frame[kOrigin + k] = low[k][0];
        b.frame[kCellSize + k] = size > cutoff ? size : cutoff;
      }
      b.stats[2] = 1;
    }
    return;
  }
  if (t != 0) return;
  const T* a = b.cell;
  T cross[9];
  for (int k = 0; k < 3; ++k) {
    const T* u = a + 3 * ((k + 1) % 3);
    const T* v = a + 3 * ((k + 2) % 3);
    cross[3 * k + 0] = u[1] * v[2] - u[2] * v[1];
    cross[3 * k + 1] = u[2] * v[0] - u[0] * v[2];
    cross[3 * k + 2] = u[0] * v[1] - u[1] * v[0];
  }
  const T volume = (a[0] * cross[0] + a[1] * cross[1]) + a[2] * cross[2];
  int reach[3] = {0, 0, 0};
  for (int s = 0; s < b.n_offsets; ++s) {
    for (int k = 0; k < 3; ++k) {
      const int64_t o = b.stencil[3 * s + k];
      const int magnitude = static_cast<int>(o < 0 ? -o : o);
      reach[k] = magnitude > reach[k] ? magnitude : reach[k];
    }
  }
  int64_t grid_ok = 1;
  for (int k = 0; k < 3; ++k) {
    T* r = b.frame + kReciprocal + 3 * k;
    for (int c = 0; c < 3; ++c) r[c] = cross[3 * k + c] / volume;
    const T width = static_cast<T>(1) / sqrt_of((r[0] * r[0] + r[1] * r[1]) + r[2] * r[2]);
    const T covered = static_cast<T>(reach[k]) * width / static_cast<T>(b.dims[k]);
    grid_ok = grid_ok && covered >= static_cast<T>(b.cutoff);
  }
  b.stats[2] = grid_ok;
}

template <typename T>
__global__ void bin_kernel(CellListBuffers<T> b) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= b.n_atoms) return;
  const T* p = b.positions + 3 * i;
  T coord[3];
  if (b.cell == nullptr) {
    for (int k = 0; k < 3; ++k) {
      coord[k] = (p[k] - b.frame[kOrigin + k]) / b.frame[kCellSize + k];
      b.wrapped[3 * i + k] = p[k];
      b.atom_image[3 * i + k] = 0;
    }
  } else {
    const T* r = b.frame + kReciprocal;
    T frac[3];
    for (int k = 0; k < 3; ++k) {
      const T raw = (p[0] * r[3 * k] + p[1] * r[3 * k + 1]) + p[2] * r[3 * k + 2];
      const T image = floor_of(raw);
      b.atom_image[3 * i + k] = image;
      frac[k] = raw - image;
      coord[k] = frac[k] * static_cast<T>(b.dims[k]);
    }
    for (int c = 0; c < 3; ++c) {
      b.wrapped[3 * i + c] = (frac[0] * b.cell[c] + frac[1] * b.cell[3 + c]) + frac[2] * b.cell[6 + c];
    }
  }
  int cell[3];
  for (int k = 0; k < 3; ++k) {
    int64_t index = static_cast<int64_t>(floor_of(coord[k]));
    index = index < 0 ? 0 : index;
    index = index > b.dims[k] - 1 ? b.dims[k] - 1 : index;
    cell[k] = static_cast<int>(index);
    b.atom_cell[3 * i + k] = cell[k];
  }
  atomicAdd(b.cell_count + (cell[0] * b.dims[1] + cell[1]) * b.dims[2] + cell[2], 1);
}

// One block: exclusive prefix sums of `values` into `starts`, the total into *total and the
// largest value into *largest (either may be null). Each thread sums a contiguous run.
template <typename Out>
__global__ void scan_kernel(const int* values, int n, Out* starts, int64_t* total, int64_t* largest) {
  __shared__ int64_t sums[kScanThreads];
  __shared__ int64_t maxima[kScanThreads];
  const int t = threadIdx.x;
  const int per_thread = (n + kScanThreads - 1) / kScanThreads;
  const int begin = t * per_thread;
  const int end = begin + per_thread < n ? begin + per_thread : n;
  int64_t sum = 0, most = 0;
  for (int k = begin; k < end; ++k) {
    sum += values[k];
    most = values[k] > most ? values[k] : most;
  }
  sums[t] = sum;
  maxima[t] = most;
  __syncthreads();
  for (int stride = 1; stride < kScanThreads; stride *= 2) {
    const int64_t add = t >= stride ? sums[t - stride] : 0;
    const int64_t other = t >= stride ? maxima[t - stride] : 0;
    __syncthreads();
    sums[t] += add;
    maxima[t] = other > maxima[t] ? other : maxima[t];
    __syncthreads();
  }
  int64_t running = sums[t] - sum;
  for (int k = begin; k < end; ++k) {
    starts[k] = static_cast<Out>(running);
    running += values[k];
  }
  if (t == kScanThreads - 1) {
    if (total != nullptr) *total = sums[t];
    if (largest != nullptr) *largest = maxima[t];
  }
}

template <typename T>
__global__ void fill_kernel(CellListBuffers<T> b) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= b.n_atoms) return;
  const int* c = b.atom_cell + 3 * i;
  const int cell = (c[0] * b.dims[1] + c[1]) * b.dims[2] + c[2];
  b.cell_atoms[b.cell_start[cell] + atomicAdd(b.cell_cursor + cell, 1)] = i;
}

// Insertion sort of each cell's atoms (a few dozen): the order of the stable argsort.
template <typename T>
__global__ void sort_cells_kernel(CellListBuffers<T> b) {
  const int cell = blockIdx.x * blockDim.x + threadIdx.x;
  if (cell >= b.n_cells) return;
  int* atoms = b.cell_atoms + b.cell_start[cell];
  const int n = b.cell_count[cell];
  for (int k = 1; k < n; ++k) {
    const int atom = atoms[k];
    int m = k - 1;
    while (m >= 0 && atoms[m] > atom) {
      atoms[m + 1] = atoms[m];
      --m;
    }
    atoms[m + 1] = atom;
  }
}

// The candidates of sender i, visited by one warp in scan order (stencil offset, then slot in
// the cell, 32 slots at a time). visit(keep, receiver, image, rank among the kept of this
// round, kept in this round) is called by every lane.
template <typename T, typename Visit>
__device__ void scan_neighbours(const CellListBuffers<T>& b, int i, int lane, Visit visit) {
  const T cutoff2 = static_cast<T>(b.cutoff * b.cutoff);
  const T* wi = b.wrapped + 3 * i;
  const unsigned below = (1u << lane) - 1u;
  for (int s = 0; s < b.n_offsets; ++s) {
    int target[3], image[3] = {0, 0, 0};
    bool valid = true;
    for (int k = 0; k < 3; ++k) {
      target[k] = b.atom_cell[3 * i + k] + static_cast<int>(b.stencil[3 * s + k]);
      if (b.cell != nullptr) {
        image[k] = floor_div(target[k], b.dims[k]);
        target[k] -= image[k] * b.dims[k];
      } else {
        valid = valid && target[k] >= 0 && target[k] < b.dims[k];
      }
    }
    if (!valid) continue;
    const int id = (target[0] * b.dims[1] + target[1]) * b.dims[2] + target[2];
    T shift[3] = {0, 0, 0};
    if (b.cell != nullptr) {
      for (int c = 0; c < 3; ++c) {
        shift[c] = (static_cast<T>(image[0]) * b.cell[c] + static_cast<T>(image[1]) * b.cell[3 + c]) +
                   static_cast<T>(image[2]) * b.cell[6 + c];
      }
    }
    const bool home = image[0] == 0 && image[1] == 0 && image[2] == 0;
    const int count = b.cell_count[id];
    const int filled = count < b.cell_capacity ? count : b.cell_capacity;
    const int* members = b.cell_atoms + b.cell_start[id];
    for (int base = 0; base < filled; base += 32) {
      const int m = base + lane;
      bool keep = false;
      int j = 0;
      if (m < filled) {
        j = members[m];
        const T* wj = b.wrapped + 3 * j;
        const T x = (wj[0] + shift[0]) - wi[0];
        const T y = (wj[1] + shift[1]) - wi[1];
        const T z = (wj[2] + shift[2]) - wi[2];
        const T d2 = (x * x + y * y) + z * z;
        keep = d2 < cutoff2 && !(home && j == i);
      }
      const unsigned kept = __ballot_sync(kFullMask, keep);
      visit(keep, j, image, __popc(kept & below), __popc(kept));
    }
  }
}

template <typename T>
__global__ void count_kernel(CellListBuffers<T> b) {
  const int i = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= b.n_atoms) return;  // whole warps
  int found = 0;
  scan_neighbours(b, i, lane, [&](bool, int, const int*, int, int kept) { found += kept; });
  if (lane == 0) b.atom_edges[i] = found;
}

template <typename T>
__global__ void write_kernel(CellListBuffers<T> b) {
  const int i = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= b.n_atoms) return;  // whole warps
  const int64_t first = b.atom_offset[i];
  const int64_t room_left = b.edge_capacity - first;
  const int64_t stored = room_left < b.atom_edges[i] ? (room_left > 0 ? room_left : 0) : b.atom_edges[i];
  if (stored == 0) return;
  int64_t* keys = b.keys + first;
  int64_t written = 0;
  scan_neighbours(b, i, lane, [&](bool keep, int j, const int* image, int rank, int kept) {
    if (keep && written + rank < stored) keys[written + rank] = edge_key(j, image[0], image[1], image[2]);
    written += kept;
  });
  __syncwarp();
  // Rank sort of this sender's keys (unique): each lane places the keys it holds.
  const int64_t capacity = b.edge_capacity;
  for (int64_t e = lane; e < stored; e += 32) {
    const int64_t key = keys[e];
    int64_t rank = 0;
    for (int64_t f = 0; f < stored; ++f) rank += keys[f] < key;
    const int64_t slot = first + rank;
    const int j = static_cast<int>(key_receiver(key));
    b.edges[slot] = i;
    b.edges[capacity + slot] = j;
    T lattice[3];
    for (int k = 0; k < 3; ++k) {
      lattice[k] = (static_cast<T>(key_image(key, k)) + b.atom_image[3 * i + k]) - b.atom_image[3 * j + k];
    }
    for (int c = 0; c < 3; ++c) {
      b.shifts[3 * slot + c] =
          b.cell == nullptr ? static_cast<T>(0)
                            : (lattice[0] * b.cell[c] + lattice[1] * b.cell[3 + c]) + lattice[2] * b.cell[6 + c];
    }
  }
}

template <typename T>
__global__ void pad_kernel(CellListBuffers<T> b) {
  const int64_t needed = b.stats[0];
  const T padding = static_cast<T>(2.0 * b.cutoff);
  for (int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; slot < b.edge_capacity;
       slot += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (slot < needed) continue;
    const int64_t atom = slot % b.n_atoms;
    b.edges[slot] = atom;
    b.edges[b.edge_capacity + slot] = atom;
    b.shifts[3 * slot] = padding;
    b.shifts[3 * slot + 1] = 0;
    b.shifts[3 * slot + 2] = 0;
  }
}

int blocks_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

}  // namespace

template <typename T>
const char* launch_cell_list(const CellListBuffers<T>& b, cudaStream_t stream) {
  const size_t cell_bytes = sizeof(int) * static_cast<size_t>(b.n_cells);
  cudaError_t status = cudaMemsetAsync(b.cell_count, 0, cell_bytes, stream);
  if (status == cudaSuccess) status = cudaMemsetAsync(b.cell_cursor, 0, cell_bytes, stream);
  if (status != cudaSuccess) return cudaGetErrorString(status);
  const int atom_blocks = blocks_for(b.n_atoms, kAtomThreads);
  const int warp_blocks = static_cast<int>((b.n_atoms + kWarpsPerBlock - 1) / kWarpsPerBlock);
  frame_kernel<T><<<1, kFrameThreads, 0, stream>>>(b);
  bin_kernel<T><<<atom_blocks, kAtomThreads, 0, stream>>>(b);
  scan_kernel<int><<<1, kScanThreads, 0, stream>>>(b.cell_count, b.n_cells, b.cell_start, nullptr, b.stats + 1);
  fill_kernel<T><<<atom_blocks, kAtomThreads, 0, stream>>>(b);
  sort_cells_kernel<T><<<blocks_for(b.n_cells, kAtomThreads), kAtomThreads, 0, stream>>>(b);
  count_kernel<T><<<warp_blocks, 32 * kWarpsPerBlock, 0, stream>>>(b);
  scan_kernel<int64_t><<<1, kScanThreads, 0, stream>>>(b.atom_edges, b.n_atoms, b.atom_offset, b.stats, nullptr);
  write_kernel<T><<<warp_blocks, 32 * kWarpsPerBlock, 0, stream>>>(b);
  pad_kernel<T><<<blocks_for(b.edge_capacity, kAtomThreads), kAtomThreads, 0, stream>>>(b);
  status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

template const char* launch_cell_list<float>(const CellListBuffers<float>&, cudaStream_t);
template const char* launch_cell_list<double>(const CellListBuffers<double>&, cudaStream_t);

}  // namespace mace_lp
