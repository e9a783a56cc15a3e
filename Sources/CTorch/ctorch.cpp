// The C shim over ATen and autograd. One translation unit on purpose: ATen's headers dominate build time.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Weverything"
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/api/include/torch/version.h>
// c10d's Gloo backend: libtorch_cpu has it, but the wheels ship no Gloo headers; Debian's libgloo-dev provides them
// (declarations only: the code that runs is libtorch's own).
#if __has_include(<gloo/algorithm.h>)
#define CT_HAS_GLOO 1
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#pragma clang diagnostic pop

#include <dlfcn.h>
#include <cstring>
#include <stdexcept>
#include <memory>
#include <string>
#include <vector>

#include "ctorch.h"

// MARK: guard
namespace {
thread_local std::string last_error;
thread_local bool has_error = false;
thread_local int64_t handles_created = 0;  // per thread, so a leak test is not disturbed by other threads
thread_local int64_t handles_freed = 0;

void set_error(const char *message) {
  last_error = message;
  has_error = true;
}

at::Tensor &T(ct_tensor t) { return *reinterpret_cast<at::Tensor *>(t); }
thread_local int64_t wraps_until_failure = -1;  // ct_debug_fail_wraps_after: a failure injected for leak tests
ct_tensor wrap(at::Tensor t) {
  if (wraps_until_failure == 0) {
    wraps_until_failure = -1;  // one failure per request
    throw std::bad_alloc();
  }
  if (wraps_until_failure > 0) wraps_until_failure--;
  handles_created++;
  return reinterpret_cast<ct_tensor>(new at::Tensor(std::move(t)));
}
void unwrap_free(ct_tensor t) {
  handles_freed++;
  delete reinterpret_cast<at::Tensor *>(t);
}
// Several results, all or nothing: when one wrap fails (out of memory), the handles made before it are freed and
// `out` is left untouched, so a failed call hands out no handle for the caller to leak. Undefined tensors (an unused
// gradient) come out as null.
void wrap_all(const std::vector<at::Tensor> &parts, ct_tensor *out) {
  std::vector<ct_tensor> made;
  made.reserve(parts.size());
  try {
    for (const auto &part : parts) made.push_back(part.defined() ? wrap(part) : nullptr);
  } catch (...) {
    for (ct_tensor handle : made)
      if (handle != nullptr) unwrap_free(handle);
    throw;
  }
  std::copy(made.begin(), made.end(), out);
}
std::optional<at::Tensor> opt(ct_tensor t) {
  if (t == nullptr) return std::nullopt;
  return T(t);
}
at::Generator &G(ct_generator g) { return *reinterpret_cast<at::Generator *>(g); }
std::optional<at::Generator> optgen(ct_generator g) {
  if (g == nullptr) return std::nullopt;
  return G(g);
}
at::IntArrayRef ints(const int64_t *p, int n) { return at::IntArrayRef(p, static_cast<size_t>(n)); }

at::ScalarType scalar_type(int code) {
  switch (code) {
    case CT_F32: return at::kFloat;
    case CT_F16: return at::kHalf;
    case CT_BF16: return at::kBFloat16;
    case CT_I64: return at::kLong;
    case CT_I32: return at::kInt;
    case CT_BOOL: return at::kBool;
    case CT_U8: return at::kByte;
    case CT_F64: return at::kDouble;
    case CT_I8: return at::kChar;
    case CT_I16: return at::kShort;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code));
}

int dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return CT_F32;
    case at::kHalf: return CT_F16;
    case at::kBFloat16: return CT_BF16;
    case at::kLong: return CT_I64;
    case at::kInt: return CT_I32;
    case at::kBool: return CT_BOOL;
    case at::kByte: return CT_U8;
    case at::kDouble: return CT_F64;
    case at::kChar: return CT_I8;
    case at::kShort: return CT_I16;
    default: throw std::invalid_argument(std::string("dtype ") + c10::toString(s) + " has no ctorch code");
  }
}

at::Device device(int type, int index) {
  if (type == CT_CPU) return at::Device(at::kCPU);
  if (type == CT_CUDA) return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  if (type == CT_META) return at::Device(at::kMeta);
  throw std::invalid_argument("unknown device type " + std::to_string(type));
}

at::DeviceType device_type(int type) { return device(type, 0).type(); }

at::TensorOptions options(int dtype, int dev_type, int dev_index) {
  return at::TensorOptions().dtype(scalar_type(dtype)).device(device(dev_type, dev_index));
}

// Python keeps `int_tensor * 2` integral; a double scalar would promote it. Match that.
at::Scalar scalar_for(const at::Tensor &t, double v) {
  if (!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) && v == static_cast<double>(static_cast<int64_t>(v)))
    return at::Scalar(static_cast<int64_t>(v));
  return at::Scalar(v);
}
}  // namespace

// What `import torch` does on the main thread: set OpenMP's (and MKL's) thread count to the intra-op default.
// Without it MKL's matmul ran at a third of Python's speed on this machine (bench ops: 104 vs 343 GFLOP/s).
[[maybe_unused]] const bool threads_initialised = [] {
  try {
    at::init_num_threads();
  } catch (...) {
  }
  return true;
}();

#define GUARD(fallback, ...)                                   \
  try {                                                        \
    has_error = false;                                         \
    __VA_ARGS__                                                \
  } catch (const c10::Error &e) {                              \
    set_error(e.what_without_backtrace());                     \
  } catch (const std::exception &e) {                          \
    set_error(e.what());                                       \
  } catch (...) {                                              \
    set_error("unknown C++ exception");                        \
  }                                                            \
  return fallback;
#define TENSOR(...) GUARD(nullptr, return wrap(__VA_ARGS__);)
#define STATUS(...) GUARD(-1, __VA_ARGS__; return 0;)

// The definitions below keep the C linkage their declarations in ctorch.h give them.

