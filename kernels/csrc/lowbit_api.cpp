// C entry points of the packed low-bit kernels: instruction-set dispatch,
// activation preparation and the OpenMP split over output columns.
//
// The library is loaded with ctypes (kernels/_cpu.py) and deliberately
// includes no torch headers: a build takes seconds, not minutes. Every entry
// returns 0 on success and a negative number on failure.
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lowbit.h"

namespace {

const DlKernels* table_for(int isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  switch (isa) {
    case DL_ISA_AVX512:
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
          __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx2") &&
          __builtin_cpu_supports("fma"))
        return dl_kernels_avx512();
      return nullptr;
    case DL_ISA_AVXVNNI:
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
      if (__builtin_cpu_supports("avxvnni") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return dl_kernels_avxvnni();
#endif
      return nullptr;
    case DL_ISA_AVX2:
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt"))
        return dl_kernels_avx2();
      return nullptr;
    default:
      break;
  }
#endif
  return isa == DL_ISA_SCALAR ? dl_kernels_scalar() : nullptr;
}

int best_isa() {
  for (int isa = DL_ISA_AVX512; isa > DL_ISA_SCALAR; --isa)
    if (table_for(isa)) return isa;
  return DL_ISA_SCALAR;
}

int g_isa = -1;
const DlKernels* g_kernels = nullptr;

const DlKernels* kernels() {
  if (!g_kernels) {
    g_isa = best_isa();
    g_kernels = table_for(g_isa);
  }
  return g_kernels;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void* alloc(int64_t bytes) { return aligned_alloc(64, (size_t)round_up(bytes > 0 ? bytes : 1, 64)); }

typedef void (*TileFn)(const DlGemm*, int64_t, int64_t);

// This thread's share of the N output columns, in multiples of 4 columns.
void column_range(int64_t N, int tid, int nth, int64_t* n0, int64_t* n1) {
  const int64_t chunk = round_up((N + nth - 1) / nth, 4);
  *n0 = chunk * tid < N ? chunk * tid : N;
  *n1 = *n0 + chunk < N ? *n0 + chunk : N;
}

enum Prep { PREP_NONE, PREP_QUANTIZE, PREP_BINARIZE };

// Prepares activations (quantize or binarize each row of x) and runs the tile
// function over all columns, in one parallel region.
void run(DlGemm* g, const float* x, Prep prep, TileFn tile, int nthreads) {
  const DlKernels* kt = kernels();
  int8_t* xq = const_cast<int8_t*>(g->xq);
  uint8_t* xbits = const_cast<uint8_t*>(g->xbits);
  int32_t* xsum = const_cast<int32_t*>(g->xsum);
  float* xscale = const_cast<float*>(g->xscale);
  auto prepare = [&](int64_t m) {
    if (prep == PREP_QUANTIZE)
      kt->quantize_row(x + m * g->K, g->K, g->Kp, xq + m * g->Kp, xscale + m, xsum + m, g->planes);
    else if (prep == PREP_BINARIZE)
      kt->binarize_row(x + m * g->K, g->K, g->Kp, xbits + m * (g->Kp / 8), xscale + m);
  };
  const int64_t work = g->M * g->N * (g->Kp / 32);
  int nth = nthreads < 1 ? 1 : nthreads;
  if (work < 16384) nth = 1;  // too small to pay for waking threads
  if (nth == 1) {
    for (int64_t m = 0; m < g->M; ++m) prepare(m);
    tile(g, 0, g->N);
    return;
  }
#pragma omp parallel num_threads(nth)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < g->M; ++m) prepare(m);
    int64_t n0, n1;
    column_range(g->N, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    if (n0 < n1) tile(g, n0, n1);
  }
}

DlGemm make_gemm(int64_t M, int64_t K, int64_t group, const uint8_t* w, int64_t N, int64_t per_byte) {
  DlGemm g;
  memset(&g, 0, sizeof(g));
  g.M = M;
  g.K = K;
  g.Kp = round_up(K, group);
  g.w = w;
  g.N = N;
  g.wstride = g.Kp / per_byte;
  g.planes = (int)(group / 32);
  return g;
}

// Copies int8 activations into a zero-padded [M, Kp] buffer (in the order the
// kernels want, see lowbit.h) and sums each row.
void pad_int8(const int8_t* xq, int64_t M, int64_t K, int64_t Kp, int planes, int pairs, int8_t* out,
              int32_t* sums) {
  int8_t* row = (int8_t*)alloc(Kp);
  for (int64_t m = 0; m < M; ++m) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += xq[m * K + k];
    sums[m] = s;
    memcpy(row, xq + m * K, (size_t)K);
    memset(row + K, 0, (size_t)(Kp - K));
    if (!pairs) {
      memcpy(out + m * Kp, row, (size_t)Kp);
      continue;
    }
    const int64_t groups = Kp / (32 * planes);
    for (int64_t c = 0; c < Kp / 32; ++c)
      memcpy(out + m * Kp + dl_pair_chunk_offset(c, planes, groups), row + 32 * c, 32);
  }
  free(row);
}

// Float linear on int8 activations: quantize x per row, then the tile kernel.
int linear_i8(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, int64_t group,
              int64_t per_byte, const float* sp, const float* sn, const float* bias, float* y, TileFn tile,
              int nthreads) {
  DlGemm g = make_gemm(M, K, group, w, N, per_byte);
  int8_t* xq = (int8_t*)alloc(M * g.Kp);
  int32_t* sums = (int32_t*)alloc(M * 4);
  float* scales = (float*)alloc(M * 4);
  if (!xq || !sums || !scales) {
    free(xq), free(sums), free(scales);
    return -1;
  }
  g.xq = xq, g.xsum = sums, g.xscale = scales;
  g.scale_pos = sp, g.scale_neg = sn, g.bias = bias, g.y = y;
  run(&g, x, PREP_QUANTIZE, tile, nthreads);
  free(xq), free(sums), free(scales);
  return 0;
}

// Integer GEMM on given int8 activations [M, K] (no quantization).
int mm_i8(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int64_t group, int64_t per_byte,
          int32_t* y, TileFn tile, int nthreads) {
  DlGemm g = make_gemm(M, K, group, w, N, per_byte);
  int8_t* xp = (int8_t*)alloc(M * g.Kp);
  int32_t* sums = (int32_t*)alloc(M * 4);
  if (!xp || !sums) {
    free(xp), free(sums);
    return -1;
  }
  pad_int8(xq, M, K, g.Kp, g.planes, kernels()->pair_groups, xp, sums);
  g.xq = xp, g.xsum = sums, g.yi = y;
  run(&g, nullptr, PREP_NONE, tile, nthreads);
  free(xp), free(sums);
  return 0;
}

}  // namespace

