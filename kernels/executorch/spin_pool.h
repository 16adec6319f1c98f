// The thread pool the packed kernels' parallel loops run on inside ExecuTorch (spin_pool.cpp).
#pragma once
#include <stdint.h>

#include "lowbit.h"  // DlTask

namespace distill_et {

// task(ctx, i) for every i in [0, n), on the calling thread and up to nthreads - 1 helper
// threads; returns when all n are done. A helper that is asleep or descheduled is never waited
// for: the caller takes every task no helper has claimed. Has the shape of a DlParallelFor.
void spin_parallel_for(DlTask task, void* ctx, int64_t n, int nthreads);

}  // namespace distill_et
