// The packed ternary/binary layers as ExecuTorch runtime kernels.
//
// Each kernel is the out-variant of a `distill::` op that kernels/executorch/ops.py
// defines for torch.export; both call the same C entry points of kernels/csrc
// (compiled into this library), so the .pte computes what the packed torch module
// computes, bit for bit. Built against the executorch pip wheel (headers, and
// libexecutorch.so whose operator registry the Python runtime uses) by
// kernels/executorch/build.py; loaded once by kernels/executorch/runtime.py.
//
// Kernels: ternary/binary/xnor linears, ternary/binary(-xnor) convolutions, the depthwise 3x3
// conv, the dense 3x3 stem conv and the fused MobileNetV2 block (dl_depthwise3x3_nhwc,
// dl_conv3x3_nhwc, dl_inverted_residual_nhwc).
//
// Layout: the conv kernels take NCHW tensors in either dim order. A channels-last
// input (what the packed convs and XNNPACK's convs produce) is already the rows of
// a 1x1 convolution, so it needs no copy; k x k convolutions gather their
// receptive fields (im2col in (kh, kw, C) order, the order of
// reference.conv_weight_rows) into a scratch buffer first. A channels-last output
// is written in place by the GEMM; a contiguous one goes through a transpose.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>


#include "lowbit.h"  // the C contract of kernels/csrc
#include "spin_pool.h"

// ExecuTorch's threadpool (libexecutorch_threadpool.so; the wheel ships no header for it, so the
// few functions used are declared here): the one XNNPACK runs on, sized by _unsafe_reset_threadpool
// in Python. Its size is the packed kernels' thread count too (threads() below).
struct pthreadpool;
namespace executorch {
namespace extension {
namespace threadpool {
pthreadpool* get_pthreadpool();
}  // namespace threadpool
}  // namespace extension
}  // namespace executorch
extern "C" size_t pthreadpool_get_threads_count(pthreadpool* pool);

namespace distill_et {

using executorch::aten::ArrayRef;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
using OptTensor = std::optional<Tensor>;
using OptDouble = std::optional<double>;

// Threads for the packed kernels: 0 follows ExecuTorch's threadpool as it is now (so one setting,
// _unsafe_reset_threadpool, sizes both halves of a program); distill_et_set_num_threads(n > 0)
// pins it (n = 1: the kernels run on the calling thread alone).
std::atomic<int> g_threads{0};

int threads() {
  const int n = g_threads.load();
  if (n > 0) return n;
  pthreadpool* pool = executorch::extension::threadpool::get_pthreadpool();
  const size_t t = pool ? pthreadpool_get_threads_count(pool) : 1;
  return t < 1 ? 1 : (int)t;
}

// The kernels' parallel loops run on spin_pool.cpp's helpers (it says why not on this pthreadpool).
const bool g_pool_installed = (dl_set_parallel_for(spin_parallel_for), true);

const float* fptr(const OptTensor& t) { return t.has_value() ? t->const_data_ptr<float>() : nullptr; }

float lo_of(const OptDouble& v) { return v.has_value() ? (float)*v : -INFINITY; }
float hi_of(const OptDouble& v) { return v.has_value() ? (float)*v : INFINITY; }

bool is_f32(const OptTensor& t) { return !t.has_value() || t->scalar_type() == ScalarType::Float; }

bool channels_last(const Tensor& t) {
  const auto d = t.dim_order();
  return t.dim() == 4 && d[0] == 0 && d[1] == 2 && d[2] == 3 && d[3] == 1;
}

// The product of the output's leading dimensions, after resizing it to x's with
// the last one replaced by n (a no-op for memory-planned static shapes).
bool resize_rows(KernelRuntimeContext& ctx, const Tensor& x, int64_t n, Tensor& out, int64_t* rows) {
  executorch::aten::SizesType sizes[16];
  if (x.dim() < 1 || x.dim() > 16) return false;
  int64_t m = 1;
  for (ssize_t i = 0; i + 1 < x.dim(); ++i) sizes[i] = x.size(i), m *= x.size(i);
  sizes[x.dim() - 1] = (executorch::aten::SizesType)n;
  if (executorch::runtime::resize_tensor(out, {sizes, (size_t)x.dim()}) != Error::Ok) {
    ctx.fail(Error::InvalidArgument);
    return false;
  }
  *rows = m;
  return true;
}

// The one kind of GEMM each op runs on rows [M, K] of activations.
struct Gemm {
  enum Kind { TERNARY, BINARY, XNOR } kind;
  const uint8_t* w;
  int64_t N;
  const float *sp, *sn, *bias;
  bool act_scale;
  float lo, hi;

