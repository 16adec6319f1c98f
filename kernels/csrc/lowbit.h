// Shared declarations for the packed low-bit CPU kernels.
//
// This header is included by translation units compiled for different
// instruction sets, so it holds plain C types and `static inline` helpers only:
// nothing here may have external linkage that the linker could merge across
// ISA-specific objects.
//
// Packed weight layout (kernels/packing.py is the spec): weights are stored in
// blocks of 16 output channels, each block a run of 64-byte tiles along K.
//   ternary tile (16 outputs x 16 inputs): bits 2s..2s+1 of byte 4*l + j hold
//     code(w[16*nb + l][16*kb + 4*s + j]), code = w + 1 in {0, 1, 2}.
//   binary tile (16 outputs x 32 inputs): bit s of byte 4*l + j is 1 iff
//     w[16*nb + l][32*kb + 4*s + j] = +1.
// Tile (nb, kb) starts at byte 64 * (nb * kblocks + kb). Shifting a tile by 2s
// (or s) and masking gives, in each 32-bit lane l, the 4 weights of output l
// that meet activations x[4s .. 4s+3]: a vpdpbusd against those 4 activation
// bytes broadcast to all lanes adds 4 products to each output channel's own
// lane. Accumulators therefore hold 16 (or 8) outputs each: no horizontal sums.
//
// Binary activations for XNOR use the same bit order: the 32-bit word kb of a
// row has bit 8*j + s set iff x[32*kb + 4*s + j] > 0 (sgn(x) = +1 if x > 0 else
// -1, the convention of kernels/ste.py: zeros, and zero padding, count as -1).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#define DL_NB 16  // output channels per block
#define DL_TK 16  // ternary inputs per tile
#define DL_BK 32  // binary inputs per tile

enum DlIsa { DL_ISA_SCALAR = 0, DL_ISA_AVX2 = 1, DL_ISA_AVXVNNI = 2, DL_ISA_AVX512 = 3 };
// AArch64 (lowbit_neon*.cpp): plain NEON, and NEON with the Armv8.2 dot product.
enum DlIsaArm { DL_ISA_NEON = 4, DL_ISA_NEONDOT = 5, DL_ISA_LAST = DL_ISA_NEONDOT };

// Arguments of one GEMM call. Activations are already quantized (int8, padded
// to Kp with zeros) or binarized (one 32-bit word per tile, padding bits 0).
typedef struct DlGemm {
  const int8_t* xq;        // [M, Kp] int8 activations (ternary / binary-int8)
  const uint8_t* xbits;    // [M, Kp/8] activation sign bits (xnor)
  const int32_t* xsum;     // [M] sum of the int8 activations of each row
  const float* xscale;     // [M] activation scale; NULL -> integer output
  int64_t M, K, Kp, N, kblocks;
  const uint8_t* w;        // [ceil(N/16), kblocks, 64] packed weights
  const float* scale_pos;  // [N] per-output-channel scale (ternary: of the +1 weights)
  const float* scale_neg;  // [N] ternary only: scale of the -1 weights; NULL -> symmetric
  const float* bias;       // [N] or NULL
  int clamp;               // 1: clamp float outputs to [act_lo, act_hi] (a fused ReLU / ReLU6)
  float act_lo, act_hi;
  float* y;                // [M, N] float output (when xscale != NULL)
  int32_t* yi;             // [M, N] integer output (when xscale == NULL)
} DlGemm;

// Kernels compute rows [m0, m1) x output blocks [b0, b1); the caller splits the
// work across threads.
typedef void (*DlGemmFn)(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1);