// MARK: errors and runtime
const char *ct_last_error(void) { return has_error ? last_error.c_str() : nullptr; }
void ct_clear_error(void) { has_error = false; }
const char *ct_version(void) { return TORCH_VERSION; }
const char *ct_build_config(void) {
  static thread_local std::string config;
  GUARD(nullptr, config = at::show_config(); return config.c_str();)
}
int ct_get_num_threads(void) { return at::get_num_threads(); }
int ct_set_num_threads(int n) { STATUS(at::set_num_threads(n)) }

int ct_cuda_load(const char *path) {
  has_error = false;
  if (dlopen(path, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char *message = dlerror();
    set_error(message ? message : "dlopen failed");
    return -1;
  }
  return 0;
}
int ct_cuda_is_available(void) { GUARD(-1, return at::hasCUDA() ? 1 : 0;) }
int ct_cuda_device_count(void) { GUARD(-1, return at::hasCUDA() ? static_cast<int>(at::detail::getCUDAHooks().deviceCount()) : 0;) }
// Through c10's device-generic allocator interface (c10/core/CachingDeviceAllocator.h), which the CUDA caching
// allocator implements once libtorch_cuda is loaded: no CUDA headers needed here. Index 0 of a StatArray is the
// aggregate over the small and large pools, as torch.cuda.memory_stats reports it.
int ct_cuda_memory_stats(int index, int64_t *out) {
  STATUS(auto stats = c10::getDeviceAllocator(at::kCUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(index));
         out[0] = stats.allocated_bytes[0].current; out[1] = stats.allocated_bytes[0].peak;
         out[2] = stats.reserved_bytes[0].current; out[3] = stats.reserved_bytes[0].peak)
}
int ct_cuda_synchronize(int index) {
  STATUS(at::detail::getCUDAHooks().deviceSynchronize(static_cast<c10::DeviceIndex>(index)))
}
int ct_set_tf32(int enabled) {
  STATUS(at::globalContext().setAllowTF32CuBLAS(enabled != 0); at::globalContext().setAllowTF32CuDNN(enabled != 0))
}

// MARK: lifetime and metadata
void ct_free(ct_tensor t) { unwrap_free(t); }
int64_t ct_thread_live_handles(void) { return handles_created - handles_freed; }
void ct_debug_fail_wraps_after(int64_t n) { wraps_until_failure = n; }
ct_tensor ct_shallow_clone(ct_tensor t) { TENSOR(T(t)) }
int ct_defined(ct_tensor t) { return T(t).defined() ? 1 : 0; }
int ct_dim(ct_tensor t) { GUARD(-1, return static_cast<int>(T(t).dim());) }
int ct_shape(ct_tensor t, int64_t *out) {
  STATUS(auto s = T(t).sizes(); std::copy(s.begin(), s.end(), out))
}
int ct_strides(ct_tensor t, int64_t *out) {
  STATUS(auto s = T(t).strides(); std::copy(s.begin(), s.end(), out))
}
int64_t ct_numel(ct_tensor t) { GUARD(-1, return T(t).numel();) }
int ct_dtype(ct_tensor t) { GUARD(-1, return dtype_code(T(t).scalar_type());) }
int ct_device(ct_tensor t, int *type, int *index) {
  STATUS(auto d = T(t).device(); *type = d.is_cuda() ? CT_CUDA : d.is_meta() ? CT_META : CT_CPU; *index = d.has_index() ? d.index() : 0)
}
int ct_is_contiguous(ct_tensor t) { GUARD(-1, return T(t).is_contiguous() ? 1 : 0;) }
int64_t ct_storage_offset(ct_tensor t) { GUARD(-1, return T(t).storage_offset();) }
const void *ct_data_ptr(ct_tensor t) { GUARD(nullptr, return T(t).const_data_ptr();) }

// MARK: creation and copies
ct_tensor ct_from_data(const void *data, const int64_t *shape, int ndim, int dtype) {
  TENSOR(at::empty(ints(shape, ndim), options(dtype, CT_CPU, 0)).copy_(
      at::from_blob(const_cast<void *>(data), ints(shape, ndim), options(dtype, CT_CPU, 0))))
}
int ct_copy_to_host(ct_tensor t, void *out, int64_t nbytes) {
  STATUS(
      at::Tensor host = T(t).detach().to(at::kCPU).contiguous();
      const int64_t have = static_cast<int64_t>(host.nbytes());
      if (have != nbytes) throw std::invalid_argument("copy_to_host: tensor has " + std::to_string(have) +
                                                      " bytes, buffer " + std::to_string(nbytes));
      if (have > 0) std::memcpy(out, host.const_data_ptr(), static_cast<size_t>(have));)
}
double ct_item(ct_tensor t) { GUARD(NAN, return T(t).item<double>();) }
ct_tensor ct_empty(const int64_t *shape, int ndim, int dtype, int dt, int di) {
  TENSOR(at::empty(ints(shape, ndim), options(dtype, dt, di)))
}
ct_tensor ct_full(const int64_t *shape, int ndim, double value, int dtype, int dt, int di) {
  TENSOR(at::full(ints(shape, ndim), value, options(dtype, dt, di)))
}
ct_tensor ct_arange(double start, double end, double step, int dtype, int dt, int di) {
  TENSOR(at::arange(start, end, step, options(dtype, dt, di)))
}
ct_tensor ct_linspace(double start, double end, int64_t steps, int dtype, int dt, int di) {
  TENSOR(at::linspace(start, end, steps, options(dtype, dt, di)))
}
ct_tensor ct_full_like(ct_tensor t, double value) { TENSOR(at::full_like(T(t), value)) }
ct_tensor ct_randn(const int64_t *shape, int ndim, int dtype, ct_generator g, int dt, int di) {
  TENSOR(at::randn(ints(shape, ndim), optgen(g), options(dtype, dt, di)))
}
ct_tensor ct_rand(const int64_t *shape, int ndim, int dtype, ct_generator g, int dt, int di) {
  TENSOR(at::rand(ints(shape, ndim), optgen(g), options(dtype, dt, di)))
}
ct_tensor ct_randint(int64_t low, int64_t high, const int64_t *shape, int ndim, ct_generator g, int dt, int di) {
  TENSOR(at::randint(low, high, ints(shape, ndim), optgen(g), options(CT_I64, dt, di)))
}
ct_tensor ct_randperm(int64_t n, ct_generator g) { TENSOR(at::randperm(n, optgen(g), at::TensorOptions().dtype(at::kLong))) }
int ct_normal_(ct_tensor t, double mean, double std, ct_generator g) { STATUS(T(t).normal_(mean, std, optgen(g))) }
int ct_uniform_(ct_tensor t, double from, double to, ct_generator g) { STATUS(T(t).uniform_(from, to, optgen(g))) }

// MARK: generators
ct_generator ct_generator_new(uint64_t seed, int dt, int di) {
  GUARD(nullptr,
        at::Generator g = dt == CT_CPU ? at::detail::createCPUGenerator(seed)
                                       : at::detail::getCUDAHooks().getNewGenerator(static_cast<c10::DeviceIndex>(di));
        if (dt != CT_CPU) { std::lock_guard<std::mutex> lock(g.mutex()); g.set_current_seed(seed); }
        return reinterpret_cast<ct_generator>(new at::Generator(std::move(g)));)
}
ct_generator ct_generator_default(int dt, int di) {
  GUARD(nullptr,
        const at::Generator &g = dt == CT_CPU ? at::detail::getDefaultCPUGenerator()
                                              : at::detail::getCUDAHooks().getDefaultGenerator(static_cast<c10::DeviceIndex>(di));
        return reinterpret_cast<ct_generator>(new at::Generator(g));)
}
void ct_generator_free(ct_generator g) { delete reinterpret_cast<at::Generator *>(g); }
int ct_generator_set_seed(ct_generator g, uint64_t seed) {
  STATUS(std::lock_guard<std::mutex> lock(G(g).mutex()); G(g).set_current_seed(seed))
}
uint64_t ct_generator_seed(ct_generator g) { GUARD(0, return G(g).current_seed();) }
ct_tensor ct_generator_get_state(ct_generator g) {
  GUARD(nullptr, std::lock_guard<std::mutex> lock(G(g).mutex()); return wrap(G(g).get_state());)
}
int ct_generator_set_state(ct_generator g, ct_tensor state) {
  STATUS(std::lock_guard<std::mutex> lock(G(g).mutex()); G(g).set_state(T(state)))
}
int ct_manual_seed(uint64_t seed) {
  STATUS(
      {
        auto gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_current_seed(seed);
      } if (at::hasCUDA()) {
        for (c10::DeviceIndex i = 0; i < at::detail::getCUDAHooks().deviceCount(); i++) {
          auto gen = at::detail::getCUDAHooks().getDefaultGenerator(i);
          std::lock_guard<std::mutex> lock(gen.mutex());
          gen.set_current_seed(seed);
        }
      })
}

// MARK: conversion
ct_tensor ct_to(ct_tensor t, int dtype, int dt, int di, int non_blocking, int copy) {
  TENSOR(T(t).to(device(dt, di), scalar_type(dtype), non_blocking != 0, copy != 0))
}
ct_tensor ct_clone(ct_tensor t) { TENSOR(T(t).clone()) }
ct_tensor ct_detach(ct_tensor t) { TENSOR(T(t).detach()) }
ct_tensor ct_contiguous(ct_tensor t) { TENSOR(T(t).contiguous()) }

// MARK: views and joins
ct_tensor ct_reshape(ct_tensor t, const int64_t *s, int n) { TENSOR(T(t).reshape(ints(s, n))) }
ct_tensor ct_view(ct_tensor t, const int64_t *s, int n) { TENSOR(T(t).view(ints(s, n))) }
ct_tensor ct_permute(ct_tensor t, const int64_t *d, int n) { TENSOR(T(t).permute(ints(d, n))) }
ct_tensor ct_transpose(ct_tensor t, int64_t a, int64_t b) { TENSOR(T(t).transpose(a, b)) }
ct_tensor ct_expand(ct_tensor t, const int64_t *s, int n) { TENSOR(T(t).expand(ints(s, n))) }
ct_tensor ct_squeeze(ct_tensor t, const int64_t *d, int n) { TENSOR(n == 0 ? T(t).squeeze() : T(t).squeeze(ints(d, n))) }
ct_tensor ct_unsqueeze(ct_tensor t, int64_t d) { TENSOR(T(t).unsqueeze(d)) }
ct_tensor ct_flatten(ct_tensor t, int64_t a, int64_t b) { TENSOR(T(t).flatten(a, b)) }
ct_tensor ct_slice(ct_tensor t, int64_t dim, int64_t start, int64_t end, int64_t step) {
  TENSOR(T(t).slice(dim, start, end, step))
}
ct_tensor ct_narrow(ct_tensor t, int64_t dim, int64_t start, int64_t length) { TENSOR(T(t).narrow(dim, start, length)) }
ct_tensor ct_select(ct_tensor t, int64_t dim, int64_t index) { TENSOR(T(t).select(dim, index)) }
ct_tensor ct_index_select(ct_tensor t, int64_t dim, ct_tensor index) { TENSOR(T(t).index_select(dim, T(index))) }
ct_tensor ct_gather(ct_tensor t, int64_t dim, ct_tensor index) { TENSOR(T(t).gather(dim, T(index))) }
ct_tensor ct_repeat(ct_tensor t, const int64_t *r, int n) { TENSOR(T(t).repeat(ints(r, n))) }
ct_tensor ct_repeat_interleave(ct_tensor t, int64_t repeats, int64_t dim) { TENSOR(T(t).repeat_interleave(repeats, dim)) }

namespace {
std::vector<at::Tensor> tensors(const ct_tensor *ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; i++) out.push_back(T(ts[i]));
  return out;
}
int hand_out(const std::vector<at::Tensor> &parts, ct_tensor *out, int capacity) {
  if (static_cast<int>(parts.size()) > capacity)
    throw std::invalid_argument("split gives " + std::to_string(parts.size()) + " parts, room for " + std::to_string(capacity));
  wrap_all(parts, out);
  return static_cast<int>(parts.size());
}
}  // namespace

