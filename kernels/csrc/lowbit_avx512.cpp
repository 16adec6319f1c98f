// AVX-512 build (Ice Lake and later, Zen 4): 512-bit vpdpbusd and vpopcntd.
//
// One 64-byte tile is one register: 16 output channels, one per 32-bit lane.
// On the Xeons we measured, a 512-bit vpdpbusd issues about as fast as a
// 256-bit one, so this doubles the work per instruction of the AVX2 kernels.
// Activation quantization and binarization come from lowbit_simd.h.
#include "lowbit.h"
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8) || defined(__clang__))
#define DL_TARGET "avx2,fma,popcnt,bmi2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vpopcntdq"
#define DL_VNNI 0
#define DL_OWN_TABLE 1
#include "lowbit_simd.h"

namespace {

TGT ALWAYS_INLINE __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// Four activation bytes broadcast to every lane (folds into vpdpbusd's {1to16} operand).
TGT ALWAYS_INLINE __m512i bcast4z(const void* p) { return _mm512_set1_epi32((int)dl_load_u32(p)); }

// Stores 16 outputs (m, n .. n+15), skipping columns past N.
template <bool TTQ>
TGT ALWAYS_INLINE void store16(const DlGemm* g, int64_t m, int64_t n, __m512i dot, __m512i pos) {
  const int64_t valid = g->N - n;
  if (valid <= 0) return;
  const __mmask16 mask = valid >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1);
  if (!g->xscale) {
    _mm512_mask_storeu_epi32(g->yi + m * g->N + n, mask, dot);
    return;
  }
  const __m512 wp = _mm512_maskz_loadu_ps(mask, g->scale_pos + n);
  const __m512 b = g->bias ? _mm512_maskz_loadu_ps(mask, g->bias + n) : _mm512_setzero_ps();
  const __m512 sx = _mm512_set1_ps(g->xscale[m]);
  __m512 y;
  if (TTQ) {
    const __m512 wn = _mm512_maskz_loadu_ps(mask, g->scale_neg + n);
    const __m512i neg = _mm512_sub_epi32(pos, dot);
    y = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(pos), wp), _mm512_mul_ps(_mm512_cvtepi32_ps(neg), wn));
    y = _mm512_add_ps(_mm512_mul_ps(y, sx), b);
  } else {
    y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), wp), sx), b);
  }
  if (g->clamp)  // max(lo, y) returns y when y is NaN: NaN passes, as in dl_clamp
    y = _mm512_min_ps(_mm512_set1_ps(g->act_hi), _mm512_max_ps(_mm512_set1_ps(g->act_lo), y));
  _mm512_mask_storeu_ps(g->y + m * g->N + n, mask, y);
}

// ---------------------------------------------------------------- activations

// lowbit_simd.h's quantize_row in 512-bit steps, with a masked tail instead of a scalar
// one: 1x1 convolutions quantize many short rows (K = 16 .. 144 channels), where the
// scalar tail cost more than the GEMM. Same result: cvtps rounds to nearest even,
// |x * inv| <= 127 needs no clamp, and masked-off lanes load 0 and add 0 to the sum.
TGT void quantize_row_z(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum) {
  const int64_t full = K & ~(int64_t)15;
  const __mmask16 tail = (__mmask16)((1u << (K - full)) - 1);
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < full; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  if (tail) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, x + full)));
  const float amax = _mm512_reduce_max_ps(vmax);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m512 vinv = _mm512_set1_ps(inv);
  __m512i vsum = _mm512_setzero_si512();
  for (int64_t k = 0; k < full; k += 16) {
    const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), vinv));
    vsum = _mm512_add_epi32(vsum, r);
    _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtsepi32_epi8(r));
  }
  if (tail) {
    const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + full), vinv));
    vsum = _mm512_add_epi32(vsum, r);
    _mm512_mask_cvtsepi32_storeu_epi8(q + full, tail, r);
  }
  memset(q + K, 0, (size_t)(Kp - K));
  *scale = amax / 127.0f;
  *sum = _mm512_reduce_add_epi32(vsum);
}