extern "C" {

int dl_isa_supported(int isa) { return table_for(isa) != nullptr; }

int dl_get_isa(void) {
  kernels();
  return g_isa;
}

// Selects an instruction set (-1: the best this CPU has). Returns the one in
// use, or -1 when the CPU or the compiler lacks the one asked for.
int dl_set_isa(int isa) {
  if (isa < 0) isa = best_isa();
  const DlKernels* t = table_for(isa);
  if (!t) return -1;
  g_isa = isa;
  g_kernels = t;
  return g_isa;
}

int dl_quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* scale, int nthreads) {
  const DlKernels* kt = kernels();
  const int64_t Kp = round_up(K, 32);
  int8_t* buf = (int8_t*)alloc(Kp);
  if (!buf) return -1;
  (void)nthreads;
  for (int64_t m = 0; m < M; ++m) {
    int32_t s;
    kt->quantize_row(x + m * K, K, Kp, buf, scale + m, &s, 0);
    memcpy(q + m * K, buf, (size_t)K);
  }
  free(buf);
  return 0;
}

int dl_binarize_rows(const float* x, int64_t M, int64_t K, uint8_t* bits, float* beta, int nthreads) {
  const DlKernels* kt = kernels();
  const int64_t Kp = round_up(K, DL_BINARY_GROUP);
  (void)nthreads;
  for (int64_t m = 0; m < M; ++m) kt->binarize_row(x + m * K, K, Kp, bits + m * (Kp / 8), beta + m);
  return 0;
}

int dl_ternary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale_pos,
                      const float* scale_neg, const float* bias, float* y, int nthreads) {
  return linear_i8(x, M, K, w, N, DL_TERNARY_GROUP, 4, scale_pos, scale_neg, bias, y, kernels()->ternary_tile,
                   nthreads);
}

int dl_ternary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  return mm_i8(xq, M, K, w, N, DL_TERNARY_GROUP, 4, y, kernels()->ternary_tile, nthreads);
}

int dl_binary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                     const float* bias, float* y, int nthreads) {
  return linear_i8(x, M, K, w, N, DL_BINARY_GROUP, 8, scale, nullptr, bias, y, kernels()->binary_i8_tile,
                   nthreads);
}

int dl_binary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  return mm_i8(xq, M, K, w, N, DL_BINARY_GROUP, 8, y, kernels()->binary_i8_tile, nthreads);
}

int dl_xnor_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                   const float* bias, float* y, int nthreads) {
  DlGemm g = make_gemm(M, K, DL_BINARY_GROUP, w, N, 8);
  uint8_t* bits = (uint8_t*)alloc(M * (g.Kp / 8));
  float* beta = (float*)alloc(M * 4);
  if (!bits || !beta) {
    free(bits), free(beta);
    return -1;
  }
  g.xbits = bits, g.xscale = beta, g.scale_pos = scale, g.bias = bias, g.y = y;
  run(&g, x, PREP_BINARIZE, kernels()->xnor_tile, nthreads);
  free(bits), free(beta);
  return 0;
}

// XNOR-popcount on given activation bits [M, Kp/8] in the binary layout.
int dl_xnor_mm(const uint8_t* xbits, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  DlGemm g = make_gemm(M, K, DL_BINARY_GROUP, w, N, 8);
  g.xbits = xbits, g.yi = y;
  run(&g, nullptr, PREP_NONE, kernels()->xnor_tile, nthreads);
  return 0;
}

}  // extern "C"
