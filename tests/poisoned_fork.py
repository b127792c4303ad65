"""Preloaded by the worker forkserver in one test (tests/test_generate.py): every worker forked from it then finds
itself in a fork whose CUDA is unusable, as on a GPU machine where a preloaded library initialized CUDA. The test
reaches the forkserver through its preload list, so production code carries no switch for it."""

import evalkit.generate.worker.run as worker_run

worker_run.fork_is_poisoned = lambda: True