// Arguments of one depthwise 3x3 convolution (stride 1 or 2, zero padding 0 or 1), channels
// last, float32, BatchNorm already folded into w and bias. kernels/reference.py
// (depthwise3x3) is the spec: each output is
//   acc = +0; for kh in 0..2, for kw in 0..2: acc = fma(x[ih][iw][c], w[kh][kw][c], acc)
//   y = clamp(acc + bias[c])
// in exactly that order, each tap a fused multiply-add (one rounding: half the instructions of a
// multiply and an add, where the depthwise conv is bound by them); taps that fall on the zero
// padding are skipped, which gives the same float (fma(+-0, w, acc) == acc for acc != -0, and
// acc, starting at +0, is never -0).
typedef struct DlDepthwise {
  const float* x;     // [B, H, W, C]
  int64_t B, H, W, C, Ho, Wo;
  int stride, pad;
  const float* w;     // [3, 3, C]
  const float* bias;  // [C] or NULL (0)
  int clamp;          // 1: clamp to [act_lo, act_hi], as DlGemm
  float act_lo, act_hi;
  float* y;           // [B, Ho, Wo, C]
} DlDepthwise;

// Computes output rows r in [r0, r1) of the B * Ho rows (r = b * Ho + oh).
typedef void (*DlDepthwiseFn)(const DlDepthwise* d, int64_t r0, int64_t r1);
// Computes one output row (of output row index oh, which sets the valid taps) into yrow from
// input rows in[kh] (column 0 of input row oh * stride - pad + kh; d->x is not read): what a
// fused block calls on rows it keeps in cache.
typedef void (*DlDepthwiseRowFn)(const DlDepthwise* d, int64_t oh, const float* const* in, float* yrow);

// Arguments of one dense (groups = 1) 3x3 convolution in float32 with few input channels (a
// CNN's stem), BatchNorm folded, clamp fused. The input is read through element strides, so an
// NCHW and an NHWC input both work without a copy; the output is channels last. Spec
// (reference.conv3x3): acc = +0; for kh, for kw, for ci: acc = fma(x[ci][ih][iw], w[kh][kw][ci][co], acc);
// y = clamp(acc + bias[co]), each tap rounded once (a fused multiply-add); taps on the padding skipped.
typedef struct DlConv3x3 {
  const float* x;
  int64_t B, H, W, Cin, Cout, Ho, Wo;
  int64_t sb, sh, sw, sc;  // element strides of x along batch, row, column, channel
  int stride, pad;
  const float* w;     // [3, 3, Cin, Cout]
  const float* bias;  // [Cout] or NULL
  int clamp;
  float act_lo, act_hi;
  float* y;  // [B, Ho, Wo, Cout]
} DlConv3x3;

// Computes output rows r in [r0, r1) of the B * Ho rows.
typedef void (*DlConv3x3Fn)(const DlConv3x3* c, int64_t r0, int64_t r1);

typedef struct DlKernels {
  void (*quantize_row)(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum);
  void (*binarize_row)(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta);
  DlGemmFn ternary;
  DlGemmFn binary_i8;
  DlGemmFn xnor;
  DlDepthwiseFn depthwise3x3;
  DlDepthwiseRowFn depthwise3x3_row;
  DlConv3x3Fn conv3x3;
  // quantize_row on n rows x[i * K ...] -> q[i * Kp ...], scale[i], sum[i]: the same bits, the
  // per-row reductions done for many rows at once. NULL: quantize_row row by row.
  void (*quantize_rows)(const float* x, int64_t n, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum);
  // binarize_row on n rows x[i * K ...] -> bits[i * Kp / 8 ...], beta[i], likewise. NULL: row by row.
  void (*binarize_rows)(const float* x, int64_t n, int64_t K, int64_t Kp, uint8_t* bits, float* beta);
} DlKernels;

// Each returns NULL when the compiler could not build that instruction set.
const DlKernels* dl_kernels_scalar(void);
const DlKernels* dl_kernels_avx2(void);
const DlKernels* dl_kernels_avxvnni(void);
const DlKernels* dl_kernels_avx512(void);
const DlKernels* dl_kernels_neon(void);
const DlKernels* dl_kernels_neondot(void);

static inline const uint8_t* dl_tile(const DlGemm* g, int64_t nb, int64_t kb) {
  return g->w + (nb * g->kblocks + kb) * 64;
}

