// AVX2 + AVX-VNNI build (Alder Lake, Sapphire Rapids, Zen 5): vpdpbusd on ymm.
#include "lowbit.h"
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || \
                            (defined(__clang__) && __clang_major__ >= 12))
#define DL_TARGET "avx2,fma,popcnt,bmi2,avxvnni"
#define DL_VNNI 1
#define DL_TABLE_FN dl_kernels_avxvnni
#include "lowbit_simd.h"
#else
const DlKernels* dl_kernels_avxvnni(void) { return 0; }
#endif
