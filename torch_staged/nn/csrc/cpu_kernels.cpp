// CPU kernels of torch_staged (compiled on first use, see torch_staged/nn/_cpp.py).
//
// csr_aggregate:  out[s, h, :] = sum_{j in [ptr[s], ptr[s+1])} alpha[perm[j], h] * x[col[j], :]
// its backward:   grad_alpha[perm[j], h] = <grad[s, h, :], x[col[j], :]>          (per row s)
//                 grad_x[u, :] = sum_{j in [ptr_t[u], ptr_t[u+1])} sum_h
//                                alpha[perm_t[j], h] * grad[col_t[j], h, :]      (per source u)
// typed_linear:   out[m, b, :] = a[m, b, :] @ w[type[m], b] (+ bias[b, :])
// its backward:   grad_a[m, b, :] = grad[m, b, :] @ w[type[m], b]^T,
//                 grad_w[k, b] = sum_{m: type[m] = k} a[m, b, :]^T grad[m, b, :]
//
// float32 on x86-64 CPUs with AVX-512 takes vectorised versions of these loops
// (16 lanes, masked for the last columns; chosen at run time, so one build runs on
// any x86-64 machine; `simd(0)` turns them off); float64, and float32 elsewhere,
// the portable loops. Both multiply and add in the same order without fused
// multiply-adds, so they give the same bits.
//
// Every output row is written by one thread (no atomics): the backward of the
// aggregation walks the transposed layout, and the weight gradient of
// typed_linear sums per-thread partial tables. Threads come from
// at::parallel_for (OpenMP in the CPU builds of torch; torch.set_num_threads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TS_SIMD 1
#define TS_AVX512 __attribute__((target("avx512f")))
#else
#define TS_SIMD 0
#endif

namespace {

constexpr int64_t kGrain = 256;  // rows per task

bool simd_enabled = true;

// Whether the AVX-512 loops run: the CPU has them and they are on.
bool simd_active() {
#if TS_SIMD
  static const bool cpu_has = __builtin_cpu_supports("avx512f");
  return simd_enabled && cpu_has;
#else
  return false;
#endif
}

// Whether a float32 tensor like t takes them.
bool use_simd(const at::Tensor& t) { return simd_active() && t.scalar_type() == at::kFloat; }

// Turns the AVX-512 loops on (1) or off (0), or leaves them (-1); returns whether
// float32 takes them now.
int64_t simd(int64_t enabled) {
  if (enabled >= 0) simd_enabled = enabled != 0;
  return simd_active() ? 1 : 0;
}

#if TS_SIMD
// --------------------------------------------------------------- AVX-512 (float32)
// Each loop multiplies and adds in the same order as its portable version, with
// no fused multiply-add (-ffp-contract=off), so both give the same bits.
TS_AVX512 inline __mmask16 lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// acc + w * row[0:16] (the lanes of k)
TS_AVX512 inline __m512 add_row(__m512 acc, float w, const float* row, __mmask16 k) {
  return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(w), _mm512_maskz_loadu_ps(k, row)));
}

// out[s, h, :] = sum_j alpha[perm[j], h] x[col[j], :] for the rows [begin, end)
TS_AVX512 void aggregate_avx512(const float* alpha, const float* x, const int64_t* ptr,
                                const int64_t* col, const int64_t* perm, float* out,
                                int64_t begin, int64_t end, int64_t H, int64_t D) {
  for (int64_t s = begin; s < end; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t c0 = 0; c0 < D; c0 += 16) {
        const __mmask16 k = lanes(D - c0);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t j = ptr[s]; j < ptr[s + 1]; ++j)
          acc = add_row(acc, alpha[perm[j] * H + h], x + col[j] * D + c0, k);
        _mm512_mask_storeu_ps(out + (s * H + h) * D + c0, k, acc);
      }
}