struct MaxPs {
  TGT ALWAYS_INLINE __m512 operator()(__m512 a, __m512 b) const { return _mm512_max_ps(a, b); }
};
struct AddEpi32 {
  TGT ALWAYS_INLINE __m512 operator()(__m512 a, __m512 b) const {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
};

// Lane r of the result is op over the 16 lanes of v[r]: the horizontal reductions of 16 rows in
// 45 shuffles and ops instead of 16 x 8 (each step halves the vectors and the lanes per row).
template <class Op>
TGT ALWAYS_INLINE __m512 reduce16(__m512* v, Op op) {
  for (int i = 0; i < 8; ++i)  // 16 -> 8: lower half row 2i, upper half row 2i+1 (8 lanes each)
    v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 8 -> 4: 128-bit chunk c holds row 4i + c (4 lanes each)
    v[i] = op(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // 4 -> 2: chunk c holds rows 8i + c and 8i + 4 + c (2 lanes each)
    v[i] = op(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0xEE));
  // 2 -> 1: lane 4c + j holds row c + 4j; the permute puts row r in lane r
  const __m512 r = op(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

// Lane r: max |x| over row r of the nr (<= 16) rows of xr [., K] (0 for r >= nr), one reduction network.
TGT ALWAYS_INLINE __m512 absmax16(const float* xr, int nr, int64_t K) {
  const int64_t full = K & ~(int64_t)15;
  const __mmask16 tail = (__mmask16)((1u << (K - full)) - 1);
  __m512 v[16];
  for (int r = 0; r < 16; ++r) {
    __m512 m = _mm512_setzero_ps();
    if (r < nr) {
      for (int64_t k = 0; k < full; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xr + r * K + k)));
      if (tail) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, xr + r * K + full)));
    }
    v[r] = m;
  }
  return reduce16(v, MaxPs());
}

// quantize_row_z on n rows, 16 at a time: one reduction network for the 16 absmax values, one
// vector division for their 127 / absmax and scales, one network for the 16 sums (the same bits:
// max and integer sums do not depend on the order, and vdivps rounds as the scalar division).
TGT void quantize_rows_z(const float* x, int64_t n, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum) {
  const int64_t full = K & ~(int64_t)15;
  const __mmask16 tail = (__mmask16)((1u << (K - full)) - 1);
  const int64_t tail_end = tail ? full + 16 : full;  // bytes of q written by the quantize loop
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    const int nr = n - r0 < 16 ? (int)(n - r0) : 16;
    const float* xr = x + r0 * K;
    const __m512 amax = absmax16(xr, nr, K);
    __m512 v[16];
    const __mmask16 rows = (__mmask16)((1u << nr) - 1);
    const __m512 c127 = _mm512_set1_ps(127.0f);
    alignas(64) float inv[16];
    _mm512_store_ps(inv, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ), c127, amax));
    _mm512_mask_storeu_ps(scale + r0, rows, _mm512_div_ps(amax, c127));
    for (int r = 0; r < 16; ++r) {
      __m512i vs = _mm512_setzero_si512();
      if (r < nr) {
        const __m512 vinv = _mm512_set1_ps(inv[r]);
        int8_t* qr = q + (r0 + r) * Kp;
        for (int64_t k = 0; k < full; k += 16) {
          const __m512i t = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + r * K + k), vinv));
          vs = _mm512_add_epi32(vs, t);
          _mm_storeu_si128((__m128i*)(qr + k), _mm512_cvtsepi32_epi8(t));
        }
        if (tail) {  // masked-off lanes load 0 and quantize to 0: the padding after K
          const __m512i t = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xr + r * K + full), vinv));
          vs = _mm512_add_epi32(vs, t);
          _mm_storeu_si128((__m128i*)(qr + full), _mm512_cvtsepi32_epi8(t));
        }
        for (int64_t k = tail_end; k < Kp; k += 16) _mm_storeu_si128((__m128i*)(qr + k), _mm_setzero_si128());
      }
      v[r] = _mm512_castsi512_ps(vs);
    }
    const __m512 sums = reduce16(v, AddEpi32());
    _mm512_mask_storeu_epi32(sum + r0, rows, _mm512_castps_si512(sums));
  }
}

