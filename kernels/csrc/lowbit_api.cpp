// C entry points of the packed low-bit kernels: instruction-set dispatch,
// activation preparation, and the split of the work across threads (parallel_for: OpenMP by
// default, or the runner a host installs with dl_set_parallel_for; built without OpenMP and
// with no runner, everything runs on the calling thread).
//
// The library is loaded with ctypes (kernels/_cpu.py) and deliberately
// includes no torch headers, so a build takes seconds rather than minutes.
// The entry points' contract (layouts, who allocates, threads, return codes) is in
// lowbit.h.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "lowbit.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace {

#if defined(__aarch64__)
// FEAT_DotProd (sdot/udot), as the kernel reports it to user space.
bool cpu_has_dotprod() {
#if defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
  int v = 0;
  size_t n = sizeof(v);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, nullptr, 0) == 0 && v;
#else
  return false;
#endif
}
#endif

const DlKernels* table_for(int isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi2");
  switch (isa) {
    case DL_ISA_AVX512:
      if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
          __builtin_cpu_supports("avx512vpopcntdq"))
        return dl_kernels_avx512();
      return nullptr;
    case DL_ISA_AVXVNNI:
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
      if (avx2 && __builtin_cpu_supports("avxvnni")) return dl_kernels_avxvnni();
#endif
      return nullptr;
    case DL_ISA_AVX2:
      return avx2 ? dl_kernels_avx2() : nullptr;
    default:
      break;
  }
#endif
#if defined(__aarch64__)
  if (isa == DL_ISA_NEONDOT) return cpu_has_dotprod() ? dl_kernels_neondot() : nullptr;
  if (isa == DL_ISA_NEON) return dl_kernels_neon();  // Advanced SIMD is part of every AArch64 CPU
#endif
  return isa == DL_ISA_SCALAR ? dl_kernels_scalar() : nullptr;
}

int best_isa() {
  for (int isa = DL_ISA_LAST; isa > DL_ISA_SCALAR; --isa)
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

// ---------------------------------------------------------------- threads

void omp_parallel_for(DlTask task, void* ctx, int64_t n, int nthreads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t i = 0; i < n; ++i) task(ctx, i);
}

DlParallelFor g_parallel_for = omp_parallel_for;

// Below a quarter of a million multiply-adds (some 3-5 us on one core) a call runs on one thread:
// waking a second one and joining it costs more than it saves. (A MobileNetV2 block on a 16x16 map
// of 16 -> 96 -> 16 channels, 1M multiply-adds, ran 1.7x faster on two threads of a pthreadpool.)
constexpr int64_t kMinParallelMacs = (int64_t)1 << 18;

// The threads a call of that many multiply-adds uses.
int threads_for(int64_t macs, int nthreads) { return nthreads < 1 || macs < kMinParallelMacs ? 1 : nthreads; }

