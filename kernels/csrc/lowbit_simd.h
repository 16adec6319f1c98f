// The x86 SIMD kernels, written once and compiled once per instruction set.
//
// A translation unit defines, before including this file:
//   DL_TARGET       the GCC/Clang target string of the instruction set
//   DL_VNNI         1 to use vpdpbusd (u8 x s8 -> s32) for the int8 dot products
//   DL_VNNI_AVX512  1 when vpdpbusd comes from AVX512-VNNI (else AVX-VNNI)
//   DL_VPOPCNT      1 to use vpopcntq for XNOR (else a nibble-table popcount)
//   DL_TABLE_FN     the name of the function that returns the kernel table
//   DL_OWN_TABLE    (optional) the includer builds its own table from these
//                   kernels and its own (see lowbit_avx512.cpp)
//   DL_NT, DL_NT_FEW_ROWS  output columns per block (for M > 2 and M <= 2):
//                   sized to the vector register file (16 or 32 registers)
// Every function carries the target attribute and lives in an anonymous
// namespace, so nothing compiled for a wider instruction set can be linked into
// a path that a narrower CPU runs.
//
// The int8 dot products use the maddubs idea (as in bitnet.cpp's I2_S kernels):
// weights become unsigned bytes (ternary code w+1 in {0,1,2}, binary bit in
// {0,1}), multiplied with signed int8 activations; the activation row sum
// removes the offset at the end (see lowbit.h).
#include <immintrin.h>
#include <string.h>

#include "lowbit.h"

#define TGT __attribute__((target(DL_TARGET)))
#define ALWAYS_INLINE __attribute__((always_inline)) inline

namespace {

TGT ALWAYS_INLINE __m256i load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

TGT ALWAYS_INLINE int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

TGT ALWAYS_INLINE int64_t hsum_epi64(__m256i v) {
  __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
  return _mm_cvtsi128_si64(s);
}

// acc += sum over the four (u, x) pairs of u8*s8 products, in int32 lanes.
// Without VNNI the four maddubs results are added in int16 first: each is at
// most 2*2*127 = 508 in magnitude, so the sum (<= 2032) cannot saturate.
TGT ALWAYS_INLINE __m256i dot4(__m256i acc, __m256i u0, __m256i x0, __m256i u1, __m256i x1, __m256i u2,
                               __m256i x2, __m256i u3, __m256i x3) {
#if DL_VNNI
#if DL_VNNI_AVX512
  acc = _mm256_dpbusd_epi32(acc, u0, x0);
  acc = _mm256_dpbusd_epi32(acc, u1, x1);
  acc = _mm256_dpbusd_epi32(acc, u2, x2);
  acc = _mm256_dpbusd_epi32(acc, u3, x3);
#else
  acc = _mm256_dpbusd_avx_epi32(acc, u0, x0);
  acc = _mm256_dpbusd_avx_epi32(acc, u1, x1);
  acc = _mm256_dpbusd_avx_epi32(acc, u2, x2);
  acc = _mm256_dpbusd_avx_epi32(acc, u3, x3);
#endif
  return acc;
#else
  const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(u0, x0), _mm256_maddubs_epi16(u1, x1));
  const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(u2, x2), _mm256_maddubs_epi16(u3, x3));
  const __m256i s = _mm256_add_epi16(s01, s23);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
#endif
}

// acc += u0*x0 + u1*x1 (u8*s8 products summed into int32 lanes).
TGT ALWAYS_INLINE __m256i dot2(__m256i acc, __m256i u0, __m256i x0, __m256i u1, __m256i x1) {
#if DL_VNNI
#if DL_VNNI_AVX512
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, u0, x0), u1, x1);
#else
  return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, u0, x0), u1, x1);
#endif
#else
  const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(u0, x0), _mm256_maddubs_epi16(u1, x1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
#endif
}

// Number of set bits in each 64-bit lane.
TGT ALWAYS_INLINE __m256i popcount_epi64(__m256i v) {
#if DL_VPOPCNT
  return _mm256_popcnt_epi64(v);
#else
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                       2, 2, 3, 2, 3, 3, 4);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nib));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
#endif
}

// ---------------------------------------------------------------- activations

TGT void quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum, int planes) {
  (void)planes;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(absmask, _mm256_loadu_ps(x + k)));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float amax = 0.0f;
  for (int i = 0; i < 8; ++i) amax = lanes[i] > amax ? lanes[i] : amax;
  for (; k < K; ++k) {
    const float a = __builtin_fabsf(x[k]);
    amax = a > amax ? a : amax;
  }
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i vsum = _mm256_setzero_si256();
  k = 0;
  for (; k + 32 <= K; k += 32) {
    // cvtps rounds with the MXCSR mode: to nearest, ties to even, as torch.round.
    const __m256i r0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
    const __m256i r1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv));
    const __m256i r2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), vinv));
    const __m256i r3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), vinv));
    vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(r0, r1), _mm256_add_epi32(r2, r3)));
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
    _mm256_storeu_si256((__m256i*)(q + k), _mm256_permutevar8x32_epi32(b, order));
  }
  int32_t s = hsum_epi32(vsum);
  for (; k < K; ++k) {
    q[k] = dl_quantize_one(x[k], inv);
    s += q[k];
  }
  memset(q + K, 0, (size_t)(Kp - K));
  *scale = amax / 127.0f;
  *sum = s;
}