// grad_alpha[perm[j], h] = <grad[s, h, :], x[col[j], :]> for the rows [begin, end):
// the products 16 at a time, their sum in order
TS_AVX512 void alpha_grad_avx512(const float* grad, const float* x, const int64_t* ptr,
                                 const int64_t* col, const int64_t* perm, float* grad_alpha,
                                 int64_t begin, int64_t end, int64_t H, int64_t D) {
  alignas(64) float products[16];
  for (int64_t s = begin; s < end; ++s)
    for (int64_t j = ptr[s]; j < ptr[s + 1]; ++j)
      for (int64_t h = 0; h < H; ++h) {
        float acc = 0;
        for (int64_t c0 = 0; c0 < D; c0 += 16) {
          const __mmask16 k = lanes(D - c0);
          _mm512_store_ps(products,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(k, grad + (s * H + h) * D + c0),
                                        _mm512_maskz_loadu_ps(k, x + col[j] * D + c0)));
          for (int64_t c = 0; c < std::min<int64_t>(16, D - c0); ++c) acc += products[c];
        }
        grad_alpha[perm[j] * H + h] = acc;
      }
}

// grad_x[u, :] = sum_j sum_h alpha[perm_t[j], h] grad[col_t[j], h, :], u in [begin, end)
TS_AVX512 void x_grad_avx512(const float* grad, const float* alpha, const int64_t* ptr_t,
                             const int64_t* col_t, const int64_t* perm_t, float* grad_x,
                             int64_t begin, int64_t end, int64_t H, int64_t D) {
  for (int64_t u = begin; u < end; ++u)
    for (int64_t c0 = 0; c0 < D; c0 += 16) {
      const __mmask16 k = lanes(D - c0);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = ptr_t[u]; j < ptr_t[u + 1]; ++j)
        for (int64_t h = 0; h < H; ++h)
          acc = add_row(acc, alpha[perm_t[j] * H + h], grad + (col_t[j] * H + h) * D + c0, k);
      _mm512_mask_storeu_ps(grad_x + u * D + c0, k, acc);
    }
}

// Rows dst_r = a_r @ w_r (+ bias_r) of P (row, block) pairs at once, 16 columns at a
// time: P chains of additions in flight
template <int P>
TS_AVX512 inline void typed_pairs_avx512(const float* const* am, const float* const* wb,
                                         const float* const* bias, float* const* dst,
                                         int64_t Din, int64_t Dout, int64_t sd) {
  for (int64_t c0 = 0; c0 < Dout; c0 += 16) {
    const __mmask16 k = lanes(Dout - c0);
    __m512 acc[P];
    for (int r = 0; r < P; ++r)
      acc[r] = bias[r] ? _mm512_maskz_loadu_ps(k, bias[r] + c0) : _mm512_setzero_ps();
    for (int64_t d = 0; d < Din; ++d)
      for (int r = 0; r < P; ++r) acc[r] = add_row(acc[r], am[r][d * sd], wb[r] + d * Dout + c0, k);
    for (int r = 0; r < P; ++r) _mm512_mask_storeu_ps(dst[r] + c0, k, acc[r]);
  }
}

// grad_w[type[m], b] += a[m, b, :]^T grad[m, b, :] for the rows [begin, end); the
// table is small and stays in the L1 cache
TS_AVX512 void typed_grad_w_avx512(const float* grad, int64_t sgm, int64_t sgb, int64_t sgd,
                                   const int64_t* type, const float* a, float* grad_w,
                                   int64_t begin, int64_t end, int64_t B, int64_t Din,
                                   int64_t Dout) {
  std::vector<float> row(Dout);
  for (int64_t m = begin; m < end; ++m)
    for (int64_t b = 0; b < B; ++b) {
      const float* g = grad + m * sgm + b * sgb;
      if (sgd != 1) {
        for (int64_t c = 0; c < Dout; ++c) row[c] = g[c * sgd];
        g = row.data();
      }
      const float* am = a + (m * B + b) * Din;
      float* gb = grad_w + (type[m] * B + b) * Din * Dout;
      for (int64_t c0 = 0; c0 < Dout; c0 += 16) {
        const __mmask16 k = lanes(Dout - c0);
        const __m512 gv = _mm512_maskz_loadu_ps(k, g + c0);
        for (int64_t d = 0; d < Din; ++d) {
          float* dst = gb + d * Dout + c0;
          const __m512 term = _mm512_mul_ps(_mm512_set1_ps(am[d]), gv);
          _mm512_mask_storeu_ps(dst, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dst), term));
        }
      }
    }
}
#endif  // TS_SIMD

