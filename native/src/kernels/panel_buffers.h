// Per-thread, 64-byte aligned, grow-once buffers for packed GEMM panels (the
// f32 driver's float panels, the bf16 driver's words of two bf16).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace sigma {

template <class T>
struct PanelBuffers {
  T* a = nullptr;
  T* b = nullptr;
  size_t a_cap = 0, b_cap = 0;
  PanelBuffers() = default;
  PanelBuffers(const PanelBuffers&) = delete;
  PanelBuffers& operator=(const PanelBuffers&) = delete;
  ~PanelBuffers() {
    std::free(a);
    std::free(b);
  }
  // Throws std::bad_alloc (leaving the old buffer in place) when the memory
  // is not there: the caller's region rethrows it, and the Node-API layer
  // turns it into a JS error.
  static T* grow(T* p, size_t& cap, size_t need) {
    if (need <= cap) return p;
    const size_t bytes = (need * sizeof(T) + 63) / 64 * 64;
    T* q = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (q == nullptr) throw std::bad_alloc();
    std::free(p);
    cap = bytes / sizeof(T);
    return q;
  }
};

}  // namespace sigma