  int operator()(const float* x, int64_t M, int64_t K, float* y) const {
    const int nth = threads();
    switch (kind) {
      case TERNARY:
        return dl_ternary_linear(x, M, K, w, N, sp, sn, bias, y, nth, lo, hi);
      case BINARY:
        return dl_binary_linear(x, M, K, w, N, sp, bias, y, nth, lo, hi);
      default:
        return dl_xnor_linear(x, M, K, w, N, sp, bias, act_scale ? 1 : 0, y, nth, lo, hi);
    }
  }
};

bool args_ok(const Tensor& x, const Tensor& w, const Tensor& scale, const OptTensor& sn, const OptTensor& bias,
             const Tensor& out) {
  return x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float &&
         w.scalar_type() == ScalarType::Byte && scale.scalar_type() == ScalarType::Float && is_f32(sn) &&
         is_f32(bias);
}

Tensor& linear(KernelRuntimeContext& ctx, const Tensor& x, int64_t k, const Gemm& gemm, Tensor& out) {
  int64_t m = 0;
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && x.size(x.dim() - 1) == k, InvalidArgument, out,
                      "distill linear: input's last dimension is not k");
  if (!resize_rows(ctx, x, gemm.N, out, &m)) return out;
  if (gemm(x.const_data_ptr<float>(), m, k, out.mutable_data_ptr<float>()) != 0) ctx.fail(Error::MemoryAllocationFailed);
  return out;
}

Tensor& ternary_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w, int64_t k,
                           const Tensor& scale_pos, const OptTensor& scale_neg, const OptTensor& bias,
                           OptDouble act_min, OptDouble act_max, Tensor& out) {
  ET_KERNEL_CHECK(ctx, args_ok(x, w, scale_pos, scale_neg, bias, out), InvalidArgument, out);
  const Gemm g{Gemm::TERNARY, w.const_data_ptr<uint8_t>(), scale_pos.size(0), scale_pos.const_data_ptr<float>(),
               fptr(scale_neg), fptr(bias), false, lo_of(act_min), hi_of(act_max)};
  return linear(ctx, x, k, g, out);
}

Tensor& binary_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w, int64_t k,
                          const Tensor& scale, const OptTensor& bias, OptDouble act_min, OptDouble act_max,
                          Tensor& out) {
  ET_KERNEL_CHECK(ctx, args_ok(x, w, scale, {}, bias, out), InvalidArgument, out);
  const Gemm g{Gemm::BINARY, w.const_data_ptr<uint8_t>(), scale.size(0), scale.const_data_ptr<float>(),
               nullptr, fptr(bias), false, lo_of(act_min), hi_of(act_max)};
  return linear(ctx, x, k, g, out);
}

Tensor& xnor_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w, int64_t k, const Tensor& scale,
                        const OptTensor& bias, bool act_scale, OptDouble act_min, OptDouble act_max, Tensor& out) {
  ET_KERNEL_CHECK(ctx, args_ok(x, w, scale, {}, bias, out), InvalidArgument, out);
  const Gemm g{Gemm::XNOR, w.const_data_ptr<uint8_t>(), scale.size(0), scale.const_data_ptr<float>(),
               nullptr, fptr(bias), act_scale, lo_of(act_min), hi_of(act_max)};
  return linear(ctx, x, k, g, out);
}

// ---------------------------------------------------------------- convolution

struct Geometry {
  int64_t B, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
};

bool pair(ArrayRef<int64_t> v, int64_t* a, int64_t* b) {
  if (v.size() == 1) return *a = *b = v[0], true;
  if (v.size() != 2) return false;
  return *a = v[0], *b = v[1], true;
}