template <typename scalar_t>
void aggregate_rows(const scalar_t* __restrict__ alpha, const scalar_t* __restrict__ x,
                    const int64_t* __restrict__ ptr, const int64_t* __restrict__ col,
                    const int64_t* __restrict__ perm, scalar_t* __restrict__ out,
                    int64_t num_rows, int64_t H, int64_t D) {
  at::parallel_for(0, num_rows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      scalar_t* o = out + s * H * D;
      for (int64_t i = 0; i < H * D; ++i) o[i] = 0;
      for (int64_t j = ptr[s]; j < ptr[s + 1]; ++j) {
        const scalar_t* xs = x + col[j] * D;
        const scalar_t* a = alpha + perm[j] * H;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t w = a[h];
          scalar_t* oh = o + h * D;
          for (int64_t d = 0; d < D; ++d) oh[d] += w * xs[d];
        }
      }
    }
  });
}

template <typename scalar_t>
void alpha_grad_rows(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                     const int64_t* __restrict__ ptr, const int64_t* __restrict__ col,
                     const int64_t* __restrict__ perm, scalar_t* __restrict__ grad_alpha,
                     int64_t num_rows, int64_t H, int64_t D) {
  at::parallel_for(0, num_rows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const scalar_t* g = grad + s * H * D;
      for (int64_t j = ptr[s]; j < ptr[s + 1]; ++j) {
        const scalar_t* xs = x + col[j] * D;
        scalar_t* ga = grad_alpha + perm[j] * H;
        for (int64_t h = 0; h < H; ++h) {
          scalar_t acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += g[h * D + d] * xs[d];
          ga[h] = acc;
        }
      }
    }
  });
}

template <typename scalar_t>
void x_grad_rows(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ alpha,
                 const int64_t* __restrict__ ptr_t, const int64_t* __restrict__ col_t,
                 const int64_t* __restrict__ perm_t, scalar_t* __restrict__ grad_x,
                 int64_t num_nodes, int64_t H, int64_t D) {
  at::parallel_for(0, num_nodes, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      scalar_t* gx = grad_x + u * D;
      for (int64_t d = 0; d < D; ++d) gx[d] = 0;
      for (int64_t j = ptr_t[u]; j < ptr_t[u + 1]; ++j) {
        const scalar_t* g = grad + col_t[j] * H * D;
        const scalar_t* a = alpha + perm_t[j] * H;
        for (int64_t h = 0; h < H; ++h) {
          const scalar_t w = a[h];
          for (int64_t d = 0; d < D; ++d) gx[d] += w * g[h * D + d];
        }
      }
    }
  });
}

void check_layout(const at::Tensor& ptr, const at::Tensor& col, const at::Tensor& perm) {
  TORCH_CHECK(ptr.scalar_type() == at::kLong && col.scalar_type() == at::kLong &&
                  perm.scalar_type() == at::kLong,
              "torch_staged csr kernels: the index layouts must be int64");
  TORCH_CHECK(ptr.is_contiguous() && col.is_contiguous() && perm.is_contiguous(),
              "torch_staged csr kernels: the index layouts must be contiguous");
}

at::Tensor csr_aggregate(const at::Tensor& alpha, const at::Tensor& x, const at::Tensor& ptr,
                         const at::Tensor& col, const at::Tensor& perm, int64_t num_rows) {
  check_layout(ptr, col, perm);
  TORCH_CHECK(alpha.dim() == 2 && x.dim() == 2 && alpha.is_contiguous() && x.is_contiguous(),
              "csr_aggregate: alpha [E, H] and x [N, D] must be contiguous");
  const int64_t H = alpha.size(1), D = x.size(1);
  auto out = at::empty({num_rows, H, D}, x.options());
#if TS_SIMD
  if (use_simd(x)) {
    const float *a = alpha.data_ptr<float>(), *xs = x.data_ptr<float>();
    const int64_t *p = ptr.data_ptr<int64_t>(), *c = col.data_ptr<int64_t>(),
                  *q = perm.data_ptr<int64_t>();
    float* o = out.data_ptr<float>();
    at::parallel_for(0, num_rows, kGrain, [&](int64_t begin, int64_t end) {
      aggregate_avx512(a, xs, p, c, q, o, begin, end, H, D);
    });
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_aggregate", [&] {
    aggregate_rows<scalar_t>(alpha.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                             ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(),
                             perm.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), num_rows,
                             H, D);
  });
  return out;
}

