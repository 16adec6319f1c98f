// The AArch64 kernels, written once and compiled twice: plain NEON (Armv8.0,
// every AArch64 CPU) and NEON with the Armv8.2 dot-product instructions.
//
// A translation unit defines, before including this file:
//   DL_DOTPROD    1 to use sdot/udot (vdotq_*), 0 for widening multiply-adds
//   DL_TABLE_FN   the name of the function that returns the kernel table
// Everything lives in an anonymous namespace and only arm_neon.h (whose
// intrinsics are always inlined) and lowbit.h (static inline) are included, so
// no code built for Armv8.2 can be merged into the path an Armv8.0 CPU runs.
//
// The tile layout (lowbit.h) fits NEON's dot product as it fits vpdpbusd: a
// 16-byte register of a tile holds 4 output channels, each 32-bit lane the 4
// weights of one output that meet 4 consecutive activations, and
// vdotq_laneq_s32(acc, w, x, s) multiplies them with activation group s of x.
// A ternary tile (16 activations) is one activation register; a binary tile two.
// Weights enter as their codes (ternary w+1, binary bit) and the activation row
// sum removes the offset, as in the x86 kernels.
#include <arm_neon.h>

#include "lowbit.h"
#include "lowbit_dw.h"

#define DL_INLINE __attribute__((always_inline)) inline

namespace {

// ---------------------------------------------------------------- products

// acc[l] += sum over s = 0..3 of the 4-byte dot product of lane l of u[s] with
// 32-bit group s of x (4 output channels x 16 activations).
DL_INLINE int32x4_t dot16(int32x4_t acc, int8x16_t u0, int8x16_t u1, int8x16_t u2, int8x16_t u3, int8x16_t x) {
#if DL_DOTPROD
  acc = vdotq_laneq_s32(acc, u0, x, 0);
  acc = vdotq_laneq_s32(acc, u1, x, 1);
  acc = vdotq_laneq_s32(acc, u2, x, 2);
  return vdotq_laneq_s32(acc, u3, x, 3);
#else
  // Widening multiply-adds in int16: |u| <= 2 and |x| <= 128, so each of the
  // 4 sums is at most 1024 and a pair of them 2048; then pairs into int32 lanes.
  const int32x4_t x32 = vreinterpretq_s32_s8(x);
  const int8x8_t b0 = vreinterpret_s8_s32(vdup_laneq_s32(x32, 0)), b1 = vreinterpret_s8_s32(vdup_laneq_s32(x32, 1));
  const int8x8_t b2 = vreinterpret_s8_s32(vdup_laneq_s32(x32, 2)), b3 = vreinterpret_s8_s32(vdup_laneq_s32(x32, 3));
  int16x8_t lo = vmull_s8(vget_low_s8(u0), b0), hi = vmull_s8(vget_high_s8(u0), b0);
  lo = vmlal_s8(lo, vget_low_s8(u1), b1), hi = vmlal_s8(hi, vget_high_s8(u1), b1);
  lo = vmlal_s8(lo, vget_low_s8(u2), b2), hi = vmlal_s8(hi, vget_high_s8(u2), b2);
  lo = vmlal_s8(lo, vget_low_s8(u3), b3), hi = vmlal_s8(hi, vget_high_s8(u3), b3);
  return vpadalq_s16(acc, vpaddq_s16(lo, hi));
#endif
}

// ---------------------------------------------------------------- activations

float row_absmax(const float* x, int64_t K) {
  float32x4_t vmax = vdupq_n_f32(0.0f);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(x + k)));
  float amax = vmaxvq_f32(vmax);
  for (; k < K; ++k) {
    const float a = __builtin_fabsf(x[k]);
    amax = a > amax ? a : amax;
  }
  return amax;
}

// FCVTNS rounds to nearest, ties to even, as torch.round; |x * inv| <= 127 up to
// one rounding, and the clamp keeps the scalar kernel's bound all the same.
DL_INLINE int32x4_t quantize4(const float* x, float32x4_t vinv) {
  const int32x4_t r = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x), vinv));
  return vminq_s32(vmaxq_s32(r, vdupq_n_s32(-127)), vdupq_n_s32(127));
}

void quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum) {
  const float amax = row_absmax(x, K);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const float32x4_t vinv = vdupq_n_f32(inv);
  int32x4_t vsum = vdupq_n_s32(0);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const int32x4_t r0 = quantize4(x + k, vinv), r1 = quantize4(x + k + 4, vinv);
    const int32x4_t r2 = quantize4(x + k + 8, vinv), r3 = quantize4(x + k + 12, vinv);
    vsum = vaddq_s32(vsum, vaddq_s32(vaddq_s32(r0, r1), vaddq_s32(r2, r3)));
    const int16x8_t h01 = vcombine_s16(vmovn_s32(r0), vmovn_s32(r1));
    const int16x8_t h23 = vcombine_s16(vmovn_s32(r2), vmovn_s32(r3));
    vst1q_s8(q + k, vcombine_s8(vmovn_s16(h01), vmovn_s16(h23)));
  }
  int32_t s = vaddvq_s32(vsum);
  for (; k < K; ++k) {
    q[k] = dl_quantize_one(x[k], inv);
    s += q[k];
  }
  memset(q + K, 0, (size_t)(Kp - K));
  *scale = amax / 127.0f;
  *sum = s;
}

// Adds ((double)|x| + c) - c for 4 values to two double accumulators (dl_abs_rounded).
DL_INLINE float64x2_t abs_rounded4(float64x2_t acc, float32x4_t v, float64x2_t c) {
  const float32x4_t a = vabsq_f32(v);
  acc = vaddq_f64(acc, vsubq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(a)), c), c));
  return vaddq_f64(acc, vsubq_f64(vaddq_f64(vcvt_high_f64_f32(a), c), c));
}

// Sign bits (bit 1 for x > 0) in the tile order, and beta = mean |x| (exact sum).
// vld4q de-interleaves 16 floats so that register j holds x[4s + j], s = 0..3:
// exactly the bits s of byte j of the tile word (bit 8j + s <- x[4s + j]).
void binarize_row(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  const double c = dl_abs_sum_magic(row_absmax(x, K));
  const float64x2_t vc = vdupq_n_f64(c);
  const float32x4_t zero = vdupq_n_f32(0.0f);
  const uint32_t wl[4] = {1, 2, 4, 8}, wh[4] = {16, 32, 64, 128};
  const uint32x4_t bit_lo = vld1q_u32(wl), bit_hi = vld1q_u32(wh);
  float64x2_t vabs = vdupq_n_f64(0.0);
  const int64_t full = K / DL_BK;
  for (int64_t kb = 0; kb < full; ++kb) {
    const float32x4x4_t a = vld4q_f32(x + kb * DL_BK), b = vld4q_f32(x + kb * DL_BK + 16);
    uint32_t word = 0;
    for (int j = 0; j < 4; ++j) {
      const uint32x4_t m = vorrq_u32(vandq_u32(vcgtq_f32(a.val[j], zero), bit_lo),
                                     vandq_u32(vcgtq_f32(b.val[j], zero), bit_hi));
      word |= vaddvq_u32(m) << (8 * j);
      vabs = abs_rounded4(abs_rounded4(vabs, a.val[j], vc), b.val[j], vc);
    }
    memcpy(bits + 4 * kb, &word, 4);
  }
  double total = vgetq_lane_f64(vabs, 0) + vgetq_lane_f64(vabs, 1);
  for (int64_t k = full * DL_BK; k < K; ++k) total += dl_abs_rounded(__builtin_fabsf(x[k]), c);
  for (int64_t kb = full; kb < Kp / DL_BK; ++kb) {
    const int64_t n = K - kb * DL_BK;
    const uint32_t word = dl_sign_word(x + kb * DL_BK, n < 0 ? 0 : n);
    memcpy(bits + 4 * kb, &word, 4);
  }
  *beta = K > 0 ? (float)(total / (double)K) : 0.0f;
}

// ---------------------------------------------------------------- epilogue

// min(hi, max(lo, y)) exactly as dl_clamp: compare and select, so that NaN passes and a
// signed zero comes out as dl_clamp gives it (FMAX(+0, -0) is +0, dl_clamp keeps the -0).
DL_INLINE float32x4_t clamp4(float32x4_t y, float32x4_t lo, float32x4_t hi) {
  y = vbslq_f32(vcgtq_f32(lo, y), lo, y);
  return vbslq_f32(vcltq_f32(hi, y), hi, y);
}