// One tile of 32 activations (masks m0, m1 of its two halves: lanes past K load 0, sign bit 0, sum 0):
// its sign word, and the integers round(|x| * scale) added to lo (low 16 bits) and hi (the rest) in
// int32 lanes: no widening per vector. OR-ing them into `bad` catches a NaN (vcvtps2dq gives INT_MIN).
template <bool MASKED>
TGT ALWAYS_INLINE uint32_t binarize_tile_z(const float* x, __mmask16 m0, __mmask16 m1, __m512 vs, __m512i* lo,
                                           __m512i* hi, __m512i* bad) {
  const __m512 v0 = MASKED ? _mm512_maskz_loadu_ps(m0, x) : _mm512_loadu_ps(x);
  const __m512 v1 = MASKED ? _mm512_maskz_loadu_ps(m1, x + 16) : _mm512_loadu_ps(x + 16);
  const __m512 zero = _mm512_setzero_ps();
  const uint32_t mask = (uint32_t)_mm512_cmp_ps_mask(v0, zero, _CMP_GT_OQ) |
                        ((uint32_t)_mm512_cmp_ps_mask(v1, zero, _CMP_GT_OQ) << 16);
  const __m512i r0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_abs_ps(v0), vs));
  const __m512i r1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_abs_ps(v1), vs));
  const __m512i low = _mm512_set1_epi32(0xFFFF);
  *bad = _mm512_or_si512(*bad, _mm512_or_si512(r0, r1));
  *lo = _mm512_add_epi32(*lo, _mm512_add_epi32(_mm512_and_si512(r0, low), _mm512_and_si512(r1, low)));
  *hi = _mm512_add_epi32(*hi, _mm512_add_epi32(_mm512_srli_epi32(r0, 16), _mm512_srli_epi32(r1, 16)));
  return tile_order(mask);
}

// lowbit_simd.h's binarize_row in 512-bit steps on n rows, 16 at a time: sign bits in the tile order
// and beta's exact sum (dl_abs_sum_scale) in int32 lanes as 16-bit halves (binarize_tile_z). The
// per-row work (the absmax and the two sums reduced across
// lanes, beta's double arithmetic) took as long as the row itself at K = 96 (about 100 cycles a row),
// so it is done for 16 rows at once, as quantize_rows_z does: one reduction network per quantity, the
// scales from the absmax bits in vector ops, beta for 8 rows per double vector. The same bits: a
// row the integer path cannot take (K >= 2^15, where the 16-lane int32 sums could overflow; an
// absmax below 2^-99 or not finite; a NaN) is redone on the double path.
TGT void binarize_rows_z(const float* x, int64_t n, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  if (K < 1 || K >= (1 << 15)) {
    for (int64_t m = 0; m < n; ++m) binarize_row_double(x + m * K, K, Kp, bits + m * (Kp / 8), beta + m);
    return;
  }
  const int64_t tiles = K / DL_BK, words = Kp / DL_BK;
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    const int nr = n - r0 < 16 ? (int)(n - r0) : 16;
    const __mmask16 rows = (__mmask16)((1u << nr) - 1);
    const float* xr = x + r0 * K;
    // dl_abs_sum_scale on 16 lanes: biased exponent be, scale 2^(155 - be), unit 2^(be - 155), for be in [28, 254]
    const __m512i be = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(absmax16(xr, nr, K)), 23),
                                        _mm512_set1_epi32(0xFF));
    __mmask16 ok = rows & _mm512_cmpge_epi32_mask(be, _mm512_set1_epi32(28)) &
                   _mm512_cmple_epi32_mask(be, _mm512_set1_epi32(254));
    alignas(64) float scales[16];
    _mm512_store_si512(scales, _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(282), be), 23));
    __m512 lo[16], hi[16];
    for (int r = 0; r < 16; ++r) {
      __m512i l = _mm512_setzero_si512(), h = l, bad = l;
      if ((ok >> r) & 1) {
        const __m512 vs = _mm512_set1_ps(scales[r]);
        const float* row = xr + r * K;
        uint8_t* out = bits + (r0 + r) * (Kp / 8);
        for (int64_t kb = 0; kb < tiles; ++kb) {
          const uint32_t word = binarize_tile_z<false>(row + kb * DL_BK, 0xFFFF, 0xFFFF, vs, &l, &h, &bad);
          memcpy(out + 4 * kb, &word, 4);
        }
        for (int64_t kb = tiles; kb < words; ++kb) {
          const int64_t left = K - kb * DL_BK;
          const __mmask16 m0 = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : (__mmask16)0;
          const __mmask16 m1 = left >= 32 ? (__mmask16)0xFFFF
                               : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : (__mmask16)0;  // fmt: skip
          const uint32_t word = binarize_tile_z<true>(row + kb * DL_BK, m0, m1, vs, &l, &h, &bad);
          memcpy(out + 4 * kb, &word, 4);
        }
        if (_mm512_cmplt_epi32_mask(bad, _mm512_setzero_si512())) ok &= (__mmask16)~(1u << r);  // a NaN
      }
      lo[r] = _mm512_castsi512_ps(l), hi[r] = _mm512_castsi512_ps(h);
    }
    const __m512i lsum = _mm512_castps_si512(reduce16(lo, AddEpi32()));
    const __m512i hsum = _mm512_castps_si512(reduce16(hi, AddEpi32()));
    const __m512d k = _mm512_set1_pd((double)K), c16 = _mm512_set1_pd(65536.0);
    for (int half = 0; half < 2; ++half) {  // rows 8 * half .. 8 * half + 7
      const __m256i l8 = half ? _mm512_extracti64x4_epi64(lsum, 1) : _mm512_castsi512_si256(lsum);
      const __m256i h8 = half ? _mm512_extracti64x4_epi64(hsum, 1) : _mm512_castsi512_si256(hsum);
      const __m256i b8 = half ? _mm512_extracti64x4_epi64(be, 1) : _mm512_castsi512_si256(be);
      const __m512d unit = _mm512_castsi512_pd(_mm512_slli_epi64(
          _mm512_add_epi64(_mm512_cvtepu32_epi64(b8), _mm512_set1_epi64(868)), 52));
      const __m512d total = _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepu32_pd(h8), c16), _mm512_cvtepu32_pd(l8));
      const __m256 b = _mm512_cvtpd_ps(_mm512_div_pd(_mm512_mul_pd(total, unit), k));
      _mm256_mask_storeu_ps(beta + r0 + 8 * half, (__mmask8)(ok >> (8 * half)), b);
    }
    for (int r = 0; r < nr; ++r)
      if (!((ok >> r) & 1)) binarize_row_double(xr + r * K, K, Kp, bits + (r0 + r) * (Kp / 8), beta + r0 + r);
  }
}