// Sign bits in the binary layout (bit 1 for x >= 0) and beta = mean |x|.
TGT void binarize_row(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 zero = _mm256_setzero_ps();
  // Spread a 32-bit mask over 32 bytes: byte j tests bit j.
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
  const __m256i bitsel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  __m256 vabs = _mm256_setzero_ps();
  const int64_t full = K / DL_BINARY_GROUP;
  for (int64_t g = 0; g < full; ++g) {
    __m256i out = _mm256_setzero_si256();
    for (int s = 0; s < 8; ++s) {
      const float* p = x + g * DL_BINARY_GROUP + s * 32;
      uint32_t mask = 0;
      for (int i = 0; i < 4; ++i) {
        const __m256 v = _mm256_loadu_ps(p + 8 * i);
        vabs = _mm256_add_ps(vabs, _mm256_and_ps(absmask, v));
        mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)) << (8 * i);
      }
      __m256i m = _mm256_shuffle_epi8(_mm256_set1_epi32((int)mask), spread);
      m = _mm256_cmpeq_epi8(_mm256_and_si256(m, bitsel), bitsel);
      out = _mm256_or_si256(out, _mm256_and_si256(m, _mm256_set1_epi8((char)(1 << s))));
    }
    _mm256_storeu_si256((__m256i*)(bits + g * 32), out);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vabs);
  double total = 0.0;
  for (int i = 0; i < 8; ++i) total += lanes[i];
  memset(bits + full * 32, 0, (size_t)(Kp / 8 - full * 32));
  for (int64_t k = full * DL_BINARY_GROUP; k < K; ++k) {
    total += __builtin_fabsf(x[k]);
    if (x[k] >= 0.0f) {
      const int64_t g = k / DL_BINARY_GROUP, r = k % DL_BINARY_GROUP;
      bits[g * 32 + (r % 32)] |= (uint8_t)(1u << (r / 32));
    }
  }
  *beta = K > 0 ? (float)(total / (double)K) : 0.0f;
}

#ifndef DL_OWN_TABLE  // the includer has its own GEMM kernels

// ---------------------------------------------------------------- ternary

// Rows [m0, m0+MT) x columns [n0, n0+NT): the weights of a group are unpacked
// once and used for every activation row of the block. With VNNI each (row,
// column) pair keeps two accumulators, so that the vpdpbusd dependency chains
// are short enough to keep both vector ports busy.
template <int MT, int NT, bool ASYM>
TGT void ternary_block(const DlGemm* a, int64_t m0, int64_t n0) {
  constexpr int A = (DL_VNNI && !ASYM) ? 2 : 1;
  const __m256i mask3 = _mm256_set1_epi8(3), mask2 = _mm256_set1_epi8(2);
  __m256i acc[MT][NT][A], acc2[MT][NT];
  const uint8_t* w[NT];
  const int8_t* x[MT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xq + (m0 + i) * a->Kp;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      acc2[i][t] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int c = 0; c < A; ++c) acc[i][t][c] = _mm256_setzero_si256();
    }
  }
  const int64_t groups = a->Kp / DL_TERNARY_GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    __m256i u[NT][4];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i v = load32(w[t] + 32 * g);
      u[t][0] = _mm256_and_si256(v, mask3);
      u[t][1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask3);
      u[t][2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask3);
      u[t][3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask3);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      const int8_t* xp = x[i] + DL_TERNARY_GROUP * g;
      const __m256i x0 = load32(xp), x1 = load32(xp + 32), x2 = load32(xp + 64), x3 = load32(xp + 96);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        if (A == 2) {
          acc[i][t][0] = dot2(acc[i][t][0], u[t][0], x0, u[t][2], x2);
          acc[i][t][A - 1] = dot2(acc[i][t][A - 1], u[t][1], x1, u[t][3], x3);
        } else {
          acc[i][t][0] = dot4(acc[i][t][0], u[t][0], x0, u[t][1], x1, u[t][2], x2, u[t][3], x3);
        }
        if (ASYM)
          acc2[i][t] = dot4(acc2[i][t], _mm256_and_si256(u[t][0], mask2), x0, _mm256_and_si256(u[t][1], mask2), x1,
                            _mm256_and_si256(u[t][2], mask2), x2, _mm256_and_si256(u[t][3], mask2), x3);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i sum = A == 2 ? _mm256_add_epi32(acc[i][t][0], acc[i][t][A - 1]) : acc[i][t][0];
      dl_store_ternary(a, m0 + i, n0 + t, hsum_epi32(sum), ASYM ? hsum_epi32(acc2[i][t]) : 0);
    }
}