// Rows [B*Ho*Wo, kh*kw*C] of the receptive fields, zero where they leave the image.
void im2col(const Geometry& g, const float* x, bool cl, float* rows) {
  const int64_t K = g.kh * g.kw * g.C;
  // Element (b, c, h, w) of x: channels-last ((b*H + h)*W + w)*C + c, else ((b*C + c)*H + h)*W + w.
  const int64_t sc = cl ? 1 : g.H * g.W, sh = cl ? g.W * g.C : g.W, sw = cl ? g.C : 1;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t oh = 0; oh < g.Ho; ++oh)
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        float* row = rows + ((b * g.Ho + oh) * g.Wo + ow) * K;
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j, row += g.C) {
            const int64_t h = oh * g.sh - g.ph + i * g.dh, w = ow * g.sw - g.pw + j * g.dw;
            if (h < 0 || h >= g.H || w < 0 || w >= g.W) {
              memset(row, 0, (size_t)g.C * sizeof(float));
              continue;
            }
            const float* src = x + b * g.C * g.H * g.W + h * sh + w * sw;
            if (cl) {
              memcpy(row, src, (size_t)g.C * sizeof(float));
            } else {
              for (int64_t c = 0; c < g.C; ++c) row[c] = src[c * sc];
            }
          }
      }
}

Tensor& conv2d(KernelRuntimeContext& ctx, const Tensor& x, ArrayRef<int64_t> kernel_size, ArrayRef<int64_t> stride,
               ArrayRef<int64_t> padding, ArrayRef<int64_t> dilation, const Gemm& gemm, Tensor& out) {
  Geometry g;
  ET_KERNEL_CHECK_MSG(ctx, x.dim() == 4, InvalidArgument, out, "distill conv2d: input must be 4-D NCHW");
  ET_KERNEL_CHECK(ctx, pair(kernel_size, &g.kh, &g.kw) && pair(stride, &g.sh, &g.sw) &&
                           pair(padding, &g.ph, &g.pw) && pair(dilation, &g.dh, &g.dw), InvalidArgument, out);
  g.B = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  ET_KERNEL_CHECK_MSG(ctx, g.Ho > 0 && g.Wo > 0, InvalidArgument, out, "distill conv2d: empty output");
  executorch::aten::SizesType sizes[4] = {(executorch::aten::SizesType)g.B, (executorch::aten::SizesType)gemm.N,
                                          (executorch::aten::SizesType)g.Ho, (executorch::aten::SizesType)g.Wo};
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, {sizes, 4}) == Error::Ok, InvalidArgument, out);

  const bool in_cl = channels_last(x) || (g.H == 1 && g.W == 1);
  const bool out_cl = channels_last(out) || (g.Ho == 1 && g.Wo == 1);
  const int64_t M = g.B * g.Ho * g.Wo, K = g.kh * g.kw * g.C;
  const bool direct = in_cl && g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  float* rows = direct ? nullptr : (float*)malloc((size_t)(M * K) * sizeof(float));
  float* y = out_cl ? out.mutable_data_ptr<float>() : (float*)malloc((size_t)(M * gemm.N) * sizeof(float));
  int rc = -1;
  if ((direct || rows) && y) {
    if (!direct) im2col(g, x.const_data_ptr<float>(), in_cl, rows);
    rc = gemm(direct ? x.const_data_ptr<float>() : rows, M, K, y);
    if (rc == 0 && !out_cl) {  // [B, Ho*Wo, N] -> [B, N, Ho*Wo]
      float* o = out.mutable_data_ptr<float>();
      const int64_t P = g.Ho * g.Wo;
      for (int64_t b = 0; b < g.B; ++b)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < gemm.N; ++n) o[(b * gemm.N + n) * P + p] = y[(b * P + p) * gemm.N + n];
    }
  }
  free(rows);
  if (!out_cl) free(y);
  if (rc != 0) ctx.fail(Error::MemoryAllocationFailed);
  return out;
}

Tensor& ternary_conv2d_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w,
                           ArrayRef<int64_t> kernel_size, const Tensor& scale_pos, const OptTensor& scale_neg,
                           const OptTensor& bias, ArrayRef<int64_t> stride, ArrayRef<int64_t> padding,
                           ArrayRef<int64_t> dilation, OptDouble act_min, OptDouble act_max, Tensor& out) {
  ET_KERNEL_CHECK(ctx, args_ok(x, w, scale_pos, scale_neg, bias, out), InvalidArgument, out);
  const Gemm g{Gemm::TERNARY, w.const_data_ptr<uint8_t>(), scale_pos.size(0), scale_pos.const_data_ptr<float>(),
               fptr(scale_neg), fptr(bias), false, lo_of(act_min), hi_of(act_max)};
  return conv2d(ctx, x, kernel_size, stride, padding, dilation, g, out);
}