// Stores the 4 outputs (m, n .. n+3), skipping columns past N; the float math is
// dl_store's (and the reference's), lane by lane.
template <bool TTQ>
DL_INLINE void store4(const DlGemm* g, int64_t m, int64_t n, int32x4_t dot, int32x4_t pos) {
  const int64_t valid = g->N - n;
  if (valid <= 0) return;
  if (valid < 4) {
    int32_t d[4], p[4];
    vst1q_s32(d, dot), vst1q_s32(p, pos);
    for (int64_t l = 0; l < valid; ++l) TTQ ? dl_store_ttq(g, m, n + l, d[l], p[l]) : dl_store(g, m, n + l, d[l]);
    return;
  }
  if (!g->xscale) return vst1q_s32(g->yi + m * g->N + n, dot);
  const float32x4_t wp = vld1q_f32(g->scale_pos + n);
  const float32x4_t b = g->bias ? vld1q_f32(g->bias + n) : vdupq_n_f32(0.0f);
  const float32x4_t sx = vdupq_n_f32(g->xscale[m]);
  float32x4_t y;
  if (TTQ) {
    const float32x4_t wn = vld1q_f32(g->scale_neg + n);
    const int32x4_t neg = vsubq_s32(pos, dot);
    y = vsubq_f32(vmulq_f32(vcvtq_f32_s32(pos), wp), vmulq_f32(vcvtq_f32_s32(neg), wn));
    y = vaddq_f32(vmulq_f32(y, sx), b);
  } else {
    y = vaddq_f32(vmulq_f32(vmulq_f32(vcvtq_f32_s32(dot), wp), sx), b);
  }
  if (g->clamp) y = clamp4(y, vdupq_n_f32(g->act_lo), vdupq_n_f32(g->act_hi));
  vst1q_f32(g->y + m * g->N + n, y);
}

// ---------------------------------------------------------------- GEMMs

// The unit of output here is a group of 4 channels: one 16-byte register of a tile,
// group q being register q % 4 of the tiles of block q / 4. A kernel's block<MT, NQ>
// computes MT rows x NQ consecutive groups over all of K, so that its MT * NQ
// accumulators, the NQ unpacked weight registers and the MT activation registers
// fit the 32 NEON registers together (a whole 16-output tile for 4 rows would not:
// 16 accumulators and 16 unpacked code registers already fill them).

// f(i, q) for every accumulator of an MT x NQ block.
template <int MT, int NQ, class F>
DL_INLINE void each_acc(F f) {
  for (int i = 0; i < MT; ++i)
    for (int q = 0; q < NQ; ++q) f(i, q);
}

// f(q, v) for the weight register v of groups q0 + q, q < NQ, in K-tile kb.
template <int NQ, class F>
DL_INLINE void each_group(const DlGemm* g, int64_t q0, int64_t kb, F f) {
#pragma GCC unroll 8
  for (int q = 0; q < NQ; ++q) f(q, vld1q_u8(dl_tile(g, (q0 + q) / 4, kb) + 16 * ((q0 + q) % 4)));
}

template <bool TTQ>
struct Ternary {
  template <int MT, int NQ>
  static void block(const DlGemm* g, int64_t m0, int64_t q0) {
    const uint8x16_t mask3 = vdupq_n_u8(3);
    int32x4_t acc[MT][NQ], pacc[MT][NQ];  // pacc (TTQ only): sum of x over the +1 weights
    each_acc<MT, NQ>([&](int i, int q) { acc[i][q] = pacc[i][q] = vdupq_n_s32(0); });
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
      int8x16_t xv[MT];
      for (int i = 0; i < MT; ++i) xv[i] = vld1q_s8(g->xq + (m0 + i) * g->Kp + kb * DL_TK);
      each_group<NQ>(g, q0, kb, [&](int q, uint8x16_t v) {
        const uint8x16_t c0 = vandq_u8(v, mask3), c1 = vandq_u8(vshrq_n_u8(v, 2), mask3);
        const uint8x16_t c2 = vandq_u8(vshrq_n_u8(v, 4), mask3), c3 = vshrq_n_u8(v, 6);
        const int8x16_t u0 = vreinterpretq_s8_u8(c0), u1 = vreinterpretq_s8_u8(c1);
        const int8x16_t u2 = vreinterpretq_s8_u8(c2), u3 = vreinterpretq_s8_u8(c3);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {
          acc[i][q] = dot16(acc[i][q], u0, u1, u2, u3, xv[i]);
          if constexpr (TTQ)  // code >> 1 is 1 exactly for the +1 weights (code 2)
            pacc[i][q] = dot16(pacc[i][q], vreinterpretq_s8_u8(vshrq_n_u8(c0, 1)),
                               vreinterpretq_s8_u8(vshrq_n_u8(c1, 1)), vreinterpretq_s8_u8(vshrq_n_u8(c2, 1)),
                               vreinterpretq_s8_u8(vshrq_n_u8(c3, 1)), xv[i]);
        }
      });
    }
    each_acc<MT, NQ>([&](int i, int q) {
      const int32x4_t dot = vsubq_s32(acc[i][q], vdupq_n_s32(g->xsum[m0 + i]));
      store4<TTQ>(g, m0 + i, 4 * (q0 + q), dot, TTQ ? pacc[i][q] : dot);
    });
  }
};