std::vector<at::Tensor> csr_aggregate_backward(
    const at::Tensor& grad, const at::Tensor& alpha, const at::Tensor& x,
    const at::Tensor& ptr, const at::Tensor& col, const at::Tensor& perm,
    const at::Tensor& ptr_t, const at::Tensor& col_t, const at::Tensor& perm_t,
    bool need_alpha, bool need_x) {
  check_layout(ptr, col, perm);
  check_layout(ptr_t, col_t, perm_t);
  TORCH_CHECK(grad.is_contiguous() && alpha.is_contiguous() && x.is_contiguous(),
              "csr_aggregate_backward: the inputs must be contiguous");
  const int64_t H = alpha.size(1), D = x.size(1);
  const int64_t num_rows = ptr.numel() - 1, num_nodes = ptr_t.numel() - 1;
  at::Tensor grad_alpha = need_alpha ? at::empty_like(alpha) : alpha.new_empty({0});
  at::Tensor grad_x = need_x ? at::empty_like(x) : x.new_empty({0});
  if (need_alpha && grad_alpha.numel() > ptr[num_rows].item<int64_t>() * H)
    grad_alpha.zero_();  // edges in no row
#if TS_SIMD
  if (use_simd(x)) {
    const float *g = grad.data_ptr<float>(), *a = alpha.data_ptr<float>(),
                *xs = x.data_ptr<float>();
    if (need_alpha)
      at::parallel_for(0, num_rows, kGrain, [&](int64_t begin, int64_t end) {
        alpha_grad_avx512(g, xs, ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(),
                          perm.data_ptr<int64_t>(), grad_alpha.data_ptr<float>(), begin, end,
                          H, D);
      });
    if (need_x)
      at::parallel_for(0, num_nodes, kGrain, [&](int64_t begin, int64_t end) {
        x_grad_avx512(g, a, ptr_t.data_ptr<int64_t>(), col_t.data_ptr<int64_t>(),
                      perm_t.data_ptr<int64_t>(), grad_x.data_ptr<float>(), begin, end, H, D);
      });
    return {grad_alpha, grad_x};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_aggregate_backward", [&] {
    if (need_alpha) {
      alpha_grad_rows<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                ptr.data_ptr<int64_t>(), col.data_ptr<int64_t>(),
                                perm.data_ptr<int64_t>(), grad_alpha.data_ptr<scalar_t>(),
                                num_rows, H, D);
    }
    if (need_x)
      x_grad_rows<scalar_t>(grad.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
                            ptr_t.data_ptr<int64_t>(), col_t.data_ptr<int64_t>(),
                            perm_t.data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(),
                            num_nodes, H, D);
  });
  return {grad_alpha, grad_x};
}

// Rows dst_r = a_r @ w_r (+ bias_r) of P independent (row, block) pairs at once,
// in register blocks of 8 columns: P chains of multiply-adds in flight hide
// their latency (one row at a time is latency-bound at these small widths).
template <typename scalar_t, int P>
inline void typed_pairs(const scalar_t* const* am, const scalar_t* const* wb,
                        const scalar_t* const* bias, scalar_t* const* dst, int64_t Din,
                        int64_t Dout, int64_t sd) {
  constexpr int64_t W = 8;
  int64_t c0 = 0;
  for (; c0 + W <= Dout; c0 += W) {
    scalar_t acc[P][W];
    for (int r = 0; r < P; ++r)
      for (int64_t c = 0; c < W; ++c) acc[r][c] = bias[r] ? bias[r][c0 + c] : scalar_t(0);
    for (int64_t d = 0; d < Din; ++d)
      for (int r = 0; r < P; ++r) {
        const scalar_t v = am[r][d * sd];
        const scalar_t* row = wb[r] + d * Dout + c0;
        for (int64_t c = 0; c < W; ++c) acc[r][c] += v * row[c];
      }
    for (int r = 0; r < P; ++r)
      for (int64_t c = 0; c < W; ++c) dst[r][c0 + c] = acc[r][c];
  }
  for (int64_t c = c0; c < Dout; ++c) {
    scalar_t acc[P];
    for (int r = 0; r < P; ++r) acc[r] = bias[r] ? bias[r][c] : scalar_t(0);
    for (int64_t d = 0; d < Din; ++d)
      for (int r = 0; r < P; ++r) acc[r] += am[r][d * sd] * wb[r][d * Dout + c];
    for (int r = 0; r < P; ++r) dst[r][c] = acc[r];
  }
}

