"""The last module the generate stage's forkserver imports (machines without a GPU): it loads the run's tokenizers
once, so that no backend's process parses them again (evalkit.generate.worker.tokenizers). Without the stage's
request (EVALKIT_PRELOAD_TOKENIZERS) it does nothing."""

from evalkit.generate.worker.tokenizers import preload_from_environment

preload_from_environment()