// fn(i) for i in [0, n) on up to nthreads threads (the installed runner), or in order on this one.
template <class F>
void parallel_for(int64_t n, int nthreads, F&& fn) {
  if (nthreads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  using Fn = typename std::remove_reference<F>::type;
  g_parallel_for([](void* ctx, int64_t i) { (*static_cast<Fn*>(ctx))(i); }, (void*)&fn, n, nthreads);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void* alloc(int64_t bytes) { return aligned_alloc(64, (size_t)round_up(bytes > 0 ? bytes : 1, 64)); }

// A grow-only work buffer per calling thread: a layer called once per image would otherwise
// map and fault in fresh pages on every call (glibc serves large blocks with mmap), which
// cost more than the GEMM itself for the small layers of a MobileNet.
struct Scratch {
  void* p = nullptr;
  int64_t bytes = 0;
  ~Scratch() { free(p); }
  void* get(int64_t n) {
    if (n > bytes) {
      free(p);
      p = alloc(n);
      bytes = p ? round_up(n, 64) : 0;
    }
    return p;
  }
};
thread_local Scratch t_scratch;

// The work is cut into tasks handed out dynamically: on a busy machine a thread
// may start late, and the others then take its share instead of waiting for it.
// Tasks are runs of output blocks when there are enough of them, else runs of
// rows (a convolution with few channels and many pixels).
struct Tasks {
  bool by_rows;
  int64_t count, size, blocks;
};

Tasks make_tasks(const DlGemm* g, int nth) {
  Tasks t;
  t.blocks = (g->N + DL_NB - 1) / DL_NB;
  t.by_rows = !(t.blocks >= 4 * nth || g->M < 8 * nth);
  const int64_t units = t.by_rows ? g->M : t.blocks;
  // Two tasks per thread, in multiples of the kernels' 4 rows or 4 blocks: the threadpool hands
  // each thread a contiguous run, so equal tasks keep the threads equal (rows 49 -> 32 + 17 was 1.3x).
  t.size = round_up((units + 2 * nth - 1) / (2 * nth), 4);
  t.count = (units + t.size - 1) / t.size;
  return t;
}

void run_task(const DlGemm* g, DlGemmFn gemm, const Tasks& t, int64_t i) {
  const int64_t lo = i * t.size;
  if (t.by_rows)
    gemm(g, lo, lo + t.size < g->M ? lo + t.size : g->M, 0, t.blocks);
  else
    gemm(g, 0, g->M, lo, lo + t.size < t.blocks ? lo + t.size : t.blocks);
}

// Rows [m0, m1) of x [., K] quantized into q [., Kp] (the kernels' batched quantizer, else row by row).
void quantize_rows(const float* x, int64_t m0, int64_t m1, int64_t K, int64_t Kp, int8_t* q, float* scale,
                   int32_t* sum) {
  const DlKernels* kt = kernels();
  if (kt->quantize_rows) return kt->quantize_rows(x + m0 * K, m1 - m0, K, Kp, q + m0 * Kp, scale + m0, sum + m0);
  for (int64_t m = m0; m < m1; ++m) kt->quantize_row(x + m * K, K, Kp, q + m * Kp, scale + m, sum + m);
}

// Rows [m0, m1) of x [., K] binarized into bits [., Kp / 8] and beta (batched, else row by row);
// unit_beta: beta 1 instead of mean |x| (XNOR without beta).
void binarize_rows(const float* x, int64_t m0, int64_t m1, int64_t K, int64_t Kp, uint8_t* bits, float* beta,
                   bool unit_beta = false) {
  const DlKernels* kt = kernels();
  if (kt->binarize_rows)
    kt->binarize_rows(x + m0 * K, m1 - m0, K, Kp, bits + m0 * (Kp / 8), beta + m0);
  else
    for (int64_t m = m0; m < m1; ++m) kt->binarize_row(x + m * K, K, Kp, bits + m * (Kp / 8), beta + m);
  if (unit_beta)
    for (int64_t m = m0; m < m1; ++m) beta[m] = 1.0f;
}

enum Prep { PREP_NONE, PREP_QUANTIZE, PREP_BINARIZE };
bool use_panels(const DlGemm* g, Prep prep, int nth);
void run_panels(const DlGemm* g, const float* x, DlGemmFn gemm, int nth);

// Prepares the activations (quantize or binarize each row of x) and runs the GEMM on nth threads
// (threads_for(M * N * Kp) for a call of its own; a fused block passes its own count).
// unit_xscale: binarized rows keep scale 1 instead of mean |x| (XNOR without K).
void run(DlGemm* g, const float* x, Prep prep, DlGemmFn gemm, int nth, bool unit_xscale = false) {
  auto prepare = [&](int64_t m0, int64_t m1) {  // rows [m0, m1)
    float* xscale = const_cast<float*>(g->xscale);
    if (prep == PREP_QUANTIZE)
      return quantize_rows(x, m0, m1, g->K, g->Kp, const_cast<int8_t*>(g->xq), xscale, const_cast<int32_t*>(g->xsum));
    if (prep == PREP_BINARIZE)
      binarize_rows(x, m0, m1, g->K, g->Kp, const_cast<uint8_t*>(g->xbits), xscale, unit_xscale);
  };
  if (nth < 1) nth = 1;
  if (use_panels(g, prep, nth)) return run_panels(g, x, gemm, nth);
  const bool parallel_prep = nth > 1 && g->M >= 64;
  if (!parallel_prep) prepare(0, g->M);
  if (nth == 1) {
    gemm(g, 0, g->M, 0, (g->N + DL_NB - 1) / DL_NB);
    return;
  }
  const Tasks tasks = make_tasks(g, nth);
  if (parallel_prep)
    parallel_for((g->M + 15) / 16, nth, [&](int64_t i) { prepare(16 * i, 16 * i + 16 < g->M ? 16 * i + 16 : g->M); });
  parallel_for(tasks.count, nth, [&](int64_t i) { run_task(g, gemm, tasks, i); });
}

// Many rows, few weights (the 1x1 convolutions of a CNN): the rows are cut into panels of
// at most kPanelBytes of int8 activations. Each panel is quantized into a buffer on the
// thread's stack, where it stays in L1 while every output block consumes it, and the
// weights (at most kPanelWeights bytes) stay in L2 across panels. Threads take panels.
constexpr int64_t kPanelBytes = 16384, kPanelWeights = 1 << 19;

bool use_panels(const DlGemm* g, Prep prep, int nth) {
  const int64_t weights = (g->N + DL_NB - 1) / DL_NB * g->kblocks * 64;
  return prep == PREP_QUANTIZE && g->M >= 32 * nth && g->Kp * 8 <= kPanelBytes && weights <= kPanelWeights;
}

void run_panels(const DlGemm* g, const float* x, DlGemmFn gemm, int nth) {
  int64_t rows = kPanelBytes / g->Kp / 8 * 8;
  if (rows > 256) rows = 256;
  if (nth > 1) {  // panels of (nearly) equal size, a multiple of the threads
    int64_t panels = (g->M + rows - 1) / rows;
    panels = (panels + nth - 1) / nth * nth;
    rows = round_up((g->M + panels - 1) / panels, 4);
  }
  const int64_t panels = (g->M + rows - 1) / rows, blocks = (g->N + DL_NB - 1) / DL_NB;
  auto panel = [&](int64_t i) {
    alignas(64) int8_t xq[kPanelBytes];
    alignas(64) int32_t sums[256];
    alignas(64) float scales[256];
    const int64_t m0 = i * rows, n = m0 + rows < g->M ? rows : g->M - m0;
    quantize_rows(x + m0 * g->K, 0, n, g->K, g->Kp, xq, scales, sums);
    DlGemm h = *g;
    h.M = n, h.xq = xq, h.xsum = sums, h.xscale = scales, h.y = g->y + m0 * g->N;
    gemm(&h, 0, n, 0, blocks);
  };
  parallel_for(panels, nth, panel);
}

// Output clamp [lo, hi] (a fused ReLU / ReLU6); -inf, +inf: none.
void set_clamp(DlGemm* g, float lo, float hi) {
  g->clamp = lo > -INFINITY || hi < INFINITY;
  g->act_lo = lo, g->act_hi = hi;
}

DlGemm make_gemm(int64_t M, int64_t K, int64_t tile_k, const uint8_t* w, int64_t N) {
  DlGemm g;
  memset(&g, 0, sizeof(g));
  g.M = M, g.K = K, g.N = N, g.w = w;
  g.Kp = round_up(K, tile_k);
  g.kblocks = g.Kp / tile_k;
  return g;
}

// Float linear on int8 activations: quantize x per row, then the GEMM.
int linear_i8(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, int64_t tile_k, const float* sp,
              const float* sn, const float* bias, float* y, DlGemmFn gemm, int nthreads, float lo, float hi) {
  DlGemm g = make_gemm(M, K, tile_k, w, N);
  set_clamp(&g, lo, hi);
  const int nth = threads_for(M * N * g.Kp, nthreads);
  g.scale_pos = sp, g.scale_neg = sn, g.bias = bias, g.y = y;
  if (use_panels(&g, PREP_QUANTIZE, nth)) {
    g.xscale = sp;  // any non-NULL pointer: float output (run_panels gives each panel its own)
    run(&g, x, PREP_QUANTIZE, gemm, nth);
    return 0;
  }
  const int64_t kq = round_up(M * g.Kp, 64), ks = round_up(M * 4, 64);
  int8_t* xq = (int8_t*)t_scratch.get(kq + 2 * ks);
  if (!xq) return -1;
  g.xq = xq, g.xsum = (int32_t*)(xq + kq), g.xscale = (float*)(xq + kq + ks);
  run(&g, x, PREP_QUANTIZE, gemm, nth);
  return 0;
}

// Integer GEMM on given int8 activations [M, K]: pad rows to Kp and sum them.
int mm_i8(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int64_t tile_k, int32_t* y,
          DlGemmFn gemm, int nthreads) {
  DlGemm g = make_gemm(M, K, tile_k, w, N);
  int8_t* xp = (int8_t*)alloc(M * g.Kp);
  int32_t* sums = (int32_t*)alloc(M * 4);
  if (!xp || !sums) {
    free(xp), free(sums);
    return -1;
  }
  for (int64_t m = 0; m < M; ++m) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += xq[m * K + k];
    sums[m] = s;
    memcpy(xp + m * g.Kp, xq + m * K, (size_t)K);
    memset(xp + m * g.Kp + K, 0, (size_t)(g.Kp - K));
  }
  g.xq = xp, g.xsum = sums, g.yi = y;
  run(&g, nullptr, PREP_NONE, gemm, threads_for(M * N * g.Kp, nthreads));
  free(xp), free(sums);
  return 0;
}

// Runs fn(args, r0, r1) over output rows [0, rows): on this thread, or in about 4 runs of rows
// per thread handed out dynamically (a late thread's share is taken by the others).
template <class Args>
void split_rows(void (*fn)(const Args*, int64_t, int64_t), const Args* args, int64_t rows, int nthreads) {
  const int nth = nthreads < 1 || rows < 2 ? 1 : nthreads;
  if (nth == 1) return fn(args, 0, rows);
  const int64_t step = (rows + 4 * nth - 1) / (4 * nth);
  parallel_for((rows + step - 1) / step, nth, [&](int64_t i) {
    fn(args, i * step, (i + 1) * step < rows ? (i + 1) * step : rows);
  });
}

// ---------------------------------------------------------------- fused inverted residual

thread_local Scratch t_block_scratch;

// Work space of one band of a fused block: three expanded rows (a ring indexed by input row
// mod 3), one depthwise output row, and the int8 rows of one GEMM.
struct BlockBufs {
  int64_t ring_stride;  // floats from one ring row to the next
  float *ring, *dwrow, *scales;
  int8_t* xq;
  int32_t* sums;
};

// Floats between the ring's rows: a whole number of cache lines that is 16 more than a multiple
// of 64 (4 KiB), so that the three rows and the depthwise row start 1 KiB apart modulo 4 KiB. Rows
// a multiple of 4 KiB long (32 pixels x 96 channels) made every store to the depthwise row alias
// the loads from the ring in the store buffer ("4K aliasing"), which halved the depthwise's speed.
int64_t ring_stride(int64_t W, int64_t cmid) {
  int64_t lines = (W * cmid * 4 + 63) / 64;
  lines += ((16 - lines % 64) + 64) % 64;
  return lines * 16;
}

bool block_bufs(int64_t W, int64_t Wo, int64_t cmid, int64_t kmax, BlockBufs* b) {
  const int64_t rows = W > Wo ? W : Wo;
  b->ring_stride = ring_stride(W, cmid);
  const int64_t ring = 3 * b->ring_stride * 4, dw = round_up(Wo * cmid * 4, 64);
  const int64_t xq = round_up(rows * round_up(kmax, DL_TK), 64), vec = round_up(rows * 4, 64);
  char* p = (char*)t_block_scratch.get(ring + dw + xq + 2 * vec);
  if (!p) return false;
  b->ring = (float*)p, b->dwrow = (float*)(p + ring), b->xq = (int8_t*)(p + ring + dw);
  b->sums = (int32_t*)(p + ring + dw + xq), b->scales = (float*)(p + ring + dw + xq + vec);
  return true;
}

// A 1x1 layer on n rows in cache: quantize (ternary) or binarize (XNOR) them, then the GEMM, on
// this thread. The sign bits of a row take Kp / 8 of the Kp bytes an int8 row has in b.xq.
void pointwise_rows(const DlPointwise* p, const float* x, int64_t n, float* y, const BlockBufs& b) {
  const DlKernels* kt = kernels();
  const bool xnor = p->kind != DL_PW_TERNARY;
  DlGemm g = make_gemm(n, p->K, xnor ? DL_BK : DL_TK, p->w, p->N);
  set_clamp(&g, p->act_lo, p->act_hi);
  g.xscale = b.scales;
  g.scale_pos = p->scale_pos, g.scale_neg = p->scale_neg, g.bias = p->bias, g.y = y;
  if (xnor) {
    uint8_t* bits = (uint8_t*)b.xq;
    binarize_rows(x, 0, n, p->K, g.Kp, bits, b.scales, p->kind == DL_PW_XNOR_UNIT);
    g.xbits = bits;
    return kt->xnor(&g, 0, n, 0, (p->N + DL_NB - 1) / DL_NB);
  }
  quantize_rows(x, 0, n, p->K, g.Kp, b.xq, b.scales, b.sums);
  g.xq = b.xq, g.xsum = b.sums;
  kt->ternary(&g, 0, n, 0, (p->N + DL_NB - 1) / DL_NB);
}

// Output row oh of image b from its expanded input rows in[kh] (the valid taps): the depthwise
// row, the project GEMM on it, and the residual add.
void block_row(const float* x, int64_t b, int64_t oh, const float* const* in, const DlDepthwise& d,
               const DlPointwise* project, int residual, float* y, const BlockBufs& bufs) {
  const int64_t cout = project->N;
  kernels()->depthwise3x3_row(&d, oh, in, bufs.dwrow);
  float* yrow = y + (b * d.Ho + oh) * d.Wo * cout;
  pointwise_rows(project, bufs.dwrow, d.Wo, yrow, bufs);
  if (residual) {  // y = x + y, as the block's forward adds them (float addition commutes)
    const float* xrow = x + (b * d.H + oh) * d.W * cout;
    for (int64_t i = 0; i < d.Wo * cout; ++i) yrow[i] = xrow[i] + yrow[i];
  }
}

// Output rows [oh0, oh1) of image b.
bool block_band(const float* x, int64_t b, int64_t oh0, int64_t oh1, const DlPointwise* expand, const DlDepthwise& d,
                const DlPointwise* project, int residual, float* y) {
  const int64_t H = d.H, W = d.W, cin = expand ? expand->K : d.C, cmid = d.C;
  const int64_t kmax = expand && expand->K > project->K ? expand->K : project->K;
  BlockBufs bufs;
  if (!block_bufs(W, d.Wo, cmid, kmax, &bufs)) return false;
  int64_t tag[3] = {-1, -1, -1};
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const float* in[3] = {nullptr, nullptr, nullptr};
    for (int kh = 0; kh < 3; ++kh) {
      const int64_t ih = oh * d.stride - d.pad + kh;
      if (ih < 0 || ih >= H) continue;
      const float* xrow = x + (b * H + ih) * W * cin;
      if (!expand) {
        in[kh] = xrow;
        continue;
      }
      float* slot = bufs.ring + (ih % 3) * bufs.ring_stride;
      if (tag[ih % 3] != ih) pointwise_rows(expand, xrow, W, slot, bufs), tag[ih % 3] = ih;
      in[kh] = slot;
    }
    block_row(x, b, oh, in, d, project, residual, y, bufs);
  }
  return true;
}

}  // namespace