Tensor& binary_conv2d_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w, ArrayRef<int64_t> kernel_size,
                          const Tensor& scale, const OptTensor& bias, ArrayRef<int64_t> stride,
                          ArrayRef<int64_t> padding, ArrayRef<int64_t> dilation, bool xnor, bool act_scale,
                          OptDouble act_min, OptDouble act_max, Tensor& out) {
  ET_KERNEL_CHECK(ctx, args_ok(x, w, scale, {}, bias, out), InvalidArgument, out);
  const Gemm g{xnor ? Gemm::XNOR : Gemm::BINARY, w.const_data_ptr<uint8_t>(), scale.size(0),
               scale.const_data_ptr<float>(), nullptr, fptr(bias), act_scale, lo_of(act_min), hi_of(act_max)};
  return conv2d(ctx, x, kernel_size, stride, padding, dilation, g, out);
}

// ---------------------------------------------------------------- depthwise and fused MobileNetV2 blocks

// x as NHWC floats: x itself when channels-last (or 1x1), else a transposed copy in *scratch.
const float* nhwc(const Tensor& x, float** scratch) {
  *scratch = nullptr;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (channels_last(x) || (H == 1 && W == 1) || C == 1) return x.const_data_ptr<float>();
  float* t = (float*)malloc((size_t)(B * C * H * W) * sizeof(float));
  if (!t) return nullptr;
  const float* s = x.const_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < H * W; ++p) t[(b * H * W + p) * C + c] = s[(b * C + c) * H * W + p];
  return *scratch = t;
}

// The output resized to [B, C, Ho, Wo]; false (and the context failed) unless it is NHWC in memory.
bool nhwc_out(KernelRuntimeContext& ctx, Tensor& out, int64_t B, int64_t C, int64_t Ho, int64_t Wo) {
  executorch::aten::SizesType sizes[4] = {(executorch::aten::SizesType)B, (executorch::aten::SizesType)C,
                                          (executorch::aten::SizesType)Ho, (executorch::aten::SizesType)Wo};
  if (executorch::runtime::resize_tensor(out, {sizes, 4}) != Error::Ok ||
      !(channels_last(out) || (Ho == 1 && Wo == 1) || C == 1)) {
    ET_LOG(Error, "distill: the output of a channels-last kernel must be channels-last");
    ctx.fail(Error::InvalidArgument);
    return false;
  }
  return true;
}

void fail_rc(KernelRuntimeContext& ctx, int rc) {
  if (rc != 0) ctx.fail(rc == -1 ? Error::MemoryAllocationFailed : Error::InvalidArgument);
}

// The float [3, 3, C] depthwise weight of either form: the float tensor itself, or ternary codes
// (kernels/packing.py, pack_dw_ternary: 4 channels per byte, code + 1 in 2 bits) times the channel
// scales, unpacked once per (codes, scales) content and kept: a program's weights never change,
// and the bytes are compared on every call, so a buffer reused by another program is unpacked anew.
struct UnpackedDw {
  std::vector<uint8_t> codes;
  std::vector<float> scale, w;
};

const float* dw_weights(const Tensor& w, const OptTensor& scale, int64_t C) {
  if (!scale.has_value()) return w.scalar_type() == ScalarType::Float && w.numel() == 9 * C ? w.const_data_ptr<float>() : nullptr;
  const int64_t bytes = 9 * ((C + 3) / 4);
  if (w.scalar_type() != ScalarType::Byte || w.numel() != bytes || scale->scalar_type() != ScalarType::Float ||
      scale->numel() != C)
    return nullptr;
  static std::mutex mutex;
  static std::unordered_map<const void*, UnpackedDw> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const uint8_t* codes = w.const_data_ptr<uint8_t>();
  const float* sc = scale->const_data_ptr<float>();
  UnpackedDw& u = cache[codes];
  if ((int64_t)u.codes.size() != bytes || memcmp(u.codes.data(), codes, (size_t)bytes) != 0 ||
      memcmp(u.scale.data(), sc, (size_t)C * sizeof(float)) != 0 || (int64_t)u.scale.size() != C) {
    u.codes.assign(codes, codes + bytes);
    u.scale.assign(sc, sc + C);
    u.w.resize((size_t)(9 * C));
    for (int64_t t = 0; t < 9; ++t)
      for (int64_t c = 0; c < C; ++c)
        u.w[t * C + c] = (float)((int)((codes[t * ((C + 3) / 4) + c / 4] >> (2 * (c % 4))) & 3) - 1) * sc[c];
  }
  return u.w.data();
}