ct_tensor ct_cat(const ct_tensor *ts, int n, int64_t dim) { TENSOR(at::cat(tensors(ts, n), dim)) }
ct_tensor ct_stack(const ct_tensor *ts, int n, int64_t dim) { TENSOR(at::stack(tensors(ts, n), dim)) }
int ct_chunk(ct_tensor t, int64_t chunks, int64_t dim, ct_tensor *out, int capacity) {
  GUARD(-1, return hand_out(T(t).chunk(chunks, dim), out, capacity);)
}
int ct_split(ct_tensor t, const int64_t *sizes, int n, int64_t dim, ct_tensor *out, int capacity) {
  GUARD(-1, return hand_out(T(t).split_with_sizes(ints(sizes, n), dim), out, capacity);)
}
ct_tensor ct_tril(ct_tensor t, int64_t d) { TENSOR(T(t).tril(d)) }
ct_tensor ct_triu(ct_tensor t, int64_t d) { TENSOR(T(t).triu(d)) }

// MARK: element-wise
namespace {
at::Tensor unary(int op, const at::Tensor &x) {
  switch (op) {
    case CT_NEG: return x.neg();
    case CT_ABS: return x.abs();
    case CT_EXP: return x.exp();
    case CT_LOG: return x.log();
    case CT_SQRT: return x.sqrt();
    case CT_RSQRT: return x.rsqrt();
    case CT_SIN: return x.sin();
    case CT_COS: return x.cos();
    case CT_TANH: return x.tanh();
    case CT_SIGMOID: return x.sigmoid();
    case CT_RELU: return x.relu();
    case CT_SILU: return at::silu(x);
    case CT_GELU: return at::gelu(x, "none");
    case CT_GELU_TANH: return at::gelu(x, "tanh");
    case CT_QUICK_GELU: return x * at::sigmoid(x * 1.702);  // transformers' QuickGELUActivation
    case CT_SQUARE: return x.square();
    case CT_FLOOR: return x.floor();
    case CT_CEIL: return x.ceil();
    case CT_ROUND: return x.round();
    case CT_SIGN: return x.sign();
    case CT_RECIPROCAL: return x.reciprocal();
    case CT_ERF: return x.erf();
    case CT_LOG1P: return x.log1p();
    case CT_EXPM1: return x.expm1();
    case CT_LOGICAL_NOT: return x.logical_not();
    case CT_ISNAN: return x.isnan();
    case CT_ISFINITE: return x.isfinite();
    case CT_SOFTPLUS: return at::softplus(x);
  }
  throw std::invalid_argument("unknown unary op " + std::to_string(op));
}

template <typename A, typename B>
at::Tensor binary(int op, const A &a, const B &b) {
  switch (op) {
    case CT_ADD: return at::add(a, b);
    case CT_SUB: return at::sub(a, b);
    case CT_MUL: return at::mul(a, b);
    case CT_DIV: return at::div(a, b);
    case CT_POW: return at::pow(a, b);
    case CT_MAXIMUM: return at::maximum(a, b);
    case CT_MINIMUM: return at::minimum(a, b);
    case CT_EQ: return at::eq(a, b);
    case CT_NE: return at::ne(a, b);
    case CT_LT: return at::lt(a, b);
    case CT_LE: return at::le(a, b);
    case CT_GT: return at::gt(a, b);
    case CT_GE: return at::ge(a, b);
    case CT_LOGICAL_AND: return at::logical_and(a, b);
    case CT_LOGICAL_OR: return at::logical_or(a, b);
    case CT_REMAINDER: return at::remainder(a, b);
    case CT_ATAN2: return at::atan2(a, b);
  }
  throw std::invalid_argument("unknown binary op " + std::to_string(op));
}

at::Tensor binary_scalar(int op, const at::Tensor &a, const at::Scalar &s) {
  switch (op) {
    case CT_ADD: return at::add(a, s);
    case CT_SUB: return at::sub(a, s);
    case CT_MUL: return at::mul(a, s);
    case CT_DIV: return at::div(a, s);
    case CT_POW: return at::pow(a, s);
    case CT_MAXIMUM: return at::clamp_min(a, s);
    case CT_MINIMUM: return at::clamp_max(a, s);
    case CT_EQ: return at::eq(a, s);
    case CT_NE: return at::ne(a, s);
    case CT_LT: return at::lt(a, s);
    case CT_LE: return at::le(a, s);
    case CT_GT: return at::gt(a, s);
    case CT_GE: return at::ge(a, s);
    case CT_REMAINDER: return at::remainder(a, s);
  }
  throw std::invalid_argument("op " + std::to_string(op) + " has no tensor-scalar form");
}

at::Tensor scalar_binary(int op, const at::Scalar &s, const at::Tensor &a) {
  switch (op) {
    case CT_ADD: return at::add(a, s);
    case CT_SUB: return at::rsub(a, s);
    case CT_MUL: return at::mul(a, s);
    case CT_DIV: return at::reciprocal(a) * s;  // what Python's `s / t` runs (Tensor.__rtruediv__)
    case CT_POW: return at::pow(s, a);
  }
  throw std::invalid_argument("op " + std::to_string(op) + " has no scalar-tensor form");
}
}  // namespace