extern "C" {

void dl_set_parallel_for(DlParallelFor runner) { g_parallel_for = runner ? runner : omp_parallel_for; }

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
  (void)nthreads;
  const int64_t Kp = round_up(K, 32), chunk = 64;  // rows quantized at a time into [chunk, Kp]
  int8_t* buf = (int8_t*)alloc(chunk * Kp);
  int32_t sums[64];
  if (!buf) return -1;
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t n = M - m0 < chunk ? M - m0 : chunk;
    quantize_rows(x + m0 * K, 0, n, K, Kp, buf, scale + m0, sums);
    for (int64_t m = 0; m < n; ++m) memcpy(q + (m0 + m) * K, buf + m * Kp, (size_t)K);
  }
  free(buf);
  return 0;
}

// Sign bits [M, Kp/8] (Kp = K rounded up to 32) in the tile order, and beta [M].
int dl_binarize_rows(const float* x, int64_t M, int64_t K, uint8_t* bits, float* beta, int nthreads) {
  (void)nthreads;
  binarize_rows(x, 0, M, K, round_up(K, DL_BK), bits, beta);
  return 0;
}

// act_lo, act_hi: clamp of the float outputs (-inf, +inf for none), in every *_linear entry.
int dl_ternary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale_pos,
                      const float* scale_neg, const float* bias, float* y, int nthreads, float act_lo, float act_hi) {
  return linear_i8(x, M, K, w, N, DL_TK, scale_pos, scale_neg, bias, y, kernels()->ternary, nthreads, act_lo,
                   act_hi);
}

