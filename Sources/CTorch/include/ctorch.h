// ctorch.h: the flat C API over libtorch (ATen + autograd) that the Swift `Torch` module wraps.
//
// Rules (the model is tch-rs's torch_api):
// - Tensors and generators are opaque handles owned by the caller; free them with ct_free / ct_generator_free.
// - Every entry point is guarded: a C++ exception never crosses this boundary. On failure a function returns NULL
//   (handles) or -1 (ints), and ct_last_error() gives libtorch's message for this thread until the next failure.
// - Optional tensor arguments take NULL. Shapes and dimension lists are (pointer, count) pairs.
// - dtype codes are CT_* below (not ATen's ScalarType numbers); device type 0 = CPU, 1 = CUDA.
#ifndef CTORCH_H
#define CTORCH_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ct_tensor_opaque *ct_tensor;
typedef struct ct_generator_opaque *ct_generator;

enum { CT_F32 = 0, CT_F16 = 1, CT_BF16 = 2, CT_I64 = 3, CT_I32 = 4, CT_BOOL = 5, CT_U8 = 6, CT_F64 = 7, CT_I8 = 8,
       CT_I16 = 9 };
enum { CT_CPU = 0, CT_CUDA = 1, CT_META = 2 };

// MARK: errors and runtime
const char *ct_last_error(void);  // NULL when the last guarded call on this thread succeeded
void ct_clear_error(void);
const char *ct_version(void);      // the TORCH_VERSION the shim was compiled against
const char *ct_build_config(void); // at::show_config() of the loaded libtorch (holds its run-time TORCH_VERSION)
int ct_get_num_threads(void);
int ct_set_num_threads(int n);
int ct_cuda_load(const char *libtorch_cuda_path); // dlopen with RTLD_GLOBAL; 0 ok, -1 with the dlerror message
int ct_cuda_is_available(void);
int ct_cuda_device_count(void);
int ct_cuda_synchronize(int device_index);
/* The CUDA caching allocator's statistics for a device (torch.cuda.max_memory_allocated and friends), in bytes:
   out[0] allocated now, out[1] peak allocated, out[2] reserved now, out[3] peak reserved. */
int ct_cuda_memory_stats(int device_index, int64_t *out);
int ct_set_tf32(int enabled);

// MARK: lifetime and metadata
void ct_free(ct_tensor t);
int64_t ct_thread_live_handles(void); // handles made minus handles freed on this thread (for leak tests)
// For leak tests: on this thread, the wrap after the next n handles fails as if out of memory (n < 0: never).
void ct_debug_fail_wraps_after(int64_t n);
ct_tensor ct_shallow_clone(ct_tensor t); // a second handle to the same tensor (shares storage and autograd)
int ct_defined(ct_tensor t);
int ct_dim(ct_tensor t);
int ct_shape(ct_tensor t, int64_t *out); // out has room for ct_dim values
int ct_strides(ct_tensor t, int64_t *out);
int64_t ct_numel(ct_tensor t);
int ct_dtype(ct_tensor t);
int ct_device(ct_tensor t, int *type, int *index);
int ct_is_contiguous(ct_tensor t);
int64_t ct_storage_offset(ct_tensor t);
const void *ct_data_ptr(ct_tensor t);

// MARK: creation and copies in and out
ct_tensor ct_from_data(const void *data, const int64_t *shape, int ndim, int dtype); // copies the bytes
int ct_copy_to_host(ct_tensor t, void *out, int64_t nbytes); // contiguous CPU copy in t's own dtype
double ct_item(ct_tensor t);
ct_tensor ct_empty(const int64_t *shape, int ndim, int dtype, int device_type, int device_index);
ct_tensor ct_full(const int64_t *shape, int ndim, double value, int dtype, int device_type, int device_index);
ct_tensor ct_arange(double start, double end, double step, int dtype, int device_type, int device_index);
ct_tensor ct_linspace(double start, double end, int64_t steps, int dtype, int device_type, int device_index);
ct_tensor ct_full_like(ct_tensor t, double value);
// Random draws use `gen`, or the default generator of the device when gen is NULL.
ct_tensor ct_randn(const int64_t *shape, int ndim, int dtype, ct_generator gen, int device_type, int device_index);
ct_tensor ct_rand(const int64_t *shape, int ndim, int dtype, ct_generator gen, int device_type, int device_index);
ct_tensor ct_randint(int64_t low, int64_t high, const int64_t *shape, int ndim, ct_generator gen, int device_type,
                     int device_index);