ct_tensor ct_unary(int op, ct_tensor t) { TENSOR(unary(op, T(t))) }
ct_tensor ct_binary(int op, ct_tensor a, ct_tensor b) { TENSOR(binary(op, T(a), T(b))) }
ct_tensor ct_binary_scalar(int op, ct_tensor a, double s) { TENSOR(binary_scalar(op, T(a), scalar_for(T(a), s))) }
ct_tensor ct_scalar_binary(int op, double s, ct_tensor a) { TENSOR(scalar_binary(op, scalar_for(T(a), s), T(a))) }
ct_tensor ct_add_scaled(ct_tensor a, ct_tensor b, double alpha) { TENSOR(at::add(T(a), T(b), alpha)) }
ct_tensor ct_clamp(ct_tensor t, double lo, double hi, int has_lo, int has_hi) {
  TENSOR(at::clamp(T(t), has_lo ? std::optional<at::Scalar>(lo) : std::nullopt,
                   has_hi ? std::optional<at::Scalar>(hi) : std::nullopt))
}
ct_tensor ct_where(ct_tensor c, ct_tensor a, ct_tensor b) { TENSOR(at::where(T(c), T(a), T(b))) }
ct_tensor ct_masked_fill(ct_tensor t, ct_tensor mask, double v) { TENSOR(T(t).masked_fill(T(mask), v)) }
ct_tensor ct_lerp(ct_tensor a, ct_tensor b, double w) { TENSOR(at::lerp(T(a), T(b), w)) }