// The element strides of an input [M, B, D] (a gradient may be expanded).
struct Strides {
  int64_t m, b, d;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// The P pairs of pointers at once, vectorised where `simd` says so (float32 only).
template <typename scalar_t, int P>
inline void typed_step(const scalar_t* const* am, const scalar_t* const* wb,
                       const scalar_t* const* bias, scalar_t* const* dst, int64_t Din,
                       int64_t Dout, int64_t sd, bool simd) {
#if TS_SIMD
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (simd) return typed_pairs_avx512<P>(am, wb, bias, dst, Din, Dout, sd);
  }
#endif
  (void)simd;
  typed_pairs<scalar_t, P>(am, wb, bias, dst, Din, Dout, sd);
}

template <typename scalar_t>
void typed_rows(const scalar_t* a, Strides sa, const int64_t* type, const scalar_t* w,
                const scalar_t* bias, scalar_t* out, int64_t M, int64_t B, int64_t Din,
                int64_t Dout, bool simd) {
  constexpr int P = 4;
  at::parallel_for(0, M * B, kGrain * B, [&](int64_t begin, int64_t end) {
    const scalar_t* am[P];
    const scalar_t* wb[P];
    const scalar_t* bs[P];
    scalar_t* dst[P];
    int n = 0;
    for (int64_t q = begin; q < end; ++q) {  // (row, block) pair q = m * B + b
      const int64_t m = q / B, b = q % B;
      am[n] = a + m * sa.m + b * sa.b;
      wb[n] = w + (type[m] * B + b) * Din * Dout;
      bs[n] = bias ? bias + b * Dout : nullptr;
      dst[n] = out + q * Dout;
      if (++n == P) {
        typed_step<scalar_t, P>(am, wb, bs, dst, Din, Dout, sa.d, simd);
        n = 0;
      }
    }
    for (int r = 0; r < n; ++r)
      typed_step<scalar_t, 1>(am + r, wb + r, bs + r, dst + r, Din, Dout, sa.d, simd);
  });
}

at::Tensor typed_linear(const at::Tensor& a, const at::Tensor& type, const at::Tensor& w,
                        const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.dim() == 3 && w.dim() == 4 && a.size(1) == w.size(1) &&
                  a.size(2) == w.size(2) && a.is_contiguous() && w.is_contiguous(),
              "typed_linear: a [M, B, Din] and w [K, B, Din, Dout] must be contiguous");
  TORCH_CHECK(type.scalar_type() == at::kLong && type.is_contiguous() &&
                  type.numel() == a.size(0),
              "typed_linear: type must be a contiguous int64 [M]");
  const int64_t M = a.size(0), B = a.size(1), Din = a.size(2), Dout = w.size(3);
  auto out = at::empty({M, B, Dout}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "typed_linear", [&] {
    const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    typed_rows<scalar_t>(a.data_ptr<scalar_t>(), strides_of(a), type.data_ptr<int64_t>(),
                         w.data_ptr<scalar_t>(), b, out.data_ptr<scalar_t>(), M, B, Din,
                         Dout, use_simd(a));
  });
  return out;
}

