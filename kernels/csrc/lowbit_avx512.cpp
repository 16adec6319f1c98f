// AVX-512 build (Ice Lake and later, Zen 4): 512-bit vpdpbusd and vpopcntq.
//
// On the Xeons we measured, a 512-bit vpdpbusd issues as fast as a 256-bit
// one, so these kernels take two packed groups per load. The int8 activations
// are stored pair-interleaved (see lowbit.h) so that each 512-bit activation
// load is contiguous. The 256-bit kernels of lowbit_simd.h serve for
// binarizing activations.
#include "lowbit.h"
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8) || defined(__clang__))
#define DL_TARGET "avx2,fma,popcnt,avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq"
#define DL_VNNI 1
#define DL_VNNI_AVX512 1
#define DL_VPOPCNT 1
#define DL_NT 2
#define DL_NT_FEW_ROWS 4
#define DL_OWN_TABLE 1
#include "lowbit_simd.h"

namespace {

TGT ALWAYS_INLINE __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// 32 bytes into the low half of a zmm, zeros above (for an odd last group).
TGT ALWAYS_INLINE __m512i load32z(const void* p) { return _mm512_maskz_loadu_epi8(0xFFFFFFFFULL, p); }

TGT void quantize_row_z(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum, int planes) {
  if (planes == 0) {  // natural order requested
    quantize_row(x, K, Kp, q, scale, sum, 0);
    return;
  }
  __m512 vmax = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  if (k < K)
    vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << (K - k)) - 1), x + k)));
  const float amax = _mm512_reduce_max_ps(vmax);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m512 vinv = _mm512_set1_ps(inv);
  const int64_t groups = Kp / (32 * planes);
  memset(q, 0, (size_t)Kp);
  __m512i vsum = _mm512_setzero_si512();
  int64_t c = 0;
  for (; 32 * c + 32 <= K; ++c) {
    const __m512i r0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 32 * c), vinv));
    const __m512i r1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 32 * c + 16), vinv));
    vsum = _mm512_add_epi32(vsum, _mm512_add_epi32(r0, r1));
    int8_t* dst = q + dl_pair_chunk_offset(c, planes, groups);
    _mm_storeu_si128((__m128i*)dst, _mm512_cvtsepi32_epi8(r0));
    _mm_storeu_si128((__m128i*)(dst + 16), _mm512_cvtsepi32_epi8(r1));
  }
  int32_t s = _mm512_reduce_add_epi32(vsum);
  if (32 * c < K) {
    int8_t* dst = q + dl_pair_chunk_offset(c, planes, groups);
    for (int64_t kk = 32 * c; kk < K; ++kk) {
      dst[kk - 32 * c] = dl_quantize_one(x[kk], inv);
      s += dst[kk - 32 * c];
    }
  }
  *scale = amax / 127.0f;
  *sum = s;
}

// ---------------------------------------------------------------- ternary

template <int MT, int NT, int A, bool ASYM>
TGT void ternary_block_z(const DlGemm* a, int64_t m0, int64_t n0) {
  const __m512i mask3 = _mm512_set1_epi8(3), mask2 = _mm512_set1_epi8(2);
  __m512i acc[MT][NT][A], acc2[MT][NT];
  const uint8_t* w[NT];
  const int8_t* x[MT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xq + (m0 + i) * a->Kp;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      acc2[i][t] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int c = 0; c < A; ++c) acc[i][t][c] = _mm512_setzero_si512();
    }
  }
  const int64_t groups = a->Kp / DL_TERNARY_GROUP;
  const int64_t steps = (groups + 1) / 2;  // group pairs, and the odd last group
  for (int64_t p = 0; p < steps; ++p) {
    const bool half = 2 * p + 1 == groups;
    __m512i xs[MT][4];
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
      for (int s = 0; s < 4; ++s)
        xs[i][s] = half ? load32z(x[i] + 256 * p + 32 * s) : load64(x[i] + 256 * p + 64 * s);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512i v = half ? load32z(w[t] + 64 * p) : load64(w[t] + 64 * p);
      __m512i u[4];
      u[0] = _mm512_and_si512(v, mask3);
      u[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), mask3);
      u[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask3);
      u[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), mask3);
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s) {
          acc[i][t][s % A] = _mm512_dpbusd_epi32(acc[i][t][s % A], u[s], xs[i][s]);
          if (ASYM) acc2[i][t] = _mm512_dpbusd_epi32(acc2[i][t], _mm512_and_si512(u[s], mask2), xs[i][s]);
        }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      __m512i sum = acc[i][t][0];
#pragma GCC unroll 4
      for (int c = 1; c < A; ++c) sum = _mm512_add_epi32(sum, acc[i][t][c]);
      dl_store_ternary(a, m0 + i, n0 + t, _mm512_reduce_add_epi32(sum),
                       ASYM ? _mm512_reduce_add_epi32(acc2[i][t]) : 0);
    }
}

template <int NT, int A, bool ASYM>
TGT void ternary_cols_z(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) ternary_block_z<4, NT, A, ASYM>(a, m, n0);
  switch (a->M - m) {
    case 3: ternary_block_z<3, NT, A, ASYM>(a, m, n0); break;
    case 2: ternary_block_z<2, NT, A, ASYM>(a, m, n0); break;
    case 1: ternary_block_z<1, NT, A, ASYM>(a, m, n0); break;
    default: break;
  }
}

