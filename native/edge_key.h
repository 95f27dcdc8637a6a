// Sort key of an edge within its sender: (receiver, cell image), the canonical order of
// neighbors.cell_list. Plain C++, usable from the CUDA kernels and the CPU code.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MACE_LP_HOST_DEVICE __host__ __device__
#else
#define MACE_LP_HOST_DEVICE
#endif

namespace mace_lp {

// Image offsets along each box vector take 6 bits each (|image| < 32, as in neighbors.cell_list's
// key); the receiver index takes the bits above.
constexpr int kImageBits = 6;
constexpr int kImageOffset = 32;
constexpr int kImageCodeBits = 3 * kImageBits;

MACE_LP_HOST_DEVICE inline int64_t edge_key(int64_t receiver, int64_t i0, int64_t i1, int64_t i2) {
  const int64_t code = (((i0 + kImageOffset) << kImageBits | (i1 + kImageOffset)) << kImageBits) | (i2 + kImageOffset);
  return receiver << kImageCodeBits | code;
}

MACE_LP_HOST_DEVICE inline int64_t key_receiver(int64_t key) { return key >> kImageCodeBits; }

// Image along box vector k (0, 1, 2) of a key.
MACE_LP_HOST_DEVICE inline int64_t key_image(int64_t key, int k) {
  return ((key >> (kImageBits * (2 - k))) & ((int64_t{1} << kImageBits) - 1)) - kImageOffset;
}

}  // namespace mace_lp