// MARK: in place
int ct_binary_(int op, ct_tensor self, ct_tensor other) {
  STATUS(switch (op) {
    case CT_ADD: T(self).add_(T(other)); break;
    case CT_SUB: T(self).sub_(T(other)); break;
    case CT_MUL: T(self).mul_(T(other)); break;
    case CT_DIV: T(self).div_(T(other)); break;
    default: throw std::invalid_argument("op " + std::to_string(op) + " has no in-place form");
  })
}
int ct_binary_scalar_(int op, ct_tensor self, double s) {
  STATUS(at::Scalar v = scalar_for(T(self), s); switch (op) {
    case CT_ADD: T(self).add_(v); break;
    case CT_SUB: T(self).sub_(v); break;
    case CT_MUL: T(self).mul_(v); break;
    case CT_DIV: T(self).div_(v); break;
    case CT_POW: T(self).pow_(v); break;
    default: throw std::invalid_argument("op " + std::to_string(op) + " has no in-place scalar form");
  })
}
int ct_add_scaled_(ct_tensor self, ct_tensor other, double alpha) { STATUS(T(self).add_(T(other), alpha)) }
int ct_addcmul_(ct_tensor self, ct_tensor a, ct_tensor b, double v) { STATUS(T(self).addcmul_(T(a), T(b), v)) }
int ct_addcdiv_(ct_tensor self, ct_tensor a, ct_tensor b, double v) { STATUS(T(self).addcdiv_(T(a), T(b), v)) }
int ct_lerp_(ct_tensor self, ct_tensor end, double w) { STATUS(T(self).lerp_(T(end), w)) }
int ct_copy_(ct_tensor self, ct_tensor src) { STATUS(T(self).copy_(T(src))) }
int ct_fill_(ct_tensor self, double v) { STATUS(T(self).fill_(v)) }
int ct_zero_(ct_tensor self) { STATUS(T(self).zero_()) }
int ct_clamp_(ct_tensor self, double lo, double hi, int has_lo, int has_hi) {
  STATUS(T(self).clamp_(has_lo ? std::optional<at::Scalar>(lo) : std::nullopt,
                        has_hi ? std::optional<at::Scalar>(hi) : std::nullopt))
}

// MARK: reductions
namespace {
at::Tensor reduce(int op, const at::Tensor &t, at::IntArrayRef dims, bool keepdim) {
  const bool all = dims.empty();
  std::vector<int64_t> every;
  if (all) for (int64_t i = 0; i < t.dim(); i++) every.push_back(i);
  at::IntArrayRef d = all ? at::IntArrayRef(every) : dims;
  switch (op) {
    case CT_SUM: return all && !keepdim ? t.sum() : t.sum(d, keepdim);
    case CT_MEAN: return all && !keepdim ? t.mean() : t.mean(d, keepdim);
    case CT_AMAX: return t.amax(d, keepdim);
    case CT_AMIN: return t.amin(d, keepdim);
    case CT_LOGSUMEXP: return t.logsumexp(d, keepdim);
    case CT_PROD: {
      at::Tensor r = t;
      if (all && !keepdim) return t.prod();
      std::vector<int64_t> sorted(d.begin(), d.end());
      for (auto &x : sorted) x = c10::maybe_wrap_dim(x, t.dim());
      std::sort(sorted.rbegin(), sorted.rend());
      for (int64_t x : sorted) r = r.prod(x, keepdim);
      return r;
    }
    case CT_ANY: return all && !keepdim ? t.any() : t.any(d, keepdim);
    case CT_ALL: return all && !keepdim ? t.all() : t.all(d, keepdim);
  }
  throw std::invalid_argument("unknown reduction " + std::to_string(op));
}
}  // namespace

ct_tensor ct_reduce(int op, ct_tensor t, const int64_t *dims, int n, int keepdim) {
  TENSOR(reduce(op, T(t), ints(dims, n), keepdim != 0))
}
ct_tensor ct_var(ct_tensor t, const int64_t *dims, int n, double correction, int keepdim, int take_sqrt) {
  GUARD(nullptr,
        at::OptionalIntArrayRef d = n == 0 ? at::OptionalIntArrayRef() : at::OptionalIntArrayRef(ints(dims, n));
        at::Scalar c(correction);
        return wrap(take_sqrt ? at::std(T(t), d, c, keepdim != 0) : at::var(T(t), d, c, keepdim != 0));)
}
int ct_max_dim(ct_tensor t, int64_t dim, int keepdim, int take_min, ct_tensor *values, ct_tensor *indices) {
  STATUS(auto r = take_min ? at::min(T(t), dim, keepdim != 0) : at::max(T(t), dim, keepdim != 0);
         ct_tensor both[2]; wrap_all({std::get<0>(r), std::get<1>(r)}, both); *values = both[0]; *indices = both[1])
}
ct_tensor ct_argmax(ct_tensor t, int64_t dim, int has_dim, int keepdim, int take_min) {
  GUARD(nullptr, std::optional<int64_t> d = has_dim ? std::optional<int64_t>(dim) : std::nullopt;
        return wrap(take_min ? at::argmin(T(t), d, keepdim != 0) : at::argmax(T(t), d, keepdim != 0));)
}
ct_tensor ct_norm(ct_tensor t, double p, const int64_t *dims, int n, int keepdim) {
  TENSOR(n == 0 && !keepdim ? at::norm(T(t), p) : at::norm(T(t), p, ints(dims, n), keepdim != 0))
}
ct_tensor ct_cumsum(ct_tensor t, int64_t dim) { TENSOR(at::cumsum(T(t), dim)) }