int dl_ternary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  return mm_i8(xq, M, K, w, N, DL_TK, y, kernels()->ternary, nthreads);
}

int dl_binary_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                     const float* bias, float* y, int nthreads, float act_lo, float act_hi) {
  return linear_i8(x, M, K, w, N, DL_BK, scale, nullptr, bias, y, kernels()->binary_i8, nthreads, act_lo, act_hi);
}

int dl_binary_mm(const int8_t* xq, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  return mm_i8(xq, M, K, w, N, DL_BK, y, kernels()->binary_i8, nthreads);
}

// act_scale = 0: the output is not multiplied by beta = mean |x| of the row.
int dl_xnor_linear(const float* x, int64_t M, int64_t K, const uint8_t* w, int64_t N, const float* scale,
                   const float* bias, int act_scale, float* y, int nthreads, float act_lo, float act_hi) {
  DlGemm g = make_gemm(M, K, DL_BK, w, N);
  set_clamp(&g, act_lo, act_hi);
  uint8_t* bits = (uint8_t*)alloc(M * (g.Kp / 8));
  float* beta = (float*)alloc(M * 4);
  if (!bits || !beta) {
    free(bits), free(beta);
    return -1;
  }
  g.xbits = bits, g.xscale = beta, g.scale_pos = scale, g.bias = bias, g.y = y;
  run(&g, x, PREP_BINARIZE, kernels()->xnor, threads_for(M * N * g.Kp, nthreads), act_scale == 0);
  free(bits), free(beta);
  return 0;
}