Tensor& depthwise_conv2d_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                             int64_t stride, int64_t padding, OptDouble act_min, OptDouble act_max,
                             const OptTensor& weight_scale, Tensor& out) {
  ET_KERNEL_CHECK(ctx, x.dim() == 4 && x.scalar_type() == ScalarType::Float && is_f32(bias), InvalidArgument, out);
  const float* w = dw_weights(weight, weight_scale, x.size(1));
  ET_KERNEL_CHECK_MSG(ctx, w != nullptr, InvalidArgument, out, "distill depthwise: bad weight or weight_scale");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + 2 * padding - 3) / stride + 1, Wo = (W + 2 * padding - 3) / stride + 1;
  if (!nhwc_out(ctx, out, B, C, Ho, Wo)) return out;
  float* scratch;
  const float* xs = nhwc(x, &scratch);
  const int rc = xs ? dl_depthwise3x3_nhwc(xs, B, H, W, C, (int)stride, (int)padding, w,
                                           fptr(bias), out.mutable_data_ptr<float>(), threads(),
                                           lo_of(act_min), hi_of(act_max))
                    : -1;
  free(scratch);
  fail_rc(ctx, rc);
  return out;
}

DlPointwise pointwise(const Tensor& w, int64_t k, const Tensor& scale_pos, const OptTensor& scale_neg,
                      const OptTensor& bias, OptDouble lo, OptDouble hi, int64_t kind) {
  return DlPointwise{w.const_data_ptr<uint8_t>(), k, (int64_t)scale_pos.size(0), scale_pos.const_data_ptr<float>(),
                     fptr(scale_neg), fptr(bias), lo_of(lo), hi_of(hi), (int32_t)kind};
}

Tensor& inverted_residual_out(KernelRuntimeContext& ctx, const Tensor& x, const OptTensor& e_w,
                              const OptTensor& e_scale_pos, const OptTensor& e_scale_neg, const OptTensor& e_bias,
                              OptDouble e_min, OptDouble e_max, const Tensor& dw_w, const OptTensor& dw_bias,
                              int64_t stride, OptDouble dw_min, OptDouble dw_max, const Tensor& p_w,
                              const Tensor& p_scale_pos, const OptTensor& p_scale_neg, const OptTensor& p_bias,
                              OptDouble p_min, OptDouble p_max, bool residual, const OptTensor& dw_scale,
                              int64_t pw_kind, Tensor& out) {
  ET_KERNEL_CHECK(ctx, x.dim() == 4 && x.scalar_type() == ScalarType::Float && e_w.has_value() == e_scale_pos.has_value(),
                  InvalidArgument, out);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t mid = e_w.has_value() ? e_scale_pos->size(0) : C;
  const float* dw = dw_weights(dw_w, dw_scale, mid);
  ET_KERNEL_CHECK_MSG(ctx, dw != nullptr, InvalidArgument, out, "distill inverted_residual: bad dw_w or dw_scale");
  const DlPointwise project = pointwise(p_w, mid, p_scale_pos, p_scale_neg, p_bias, p_min, p_max, pw_kind);
  if (!nhwc_out(ctx, out, B, project.N, (H - 1) / stride + 1, (W - 1) / stride + 1)) return out;
  DlPointwise expand;
  if (e_w.has_value()) expand = pointwise(*e_w, C, *e_scale_pos, e_scale_neg, e_bias, e_min, e_max, pw_kind);
  float* scratch;
  const float* xs = nhwc(x, &scratch);
  const int rc = xs ? dl_inverted_residual_nhwc(xs, B, H, W, e_w.has_value() ? &expand : nullptr,
                                                dw, fptr(dw_bias), (int)stride,
                                                lo_of(dw_min), hi_of(dw_max), &project, residual ? 1 : 0,
                                                out.mutable_data_ptr<float>(), threads())
                    : -1;
  free(scratch);
  fail_rc(ctx, rc);
  return out;
}