// Binary weights x int8 activations: bit s of each byte meets activation s of
// the tile's 32 (groups 0..3 of the first register for s < 4, of the second after).
struct BinaryI8 {
  template <int MT, int NQ>
  static void block(const DlGemm* g, int64_t m0, int64_t q0) {
    const uint8x16_t one = vdupq_n_u8(1);
    int32x4_t acc[MT][NQ];
    each_acc<MT, NQ>([&](int i, int q) { acc[i][q] = vdupq_n_s32(0); });
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {  // bit planes 4 half .. 4 half + 3
        int8x16_t xv[MT];
        for (int i = 0; i < MT; ++i) xv[i] = vld1q_s8(g->xq + (m0 + i) * g->Kp + kb * DL_BK + 16 * half);
        each_group<NQ>(g, q0, kb, [&](int q, uint8x16_t v) {
          const uint8x16_t w = half ? vshrq_n_u8(v, 4) : v;
          const int8x16_t u0 = vreinterpretq_s8_u8(vandq_u8(w, one));
          const int8x16_t u1 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 1), one));
          const int8x16_t u2 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 2), one));
          const int8x16_t u3 = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(w, 3), one));
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i) acc[i][q] = dot16(acc[i][q], u0, u1, u2, u3, xv[i]);
        });
      }
    }
    each_acc<MT, NQ>([&](int i, int q) {
      const int32x4_t dot = vsubq_s32(vshlq_n_s32(acc[i][q], 1), vdupq_n_s32(g->xsum[m0 + i]));
      store4<false>(g, m0 + i, 4 * (q0 + q), dot, dot);
    });
  }
};

// XNOR-popcount: vcnt gives the mismatches per byte; udot against ones (or, on
// Armv8.0, pairwise widening adds) sums the 4 bytes of each output's lane. The
// Armv8.0 path keeps 16-bit partial sums (at most 16 per tile) and widens them
// every 1024 tiles, well before they could overflow.
struct Xnor {
  template <int MT, int NQ>
  static void block(const DlGemm* g, int64_t m0, int64_t q0) {
    uint32x4_t acc[MT][NQ];
    each_acc<MT, NQ>([&](int i, int q) { acc[i][q] = vdupq_n_u32(0); });
    const int64_t row_words = g->Kp / DL_BK;
    for (int64_t k0 = 0; k0 < g->kblocks; k0 += 1024) {
      const int64_t k1 = k0 + 1024 < g->kblocks ? k0 + 1024 : g->kblocks;
#if !DL_DOTPROD
      uint16x8_t acc16[MT][NQ];
      each_acc<MT, NQ>([&](int i, int q) { acc16[i][q] = vdupq_n_u16(0); });
#endif
      for (int64_t kb = k0; kb < k1; ++kb) {
        uint8x16_t xw[MT];
        for (int i = 0; i < MT; ++i)
          xw[i] = vreinterpretq_u8_u32(vdupq_n_u32(dl_load_u32(g->xbits + 4 * ((m0 + i) * row_words + kb))));
        each_group<NQ>(g, q0, kb, [&](int q, uint8x16_t v) {
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i) {
            const uint8x16_t c = vcntq_u8(veorq_u8(v, xw[i]));
#if DL_DOTPROD
            acc[i][q] = vdotq_u32(acc[i][q], c, vdupq_n_u8(1));
#else
            acc16[i][q] = vpadalq_u8(acc16[i][q], c);
#endif
          }
        });
      }
#if !DL_DOTPROD
      each_acc<MT, NQ>([&](int i, int q) { acc[i][q] = vpadalq_u16(acc[i][q], acc16[i][q]); });
#endif
    }
    const int32x4_t kk = vdupq_n_s32((int32_t)g->K);
    each_acc<MT, NQ>([&](int i, int q) {
      const int32x4_t dot = vsubq_s32(kk, vshlq_n_s32(vreinterpretq_s32_u32(acc[i][q]), 1));
      store4<false>(g, m0 + i, 4 * (q0 + q), dot, dot);
    });
  }
};

