"""The packed ternary/binary layers as ExecuTorch custom kernels.

- ``ops``: the ``.out`` overloads and single-op convolutions torch.export / to_executorch
  need (``import kernels.executorch.ops`` before exporting);
- ``build``: compiles lowbit_et.cpp with kernels/csrc against the executorch wheel;
- ``runtime``: loads that library into the process once (``runtime.load()``), before a
  program's ``load_method``; ``set_num_threads`` for it and XNNPACK.

Nothing here imports executorch at import time.
"""