// XNOR-popcount on given activation bits [M, Kp/8] (as dl_binarize_rows writes them).
int dl_xnor_mm(const uint8_t* xbits, int64_t M, int64_t K, const uint8_t* w, int64_t N, int32_t* y, int nthreads) {
  DlGemm g = make_gemm(M, K, DL_BK, w, N);
  g.xbits = xbits, g.yi = y;
  run(&g, nullptr, PREP_NONE, kernels()->xnor, threads_for(M * N * g.Kp, nthreads));
  return 0;
}

int dl_depthwise3x3_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t C, int stride, int pad,
                         const float* w, const float* bias, float* y, int nthreads, float act_lo, float act_hi) {
  if (B < 0 || H < 1 || W < 1 || C < 1 || (stride != 1 && stride != 2) || (pad != 0 && pad != 1)) return -2;
  DlDepthwise d;
  d.x = x, d.B = B, d.H = H, d.W = W, d.C = C, d.stride = stride, d.pad = pad, d.w = w, d.bias = bias, d.y = y;
  d.Ho = (H + 2 * pad - 3) / stride + 1, d.Wo = (W + 2 * pad - 3) / stride + 1;
  if (H + 2 * pad < 3 || W + 2 * pad < 3) return -2;
  d.clamp = act_lo > -INFINITY || act_hi < INFINITY;
  d.act_lo = act_lo, d.act_hi = act_hi;
  split_rows(kernels()->depthwise3x3, &d, B * d.Ho, threads_for(B * d.Ho * d.Wo * C * 9, nthreads));
  return 0;
}