template <bool ASYM>
TGT void ternary_tile_z_impl(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (a->M <= 2) {  // few rows: four columns and split accumulators for enough independent chains
    for (; n + 4 <= n1; n += 4) ternary_cols_z<4, ASYM ? 1 : 2, ASYM>(a, n);
  } else if (!ASYM) {
    for (; n + 2 <= n1; n += 2) ternary_cols_z<2, 1, ASYM>(a, n);
  }
  for (; n < n1; ++n) ternary_cols_z<1, 1, ASYM>(a, n);
}

TGT void ternary_tile_z(const DlGemm* a, int64_t n0, int64_t n1) {
  if (a->scale_neg && a->xscale)
    ternary_tile_z_impl<true>(a, n0, n1);
  else
    ternary_tile_z_impl<false>(a, n0, n1);
}

// ---------------------------------------------------------------- binary x int8

template <int MT, int NT>
TGT void binary_i8_block_z(const DlGemm* a, int64_t m0, int64_t n0) {
  const __m512i one = _mm512_set1_epi8(1);
  __m512i acc[MT][NT];
  const uint8_t* w[NT];
  const int8_t* x[MT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xq + (m0 + i) * a->Kp;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_si512();
  }
  const int64_t groups = a->Kp / DL_BINARY_GROUP;
  const int64_t steps = (groups + 1) / 2;
  for (int64_t p = 0; p < steps; ++p) {
    const bool half = 2 * p + 1 == groups;
    __m512i v[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) v[t] = half ? load32z(w[t] + 64 * p) : load64(w[t] + 64 * p);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // bit planes 4h .. 4h+3
      __m512i xs[MT][4];
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s) {
          const int plane = 4 * h + s;
          xs[i][s] = half ? load32z(x[i] + 512 * p + 32 * plane) : load64(x[i] + 512 * p + 64 * plane);
        }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s) {
          const __m512i u = _mm512_and_si512(_mm512_srli_epi16(v[t], 4 * h + s), one);
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i) acc[i][t] = _mm512_dpbusd_epi32(acc[i][t], u, xs[i][s]);
        }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) dl_store_binary_i8(a, m0 + i, n0 + t, _mm512_reduce_add_epi32(acc[i][t]));
}

template <int NT>
TGT void binary_i8_cols_z(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) binary_i8_block_z<4, NT>(a, m, n0);
  switch (a->M - m) {
    case 3: binary_i8_block_z<3, NT>(a, m, n0); break;
    case 2: binary_i8_block_z<2, NT>(a, m, n0); break;
    case 1: binary_i8_block_z<1, NT>(a, m, n0); break;
    default: break;
  }
}

TGT void binary_i8_tile_z(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (a->M <= 2)
    for (; n + 4 <= n1; n += 4) binary_i8_cols_z<4>(a, n);
  for (; n + 2 <= n1; n += 2) binary_i8_cols_z<2>(a, n);
  for (; n < n1; ++n) binary_i8_cols_z<1>(a, n);
}

// ---------------------------------------------------------------- xnor

template <int MT, int NT>
TGT void xnor_block_z(const DlGemm* a, int64_t m0, int64_t n0) {
  __m512i acc[MT][NT];
  const uint8_t* w[NT];
  const uint8_t* x[MT];
  const int64_t xstride = a->Kp / 8;
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xbits + (m0 + i) * xstride;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_si512();
  }
  const int64_t groups = a->Kp / DL_BINARY_GROUP;
  const int64_t steps = (groups + 1) / 2;
  for (int64_t p = 0; p < steps; ++p) {
    const bool half = 2 * p + 1 == groups;
    __m512i v[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) v[t] = half ? load32z(w[t] + 64 * p) : load64(w[t] + 64 * p);
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      const __m512i xv = half ? load32z(x[i] + 64 * p) : load64(x[i] + 64 * p);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t)
        acc[i][t] = _mm512_add_epi64(acc[i][t], _mm512_popcnt_epi64(_mm512_xor_si512(xv, v[t])));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) dl_store_xnor(a, m0 + i, n0 + t, _mm512_reduce_add_epi64(acc[i][t]));
}

template <int NT>
TGT void xnor_cols_z(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) xnor_block_z<4, NT>(a, m, n0);
  switch (a->M - m) {
    case 3: xnor_block_z<3, NT>(a, m, n0); break;
    case 2: xnor_block_z<2, NT>(a, m, n0); break;
    case 1: xnor_block_z<1, NT>(a, m, n0); break;
    default: break;
  }
}

TGT void xnor_tile_z(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) xnor_cols_z<4>(a, n);
  for (; n < n1; ++n) xnor_cols_z<1>(a, n);
}

const DlKernels kTable = {quantize_row_z, binarize_row, ternary_tile_z, binary_i8_tile_z, xnor_tile_z, 1};

}  // namespace

const DlKernels* dl_kernels_avx512(void) { return &kTable; }
#else
const DlKernels* dl_kernels_avx512(void) { return 0; }
#endif