// Epilogues, written once so that every path rounds the same way as
// kernels/reference.py (all TUs are built with -ffp-contract=off):
//   symmetric:  y = ((float)dot * w_scale) * x_scale + b
//   TTQ:        y = ((float)pos * wp - (float)neg * wn) * x_scale + b
// where dot = sum w*x, pos = sum of x over +1 weights, neg = over -1 weights.
// The fused activation, min(hi, max(lo, y)) with NaN passing through, as torch.clamp.
static inline float dl_clamp(const DlGemm* g, float y) {
  if (!g->clamp) return y;
  y = g->act_lo > y ? g->act_lo : y;
  return g->act_hi < y ? g->act_hi : y;
}

static inline void dl_store(const DlGemm* g, int64_t m, int64_t n, int32_t dot) {
  if (!g->xscale) {
    g->yi[m * g->N + n] = dot;
    return;
  }
  const float b = g->bias ? g->bias[n] : 0.0f;
  g->y[m * g->N + n] = dl_clamp(g, ((float)dot * g->scale_pos[n]) * g->xscale[m] + b);
}

static inline void dl_store_ttq(const DlGemm* g, int64_t m, int64_t n, int32_t dot, int32_t pos) {
  const int32_t neg = pos - dot;
  const float b = g->bias ? g->bias[n] : 0.0f;
  g->y[m * g->N + n] =
      dl_clamp(g, ((float)pos * g->scale_pos[n] - (float)neg * g->scale_neg[n]) * g->xscale[m] + b);
}

// The int8 activation quantizer, one element: round half to even, as torch.round.
// `inv` is 127/absmax (0 for an all-zero row).
static inline int8_t dl_quantize_one(float x, float inv) {
  float r = __builtin_nearbyintf(x * inv);
  r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
  return (int8_t)r;
}

// XNOR's beta = mean |x| of a row, summed exactly so that every kernel and the reference
// (reference.row_abs_mean) get the same float: each |x| is rounded to a multiple of
// 2^(e-29), e the exponent of the row's absmax (adding and subtracting c = 1.5 * 2^(e+23)),
// and a double holds any sum of K < 2^24 such values exactly, in any order.
static inline double dl_abs_sum_magic(float amax) {
  int e;
  frexpf(amax, &e);
  return ldexp(1.5, e + 23);
}
static inline double dl_abs_rounded(float a, double c) { return ((double)a + c) - c; }

// The same rounding in integers, for SIMD: with amax = m * 2^e (frexp), (|x| + c) - c equals
// round_half_even(|x| * 2^(29 - e)) * 2^(e - 29), and |x| * 2^(29 - e) is exact in float (a power of
// two) and below 2^29, so vcvtps2dq gives that integer and int64 lanes sum K of them exactly; no
// double arithmetic per element. Fills *scale = 2^(29 - e) and *unit = 2^(e - 29) and returns 1, or
// returns 0 where a float cannot hold the scale (amax zero, subnormal, inf or NaN): the caller then
// takes the double path.
static inline int dl_abs_sum_scale(float amax, float* scale, double* unit) {
  uint32_t b;
  memcpy(&b, &amax, 4);
  const int be = (int)((b >> 23) & 0xFF), e = be - 126, sh = 29 - e;
  if (be == 0 || be == 255 || sh + 127 < 1 || sh + 127 > 254) return 0;
  const uint32_t sb = (uint32_t)(sh + 127) << 23;
  const uint64_t ub = (uint64_t)(e - 29 + 1023) << 52;
  memcpy(scale, &sb, 4);
  memcpy(unit, &ub, 8);
  return 1;
}

// Sign word of up to 32 activations in the tile bit order (bit 8j+s <- x[4s+j]).
static inline uint32_t dl_sign_word(const float* x, int64_t n) {
  uint32_t word = 0;
  for (int64_t i = 0; i < n; ++i)
    if (x[i] > 0.0f) word |= 1u << (8 * (i % 4) + i / 4);
  return word;
}