// The op as files exported before pw_kind existed call it (21 arguments): ternary 1x1s.
Tensor& inverted_residual_ternary_out(KernelRuntimeContext& ctx, const Tensor& x, const OptTensor& e_w,
                                      const OptTensor& e_scale_pos, const OptTensor& e_scale_neg,
                                      const OptTensor& e_bias, OptDouble e_min, OptDouble e_max, const Tensor& dw_w,
                                      const OptTensor& dw_bias, int64_t stride, OptDouble dw_min, OptDouble dw_max,
                                      const Tensor& p_w, const Tensor& p_scale_pos, const OptTensor& p_scale_neg,
                                      const OptTensor& p_bias, OptDouble p_min, OptDouble p_max, bool residual,
                                      const OptTensor& dw_scale, Tensor& out) {
  return inverted_residual_out(ctx, x, e_w, e_scale_pos, e_scale_neg, e_bias, e_min, e_max, dw_w, dw_bias, stride,
                               dw_min, dw_max, p_w, p_scale_pos, p_scale_neg, p_bias, p_min, p_max, residual, dw_scale,
                               0, out);
}

constexpr char kInvertedResidual[] = "distill::inverted_residual.out";

// The registered entry: a stack of 22 values (21 arguments and out) is a file from before pw_kind,
// 23 one of now; each unboxed by ExecuTorch's own wrapper, so both kinds of file keep running.
void inverted_residual_boxed(KernelRuntimeContext& ctx, executorch::runtime::Span<executorch::runtime::EValue*> stack) {
  using executorch::extension::WrapUnboxedIntoFunctor;
  if (stack.size() == 22)
    return WrapUnboxedIntoFunctor<EXECUTORCH_FN_TYPE(inverted_residual_ternary_out, kInvertedResidual)>::call(ctx, stack);
  WrapUnboxedIntoFunctor<EXECUTORCH_FN_TYPE(inverted_residual_out, kInvertedResidual)>::call(ctx, stack);
}

Tensor& conv3x3_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                    int64_t stride, int64_t padding, OptDouble act_min, OptDouble act_max, Tensor& out) {
  ET_KERNEL_CHECK(ctx, x.dim() == 4 && weight.dim() == 4 && x.scalar_type() == ScalarType::Float &&
                           weight.scalar_type() == ScalarType::Float && is_f32(bias), InvalidArgument, out);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Cout = weight.size(3);
  const int64_t Ho = (H + 2 * padding - 3) / stride + 1, Wo = (W + 2 * padding - 3) / stride + 1;
  if (!nhwc_out(ctx, out, B, Cout, Ho, Wo)) return out;
  // The kernel reads x through its strides (in elements): NHWC or NCHW, whichever x is.
  const bool cl = channels_last(x);
  const int64_t sb = C * H * W, sh = cl ? W * C : W, sw = cl ? C : 1, sc = cl ? 1 : H * W;
  fail_rc(ctx, dl_conv3x3_nhwc(x.const_data_ptr<float>(), B, H, W, C, sb, sh, sw, sc, Cout, (int)stride, (int)padding,
                               weight.const_data_ptr<float>(), fptr(bias), out.mutable_data_ptr<float>(),
                               threads(), lo_of(act_min), hi_of(act_max)));
  return out;
}

// Global average pooling [N, C, H, W] -> [N, C], as kernels/reference.py (mean_hw): per channel
// the pixels summed one after another in row-major order, then divided by H * W.
Tensor& mean_hw_out(KernelRuntimeContext& ctx, const Tensor& x, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.dim() == 4 && x.scalar_type() == ScalarType::Float &&
                               out.scalar_type() == ScalarType::Float, InvalidArgument, out,
                      "distill mean_hw: needs a 4-D float input");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  executorch::aten::SizesType sizes[2] = {(executorch::aten::SizesType)B, (executorch::aten::SizesType)C};
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, {sizes, 2}) == Error::Ok, InvalidArgument, out);
  const bool cl = channels_last(x) || P == 1;
  const float* s = x.const_data_ptr<float>();
  float* y = out.mutable_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    float* acc = y + b * C;
    for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t c = 0; c < C; ++c) acc[c] += cl ? s[(b * P + p) * C + c] : s[(b * C + c) * P + p];
    for (int64_t c = 0; c < C; ++c) acc[c] = acc[c] / (float)P;
  }
  return out;
}

