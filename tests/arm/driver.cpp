// Runs the packed low-bit kernels' C interface (kernels/csrc/lowbit.h) on cases
// written by tests/test_arm.py and compares every output, byte for byte, with
// the expected one computed by the plain-torch reference on the x86 build
// machine. Built for aarch64 and run under qemu-user, once per instruction set
// the emulated CPU offers (neondot, neon, scalar), so each path is checked
// against the same spec.
//
// Cases file (little-endian): "DLARM001", u32 count, then per case
//   u32 n, n chars (op name); u32 n, n x i64 (ints); u32 n, n x f32 (floats);
//   u32 n, n x { u64 bytes, data } (arrays; an empty one is a NULL pointer).
// The last array (the last two for quantize_rows / binarize_rows) is the
// expected output; the others are the inputs, in the entry point's order.
//
// Usage: driver CASES [ISA ...]   (default: every ISA the CPU supports)
// Exit status 0 when every case matched on every ISA run, 1 otherwise.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "lowbit.h"  // the C entry points

namespace {

const char* kIsaNames[] = {"scalar", "avx2", "avxvnni", "avx512", "neon", "neondot"};
const int kIsaCount = 6;

struct Case {
  std::string op;
  std::vector<int64_t> i;
  std::vector<float> f;
  std::vector<std::vector<uint8_t>> a;

