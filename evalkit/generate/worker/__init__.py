"""The generate worker: one process per (backend, work unit) that loads the pipeline, measures it and makes images.

`python -m evalkit.generate.worker RUN_DIR BACKEND TAG` (subprocess mode) or `run.forked_main` (forkserver mode).
- run.py: the process's life: load, warm up, generate the missing images, write the record.
- images.py: the image loop: warm-up, generation, each image's PNG and partial-list entry, the measurements over them.
- events.py: where progress events go (the parent's pipe in forkserver mode).
- loading.py: load a pipeline with one backend recipe and inspect what the load produced (the quantization census).
- measure.py: memory and latency readings.
- compile_options.py: the `+compile` modifier's settings.

This package's __init__ stays import-light (the stage imports compile_options' validation from it).
"""
