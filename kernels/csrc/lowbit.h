// Shared declarations for the packed low-bit CPU kernels.
//
// This header is included by translation units compiled for different
// instruction sets (see lowbit_simd.h), so it holds plain C types and
// `static inline` helpers only: nothing here may have external linkage that the
// linker could merge across ISA-specific objects.
//
// Packed layouts (the Python side in kernels/packing.py is the spec):
//   ternary: a row of K weights is padded to Kp = ceil(K/128)*128 and stored as
//     Kp/4 bytes. Group g (128 weights) owns bytes [32g, 32g+32); bits 2s..2s+1
//     of byte 32g+j hold code(w[128g + 32s + j]) where code = w + 1 in {0,1,2}.
//   binary: a row is padded to Kp = ceil(K/256)*256 and stored as Kp/8 bytes.
//     Group g (256 weights) owns bytes [32g, 32g+32); bit s of byte 32g+j is
//     1 iff w[256g + 32s + j] = +1.
// With these layouts one 32-byte load, a shift and a mask give 32 consecutive
// weights as bytes, lined up with 32 consecutive int8 activations.
#pragma once
#include <stdint.h>

#define DL_TERNARY_GROUP 128
#define DL_BINARY_GROUP 256

enum DlIsa { DL_ISA_SCALAR = 0, DL_ISA_AVX2 = 1, DL_ISA_AVXVNNI = 2, DL_ISA_AVX512 = 3 };

// Arguments of one GEMM call. Activations are already quantized (int8, padded
// to Kp with zeros) or binarized (bits in the binary layout, padded with 0).
typedef struct DlGemm {
  const int8_t* xq;        // [M, Kp] int8 activations (ternary / binary-int8)
  const uint8_t* xbits;    // [M, Kp/8] activation bits (xnor)
  const int32_t* xsum;     // [M] sum of the int8 activations of each row
  const float* xscale;     // [M] activation scale; NULL -> integer output
  int64_t M, K, Kp;
  const uint8_t* w;        // [N, wstride] packed weights
  int64_t N, wstride;      // wstride = bytes per packed row
  const float* scale_pos;  // [N] per-output-channel scale (ternary: of +1 weights)
  const float* scale_neg;  // [N] ternary only: scale of -1 weights; NULL -> symmetric
  const float* bias;       // [N] or NULL
  float* y;                // [M, N] float output (when xscale != NULL)
  int32_t* yi;             // [M, N] integer output (when xscale == NULL)
} DlGemm;

// One table of kernels per instruction set. Tile functions compute the output
// columns [n0, n1) for every row; the caller splits N across threads.
typedef struct DlKernels {
  void (*quantize_row)(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum);
  void (*binarize_row)(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta);
  void (*ternary_tile)(const DlGemm* a, int64_t n0, int64_t n1);
  void (*binary_i8_tile)(const DlGemm* a, int64_t n0, int64_t n1);
  void (*xnor_tile)(const DlGemm* a, int64_t n0, int64_t n1);
} DlKernels;

// Each returns NULL when the compiler could not build that instruction set.
const DlKernels* dl_kernels_scalar(void);
const DlKernels* dl_kernels_avx2(void);
const DlKernels* dl_kernels_avxvnni(void);
const DlKernels* dl_kernels_avx512(void);

// Epilogues shared by every ISA, written once so that all paths round the same
// way as kernels/reference.py (the TUs are built with -ffp-contract=off).
static inline float dl_epilogue(int32_t dot, float w_scale, float x_scale, float b) {
  return ((float)dot * w_scale) * x_scale + b;
}
static inline float dl_epilogue_asym(int32_t pos, int32_t neg, float wp, float wn, float x_scale, float b) {
  return ((float)pos * wp - (float)neg * wn) * x_scale + b;
}

// Writes the result for (m, n) of a ternary GEMM from its two raw sums:
//   a = sum code*x = sum w*x + xsum,  b2 = sum (code & 2)*x = 2 * (sum of x where w = +1).
static inline void dl_store_ternary(const DlGemm* g, int64_t m, int64_t n, int32_t a, int32_t b2) {
  const int32_t dot = a - g->xsum[m];
  if (!g->xscale) {
    g->yi[m * g->N + n] = dot;
    return;
  }
  const float b = g->bias ? g->bias[n] : 0.0f;
  if (g->scale_neg) {
    const int32_t pos = b2 / 2;
    const int32_t neg = pos - dot;
    g->y[m * g->N + n] = dl_epilogue_asym(pos, neg, g->scale_pos[n], g->scale_neg[n], g->xscale[m], b);
  } else {
    g->y[m * g->N + n] = dl_epilogue(dot, g->scale_pos[n], g->xscale[m], b);
  }
}

// Binary weights times int8 activations, from s = sum of x where w = +1:
//   sum w*x = 2s - xsum.
static inline void dl_store_binary_i8(const DlGemm* g, int64_t m, int64_t n, int32_t s) {
  const int32_t dot = 2 * s - g->xsum[m];
  if (!g->xscale) {
    g->yi[m * g->N + n] = dot;
    return;
  }
  const float b = g->bias ? g->bias[n] : 0.0f;
  g->y[m * g->N + n] = dl_epilogue(dot, g->scale_pos[n], g->xscale[m], b);
}

// XNOR: from the number of differing bits d, the +-1 dot product is K - 2d
// (padding bits are 0 in both operands, so they never differ).
static inline void dl_store_xnor(const DlGemm* g, int64_t m, int64_t n, int64_t d) {
  const int32_t dot = (int32_t)(g->K - 2 * d);
  if (!g->xscale) {
    g->yi[m * g->N + n] = dot;
    return;
  }
  const float b = g->bias ? g->bias[n] : 0.0f;
  g->y[m * g->N + n] = dl_epilogue(dot, g->scale_pos[n], g->xscale[m], b);
}

// The int8 activation quantizer, one element: round half to even, as torch.round.
// `inv` is 127/absmax (0 for an all-zero row).
static inline int8_t dl_quantize_one(float x, float inv) {
  float r = __builtin_nearbyintf(x * inv);
  r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
  return (int8_t)r;
}