static inline uint32_t dl_load_u32(const void* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// ================================================================= public C entry points
//
// The contract of the library (lowbit_api.cpp), for every caller: the ctypes binding
// (kernels/_cpu.py) and the ExecuTorch op library, which compiles these same sources.
//
// - Every entry returns 0 on success, -1 when a work buffer could not be allocated, -2 for
//   arguments it does not support (named per entry). It never keeps a pointer it was given.
// - The caller allocates every input and output; all are dense, row-major (C order), with
//   the shapes given, and need no particular alignment. Work buffers are the library's own
//   (cached per calling thread, reused by later calls on that thread; freed at its exit).
// - nthreads: the most threads the call may use (OpenMP, a parallel region inside the call;
//   1 runs on the calling thread only). Small problems use fewer. Results do not depend on
//   it, bit for bit. Calls from different threads may run at once.
// - act_lo, act_hi: every float output is clamped to [act_lo, act_hi], as torch.clamp (NaN
//   passes); -INFINITY, +INFINITY: no clamp. A fused ReLU is (0, +inf), ReLU6 (0, 6).
// - Instruction set: the best the CPU has, chosen at the first call; dl_set_isa pins one.
//   Every ISA gives the same bits (kernels/reference.py is the spec).
// - Packed weights are as described at the top of this file (kernels/packing.py),
//   [ceil(N/16), kblocks, 64] bytes with kblocks = ceil(K/16) (ternary) or ceil(K/32) (binary).
#ifdef __cplusplus
extern "C" {
#endif

// Who runs the parallel loops. By default an OpenMP team per call (the ctypes binding, inside
// torch's process). A host with its own thread pool installs a runner instead, so that the kernels
// and the host's other work share one set of threads: the ExecuTorch library runs them on
// ExecuTorch's pthreadpool, the one XNNPACK uses (two pools spinning on the same cores cost
// more than the second thread gains). runner(task, ctx, n, nthreads) must call task(ctx, i) once
// for every i in [0, n), on up to nthreads threads, and return when all are done. NULL: OpenMP.
typedef void (*DlTask)(void* ctx, int64_t i);
typedef void (*DlParallelFor)(DlTask task, void* ctx, int64_t n, int nthreads);
void dl_set_parallel_for(DlParallelFor runner);

// ISA codes are enum DlIsa. dl_set_isa(-1): the best one. Returns the ISA in use, or -1.
int dl_isa_supported(int isa);
int dl_get_isa(void);
int dl_set_isa(int isa);

// Per-row int8 quantization (reference.quantize_rows_int8): q [M, K] int8, scale [M].
int dl_quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* scale, int nthreads);
// XNOR activations: sign bits [M, ceil(K/32)*4] in the tile order, beta [M] = mean |x|.
int dl_binarize_rows(const float* x, int64_t M, int64_t K, uint8_t* bits, float* beta, int nthreads);

// y [M, N] = clamp(((dot(q(x[m]), codes[n]) * scale) * xscale[m]) + bias[n]) with x [M, K]
// float, quantized per row to int8 inside the call (reference.ternary_linear). scale_neg
// NULL: TWN (scale = scale_pos); else TTQ (pos * scale_pos - neg * scale_neg). bias may be
// NULL. A 1x1 convolution in channels-last layout is this with M = B*H*W, K = C_in,
// N = C_out: x is the NHWC input and y the NHWC output. Large M runs row panels that are
// quantized and consumed in L1 (lowbit_api.cpp, run_panels).
int dl_ternary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale_pos,
                      const float* scale_neg, const float* bias, float* y, int nthreads, float act_lo, float act_hi);
// Exact int32 y [M, N] of given int8 activations xq [M, K] times the ternary codes.
int dl_ternary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads);
// Binary weights (+-1 * scale[n]) on int8 activations, as dl_ternary_linear.
int dl_binary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                     const float* bias, float* y, int nthreads, float act_lo, float act_hi);
int dl_binary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads);
// XNOR-Net: binary activations (sign of x) times binary weights; act_scale != 0 multiplies
// each row by its mean |x| (reference.xnor_linear).
int dl_xnor_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                   const float* bias, int act_scale, float* y, int nthreads, float act_lo, float act_hi);
int dl_xnor_mm(const uint8_t* xbits, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads);

