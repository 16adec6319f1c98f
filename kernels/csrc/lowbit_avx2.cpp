// AVX2 + FMA build of the SIMD kernels (Haswell and later, Zen).
#include "lowbit.h"
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DL_TARGET "avx2,fma,popcnt,bmi2"
#define DL_VNNI 0
#define DL_TABLE_FN dl_kernels_avx2
#include "lowbit_simd.h"
#else
const DlKernels* dl_kernels_avx2(void) { return 0; }
#endif
