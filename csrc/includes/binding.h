// Shared by the torch bindings (not by the kernel libraries, which stay free of torch headers).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "kernel_abi.h"

// TORCH_LIBRARY pastes its namespace argument; this indirection expands ZEROLIB_OP_NS first.
#define ZEROLIB_LIBRARY_EXPAND(ns, m) TORCH_LIBRARY(ns, m)
#define ZEROLIB_LIBRARY(ns, m) ZEROLIB_LIBRARY_EXPAND(ns, m)

namespace zerolib {

// The kernel table arrives from Python as the address the kernel library returned.
template <class Table>
const Table& kernel_table(int64_t address, const char* op) {
  TORCH_CHECK(address != 0, op, ": no kernel table (load the op through zerolib.ops.load_op)");
  return *reinterpret_cast<const Table*>(address);
}

inline abi::Dtype abi_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return abi::kFloat32;
    case at::kBFloat16: return abi::kBFloat16;
    case at::kHalf: return abi::kFloat16;
    default: return abi::kAbsent;
  }
}

}  // namespace zerolib