// ShuffleNet's concat and 2-group channel shuffle in one pass: out channel 2i = a's i, 2i + 1 = b's i,
// as kernels/executorch/ops.py (concat_shuffle) defines it; channels-last output, either input layout.
Tensor& concat_shuffle_out(KernelRuntimeContext& ctx, const Tensor& a, const Tensor& b, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, a.dim() == 4 && b.dim() == 4 && a.scalar_type() == ScalarType::Float &&
                               b.scalar_type() == ScalarType::Float && a.numel() == b.numel() &&
                               a.size(1) == b.size(1) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
                      InvalidArgument, out, "distill concat_shuffle: a and b must be float maps of one shape");
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3), P = H * W;
  if (!nhwc_out(ctx, out, B, 2 * C, H, W)) return out;
  float *sa, *sb;
  const float* xa = nhwc(a, &sa);
  const float* xb = nhwc(b, &sb);
  if (xa && xb) {
    float* y = out.mutable_data_ptr<float>();
    for (int64_t r = 0; r < B * P; ++r) {
      const float *pa = xa + r * C, *pb = xb + r * C;
      float* py = y + r * 2 * C;
      for (int64_t c = 0; c < C; ++c) py[2 * c] = pa[c], py[2 * c + 1] = pb[c];
    }
  }
  free(sa), free(sb);
  if (!xa || !xb) ctx.fail(Error::MemoryAllocationFailed);
  return out;
}

// Channels [start, start + length) of x, channels last (kernels/executorch/ops.py, slice_channels).
Tensor& slice_channels_out(KernelRuntimeContext& ctx, const Tensor& x, int64_t start, int64_t length, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.dim() == 4 && x.scalar_type() == ScalarType::Float && start >= 0 && length > 0 &&
                               start + length <= x.size(1), InvalidArgument, out,
                      "distill slice_channels: needs a float map and a channel range inside it");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  if (!nhwc_out(ctx, out, B, length, x.size(2), x.size(3))) return out;
  float* scratch;
  const float* xs = nhwc(x, &scratch);
  if (!xs) {
    ctx.fail(Error::MemoryAllocationFailed);
    return out;
  }
  float* y = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < B * P; ++r) memcpy(y + r * length, xs + r * C + start, (size_t)length * sizeof(float));
  free(scratch);
  return out;
}

}  // namespace distill_et

EXECUTORCH_LIBRARY(distill, "ternary_linear.out", distill_et::ternary_linear_out);
EXECUTORCH_LIBRARY(distill, "binary_linear.out", distill_et::binary_linear_out);
EXECUTORCH_LIBRARY(distill, "xnor_linear.out", distill_et::xnor_linear_out);
EXECUTORCH_LIBRARY(distill, "ternary_conv2d_cl.out", distill_et::ternary_conv2d_out);
EXECUTORCH_LIBRARY(distill, "binary_conv2d_cl.out", distill_et::binary_conv2d_out);
EXECUTORCH_LIBRARY(distill, "depthwise_conv2d.out", distill_et::depthwise_conv2d_out);
static auto g_inverted_residual = executorch::runtime::register_kernel(
    executorch::runtime::Kernel(distill_et::kInvertedResidual, distill_et::inverted_residual_boxed));
EXECUTORCH_LIBRARY(distill, "conv3x3.out", distill_et::conv3x3_out);
EXECUTORCH_LIBRARY(distill, "mean_hw.out", distill_et::mean_hw_out);
EXECUTORCH_LIBRARY(distill, "concat_shuffle.out", distill_et::concat_shuffle_out);
EXECUTORCH_LIBRARY(distill, "slice_channels.out", distill_et::slice_channels_out);

// Controls for Python (ctypes): the kernels' thread count (XNNPACK has its own
// threadpool) and instruction set (this library's own copy of kernels/csrc).
extern "C" __attribute__((visibility("default"))) void distill_et_set_num_threads(int n) {
  distill_et::g_threads.store(n < 0 ? 0 : n);
}
extern "C" __attribute__((visibility("default"))) int distill_et_get_num_threads(void) {
  return distill_et::threads();
}
extern "C" __attribute__((visibility("default"))) int distill_et_set_isa(int isa) { return dl_set_isa(isa); }
extern "C" __attribute__((visibility("default"))) int distill_et_get_isa(void) { return dl_get_isa(); }