// One row: the batched kernel on n = 1 (every caller in lowbit_api.cpp batches; this is the table's
// single-row entry).
TGT void binarize_row_z(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  binarize_rows_z(x, 1, K, Kp, bits, beta);
}

// ---------------------------------------------------------------- ternary

template <bool TTQ>
struct TernaryZ {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    const __m512i mask3 = _mm512_set1_epi8(3), mask2 = _mm512_set1_epi8(2);
    __m512i acc[MT][NB], acc2[MT][NB];  // acc2 (TTQ only): sum of (code & 2) * x = 2 * pos
    // acc starts at -sum(x): sum code * x - sum x = sum w * x, with no subtraction per output
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      const __m512i start = _mm512_set1_epi32(-g->xsum[m0 + i]);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[i][j] = start, acc2[i][j] = _mm512_setzero_si512();
    }
    const int8_t* x = g->xq + m0 * g->Kp;
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        const __m512i v = load64(dl_tile(g, b0 + j, kb));
        __m512i u[4];
        u[0] = _mm512_and_si512(v, mask3);
        u[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), mask3);
        u[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask3);
        u[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), mask3);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {
          const int8_t* xp = x + i * g->Kp + kb * DL_TK;
#pragma GCC unroll 4
          for (int s = 0; s < 4; ++s) {
            const __m512i xb = bcast4z(xp + 4 * s);
            acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u[s], xb);
            if constexpr (TTQ) acc2[i][j] = _mm512_dpbusd_epi32(acc2[i][j], _mm512_and_si512(u[s], mask2), xb);
          }
        }
      }
    }
    if (!g->xscale) {  // integer output
#pragma GCC unroll 16
      for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int j = 0; j < NB; ++j) store16<false>(g, m0 + i, (b0 + j) * DL_NB, acc[i][j], acc[i][j]);
      return;
    }
    // The float epilogue of store16, with each block's scales and bias loaded once for its MT rows.
    const __m512 lo = _mm512_set1_ps(g->act_lo), hi = _mm512_set1_ps(g->act_hi);
#pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) {
      const int64_t n = (b0 + j) * DL_NB, valid = g->N - n;
      const __mmask16 mask = valid >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1);
      const __m512 wp = _mm512_maskz_loadu_ps(mask, g->scale_pos + n);
      const __m512 wn = TTQ ? _mm512_maskz_loadu_ps(mask, g->scale_neg + n) : wp;
      const __m512 b = g->bias ? _mm512_maskz_loadu_ps(mask, g->bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int i = 0; i < MT; ++i) {
        const __m512 sx = _mm512_set1_ps(g->xscale[m0 + i]);
        __m512 y;
        if constexpr (TTQ) {
          const __m512i pos = _mm512_srai_epi32(acc2[i][j], 1), neg = _mm512_sub_epi32(pos, acc[i][j]);
          y = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(pos), wp), _mm512_mul_ps(_mm512_cvtepi32_ps(neg), wn));
          y = _mm512_add_ps(_mm512_mul_ps(y, sx), b);
        } else {
          y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), wp), sx), b);
        }
        if (g->clamp) y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));  // NaN passes, as dl_clamp
        _mm512_mask_storeu_ps(g->y + (m0 + i) * g->N + n, mask, y);
      }
    }
  }
};

