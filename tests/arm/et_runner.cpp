// Runs an ExecuTorch program (.pte) of distill:: packed ops on AArch64 (under qemu-user
// in tests/test_arm.py): the runtime is libexecutorch.so of the executorch wheel for
// aarch64 (linked), the kernels are the distill ExecuTorch library built for aarch64
// from kernels/executorch and kernels/csrc, dlopen'ed before the program loads, as
// executorch.runtime does in Python (loading it registers distill::*.out).
//
// Usage: et_runner KERNELS_LIB PROGRAM INPUTS OUTPUTS ISA
//   INPUTS: u32 count, then per tensor u32 ndim, ndim x i32 sizes, the float32 data (C order).
//   OUTPUTS: written here, every output tensor's bytes as stored (its dim order).
//   ISA: the kernels' ISA code to pin (lowbit.h enum DlIsa), -1 for the best.
// Prints the ISA that ran; exit status 0 on success.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <vector>

using executorch::extension::TensorPtr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace {

[[noreturn]] void die(const char* what, const char* detail = "") {
  fprintf(stderr, "et_runner: %s%s\n", what, detail);
  exit(2);
}

uint32_t read_u32(FILE* f) {
  uint32_t v;
  if (fread(&v, 4, 1, f) != 1) die("inputs file is truncated");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) die("usage: et_runner KERNELS_LIB PROGRAM INPUTS OUTPUTS ISA");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) die("cannot load the kernels library: ", dlerror());
  auto set_isa = (int (*)(int))dlsym(lib, "distill_et_set_isa");
  auto get_isa = (int (*)(void))dlsym(lib, "distill_et_get_isa");
  if (!set_isa || !get_isa) die("the kernels library lacks distill_et_set_isa / distill_et_get_isa");
  if (set_isa(atoi(argv[5])) < 0) die("ISA not supported on this CPU: ", argv[5]);
  printf("et isa=%d\n", get_isa());

  FILE* in = fopen(argv[3], "rb");
  if (!in) die("cannot open ", argv[3]);
  std::vector<std::vector<float>> data(read_u32(in));
  std::vector<TensorPtr> tensors;
  std::vector<EValue> inputs;
  for (auto& d : data) {
    std::vector<executorch::aten::SizesType> sizes(read_u32(in));
    size_t n = 1;
    for (auto& s : sizes) n *= (s = (int32_t)read_u32(in));
    d.resize(n);
    if (fread(d.data(), 4, n, in) != n) die("inputs file is truncated");
    tensors.push_back(executorch::extension::from_blob(d.data(), sizes));
    inputs.emplace_back(*tensors.back());
  }
  fclose(in);

  Module module(argv[2]);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) die("load_method(forward) failed for ", argv[2]);
  auto result = module.execute("forward", inputs);
  if (!result.ok()) die("forward failed");
  FILE* out = fopen(argv[4], "wb");
  if (!out) die("cannot write ", argv[4]);
  for (const EValue& v : *result) {
    if (!v.isTensor()) die("an output is not a tensor");
    const auto& t = v.toTensor();
    fwrite(t.const_data_ptr(), 1, t.nbytes(), out);
  }
  fclose(out);
  printf("et outputs=%zu\n", result->size());
  return 0;
}
