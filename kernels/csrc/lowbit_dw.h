// The depthwise 3x3 convolution (DlDepthwise in lowbit.h), written once for any vector
// width. An includer defines a traits struct V and instantiates dw3x3<V>:
//   V::N                  floats per vector
//   V::Mask, V::mask(n)   a mask of the first n lanes (n <= N)
//   V::load(p, m), V::store(p, v, m), V::zero(), V::set1(f), V::add(a, b)
//   V::fma(a, b, c)       a * b + c rounded once (the spec's tap: reference.fma32); every ISA's
//                         fused multiply-add is exact, so all of them give the same bits
//   V::clamp(v, lo, hi)   min(hi, max(lo, v)), NaN passing through (as dl_clamp)
//   V::COLS               output columns computed together inside the image (1: one at a time)
// Channels are the vector lanes (NHWC): one output row at a time, one chunk of N channels
// at a time, with that chunk's nine weight vectors held in registers across the row.
// An SIMD includer defines DL_TARGET first: these templates then carry that target
// attribute, so each ISA's copy is compiled for (and runs on) that ISA only.
#pragma once
#include "lowbit.h"

#ifdef DL_TARGET
#define DL_DW_INLINE __attribute__((target(DL_TARGET), always_inline)) inline
#else
#define DL_DW_INLINE __attribute__((always_inline)) inline
#endif