ct_tensor ct_randperm(int64_t n, ct_generator gen);
int ct_normal_(ct_tensor t, double mean, double std, ct_generator gen);
int ct_uniform_(ct_tensor t, double from, double to, ct_generator gen);

// MARK: generators
ct_generator ct_generator_new(uint64_t seed, int device_type, int device_index);
ct_generator ct_generator_default(int device_type, int device_index); // a handle to the global generator
void ct_generator_free(ct_generator g);
int ct_generator_set_seed(ct_generator g, uint64_t seed);
uint64_t ct_generator_seed(ct_generator g);
ct_tensor ct_generator_get_state(ct_generator g); // uint8 tensor, as torch.Generator.get_state()
int ct_generator_set_state(ct_generator g, ct_tensor state);
int ct_manual_seed(uint64_t seed); // torch.manual_seed: the CPU generator and every CUDA device's

// MARK: conversion
ct_tensor ct_to(ct_tensor t, int dtype, int device_type, int device_index, int non_blocking, int copy);
ct_tensor ct_clone(ct_tensor t);
ct_tensor ct_detach(ct_tensor t);
ct_tensor ct_contiguous(ct_tensor t);

// MARK: views and joins
ct_tensor ct_reshape(ct_tensor t, const int64_t *shape, int ndim);
ct_tensor ct_view(ct_tensor t, const int64_t *shape, int ndim);
ct_tensor ct_permute(ct_tensor t, const int64_t *dims, int ndim);
ct_tensor ct_transpose(ct_tensor t, int64_t dim0, int64_t dim1);
ct_tensor ct_expand(ct_tensor t, const int64_t *shape, int ndim);
ct_tensor ct_squeeze(ct_tensor t, const int64_t *dims, int ndims); // ndims == 0: every dimension of size 1
ct_tensor ct_unsqueeze(ct_tensor t, int64_t dim);
ct_tensor ct_flatten(ct_tensor t, int64_t start_dim, int64_t end_dim);
ct_tensor ct_slice(ct_tensor t, int64_t dim, int64_t start, int64_t end, int64_t step);
ct_tensor ct_narrow(ct_tensor t, int64_t dim, int64_t start, int64_t length);
ct_tensor ct_select(ct_tensor t, int64_t dim, int64_t index);
ct_tensor ct_index_select(ct_tensor t, int64_t dim, ct_tensor index);
ct_tensor ct_gather(ct_tensor t, int64_t dim, ct_tensor index);
ct_tensor ct_repeat(ct_tensor t, const int64_t *repeats, int n);
ct_tensor ct_repeat_interleave(ct_tensor t, int64_t repeats, int64_t dim);
ct_tensor ct_cat(const ct_tensor *ts, int n, int64_t dim);
ct_tensor ct_stack(const ct_tensor *ts, int n, int64_t dim);
int ct_chunk(ct_tensor t, int64_t chunks, int64_t dim, ct_tensor *out, int capacity); // returns the count
int ct_split(ct_tensor t, const int64_t *sizes, int nsizes, int64_t dim, ct_tensor *out, int capacity);
ct_tensor ct_tril(ct_tensor t, int64_t diagonal);
ct_tensor ct_triu(ct_tensor t, int64_t diagonal);

// MARK: element-wise
typedef enum {
  CT_NEG, CT_ABS, CT_EXP, CT_LOG, CT_SQRT, CT_RSQRT, CT_SIN, CT_COS, CT_TANH, CT_SIGMOID, CT_RELU, CT_SILU,
  CT_GELU, CT_GELU_TANH, CT_QUICK_GELU, CT_SQUARE, CT_FLOOR, CT_CEIL, CT_ROUND, CT_SIGN, CT_RECIPROCAL, CT_ERF,
  CT_LOG1P, CT_EXPM1, CT_LOGICAL_NOT, CT_ISNAN, CT_ISFINITE, CT_SOFTPLUS
} ct_unary_op;
typedef enum {
  CT_ADD, CT_SUB, CT_MUL, CT_DIV, CT_POW, CT_MAXIMUM, CT_MINIMUM, CT_EQ, CT_NE, CT_LT, CT_LE, CT_GT, CT_GE,
  CT_LOGICAL_AND, CT_LOGICAL_OR, CT_REMAINDER, CT_ATAN2
} ct_binary_op;
ct_tensor ct_unary(int op, ct_tensor t);
ct_tensor ct_binary(int op, ct_tensor a, ct_tensor b);
ct_tensor ct_binary_scalar(int op, ct_tensor a, double s);  // a op s
ct_tensor ct_scalar_binary(int op, double s, ct_tensor a);  // s op a
ct_tensor ct_add_scaled(ct_tensor a, ct_tensor b, double alpha); // a + alpha * b
ct_tensor ct_clamp(ct_tensor t, double min, double max, int has_min, int has_max);
ct_tensor ct_where(ct_tensor cond, ct_tensor a, ct_tensor b);
ct_tensor ct_masked_fill(ct_tensor t, ct_tensor mask, double value);
ct_tensor ct_lerp(ct_tensor a, ct_tensor b, double weight);