template <typename scalar_t>
void typed_grad_w(const scalar_t* grad, Strides sg, const int64_t* type, const scalar_t* a,
                  scalar_t* grad_w, int64_t M, int64_t K, int64_t B, int64_t Din,
                  int64_t Dout, bool simd) {
  const int64_t table = K * B * Din * Dout;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                (M + 4095) / 4096));
  std::vector<scalar_t> partial(chunks * table, scalar_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      scalar_t* gw = partial.data() + chunk * table;
      const int64_t begin = M * chunk / chunks, end = M * (chunk + 1) / chunks;
#if TS_SIMD
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (simd) {
          typed_grad_w_avx512(grad, sg.m, sg.b, sg.d, type, a, gw, begin, end, B, Din, Dout);
          continue;
        }
      }
#endif
      std::vector<scalar_t> row_of_grad(Dout);
      scalar_t* __restrict__ g = row_of_grad.data();
      for (int64_t m = begin; m < end; ++m) {
        scalar_t* gt = gw + type[m] * B * Din * Dout;
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* gm = grad + m * sg.m + b * sg.b;
          for (int64_t c = 0; c < Dout; ++c) g[c] = gm[c * sg.d];
          const scalar_t* __restrict__ am = a + (m * B + b) * Din;
          scalar_t* gb = gt + b * Din * Dout;
          for (int64_t d = 0; d < Din; ++d) {
            const scalar_t v = am[d];
            scalar_t* __restrict__ row = gb + d * Dout;
            for (int64_t c = 0; c < Dout; ++c) row[c] += v * g[c];
          }
        }
      }
    }
  });
  for (int64_t i = 0; i < table; ++i) {
    scalar_t acc = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) acc += partial[chunk * table + i];
    grad_w[i] = acc;
  }
}

std::vector<at::Tensor> typed_linear_backward(const at::Tensor& grad, const at::Tensor& a,
                                              const at::Tensor& type, const at::Tensor& w,
                                              bool need_a, bool need_w) {
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == a.size(0) && grad.size(1) == a.size(1) &&
                  grad.size(2) == w.size(3),
              "typed_linear_backward: grad must be [M, B, Dout]");
  const int64_t M = a.size(0), B = a.size(1), Din = a.size(2), Dout = w.size(3);
  at::Tensor grad_a = need_a ? at::empty_like(a) : a.new_empty({0});
  at::Tensor grad_w = need_w ? at::empty_like(w) : w.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "typed_linear_backward", [&] {
    if (need_a) {  // grad_a = grad @ w^T: the forward kernel on the transposed blocks
      const at::Tensor wt = w.transpose(2, 3).contiguous();
      typed_rows<scalar_t>(grad.data_ptr<scalar_t>(), strides_of(grad),
                           type.data_ptr<int64_t>(),
                           wt.data_ptr<scalar_t>(), nullptr, grad_a.data_ptr<scalar_t>(), M,
                           B, Dout, Din, use_simd(a));
    }
    if (need_w)
      typed_grad_w<scalar_t>(grad.data_ptr<scalar_t>(), strides_of(grad),
                             type.data_ptr<int64_t>(),
                             a.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>(), M,
                             w.size(0), B, Din, Dout, use_simd(a));
  });
  return {grad_a, grad_w};
}

}  // namespace

TORCH_LIBRARY(torch_staged_cpu, m) {
  m.def("csr_aggregate(Tensor alpha, Tensor x, Tensor ptr, Tensor col, Tensor perm, "
        "int num_rows) -> Tensor");
  m.def("csr_aggregate_backward(Tensor grad, Tensor alpha, Tensor x, Tensor ptr, "
        "Tensor col, Tensor perm, Tensor ptr_t, Tensor col_t, Tensor perm_t, "
        "bool need_alpha, bool need_x) -> Tensor[]");
  m.def("typed_linear(Tensor a, Tensor type, Tensor w, Tensor? bias) -> Tensor");
  m.def("typed_linear_backward(Tensor grad, Tensor a, Tensor type, Tensor w, "
        "bool need_a, bool need_w) -> Tensor[]");
  m.def("simd(int enabled) -> int", &simd);
}

TORCH_LIBRARY_IMPL(torch_staged_cpu, CPU, m) {
  m.impl("csr_aggregate", &csr_aggregate);
  m.impl("csr_aggregate_backward", &csr_aggregate_backward);
  m.impl("typed_linear", &typed_linear);
  m.impl("typed_linear_backward", &typed_linear_backward);
}