namespace {

// One output pixel: the taps kh in [kh0, kh1) of input rows `rows` (rows[kh] points at
// column 0, channel c0 of input row ih0 + kh), columns iw0 + kw for kw in [kw0, kw1).
template <class V>
DL_DW_INLINE typename V::T dw_pixel(const float* const* rows, int kh0, int kh1, int64_t iw0, int kw0, int kw1,
                                    int64_t C, const typename V::T* wv, typename V::Mask m) {
  typename V::T acc = V::zero();
  for (int kh = kh0; kh < kh1; ++kh)
    for (int kw = kw0; kw < kw1; ++kw) acc = V::fma(V::load(rows[kh] + (iw0 + kw) * C, m), wv[3 * kh + kw], acc);
  return acc;
}

// Adds the bias, clamps and stores one output pixel's chunk.
template <class V>
DL_DW_INLINE void dw_finish(const DlDepthwise* d, float* out, typename V::T acc, typename V::T bias, typename V::T lo,
                            typename V::T hi, typename V::Mask m) {
  acc = V::add(acc, bias);
  if (d->clamp) acc = V::clamp(acc, lo, hi);
  V::store(out, acc, m);
}

// Stride 1: P output columns [ow, ow + P) at a time, all three rows and columns inside the image,
// as long as P fit before ow_hi; returns the first column not done. The P + 2 input vectors of a
// row are loaded once for the P outputs (one at a time loads each 3 times): 1.05-1.12x on
// MobileNetV2's stride-1 shapes (AVX-512, P = 4). Every output still sums its taps in the spec's
// order. At stride 2 it was 0.8x (9 loads for 4 outputs saved less than the longer live ranges cost).
template <class V, int P>
DL_DW_INLINE int64_t dw_columns(const DlDepthwise* d, const float* const* rows, int64_t ow, int64_t ow_hi, int64_t c0,
                                const typename V::T* wv, typename V::T bias, typename V::T lo, typename V::T hi,
                                typename V::Mask m, float* yrow) {
  if constexpr (P == 1) return ow;
  constexpr int NX = P + 2;
  const int64_t C = d->C;
  for (; ow + P <= ow_hi; ow += P) {
    typename V::T acc[P];
    for (int q = 0; q < P; ++q) acc[q] = V::zero();
    const int64_t iw0 = ow - d->pad;
    for (int kh = 0; kh < 3; ++kh) {
      typename V::T xin[NX];
      for (int t = 0; t < NX; ++t) xin[t] = V::load(rows[kh] + (iw0 + t) * C, m);
      for (int kw = 0; kw < 3; ++kw)
        for (int q = 0; q < P; ++q) acc[q] = V::fma(xin[q + kw], wv[3 * kh + kw], acc[q]);
    }
    for (int q = 0; q < P; ++q) dw_finish<V>(d, yrow + (ow + q) * C + c0, acc[q], bias, lo, hi, m);
  }
  return ow;
}

// One output row from input rows `in` (in[kh] points at column 0, channel 0 of input row
// ih0 + kh; only kh in [kh0, kh1) are read: the others fall on the zero padding).
template <class V>
DL_DW_INLINE void dw3x3_row(const DlDepthwise* d, const float* const* in, int kh0, int kh1, float* yrow) {
  const int64_t C = d->C, W = d->W, s = d->stride, p = d->pad;
  // Output columns whose three input columns are all inside the image: [ow_lo, ow_hi).
  int64_t ow_lo = (p + s - 1) / s, ow_hi = W - 3 + p >= 0 ? (W - 3 + p) / s + 1 : 0;
  if (ow_hi > d->Wo) ow_hi = d->Wo;
  if (ow_lo > ow_hi) ow_lo = ow_hi;
  const typename V::T lo = V::set1(d->act_lo), hi = V::set1(d->act_hi);
  for (int64_t c0 = 0; c0 < C; c0 += V::N) {
    const typename V::Mask m = V::mask(C - c0 < V::N ? (int)(C - c0) : V::N);
    typename V::T wv[9];
    for (int t = 0; t < 9; ++t) wv[t] = V::load(d->w + t * C + c0, m);
    const typename V::T bias = d->bias ? V::load(d->bias + c0, m) : V::zero();
    const float* rows[3];
    for (int kh = 0; kh < 3; ++kh) rows[kh] = kh >= kh0 && kh < kh1 ? in[kh] + c0 : nullptr;
    for (int64_t ow = 0; ow < d->Wo; ++ow) {
      if (ow == ow_lo && ow_lo < ow_hi) {  // the interior: all three columns inside
        if (kh0 == 0 && kh1 == 3) {
          if (s == 1) ow = dw_columns<V, V::COLS>(d, rows, ow, ow_hi, c0, wv, bias, lo, hi, m, yrow);
          for (; ow < ow_hi; ++ow)
            dw_finish<V>(d, yrow + ow * C + c0, dw_pixel<V>(rows, 0, 3, ow * s - p, 0, 3, C, wv, m), bias, lo, hi, m);
        } else
          for (; ow < ow_hi; ++ow)
            dw_finish<V>(d, yrow + ow * C + c0, dw_pixel<V>(rows, kh0, kh1, ow * s - p, 0, 3, C, wv, m), bias, lo, hi,
                         m);
        if (ow == d->Wo) break;
      }
      // a column whose window crosses the left or right border
      const int64_t iw0 = ow * s - p;
      const int kw0 = iw0 < 0 ? (int)-iw0 : 0, kw1 = iw0 + 3 > W ? (int)(W - iw0) : 3;
      dw_finish<V>(d, yrow + ow * C + c0, dw_pixel<V>(rows, kh0, kh1, iw0, kw0, kw1, C, wv, m), bias, lo, hi, m);
    }
  }
}

// The valid taps [kh0, kh1) of output row oh.
static inline void dw_taps(const DlDepthwise* d, int64_t oh, int* kh0, int* kh1) {
  const int64_t ih0 = oh * d->stride - d->pad;
  *kh0 = ih0 < 0 ? (int)-ih0 : 0;
  *kh1 = ih0 + 3 > d->H ? (int)(d->H - ih0) : 3;
}

template <class V>
DL_DW_INLINE void dw3x3_rows(const DlDepthwise* d, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / d->Ho, oh = r % d->Ho, ih0 = oh * d->stride - d->pad;
    int kh0, kh1;
    dw_taps(d, oh, &kh0, &kh1);
    const float* in[3];
    for (int kh = 0; kh < 3; ++kh) in[kh] = d->x + (b * d->H + ih0 + kh) * d->W * d->C;
    dw3x3_row<V>(d, in, kh0, kh1, d->y + r * d->Wo * d->C);
  }
}