TGT void ternary_z(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const bool few = m1 - m0 <= 2;
  if (g->scale_neg && g->xscale)
    few ? drive<TernaryZ<true>, 1, 4>(g, m0, m1, b0, b1) : drive<TernaryZ<true>, 4, 2>(g, m0, m1, b0, b1);
  else
    few ? drive<TernaryZ<false>, 1, 8>(g, m0, m1, b0, b1) : drive<TernaryZ<false>, 4, 4, 8>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- binary x int8

struct BinaryI8Z {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    const __m512i one = _mm512_set1_epi8(1);
    __m512i acc[MT][NB];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
    const int8_t* x = g->xq + m0 * g->Kp;
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        const __m512i v = load64(dl_tile(g, b0 + j, kb));
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
          const __m512i u = _mm512_and_si512(_mm512_srli_epi16(v, s), one);
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i)
            acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u, bcast4z(x + i * g->Kp + kb * DL_BK + 4 * s));
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      const __m512i xsum = _mm512_set1_epi32(g->xsum[m0 + i]);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) {
        const __m512i dot = _mm512_sub_epi32(_mm512_slli_epi32(acc[i][j], 1), xsum);
        store16<false>(g, m0 + i, (b0 + j) * DL_NB, dot, dot);
      }
    }
  }
};

TGT void binary_i8_z(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m1 - m0 <= 2)
    drive<BinaryI8Z, 1, 8>(g, m0, m1, b0, b1);
  else
    drive<BinaryI8Z, 4, 4>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- xnor

struct XnorZ {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    __m512i acc[MT][NB];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
    const uint8_t* x = g->xbits + m0 * (g->Kp / 8);
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        const __m512i v = load64(dl_tile(g, b0 + j, kb));
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {
          const __m512i xw = bcast4z(x + i * (g->Kp / 8) + 4 * kb);
          acc[i][j] = _mm512_add_epi32(acc[i][j], _mm512_popcnt_epi32(_mm512_xor_si512(v, xw)));
        }
      }
    }
    const __m512i kk = _mm512_set1_epi32((int)g->K);
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) {
        const __m512i dot = _mm512_sub_epi32(kk, _mm512_slli_epi32(acc[i][j], 1));
        store16<false>(g, m0 + i, (b0 + j) * DL_NB, dot, dot);
      }
  }
};

TGT void xnor_z(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m1 - m0 <= 2)
    drive<XnorZ, 1, 8>(g, m0, m1, b0, b1);
  else
    drive<XnorZ, 4, 4>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- depthwise

struct VDw16 {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int N = 16;
  static constexpr int COLS = 4;
  TGT ALWAYS_INLINE static Mask mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }
  TGT ALWAYS_INLINE static T load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  TGT ALWAYS_INLINE static void store(float* p, T v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  TGT ALWAYS_INLINE static T zero() { return _mm512_setzero_ps(); }
  TGT ALWAYS_INLINE static T set1(float v) { return _mm512_set1_ps(v); }
  TGT ALWAYS_INLINE static T add(T a, T b) { return _mm512_add_ps(a, b); }
  TGT ALWAYS_INLINE static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  TGT ALWAYS_INLINE static T clamp(T v, T lo, T hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, v)); }
};

TGT void depthwise3x3_z(const DlDepthwise* d, int64_t r0, int64_t r1) { dw3x3_rows<VDw16>(d, r0, r1); }
TGT void conv3x3_z(const DlConv3x3* c, int64_t r0, int64_t r1) { conv3x3_rows<VDw16>(c, r0, r1); }
TGT void depthwise3x3_z_row(const DlDepthwise* d, int64_t oh, const float* const* in, float* yrow) {
  int kh0, kh1;
  dw_taps(d, oh, &kh0, &kh1);
  dw3x3_row<VDw16>(d, in, kh0, kh1, yrow);
}

const DlKernels kTable = {quantize_row_z, binarize_row_z,     ternary_z, binary_i8_z,    xnor_z,
                          depthwise3x3_z, depthwise3x3_z_row, conv3x3_z, quantize_rows_z, binarize_rows_z};

}  // namespace

const DlKernels* dl_kernels_avx512(void) { return &kTable; }
#else
const DlKernels* dl_kernels_avx512(void) { return 0; }
#endif
