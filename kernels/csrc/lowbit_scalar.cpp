// Portable kernels: plain C++ for CPUs without AVX2, and a second, simple
// statement of what the SIMD kernels compute.
#include <math.h>
#include <stdlib.h>

#include "lowbit.h"
#include "lowbit_dw.h"

namespace {

void quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const float a = fabsf(x[k]);
    amax = a > amax ? a : amax;
  }
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) {
    q[k] = dl_quantize_one(x[k], inv);
    s += q[k];
  }
  memset(q + K, 0, (size_t)(Kp - K));
  *scale = amax / 127.0f;
  *sum = s;
}

void binarize_row(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
  const double c = dl_abs_sum_magic(amax);
  double total = 0.0;
  for (int64_t k = 0; k < K; ++k) total += dl_abs_rounded(fabsf(x[k]), c);
  for (int64_t kb = 0; kb < Kp / DL_BK; ++kb) {
    const int64_t n = K - kb * DL_BK;
    const uint32_t word = dl_sign_word(x + kb * DL_BK, n < 0 ? 0 : (n > DL_BK ? DL_BK : n));
    memcpy(bits + 4 * kb, &word, 4);
  }
  *beta = K > 0 ? (float)(total / (double)K) : 0.0f;
}

// Weights of output block nb as int8 rows [16][Kp] in natural order.
void decode_block(const DlGemm* g, int64_t nb, bool ternary, int8_t* out) {
  for (int64_t kb = 0; kb < g->kblocks; ++kb) {
    const uint8_t* t = dl_tile(g, nb, kb);
    for (int l = 0; l < DL_NB; ++l)
      for (int j = 0; j < 4; ++j) {
        const uint8_t byte = t[4 * l + j];
        if (ternary)
          for (int s = 0; s < 4; ++s) out[l * g->Kp + kb * DL_TK + 4 * s + j] = (int8_t)(((byte >> (2 * s)) & 3) - 1);
        else
          for (int s = 0; s < 8; ++s) out[l * g->Kp + kb * DL_BK + 4 * s + j] = (byte >> s) & 1 ? 1 : -1;
      }
  }
}

void int8_gemm(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1, bool ternary) {
  int8_t* wt = (int8_t*)malloc((size_t)(DL_NB * g->Kp));
  const bool ttq = ternary && g->scale_neg && g->xscale;
  for (int64_t nb = b0; nb < b1; ++nb) {
    decode_block(g, nb, ternary, wt);
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* x = g->xq + m * g->Kp;
      for (int l = 0; l < DL_NB && nb * DL_NB + l < g->N; ++l) {
        const int8_t* w = wt + l * g->Kp;
        int32_t dot = 0, pos = 0;
        for (int64_t k = 0; k < g->Kp; ++k) {
          dot += w[k] * x[k];
          pos += w[k] > 0 ? x[k] : 0;
        }
        if (ttq)
          dl_store_ttq(g, m, nb * DL_NB + l, dot, pos);
        else
          dl_store(g, m, nb * DL_NB + l, dot);
      }
    }
  }
  free(wt);
}

void ternary(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) { int8_gemm(g, m0, m1, b0, b1, true); }

void binary_i8(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  int8_gemm(g, m0, m1, b0, b1, false);
}

void xnor(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  for (int64_t nb = b0; nb < b1; ++nb)
    for (int64_t m = m0; m < m1; ++m) {
      const uint8_t* x = g->xbits + m * (g->Kp / 8);
      for (int l = 0; l < DL_NB && nb * DL_NB + l < g->N; ++l) {
        int64_t d = 0;
        for (int64_t kb = 0; kb < g->kblocks; ++kb)
          d += __builtin_popcount(dl_load_u32(dl_tile(g, nb, kb) + 4 * l) ^ dl_load_u32(x + 4 * kb));
        dl_store(g, m, nb * DL_NB + l, (int32_t)(g->K - 2 * d));
      }
    }
}

// One channel per "vector".
struct V1 {
  using T = float;
  using Mask = int;
  static constexpr int N = 1;
  static constexpr int COLS = 1;
  static Mask mask(int) { return 1; }
  static T load(const float* p, Mask) { return *p; }
  static void store(float* p, T v, Mask) { *p = v; }
  static T zero() { return 0.0f; }
  static T set1(float v) { return v; }
  static T add(T a, T b) { return a + b; }
  static T fma(T a, T b, T c) { return fmaf(a, b, c); }  // a * b + c, rounded once (C99)
  static T clamp(T v, T lo, T hi) {
    v = lo > v ? lo : v;
    return hi < v ? hi : v;
  }
};

void depthwise3x3(const DlDepthwise* d, int64_t r0, int64_t r1) { dw3x3_rows<V1>(d, r0, r1); }
void conv3x3(const DlConv3x3* c, int64_t r0, int64_t r1) { conv3x3_rows<V1>(c, r0, r1); }
void depthwise3x3_row(const DlDepthwise* d, int64_t oh, const float* const* in, float* yrow) {
  int kh0, kh1;
  dw_taps(d, oh, &kh0, &kh1);
  dw3x3_row<V1>(d, in, kh0, kh1, yrow);
}

const DlKernels kTable = {quantize_row, binarize_row, ternary, binary_i8, xnor, depthwise3x3, depthwise3x3_row, conv3x3};

}  // namespace

const DlKernels* dl_kernels_scalar(void) { return &kTable; }