// The dense 3x3 conv (DlConv3x3): output channels are the vector lanes. Inside the image, P output
// columns and NC vectors of channels at a time: P x NC independent sums (one pixel's 9 * Cin dependent
// adds alone would leave the adder's latency exposed), each input value broadcast once for the NC
// vectors and each weight vector loaded once for the P columns. Every sum keeps the spec's order.
template <class V, int P, int NC>
DL_DW_INLINE void conv3x3_pixels(const DlConv3x3* c, int64_t b, int64_t ih0, int kh0, int kh1, int64_t ow, int kw0,
                                 int kw1, int64_t c0, const typename V::Mask* m, const typename V::T* bias,
                                 typename V::T lo, typename V::T hi, float* yrow) {
  const int64_t Cin = c->Cin, Cout = c->Cout, s = c->stride;
  const int64_t iw0 = ow * s - c->pad;
  typename V::T acc[P][NC];
  for (int q = 0; q < P; ++q)
    for (int j = 0; j < NC; ++j) acc[q][j] = V::zero();
  for (int kh = kh0; kh < kh1; ++kh)
    for (int kw = kw0; kw < kw1; ++kw) {
      const float* xp = c->x + b * c->sb + (ih0 + kh) * c->sh + (iw0 + kw) * c->sw;
      const float* wp = c->w + (kh * 3 + kw) * Cin * Cout + c0;
      for (int64_t ci = 0; ci < Cin; ++ci) {
        typename V::T wv[NC];
        for (int j = 0; j < NC; ++j) wv[j] = V::load(wp + ci * Cout + j * V::N, m[j]);
        for (int q = 0; q < P; ++q) {
          const typename V::T xv = V::set1(xp[q * s * c->sw + ci * c->sc]);
          for (int j = 0; j < NC; ++j) acc[q][j] = V::fma(xv, wv[j], acc[q][j]);
        }
      }
    }
  for (int q = 0; q < P; ++q)
    for (int j = 0; j < NC; ++j) {
      typename V::T y = V::add(acc[q][j], bias[j]);
      if (c->clamp) y = V::clamp(y, lo, hi);
      V::store(yrow + (ow + q) * Cout + c0 + j * V::N, y, m[j]);
    }
}

// One output row's channels [c0, c0 + NC * N): P columns at a time inside the image, one at a time
// where the window crosses the left or right border.
template <class V, int P, int NC>
DL_DW_INLINE void conv3x3_row_chunk(const DlConv3x3* c, int64_t b, int64_t ih0, int kh0, int kh1, int64_t ow_lo,
                                    int64_t ow_hi, int64_t c0, typename V::T lo, typename V::T hi, float* yrow) {
  const int64_t Cout = c->Cout, s = c->stride, p = c->pad, W = c->W;
  typename V::Mask m[NC];
  typename V::T bias[NC];
  for (int j = 0; j < NC; ++j) {
    const int64_t left = Cout - c0 - j * V::N;
    m[j] = V::mask(left < V::N ? (int)left : V::N);
    bias[j] = c->bias ? V::load(c->bias + c0 + j * V::N, m[j]) : V::zero();
  }
  for (int64_t ow = 0; ow < c->Wo;) {
    if (ow >= ow_lo && ow + P <= ow_hi) {
      conv3x3_pixels<V, P, NC>(c, b, ih0, kh0, kh1, ow, 0, 3, c0, m, bias, lo, hi, yrow);
      ow += P;
      continue;
    }
    const int64_t iw0 = ow * s - p;
    const int kw0 = iw0 < 0 ? (int)-iw0 : 0, kw1 = iw0 + 3 > W ? (int)(W - iw0) : 3;
    conv3x3_pixels<V, 1, NC>(c, b, ih0, kh0, kh1, ow, kw0, kw1, c0, m, bias, lo, hi, yrow);
    ++ow;
  }
}

template <class V>
DL_DW_INLINE void conv3x3_rows(const DlConv3x3* c, int64_t r0, int64_t r1) {
  const int64_t Cout = c->Cout, s = c->stride, p = c->pad, W = c->W;
  int64_t ow_lo = (p + s - 1) / s, ow_hi = W - 3 + p >= 0 ? (W - 3 + p) / s + 1 : 0;
  if (ow_hi > c->Wo) ow_hi = c->Wo;
  if (ow_lo > ow_hi) ow_lo = ow_hi;
  const typename V::T lo = V::set1(c->act_lo), hi = V::set1(c->act_hi);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / c->Ho, oh = r % c->Ho, ih0 = oh * s - p;
    const int kh0 = ih0 < 0 ? (int)-ih0 : 0, kh1 = ih0 + 3 > c->H ? (int)(c->H - ih0) : 3;
    float* yrow = c->y + r * c->Wo * Cout;
    int64_t c0 = 0;
    for (; c0 + V::N < Cout; c0 += 2 * V::N)  // two vectors of channels (and a masked second one)
      conv3x3_row_chunk<V, 6, 2>(c, b, ih0, kh0, kh1, ow_lo, ow_hi, c0, lo, hi, yrow);
    if (c0 < Cout) conv3x3_row_chunk<V, 8, 1>(c, b, ih0, kh0, kh1, ow_lo, ow_hi, c0, lo, hi, yrow);
  }
}

}  // namespace