// MARK: in place (for optimisers and buffers; they bump the version counter as in Python)
int ct_binary_(int op, ct_tensor self, ct_tensor other);       // CT_ADD/SUB/MUL/DIV
int ct_binary_scalar_(int op, ct_tensor self, double s);       // CT_ADD/SUB/MUL/DIV/POW
int ct_add_scaled_(ct_tensor self, ct_tensor other, double alpha);
int ct_addcmul_(ct_tensor self, ct_tensor a, ct_tensor b, double value);
int ct_addcdiv_(ct_tensor self, ct_tensor a, ct_tensor b, double value);
int ct_lerp_(ct_tensor self, ct_tensor end, double weight);
int ct_copy_(ct_tensor self, ct_tensor src);
int ct_fill_(ct_tensor self, double value);
int ct_zero_(ct_tensor self);
int ct_clamp_(ct_tensor self, double min, double max, int has_min, int has_max);

// MARK: reductions (ndims == 0 reduces over every dimension)
typedef enum { CT_SUM, CT_MEAN, CT_AMAX, CT_AMIN, CT_PROD, CT_LOGSUMEXP, CT_ANY, CT_ALL } ct_reduce_op;
ct_tensor ct_reduce(int op, ct_tensor t, const int64_t *dims, int ndims, int keepdim);
ct_tensor ct_var(ct_tensor t, const int64_t *dims, int ndims, double correction, int keepdim, int take_sqrt);
int ct_max_dim(ct_tensor t, int64_t dim, int keepdim, int take_min, ct_tensor *values, ct_tensor *indices);
ct_tensor ct_argmax(ct_tensor t, int64_t dim, int has_dim, int keepdim, int take_min);
ct_tensor ct_norm(ct_tensor t, double p, const int64_t *dims, int ndims, int keepdim);
ct_tensor ct_cumsum(ct_tensor t, int64_t dim);

// MARK: linear algebra
ct_tensor ct_matmul(ct_tensor a, ct_tensor b);
ct_tensor ct_bmm(ct_tensor a, ct_tensor b);
ct_tensor ct_baddbmm(ct_tensor input, ct_tensor a, ct_tensor b, double beta, double alpha);
ct_tensor ct_linear(ct_tensor x, ct_tensor weight, ct_tensor bias);

// MARK: neural-network functions
ct_tensor ct_conv2d(ct_tensor x, ct_tensor weight, ct_tensor bias, const int64_t *stride, const int64_t *padding,
                    const int64_t *dilation, int64_t groups);
ct_tensor ct_group_norm(ct_tensor x, int64_t groups, ct_tensor weight, ct_tensor bias, double eps);
ct_tensor ct_layer_norm(ct_tensor x, const int64_t *normalized_shape, int n, ct_tensor weight, ct_tensor bias,
                        double eps);
ct_tensor ct_softmax(ct_tensor t, int64_t dim, int log);
// scale < 0 means the default 1/sqrt(head_dim).
ct_tensor ct_scaled_dot_product_attention(ct_tensor q, ct_tensor k, ct_tensor v, ct_tensor mask, double dropout_p,
                                          int is_causal, double scale);
ct_tensor ct_dropout(ct_tensor t, double p, int train);
ct_tensor ct_embedding(ct_tensor weight, ct_tensor indices);
typedef enum { CT_NEAREST, CT_BILINEAR, CT_BICUBIC, CT_NEAREST_EXACT } ct_interp_mode;
// Either size (2 values) or scale (2 values) is non-NULL, as F.interpolate(size=...) or (scale_factor=...).
ct_tensor ct_interpolate(ct_tensor x, int mode, const int64_t *size, const double *scale, int align_corners,
                         int antialias);