int dl_conv3x3_nhwc(const float* x, int64_t B, int64_t H, int64_t W, int64_t Cin, int64_t sb, int64_t sh, int64_t sw,
                    int64_t sc, int64_t Cout, int stride, int pad, const float* w, const float* bias, float* y,
                    int nthreads, float act_lo, float act_hi) {
  if (B < 0 || H < 1 || W < 1 || Cin < 1 || Cout < 1 || (stride != 1 && stride != 2) || (pad != 0 && pad != 1) ||
      H + 2 * pad < 3 || W + 2 * pad < 3)
    return -2;
  DlConv3x3 c;
  c.x = x, c.B = B, c.H = H, c.W = W, c.Cin = Cin, c.Cout = Cout, c.sb = sb, c.sh = sh, c.sw = sw, c.sc = sc;
  c.stride = stride, c.pad = pad, c.w = w, c.bias = bias, c.y = y;
  c.Ho = (H + 2 * pad - 3) / stride + 1, c.Wo = (W + 2 * pad - 3) / stride + 1;
  c.clamp = act_lo > -INFINITY || act_hi < INFINITY;
  c.act_lo = act_lo, c.act_hi = act_hi;
  split_rows(kernels()->conv3x3, &c, B * c.Ho, threads_for(B * c.Ho * c.Wo * Cout * Cin * 9, nthreads));
  return 0;
}

