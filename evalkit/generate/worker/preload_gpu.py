"""The forkserver's last preload module on a machine with an NVIDIA GPU: the family modules, libraries and tokenizers
the stage asked for, imported without creating a CUDA context (evalkit.generate.worker.gpu_preload). Without the
stage's request it does nothing."""

from evalkit.generate.worker.gpu_preload import preload_from_environment

preload_from_environment()