  // Input array k as a typed pointer (NULL when empty).
  template <class T>
  const T* in(size_t k) const {
    return a.at(k).empty() ? nullptr : reinterpret_cast<const T*>(a[k].data());
  }
};

[[noreturn]] void die(const char* what) {
  fprintf(stderr, "driver: %s\n", what);
  exit(2);
}

void read_exact(FILE* f, void* p, size_t n) {
  if (n && fread(p, 1, n, f) != n) die("cases file is truncated");
}

uint32_t read_u32(FILE* f) {
  uint32_t v;
  read_exact(f, &v, 4);
  return v;
}

std::vector<Case> load(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open the cases file");
  char magic[8];
  read_exact(f, magic, 8);
  if (memcmp(magic, "DLARM001", 8) != 0) die("not a cases file (bad magic)");
  std::vector<Case> cases(read_u32(f));
  for (Case& c : cases) {
    c.op.resize(read_u32(f));
    read_exact(f, &c.op[0], c.op.size());
    c.i.resize(read_u32(f));
    read_exact(f, c.i.data(), 8 * c.i.size());
    c.f.resize(read_u32(f));
    read_exact(f, c.f.data(), 4 * c.f.size());
    c.a.resize(read_u32(f));
    for (auto& arr : c.a) {
      uint64_t n;
      read_exact(f, &n, 8);
      arr.resize(n);
      read_exact(f, arr.data(), n);
    }
  }
  fclose(f);
  return cases;
}

// Runs one case into `out` (one buffer per expected array, prefilled with a
// pattern so that an unwritten element shows). Returns the entry's status.
int run(const Case& c, std::vector<std::vector<uint8_t>>& out) {
  const int64_t M = c.i.at(0), K = c.i.at(1);
  auto y = [&](size_t k) { return out.at(k).data(); };
  if (c.op == "depthwise3x3") {  // ints B, H, W, C, stride, pad, nthreads; arrays x (NHWC), w [3, 3, C], bias
    const std::vector<int64_t>& i = c.i;
    return dl_depthwise3x3_nhwc(c.in<float>(0), i.at(0), i.at(1), i.at(2), i.at(3), (int)i.at(4), (int)i.at(5),
                                c.in<float>(1), c.in<float>(2), (float*)y(0), (int)i.at(6), c.f.at(0), c.f.at(1));
  }
  if (c.op == "inverted_residual") {  // ints B, H, W, Cin, Cmid, Cout, stride, residual, expand, nthreads
    const std::vector<int64_t>& i = c.i;  // floats: expand, depthwise, project clamps (lo, hi each)
    const DlPointwise e = {c.in<uint8_t>(1), i.at(3), i.at(4), c.in<float>(2), c.in<float>(3), c.in<float>(4),
                           c.f.at(0), c.f.at(1)};
    const DlPointwise p = {c.in<uint8_t>(7), i.at(4), i.at(5), c.in<float>(8), c.in<float>(9), c.in<float>(10),
                           c.f.at(4), c.f.at(5)};
    return dl_inverted_residual_nhwc(c.in<float>(0), i.at(0), i.at(1), i.at(2), i.at(8) ? &e : nullptr, c.in<float>(5),
                                     c.in<float>(6), (int)i.at(6), c.f.at(2), c.f.at(3), &p, (int)i.at(7), (float*)y(0),
                                     (int)i.at(9));
  }
  if (c.op == "conv3x3") {  // ints B, H, W, Cin, the 4 strides of x, Cout, stride, pad, nthreads; x, w, bias
    const std::vector<int64_t>& i = c.i;
    return dl_conv3x3_nhwc(c.in<float>(0), i.at(0), i.at(1), i.at(2), i.at(3), i.at(4), i.at(5), i.at(6), i.at(7),
                           i.at(8), (int)i.at(9), (int)i.at(10), c.in<float>(1), c.in<float>(2), (float*)y(0),
                           (int)i.at(11), c.f.at(0), c.f.at(1));
  }
  if (c.op == "quantize_rows")
    return dl_quantize_rows(c.in<float>(0), M, K, (int8_t*)y(0), (float*)y(1), 1);
  if (c.op == "binarize_rows")
    return dl_binarize_rows(c.in<float>(0), M, K, y(0), (float*)y(1), 1);
  const int64_t N = c.i.at(2);
  const int nth = (int)c.i.at(3);
  if (c.op == "ternary_linear")
    return dl_ternary_linear(c.in<float>(0), M, K, c.in<uint8_t>(1), N, c.in<float>(2), c.in<float>(3),
                             c.in<float>(4), (float*)y(0), nth, c.f.at(0), c.f.at(1));
  if (c.op == "binary_linear")
    return dl_binary_linear(c.in<float>(0), M, K, c.in<uint8_t>(1), N, c.in<float>(2), c.in<float>(3),
                            (float*)y(0), nth, c.f.at(0), c.f.at(1));
  if (c.op == "xnor_linear")
    return dl_xnor_linear(c.in<float>(0), M, K, c.in<uint8_t>(1), N, c.in<float>(2), c.in<float>(3), (int)c.i.at(4),
                          (float*)y(0), nth, c.f.at(0), c.f.at(1));
  if (c.op == "ternary_mm") return dl_ternary_mm(c.in<int8_t>(0), M, K, c.in<uint8_t>(1), N, (int32_t*)y(0), nth);
  if (c.op == "binary_mm") return dl_binary_mm(c.in<int8_t>(0), M, K, c.in<uint8_t>(1), N, (int32_t*)y(0), nth);
  if (c.op == "xnor_mm") return dl_xnor_mm(c.in<uint8_t>(0), M, K, c.in<uint8_t>(1), N, (int32_t*)y(0), nth);
  fprintf(stderr, "driver: unknown op %s\n", c.op.c_str());
  exit(2);
}

size_t outputs_of(const Case& c) { return c.op == "quantize_rows" || c.op == "binarize_rows" ? 2 : 1; }

std::string describe(const Case& c) {
  std::string s = c.op + "(";
  for (size_t k = 0; k < c.i.size(); ++k) s += (k ? "," : "") + std::to_string(c.i[k]);
  return s + ")";
}

// Runs every case on the current ISA; prints each mismatch; returns their number.
int check_all(const std::vector<Case>& cases) {
  int bad = 0;
  for (size_t n = 0; n < cases.size(); ++n) {
    const Case& c = cases[n];
    const size_t nout = outputs_of(c), first = c.a.size() - nout;
    std::vector<std::vector<uint8_t>> out(nout);
    for (size_t k = 0; k < nout; ++k) out[k].assign(c.a[first + k].size(), 0xA5);
    if (run(c, out) != 0) {
      printf("  case %zu %s: the entry point failed\n", n, describe(c).c_str());
      ++bad;
      continue;
    }
    for (size_t k = 0; k < nout; ++k) {
      const std::vector<uint8_t>& want = c.a[first + k];
      if (memcmp(out[k].data(), want.data(), want.size()) == 0) continue;
      size_t e = 0;
      while (out[k][e] == want[e]) ++e;
      e &= ~(size_t)3;  // every output element here is 4 bytes or a run of int8 / bits; show the word
      uint32_t got = 0, exp = 0;
      memcpy(&got, out[k].data() + e, want.size() - e < 4 ? want.size() - e : 4);
      memcpy(&exp, want.data() + e, want.size() - e < 4 ? want.size() - e : 4);
      printf("  case %zu %s: output %zu differs at byte %zu: got 0x%08x, expected 0x%08x\n", n, describe(c).c_str(),
             k, e, got, exp);
      ++bad;
      break;
    }
  }
  return bad;
}

int isa_code(const char* name) {
  for (int k = 0; k < kIsaCount; ++k)
    if (strcmp(name, kIsaNames[k]) == 0) return k;
  die("unknown ISA name");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: driver CASES [ISA ...]");
  const std::vector<Case> cases = load(argv[1]);
  const int best = dl_get_isa();
  std::string supported;
  for (int k = 0; k < kIsaCount; ++k)
    if (dl_isa_supported(k)) supported += std::string(supported.empty() ? "" : ",") + kIsaNames[k];
  printf("cpu: best=%s supported=%s\n", kIsaNames[best], supported.c_str());
  std::vector<int> isas;
  for (int k = 2; k < argc; ++k) isas.push_back(isa_code(argv[k]));
  if (isas.empty())
    for (int k = kIsaCount - 1; k >= 0; --k)
      if (dl_isa_supported(k)) isas.push_back(k);
  int total_bad = 0;
  for (int isa : isas) {
    if (dl_set_isa(isa) != isa) {
      printf("isa %s: not supported on this CPU\n", kIsaNames[isa]);
      total_bad++;
      continue;
    }
    const int bad = check_all(cases);
    printf("isa %s: %zu cases, %d mismatches\n", kIsaNames[isa], cases.size(), bad);
    total_bad += bad;
  }
  printf(total_bad ? "FAILED\n" : "ok\n");
  return total_bad ? 1 : 0;
}