// MARK: linear algebra
ct_tensor ct_matmul(ct_tensor a, ct_tensor b) { TENSOR(at::matmul(T(a), T(b))) }
ct_tensor ct_bmm(ct_tensor a, ct_tensor b) { TENSOR(at::bmm(T(a), T(b))) }
ct_tensor ct_baddbmm(ct_tensor in, ct_tensor a, ct_tensor b, double beta, double alpha) {
  TENSOR(at::baddbmm(T(in), T(a), T(b), beta, alpha))
}
ct_tensor ct_linear(ct_tensor x, ct_tensor w, ct_tensor b) { TENSOR(at::linear(T(x), T(w), opt(b))) }

// MARK: neural-network functions
// A meta stand-in for an op's result: it requires grad when an input does (under grad mode), so that what follows
// sees the gradient path (the FLOP counter's backward estimate) though no graph links them.
static at::Tensor meta_result(at::Tensor out, std::initializer_list<const at::Tensor *> inputs) {
  if (at::GradMode::is_enabled())
    for (auto *t : inputs)
      if (t->defined() && t->requires_grad()) return out.requires_grad_(true);
  return out;
}

// libtorch has no C++ meta kernel for convolution (PyTorch registers one in Python): on the meta device the output
// is only its shape, [N, out, (H + 2p - d(k - 1) - 1) / s + 1, ...], as the convolution would give.
static at::Tensor conv2d_meta(const at::Tensor &x, const at::Tensor &w, const int64_t *s, const int64_t *p,
                              const int64_t *d) {
  std::vector<int64_t> shape = {x.size(0), w.size(0)};
  for (int i = 0; i < 2; i++) shape.push_back((x.size(2 + i) + 2 * p[i] - d[i] * (w.size(2 + i) - 1) - 1) / s[i] + 1);
  return meta_result(at::empty(shape, x.options()), {&x});
}
ct_tensor ct_conv2d(ct_tensor x, ct_tensor w, ct_tensor b, const int64_t *stride, const int64_t *padding,
                    const int64_t *dilation, int64_t groups) {
  TENSOR(T(x).is_meta() ? conv2d_meta(T(x), T(w), stride, padding, dilation)
                        : at::conv2d(T(x), T(w), opt(b), ints(stride, 2), ints(padding, 2), ints(dilation, 2), groups))
}
ct_tensor ct_group_norm(ct_tensor x, int64_t groups, ct_tensor w, ct_tensor b, double eps) {
  // No C++ meta kernel either (it runs through batch_norm): the shape is the input's.
  TENSOR(T(x).is_meta() ? meta_result(at::empty_like(T(x)), {&T(x)}) : at::group_norm(T(x), groups, opt(w), opt(b), eps))
}
ct_tensor ct_layer_norm(ct_tensor x, const int64_t *shape, int n, ct_tensor w, ct_tensor b, double eps) {
  TENSOR(T(x).is_meta() ? meta_result(at::empty_like(T(x)), {&T(x)}) : at::layer_norm(T(x), ints(shape, n), opt(w), opt(b), eps))
}
ct_tensor ct_softmax(ct_tensor t, int64_t dim, int log) { TENSOR(log ? at::log_softmax(T(t), dim) : at::softmax(T(t), dim)) }
ct_tensor ct_scaled_dot_product_attention(ct_tensor q, ct_tensor k, ct_tensor v, ct_tensor mask, double dropout_p,
                                          int is_causal, double scale) {
  // The math path's masking has no meta kernel: on meta the result is [..., Lq, Dv]. The shape queries are inside
  // the guard: a query or value of too few dimensions is an error, not an uncaught exception.
  GUARD(nullptr, if (T(q).is_meta()) {
    if (T(q).dim() < 2 || T(v).dim() < 2)
      throw std::invalid_argument("scaled_dot_product_attention: query and value need at least 2 dimensions, got " +
                                  std::to_string(T(q).dim()) + " and " + std::to_string(T(v).dim()));
    auto shape = T(q).sizes().vec();
    shape.back() = T(v).size(-1);
    return wrap(meta_result(at::empty(shape, T(q).options()), {&T(q), &T(k), &T(v)}));
  } return wrap(at::scaled_dot_product_attention(T(q), T(k), T(v), opt(mask), dropout_p, is_causal != 0,
                                          scale < 0 ? std::nullopt : std::optional<double>(scale)));)
}
ct_tensor ct_dropout(ct_tensor t, double p, int train) { TENSOR(at::dropout(T(t), p, train != 0)) }
ct_tensor ct_embedding(ct_tensor w, ct_tensor idx) {
  GUARD(nullptr, if (T(w).is_meta()) {  // index_select has no meta kernel: [*idx, dim]
    if (T(w).dim() != 2)
      throw std::invalid_argument("embedding: weight must have 2 dimensions, got " + std::to_string(T(w).dim()));
    auto shape = T(idx).sizes().vec();
    shape.push_back(T(w).size(1));
    return wrap(meta_result(at::empty(shape, T(w).options()), {&T(w)}));
  } return wrap(at::embedding(T(w), T(idx)));)
}

