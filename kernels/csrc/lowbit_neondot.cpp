// NEON + dot-product build of the AArch64 kernels (Armv8.2-A FEAT_DotProd:
// Cortex-A55/A75 and later, Apple M1, Neoverse N1): sdot/udot.
//
// Built with -march=armv8.2-a+dotprod for this file alone where the build can
// give per-file flags (the ARM cross build, tests/test_arm.py); torch's
// extension builder gives every file the same flags, so GCC then turns the
// instructions on here with a target pragma. Either way only this file holds
// dot-product code, and lowbit_api.cpp calls it only on CPUs with HWCAP_ASIMDDP.
#include "lowbit.h"
#if defined(__aarch64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__ARM_FEATURE_DOTPROD)
#pragma GCC target("arch=armv8.2-a+dotprod")
#define DL_NEONDOT_BUILT 1
#elif defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#define DL_NEONDOT_BUILT 1
#endif

#if DL_NEONDOT_BUILT
#define DL_DOTPROD 1
#define DL_TABLE_FN dl_kernels_neondot
#include "lowbit_neon.h"
#else
const DlKernels* dl_kernels_neondot(void) { return 0; }
#endif