ct_tensor ct_adaptive_avg_pool2d(ct_tensor x, const int64_t *output_size);
ct_tensor ct_avg_pool2d(ct_tensor x, const int64_t *kernel, const int64_t *stride, const int64_t *padding,
                        int ceil_mode, int count_include_pad);
typedef enum { CT_PAD_CONSTANT, CT_PAD_REFLECT, CT_PAD_REPLICATE, CT_PAD_CIRCULAR } ct_pad_mode;
ct_tensor ct_pad(ct_tensor x, const int64_t *pads, int npads, int mode, double value);
ct_tensor ct_cosine_similarity(ct_tensor a, ct_tensor b, int64_t dim, double eps);
ct_tensor ct_normalize(ct_tensor x, double p, int64_t dim, double eps);
ct_tensor ct_mse_loss(ct_tensor a, ct_tensor b, int reduction); // 0 none, 1 mean, 2 sum

// MARK: autograd
int ct_requires_grad(ct_tensor t);
int ct_set_requires_grad(ct_tensor t, int requires_grad);
int ct_is_leaf(ct_tensor t);
int ct_grad(ct_tensor t, ct_tensor *out); // *out = NULL when t has no gradient yet
int ct_set_grad(ct_tensor t, ct_tensor grad); // grad NULL: drop the gradient
int ct_backward(ct_tensor t, ct_tensor gradient, int retain_graph, int create_graph);
// torch.autograd.backward(tensors, grad_tensors): one backward pass from several outputs at once, each with its
// gradient (grads may be NULL or hold NULL entries, for outputs of one element).
int ct_autograd_backward(const ct_tensor *tensors, int n, const ct_tensor *grads, int retain_graph, int create_graph);
// torch.autograd.grad. grad_outputs may be NULL or hold NULL entries; an unused input gives a NULL result
// when allow_unused.
int ct_autograd_grad(const ct_tensor *outputs, int n_outputs, const ct_tensor *inputs, int n_inputs,
                     const ct_tensor *grad_outputs, int retain_graph, int create_graph, int allow_unused,
                     ct_tensor *results);
int ct_grad_enabled(void);
void ct_set_grad_enabled(int enabled);
// Autocast: push enters a scope (saving the previous state in prev_*), pop restores it.
int ct_autocast_push(int device_type, int dtype, int enabled, int *prev_enabled, int *prev_dtype);
int ct_autocast_pop(int device_type, int prev_enabled, int prev_dtype);
int ct_autocast_enabled(int device_type);

// MARK: distributed: c10d's TCPStore for rendezvous and its Gloo process group (the engine torch.distributed runs on)
typedef struct ct_process_group_opaque *ct_process_group;
enum { CT_REDUCE_SUM = 0, CT_REDUCE_MAX = 1, CT_REDUCE_MIN = 2 };
int ct_dist_available(void); // 1 when the shim was built with Gloo's headers (libgloo-dev), else 0
// host_store: this process hosts the store at host:port (rank 0, unless a launcher such as torchrun already hosts
// it); every rank connects, then the group forms. timeout_ms bounds the rendezvous and every later collective.
// nccl_plugin: NULL for Gloo; else the path of libtextcraftor_nccl.so (native/nccl), whose ProcessGroupNCCL then
// runs the collectives (CUDA tensors; libtorch_cuda must be loaded first).
ct_process_group ct_dist_init(const char *host, int port, int rank, int world_size, int host_store, int64_t timeout_ms,
                              const char *nccl_plugin);
void ct_dist_free(ct_process_group pg);
int ct_dist_all_reduce(ct_process_group pg, const ct_tensor *tensors, int n, int op); // in place, one collective
int ct_dist_broadcast(ct_process_group pg, const ct_tensor *tensors, int n, int root); // in place
int ct_dist_barrier(ct_process_group pg);
int ct_dist_store_set(ct_process_group pg, const char *key, const char *value);
// The value of key if the store has it now (no waiting): its length, written to out (NUL-terminated, cut to cap);
// 0 and out "" when the key is absent; -1 when the store cannot be reached.
int ct_dist_store_get(ct_process_group pg, const char *key, char *out, int cap);

#ifdef __cplusplus
}
#endif
#endif