template <int NT, bool ASYM>
TGT void ternary_cols(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) ternary_block<4, NT, ASYM>(a, m, n0);
  switch (a->M - m) {
    case 3: ternary_block<3, NT, ASYM>(a, m, n0); break;
    case 2: ternary_block<2, NT, ASYM>(a, m, n0); break;
    case 1: ternary_block<1, NT, ASYM>(a, m, n0); break;
    default: break;
  }
}

// Few rows: more columns per block, to have enough independent work per group.
template <bool ASYM>
TGT void ternary_tile_impl(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (a->M <= 2) {
    for (; n + DL_NT_FEW_ROWS <= n1; n += DL_NT_FEW_ROWS) ternary_cols<DL_NT_FEW_ROWS, ASYM>(a, n);
  } else {
    for (; n + DL_NT <= n1; n += DL_NT) ternary_cols<DL_NT, ASYM>(a, n);
  }
  for (; n < n1; ++n) ternary_cols<1, ASYM>(a, n);
}

TGT void ternary_tile(const DlGemm* a, int64_t n0, int64_t n1) {
  if (a->scale_neg && a->xscale)
    ternary_tile_impl<true>(a, n0, n1);
  else
    ternary_tile_impl<false>(a, n0, n1);
}

// ---------------------------------------------------------------- binary x int8

template <int MT, int NT>
TGT void binary_i8_block(const DlGemm* a, int64_t m0, int64_t n0) {
  const __m256i one = _mm256_set1_epi8(1);
  __m256i acc[MT][NT];
  const uint8_t* w[NT];
  const int8_t* x[MT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xq + (m0 + i) * a->Kp;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm256_setzero_si256();
  }
  const int64_t groups = a->Kp / DL_BINARY_GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    __m256i v[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) v[t] = load32(w[t] + 32 * g);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // bit planes 4h .. 4h+3
      __m256i u[NT][4];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s) u[t][s] = _mm256_and_si256(_mm256_srli_epi16(v[t], 4 * h + s), one);
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i) {
        const int8_t* xp = x[i] + DL_BINARY_GROUP * g + 128 * h;
        const __m256i x0 = load32(xp), x1 = load32(xp + 32), x2 = load32(xp + 64), x3 = load32(xp + 96);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t)
          acc[i][t] = dot4(acc[i][t], u[t][0], x0, u[t][1], x1, u[t][2], x2, u[t][3], x3);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) dl_store_binary_i8(a, m0 + i, n0 + t, hsum_epi32(acc[i][t]));
}

template <int NT>
TGT void binary_i8_cols(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) binary_i8_block<4, NT>(a, m, n0);
  switch (a->M - m) {
    case 3: binary_i8_block<3, NT>(a, m, n0); break;
    case 2: binary_i8_block<2, NT>(a, m, n0); break;
    case 1: binary_i8_block<1, NT>(a, m, n0); break;
    default: break;
  }
}

TGT void binary_i8_tile(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) binary_i8_cols<2>(a, n);
  if (n < n1) binary_i8_cols<1>(a, n);
}

// ---------------------------------------------------------------- xnor

template <int MT, int NT>
TGT void xnor_block(const DlGemm* a, int64_t m0, int64_t n0) {
  __m256i acc[MT][NT];
  const uint8_t* w[NT];
  const uint8_t* x[MT];
  const int64_t xstride = a->Kp / 8;
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) w[t] = a->w + (n0 + t) * a->wstride;
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i) {
    x[i] = a->xbits + (m0 + i) * xstride;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm256_setzero_si256();
  }
  const int64_t groups = a->Kp / DL_BINARY_GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    __m256i v[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) v[t] = load32(w[t] + 32 * g);
#pragma GCC unroll 8
    for (int i = 0; i < MT; ++i) {
      const __m256i xv = load32(x[i] + 32 * g);
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t)
        acc[i][t] = _mm256_add_epi64(acc[i][t], popcount_epi64(_mm256_xor_si256(xv, v[t])));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MT; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) dl_store_xnor(a, m0 + i, n0 + t, hsum_epi64(acc[i][t]));
}

template <int NT>
TGT void xnor_cols(const DlGemm* a, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= a->M; m += 4) xnor_block<4, NT>(a, m, n0);
  switch (a->M - m) {
    case 3: xnor_block<3, NT>(a, m, n0); break;
    case 2: xnor_block<2, NT>(a, m, n0); break;
    case 1: xnor_block<1, NT>(a, m, n0); break;
    default: break;
  }
}

TGT void xnor_tile(const DlGemm* a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) xnor_cols<4>(a, n);
  for (; n < n1; ++n) xnor_cols<1>(a, n);
}

const DlKernels kTable = {quantize_row, binarize_row, ternary_tile, binary_i8_tile, xnor_tile, 0};
#endif

}  // namespace

#ifndef DL_OWN_TABLE
const DlKernels* DL_TABLE_FN(void) { return &kTable; }
#endif
