"""Preloaded by the worker forkserver in one test (tests/test_worker_startup.py): a fork is poisoned exactly when its
forkserver ran the GPU preload (evalkit.generate.worker.preload_gpu), as on a GPU machine where a family module
created a CUDA context despite the NVML answer. The stage must then restart the forkserver without that preload,
not fall back to a fresh interpreter per backend."""

import sys

import evalkit.generate.worker.run as worker_run

worker_run.fork_is_poisoned = lambda: "evalkit.generate.worker.preload_gpu" in sys.modules