ct_tensor ct_interpolate(ct_tensor x, int mode, const int64_t *size, const double *scale, int align_corners, int antialias) {
  GUARD(nullptr,
        at::OptionalIntArrayRef out = size ? at::OptionalIntArrayRef(ints(size, 2)) : at::OptionalIntArrayRef();
        std::optional<at::ArrayRef<double>> factors =
            scale ? std::optional<at::ArrayRef<double>>(at::ArrayRef<double>(scale, 2)) : std::nullopt;
        const bool ac = align_corners != 0;
        switch (mode) {
          case CT_NEAREST: return wrap(at::upsample_nearest2d(T(x), out, factors));
          case CT_NEAREST_EXACT: return wrap(at::_upsample_nearest_exact2d(T(x), out, factors));
          case CT_BILINEAR:
            return wrap(antialias ? at::_upsample_bilinear2d_aa(T(x), out, ac, factors)
                                  : at::upsample_bilinear2d(T(x), out, ac, factors));
          case CT_BICUBIC:
            return wrap(antialias ? at::_upsample_bicubic2d_aa(T(x), out, ac, factors)
                                  : at::upsample_bicubic2d(T(x), out, ac, factors));
        }
        throw std::invalid_argument("unknown interpolation mode " + std::to_string(mode));)
}
ct_tensor ct_adaptive_avg_pool2d(ct_tensor x, const int64_t *out) { TENSOR(at::adaptive_avg_pool2d(T(x), ints(out, 2))) }
ct_tensor ct_avg_pool2d(ct_tensor x, const int64_t *k, const int64_t *s, const int64_t *p, int ceil_mode, int include_pad) {
  TENSOR(at::avg_pool2d(T(x), ints(k, 2), ints(s, 2), ints(p, 2), ceil_mode != 0, include_pad != 0))
}
ct_tensor ct_pad(ct_tensor x, const int64_t *pads, int n, int mode, double value) {
  GUARD(nullptr, static const char *modes[] = {"constant", "reflect", "replicate", "circular"};
        if (mode < 0 || mode > 3) throw std::invalid_argument("unknown pad mode " + std::to_string(mode));
        return wrap(at::pad(T(x), ints(pads, n), modes[mode], mode == CT_PAD_CONSTANT ? std::optional<double>(value) : std::nullopt));)
}
ct_tensor ct_cosine_similarity(ct_tensor a, ct_tensor b, int64_t dim, double eps) {
  TENSOR(at::cosine_similarity(T(a), T(b), dim, eps))
}
// F.normalize: x / max(||x||_p, eps), with the norm expanded back over `dim`.
ct_tensor ct_normalize(ct_tensor x, double p, int64_t dim, double eps) {
  TENSOR(T(x) / at::norm(T(x), p, {dim}, true).clamp_min(eps).expand_as(T(x)))
}
ct_tensor ct_mse_loss(ct_tensor a, ct_tensor b, int reduction) { TENSOR(at::mse_loss(T(a), T(b), reduction)) }

// MARK: autograd
int ct_requires_grad(ct_tensor t) { GUARD(-1, return T(t).requires_grad() ? 1 : 0;) }
// requires_grad_ (not set_requires_grad): it refuses non-leaves as Python does.
int ct_set_requires_grad(ct_tensor t, int r) { STATUS(T(t).requires_grad_(r != 0)) }
int ct_is_leaf(ct_tensor t) { GUARD(-1, return T(t).is_leaf() ? 1 : 0;) }
int ct_grad(ct_tensor t, ct_tensor *out) {
  STATUS(const at::Tensor &g = T(t).grad(); *out = g.defined() ? wrap(g) : nullptr)
}
int ct_set_grad(ct_tensor t, ct_tensor g) {
  STATUS(if (g == nullptr) T(t).mutable_grad().reset(); else T(t).mutable_grad() = T(g))
}
int ct_backward(ct_tensor t, ct_tensor gradient, int retain_graph, int create_graph) {
  STATUS(T(t).backward(gradient ? T(gradient) : at::Tensor(),
                       retain_graph < 0 ? std::nullopt : std::optional<bool>(retain_graph != 0), create_graph != 0))
}
int ct_autograd_backward(const ct_tensor *tensors_in, int n, const ct_tensor *grads, int retain_graph, int create_graph) {
  STATUS(
      std::vector<at::Tensor> gs;
      if (grads) for (int i = 0; i < n; i++) gs.push_back(grads[i] ? T(grads[i]) : at::Tensor());
      torch::autograd::backward(tensors(tensors_in, n), gs,
                                retain_graph < 0 ? std::nullopt : std::optional<bool>(retain_graph != 0),
                                create_graph != 0);)
}
int ct_autograd_grad(const ct_tensor *outputs, int n_out, const ct_tensor *inputs, int n_in,
                     const ct_tensor *grad_outputs, int retain_graph, int create_graph, int allow_unused,
                     ct_tensor *results) {
  STATUS(
      std::vector<at::Tensor> gos;
      if (grad_outputs) for (int i = 0; i < n_out; i++) gos.push_back(grad_outputs[i] ? T(grad_outputs[i]) : at::Tensor());
      auto grads = torch::autograd::grad(tensors(outputs, n_out), tensors(inputs, n_in), gos,
                                         retain_graph < 0 ? std::nullopt : std::optional<bool>(retain_graph != 0),
                                         create_graph != 0, allow_unused != 0);
      if (static_cast<int>(grads.size()) != n_in)
        throw std::logic_error("autograd.grad gave " + std::to_string(grads.size()) + " gradients for " +
                               std::to_string(n_in) + " inputs");
      wrap_all(grads, results);)
}
int ct_grad_enabled(void) { return at::GradMode::is_enabled() ? 1 : 0; }
void ct_set_grad_enabled(int enabled) { at::GradMode::set_enabled(enabled != 0); }
int ct_autocast_push(int dt, int dtype, int enabled, int *prev_enabled, int *prev_dtype) {
  STATUS(at::DeviceType d = device_type(dt); *prev_enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
         *prev_dtype = dtype_code(at::autocast::get_autocast_dtype(d));
         at::autocast::set_autocast_enabled(d, enabled != 0);
         at::autocast::set_autocast_dtype(d, scalar_type(dtype)); at::autocast::increment_nesting())
}
int ct_autocast_pop(int dt, int prev_enabled, int prev_dtype) {
  STATUS(at::DeviceType d = device_type(dt);
         // Python's autocast clears the cast-weight cache when the outermost scope exits.
         if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
         at::autocast::set_autocast_enabled(d, prev_enabled != 0);
         at::autocast::set_autocast_dtype(d, scalar_type(prev_dtype)))
}
int ct_autocast_enabled(int dt) { GUARD(-1, return at::autocast::is_autocast_enabled(device_type(dt)) ? 1 : 0;) }