// Covers rows [m0, m1) x output blocks [b0, b1), that is groups [4 b0, 4 b1) cut
// at the last group that holds a column below N: NQ groups at a time, then one;
// MT rows at a time, then the leftover 1..MT-1 rows one by one.
template <class Kern, int MT, int NQ>
void tiles(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const int64_t q_end = 4 * b1 < (g->N + 3) / 4 ? 4 * b1 : (g->N + 3) / 4;
  for (int64_t q = 4 * b0; q < q_end;) {
    const bool wide = q + NQ <= q_end;
    int64_t m = m0;
    for (; m + MT <= m1; m += MT) wide ? Kern::template block<MT, NQ>(g, m, q) : Kern::template block<MT, 1>(g, m, q);
    for (; m < m1; ++m) wide ? Kern::template block<1, NQ>(g, m, q) : Kern::template block<1, 1>(g, m, q);
    q += wide ? NQ : 1;
  }
}

// Few rows (a GEMV): many groups at once for independent accumulators; many rows:
// several rows share each unpacked weight register, MT x NQ as the registers allow
// (checked in the disassembly: no spills in the dot-product loops). The Armv8.0
// products hold 4 broadcast activation registers per row, so they take fewer rows.
constexpr int kRows = DL_DOTPROD ? 4 : 2, kGemvGroups = DL_DOTPROD ? 8 : 4;

void ternary(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const bool few = m1 - m0 <= 2;
  if (g->scale_neg && g->xscale)  // twice the accumulators
    few ? tiles<Ternary<true>, 1, kGemvGroups / 2>(g, m0, m1, b0, b1)
        : tiles<Ternary<true>, 2, kRows / 2>(g, m0, m1, b0, b1);
  else
    few ? tiles<Ternary<false>, 1, kGemvGroups>(g, m0, m1, b0, b1) : tiles<Ternary<false>, kRows, 2>(g, m0, m1, b0, b1);
}

void binary_i8(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  m1 - m0 <= 2 ? tiles<BinaryI8, 1, kGemvGroups>(g, m0, m1, b0, b1) : tiles<BinaryI8, kRows, 2>(g, m0, m1, b0, b1);
}

void xnor(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  constexpr int kNQ = DL_DOTPROD ? 4 : 2;  // Armv8.0 also holds the 16-bit partial sums
  m1 - m0 <= 2 ? tiles<Xnor, 1, kGemvGroups>(g, m0, m1, b0, b1) : tiles<Xnor, 4, kNQ>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- depthwise and stem convs

// lowbit_dw.h's vector traits (for its depthwise and dense 3x3 templates): 4 channels
// per register; a partial chunk (C % 4 channels) goes through a zeroed stack copy, as
// NEON has no masked loads and stores.
struct VDw4 {
  using T = float32x4_t;
  using Mask = int;  // channels in use, 1..4
  static constexpr int N = 4;
  static constexpr int COLS = 4;
  static DL_INLINE Mask mask(int n) { return n; }
  static DL_INLINE T load(const float* p, Mask m) {
    if (m == 4) return vld1q_f32(p);
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(t, p, 4 * (size_t)m);
    return vld1q_f32(t);
  }
  static DL_INLINE void store(float* p, T v, Mask m) {
    if (m == 4) return vst1q_f32(p, v);
    float t[4];
    vst1q_f32(t, v);
    memcpy(p, t, 4 * (size_t)m);
  }
  static DL_INLINE T zero() { return vdupq_n_f32(0.0f); }
  static DL_INLINE T set1(float v) { return vdupq_n_f32(v); }
  static DL_INLINE T add(T a, T b) { return vaddq_f32(a, b); }
  static DL_INLINE T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }  // c + a * b, rounded once
  static DL_INLINE T clamp(T v, T lo, T hi) { return clamp4(v, lo, hi); }
};

void depthwise3x3(const DlDepthwise* d, int64_t r0, int64_t r1) { dw3x3_rows<VDw4>(d, r0, r1); }

void depthwise3x3_row(const DlDepthwise* d, int64_t oh, const float* const* in, float* yrow) {
  int kh0, kh1;
  dw_taps(d, oh, &kh0, &kh1);
  dw3x3_row<VDw4>(d, in, kh0, kh1, yrow);
}

void conv3x3(const DlConv3x3* c, int64_t r0, int64_t r1) { conv3x3_rows<VDw4>(c, r0, r1); }

const DlKernels kTable = {quantize_row, binarize_row,     ternary, binary_i8, xnor,
                          depthwise3x3, depthwise3x3_row, conv3x3};

}  // namespace

const DlKernels* DL_TABLE_FN(void) { return &kTable; }
