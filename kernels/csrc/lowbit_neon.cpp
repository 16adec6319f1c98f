// Plain NEON build of the AArch64 kernels (Armv8.0-A: every AArch64 CPU).
#include "lowbit.h"
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define DL_DOTPROD 0
#define DL_TABLE_FN dl_kernels_neon
#include "lowbit_neon.h"
#else
const DlKernels* dl_kernels_neon(void) { return 0; }
#endif