// Depthwise 3x3 convolution, float32, channels last (reference.depthwise3x3; DlDepthwise
// above gives the exact arithmetic). x [B, H, W, C], w [3, 3, C] (the torch weight
// [C, 1, 3, 3] permuted to kh, kw, C), bias [C] or NULL, y [B, Ho, Wo, C] with
// Ho = (H + 2*pad - 3) / stride + 1 (Wo likewise). stride 1 or 2, pad 0 or 1, dilation 1;
// else -2 (also when the padded image is smaller than 3x3). Threads split output rows.
int dl_depthwise3x3_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int stride, int pad,
                         const float* w, const float* bias, float* y, int nthreads, float act_lo, float act_hi);

// Dense 3x3 convolution, float32 (DlConv3x3 above: the arithmetic, and the input strides in
// elements: NCHW is (C*H*W, W, 1, H*W), NHWC (H*W*C, W*C, C, 1)). w [3, 3, Cin, Cout] (the torch
// weight [Cout, Cin, 3, 3] permuted to kh, kw, Cin, Cout), bias [Cout] or NULL, y
// [B, Ho, Wo, Cout] channels last. stride 1 or 2, pad 0 or 1; else -2. Meant for few input
// channels (the stem): each tap and input channel is one broadcast times a row of weights.
int dl_conv3x3_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, int64_t sb, int64_t sh, int64_t sw,
                    int64_t sc, int64_t Cout, int stride, int pad, const float* w, const float* bias, float* y,
                    int nthreads, float act_lo, float act_hi);

// One 1x1 conv of a fused block: dl_ternary_linear's arguments without x, M and y (w, scale_pos,
// scale_neg, bias as there; act_lo / act_hi: its clamp, +-INFINITY for none); or, with kind
// DL_PW_XNOR / DL_PW_XNOR_UNIT, dl_xnor_linear's (w binary-packed, scale_pos its scale, scale_neg
// NULL, act_scale 1 / 0).
enum DlPointwiseKind { DL_PW_TERNARY = 0, DL_PW_XNOR = 1, DL_PW_XNOR_UNIT = 2 };
typedef struct DlPointwise {
  const uint8_t* w;
  int64_t K, N;
  const float* scale_pos;
  const float* scale_neg;
  const float* bias;
  float act_lo, act_hi;
  int32_t kind;
} DlPointwise;

// A MobileNetV2 inverted residual block in one call, channels last:
//   e = expand(x)            1x1 ternary or XNOR, [B, H, W, Cin] -> [B, H, W, Cmid]  (expand NULL: e = x)
//   d = depthwise3x3(e)      stride 1 or 2, pad 1, w [3, 3, Cmid], bias [Cmid] or NULL, clamp dw_lo/hi
//   y = project(d)           1x1 ternary or XNOR, -> [B, Ho, Wo, Cout]
//   y = x + y                when residual (needs stride 1 and Cin == Cout)
// Each stage computes exactly what its own entry point (dl_ternary_linear or dl_xnor_linear,
// dl_depthwise3x3_nhwc) computes, so the result equals the three calls bit for bit; but the expanded tensor e (the
// largest of the block) only ever exists as the three rows the depthwise window needs, and d as
// one row, both in cache: the block reads x and writes y, nothing else goes to memory.
// Cin = expand ? expand->K : project->K; Cmid = expand ? expand->N : Cin; project->K must be
// Cmid (else -2). Threads take bands of output rows (a band recomputes its first expand rows).
int dl_inverted_residual_nhwc(const float* x, int64_t B, int64_t H, int64_t W, const DlPointwise* expand,
                              const float* dw_w, const float* dw_bias, int stride, float dw_lo, float dw_hi,
                              const DlPointwise* project, int residual, float* y, int nthreads);

#ifdef __cplusplus
}
#endif