int dl_inverted_residual_nhwc(const float* x, int64_t B, int64_t H, int64_t W, const DlPointwise* expand,
                              const float* dw_w, const float* dw_bias, int stride, float dw_lo, float dw_hi,
                              const DlPointwise* project, int residual, float* y, int nthreads) {
  const int64_t cin = expand ? expand->K : project->K, cmid = expand ? expand->N : cin;
  const auto kind_ok = [](const DlPointwise* p) { return !p || (p->kind >= DL_PW_TERNARY && p->kind <= DL_PW_XNOR_UNIT); };
  if (B < 0 || H < 1 || W < 1 || (stride != 1 && stride != 2) || project->K != cmid ||
      (residual && (stride != 1 || project->N != cin)) || !kind_ok(expand) || !kind_ok(project))
    return -2;
  DlDepthwise d;
  memset(&d, 0, sizeof(d));
  d.B = B, d.H = H, d.W = W, d.C = cmid, d.stride = stride, d.pad = 1, d.w = dw_w, d.bias = dw_bias;
  d.Ho = (H - 1) / stride + 1, d.Wo = (W - 1) / stride + 1;
  d.clamp = dw_lo > -INFINITY || dw_hi < INFINITY;
  d.act_lo = dw_lo, d.act_hi = dw_hi;
  const int64_t macs = B * H * W * (expand ? cin * cmid : 0) + B * d.Ho * d.Wo * cmid * (9 + project->N);
  const int nth = threads_for(macs, nthreads);
  // Bands of output rows: one per image on one thread or with images enough for every thread;
  // else per image a multiple of the threads, of at least kMinBand rows where the map has them.
  // A band recomputes the expanded rows above its first row (stride 1: two rows), which on small
  // maps still beat expanding the whole map first and then splitting rows (measured, 2 threads,
  // maps of 4 to 28 rows: 1.3-1.8x against 1.0-1.7x).
  constexpr int64_t kMinBand = 16;
  int64_t bands = 1;
  if (nth > 1 && B < 2 * nth) {
    const int64_t per_thread = d.Ho / (kMinBand * nth);
    bands = nth * (per_thread > 0 ? per_thread : 1);
    if (bands > d.Ho) bands = d.Ho;
  }
  const int64_t per = (d.Ho + bands - 1) / bands, tasks = B * bands;
  int failed = 0;
  auto task = [&](int64_t t) {
    const int64_t b = t / bands, oh0 = (t % bands) * per, oh1 = oh0 + per < d.Ho ? oh0 + per : d.Ho;
    if (!block_band(x, b, oh0, oh1, expand, d, project, residual, y)) failed = 1;
  };
  parallel_for(tasks, nth, task);
  return failed ? -1 : 0;
}

}  // extern "C"