// MARK: distributed
#ifdef CT_HAS_GLOO
namespace {
struct ProcessGroupHandle {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> group;  // ProcessGroupGloo, or ProcessGroupNCCL from the plugin
};
// The plugin's one entry (native/nccl/textcraftor_nccl.cpp): takes a Store reference, gives a Backend reference.
using NCCLBackendFactory = void *(*)(void *store, int rank, int size, long long timeout_ms, char *error, int capacity);
c10::intrusive_ptr<c10d::Backend> nccl_backend(const char *plugin, c10::intrusive_ptr<c10d::Store> store, int rank,
                                               int size, int64_t timeout_ms) {
  void *library = dlopen(plugin, RTLD_NOW | RTLD_GLOBAL);
  if (library == nullptr) {
    const char *message = dlerror();
    throw std::runtime_error(std::string("cannot load the NCCL plugin: ") + (message ? message : plugin));
  }
  auto factory = reinterpret_cast<NCCLBackendFactory>(dlsym(library, "textcraftor_nccl_backend"));
  if (factory == nullptr) throw std::runtime_error(std::string(plugin) + " has no textcraftor_nccl_backend: not the NCCL plugin");
  char error[1024] = {0};
  void *backend = factory(store.release(), rank, size, static_cast<long long>(timeout_ms), error, sizeof error);
  if (backend == nullptr) throw std::runtime_error(std::string("ProcessGroupNCCL: ") + error);
  return c10::intrusive_ptr<c10d::Backend>::reclaim(static_cast<c10d::Backend *>(backend));
}
ProcessGroupHandle &PG(ct_process_group pg) { return *reinterpret_cast<ProcessGroupHandle *>(pg); }
std::vector<at::Tensor> tensor_list(const ct_tensor *tensors, int n) {
  std::vector<at::Tensor> list;
  for (int i = 0; i < n; i++) list.push_back(T(tensors[i]));
  return list;
}
}  // namespace

int ct_dist_available(void) { return 1; }
ct_process_group ct_dist_init(const char *host, int port, int rank, int world_size, int host_store, int64_t timeout_ms,
                              const char *nccl_plugin) {
  GUARD(nullptr, {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(port);
    options.isServer = host_store != 0;
    // Every process counts itself in (waitWorkers on a client); the host then waits for all of them.
    options.numWorkers = world_size;
    options.waitWorkers = true;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    auto handle = std::make_unique<ProcessGroupHandle>();
    handle->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    // The group's own keys under a prefix, as init_process_group does: a launcher's store holds keys of its own.
    auto prefixed = c10::static_intrusive_pointer_cast<c10d::Store>(
        c10::make_intrusive<c10d::PrefixStore>("textcraftor/pg", handle->store));
    if (nccl_plugin != nullptr) {
      handle->group = nccl_backend(nccl_plugin, prefixed, rank, world_size, timeout_ms);
    } else {
      auto gloo = c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(timeout_ms));
      handle->group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world_size, gloo);
    }
    return reinterpret_cast<ct_process_group>(handle.release());
  })
}
void ct_dist_free(ct_process_group pg) { delete &PG(pg); }
int ct_dist_all_reduce(ct_process_group pg, const ct_tensor *tensors, int n, int op) {
  STATUS(auto list = tensor_list(tensors, n); c10d::AllreduceOptions options;
         options.reduceOp = op == CT_REDUCE_MAX ? c10d::ReduceOp::MAX : op == CT_REDUCE_MIN ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM;
         PG(pg).group->allreduce(list, options)->wait())
}
int ct_dist_broadcast(ct_process_group pg, const ct_tensor *tensors, int n, int root) {
  STATUS(auto list = tensor_list(tensors, n); c10d::BroadcastOptions options; options.rootRank = root;
         PG(pg).group->broadcast(list, options)->wait())
}
int ct_dist_barrier(ct_process_group pg) { STATUS(PG(pg).group->barrier()->wait()) }
int ct_dist_store_set(ct_process_group pg, const char *key, const char *value) {
  STATUS(std::string v(value); PG(pg).store->set(key, std::vector<uint8_t>(v.begin(), v.end())))
}
int ct_dist_store_get(ct_process_group pg, const char *key, char *out, int cap) {
  GUARD(-1, {
    out[0] = 0;
    if (!PG(pg).store->check({std::string(key)})) return 0;
    auto value = PG(pg).store->get(key);
    size_t n = std::min(value.size(), static_cast<size_t>(cap > 0 ? cap - 1 : 0));
    std::memcpy(out, value.data(), n);
    out[n] = 0;
    return static_cast<int>(value.size());
  })
}
#else
int ct_dist_available(void) { return 0; }
namespace {
void no_gloo() { set_error("this build of the shim has no Gloo (install libgloo-dev and rebuild)"); }
}  // namespace
ct_process_group ct_dist_init(const char *, int, int, int, int, int64_t, const char *) { no_gloo(); return nullptr; }
void ct_dist_free(ct_process_group) {}
int ct_dist_all_reduce(ct_process_group, const ct_tensor *, int, int) { no_gloo(); return -1; }
int ct_dist_broadcast(ct_process_group, const ct_tensor *, int, int) { no_gloo(); return -1; }
int ct_dist_barrier(ct_process_group) { no_gloo(); return -1; }
int ct_dist_store_set(ct_process_group, const char *, const char *) { no_gloo(); return -1; }
int ct_dist_store_get(ct_process_group, const char *, char *, int) { no_gloo(); return -1; }
#endif
