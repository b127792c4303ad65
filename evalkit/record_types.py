"""The parts of the run directory's records, typed down to the leaves (docs/run-directory.md).

evalkit/records.py holds the four top-level records (manifest, generation record, metric record, summary), their
builders and their validating readers; this module holds what they are made of, and the run directory's other
files (calibration.json, merge.json, a rank's unit file). `evalkit.shapes.validate` checks a record against these
annotations when it is built and when it is read, so a leaf of the wrong type is one line naming the file and the
field. tests/test_rundir_schema_docs.py checks that docs/run-directory.md names every field declared here.

Every part is `total=False` unless a field is `Required`: a field added later is absent from older records, and a
reader accepts keys it does not know (a newer evalkit of the same schema version wrote them).
"""

# No `from __future__ import annotations`: TypedDict reads Required[...] from real annotations (see records.py).
from typing import Any, Literal, Required, TypedDict

# The `schema` string of the run directory's files that are not one of the four records.
CALIBRATION_SCHEMA = "evalkit.calibration/1"
MERGE_SCHEMA = "evalkit.merge/1"
UNIT_SCHEMA = "evalkit.unit/1"

# --------------------------------------------------------------------------------------------- manifest parts


class TokenCounts(TypedDict, total=False):
    """Per tokenizer of the family (evalkit.families.base.Tokenizer): `<name>`, `<name>_limit`, `<name>_truncated`
    (e.g. clip 12, clip_limit 77, clip_truncated false). Declared open: the names are the family's."""


class ModelEntry(TypedDict, total=False):
    spec: Required[str]  # what --model said: tiny[:FAMILY], random:VARIANT, a hub id or a directory
    kind: str  # tiny | random | hub | dir (absent in runs made before 2026-11-30)
    path: str | None
    family: str  # evalkit.families key
    pipeline_class: str
    variant: str | None
    random_weights: bool
    quality_meaningful: bool  # false for tiny and random builds: images are noise, only memory/latency count
    note: str
    tokenizer_note: str
    extra: dict[str, Any]


class GenerationSettings(TypedDict, total=False):
    height: Required[int]
    width: Required[int]
    num_inference_steps: int
    guidance_scale: float
    max_sequence_length: int
    batch_size: int
    base_seed: int
    generator_device: str
    warmup_runs: int
    warmup_steps: int  # --warmup-steps: denoising steps of each warm-up generation (absent: num_inference_steps)
    dtype: str
    negative_prompt: str  # families whose pipeline takes one (SD3.5)


class DeviceInfo(TypedDict, total=False):
    type: Required[str]  # cpu | cuda
    name: str
    capability: list[int] | None
    total_memory_gib: float | None
    cpu_count: int
    platform: str
    python: str
    torch: str


class CpuCompute(TypedDict, total=False):
    capability: str
    native_bf16: bool
    basis: str


class ComputePlan(TypedDict, total=False):
    """Which dtype each component computes in, decided once when the run is created (generate/worker/compute_dtype.py)."""

    dtypes: dict[str, str]
    reason: str
    summary: str  # "" when bf16 throughout
    cpu: CpuCompute | None  # null on CUDA


class Numerics(TypedDict, total=False):
    """Worker numerics knobs that were set (--threads, --tf32, --sdpa-backend); absent ones were left as torch has them."""

    threads: int
    tf32: bool
    sdpa_backend: str


class ScheduleEntry(TypedDict, total=False):
    policy: str
    requested: str
    reason: str
    description: str
    world_size: int
    chunks: dict[str, int]
    estimated_makespan_s: float | None
    fixed_cost_share: float | None


class WorldEntry(TypedDict, total=False):
    launcher: str
    world_size: int


class PluginEntry(TypedDict, total=False):
    path: Required[str]
    sha256: Required[str]


class RunConfig(TypedDict, total=False):
    identity: dict[str, Any]  # the settings that decide what the images are (generate/prepare.py IDENTITY_KEYS)
    device: str
    components: list[str] | None
    backend_options: dict[str, dict[str, Any]]
    compile: dict[str, Any]
    gguf_file: str | None
    plugins: list[PluginEntry]
    checkpoints: list[dict[str, Any]]  # --backend NAME=PATH (evalkit/quantizers/checkpoint.py)
    cache_dir: str
    jobs: int
    gpus: list[str]
    attempt_known_failures: bool
    numerics: Numerics
    options: dict[str, Any]  # the generate options (generate/options.py), read back strictly
    schedule: ScheduleEntry
    world: WorldEntry


class FidMode(TypedDict, total=False):
    """How FID/KID were computed: fid_mode.json, written by score (a schema-1 manifest held it as `fid_mode`)."""

    implementation: str
    extractor_id: str
    weights_sha256: str
    feature_dim: int
    dtype: str
    resize: str
    resize_note: str
    fid_sqrt_method: str
    covariance_ddof: int
    fid_indicative_below_n: int
    reference_backend: str
    n: int | dict[str, int]
    n_reference: int
    real_dir: str  # --real-dir: FID against real images instead of the reference backend's
    kid: dict[str, Any]


# --------------------------------------------------------------------------------------------- generation parts


class Recipe(TypedDict, total=False):
    """The backend as run: its registry recipe (evalkit/quantizers), frozen into the record."""

    name: str
    library: str
    kind: str
    description: str
    components: list[str]
    modifiers: list[str]
    options: dict[str, Any]
    deprecated: str | None


class ErrorInfo(TypedDict, total=False):
    type: str
    message: str
    traceback_tail: str


class QuantizationCensus(TypedDict, total=False):
    """What the loaded pipeline holds, counted by evalkit (never taken from the recipe's word)."""

    components_quantized: list[str]
    quantized_linear_count: dict[str, int]
    linear_count: dict[str, int]
    layer_types: dict[str, Any]
    resolved_config: dict[str, Any]
    note: str | None
    partial_reason: str | None  # did less than its name says on this device
    library: str
    library_version: str | None
    device_map: str
    post_load: dict[str, Any]
    gguf_file: str
    gguf_source: str
    gguf_summary: dict[str, Any]
    bfl_file: str


class ComponentFootprint(TypedDict, total=False):
    bytes: int
    gib: float
    params: int
    dtypes: dict[str, int]


class Footprint(TypedDict, total=False):
    """Weight bytes per component (a ComponentFootprint under each component's name) and in total."""

    total_bytes: int
    total_gib: float


class Placement(TypedDict, total=False):
    placement: str
    offload_type: str
    use_stream: bool


class PrepareStep(TypedDict, total=False):
    """A one-time library step before loading (a kernel build, a checkpoint written from bf16)."""

    what: str
    seconds: float
    cached: bool
    path: str
    extension: str
    build_directory: str
    checkpoint: dict[str, Any]


class StartupRecord(TypedDict, total=False):
    """A worker's start-up, seconds from the stage's request to the load clock (evalkit.generate.worker.startup)."""

    worker_mode: str  # forkserver, subprocess
    preloaded: bool  # the forkserver had imported the family's modules
    spawn_s: float | None
    setup_s: float | None
    cuda_context_s: float | None  # None on a CPU
    imports_s: float | None
    tokenizers_s: float | None
    total_s: float | None


class DynamoStats(TypedDict, total=False):
    frames_compiled: int
    unique_graphs: int
    graph_breaks: int
    recompilations: int
    recompile_limit_hit: bool
    recompile_reasons: list[str]
    woq_int8pack_rewrites: int


class CompileRecord(TypedDict, total=False):
    preset: str
    mode: str
    fullgraph: bool
    dynamic: bool | None
    regional: bool
    target: str
    component: str
    compiled_regions: int
    repeated_blocks: list[str] | None
    torch: str
    cache: dict[str, Any]
    dynamo: DynamoStats
    inductor: dict[str, Any]
    coordinate_descent_tuning: bool
    woq_int8pack: bool
    woq_int8pack_guard: dict[str, Any]
    time_basis: str  # how compile_time_s was measured (evalkit.generate.worker.images.compile_seconds)


class MemoryRecord(TypedDict, total=False):
    """GiB (2^30 bytes); the manifest's memory_convention says what each field measures. CUDA fields are None on CPU
    (cuda_reason says why)."""

    device: str
    cuda_reason: str | None
    after_load_allocated_gib: float | None
    after_load_reserved_gib: float | None
    load_peak_allocated_gib: float | None
    load_peak_reserved_gib: float | None
    peak_allocated_gib: float | None
    peak_reserved_gib: float | None
    cpu_peak_rss_gib: float | None
    cpu_rss_after_load_gib: float | None


class LatencyRecord(TypedDict, total=False):
    """Seconds per image over the timed (post-warm-up) images."""

    n: int
    median_s: float | None
    mean_s: float | None
    min_s: float | None
    max_s: float | None
    std_s: float | None
    p10_s: float | None
    p90_s: float | None
    iqr_s: float | None
    warmup_runs: int
    first_s: float  # the unit's first measured image (a merged record leaves it to each rank's entry)
    first_vs_median: float | None  # first_s over the median: how far the warm-up left it from steady state


class BrokenEntry(TypedDict, total=False):
    """One broken image (or, `scope: "backend"`, a whole backend) found by a tripwire (evalkit.tripwires)."""

    scope: str  # "image" or "backend"
    prompt_id: str | None
    seed: int | None
    file: str | None  # images/<backend>/<prompt>_s<seed>.png (run-relative) or the file name (compare-images)
    tripwire: str
    reason: str  # one line
    value: float | None
    level: float | None
    when: str  # "generate" or "score"
    others: list[dict[str, Any]]  # further tripwires the same image tripped (tripwire, reason, value, level)


class NonFinite(TypedDict, total=False):
    """An image entry's non-finite counts, taken before the PNG (a PNG cannot hold NaN)."""

    latents: int | None  # None: the pipeline gave no step callback to read its latents
    pixels: int


class GenerationTripwires(TypedDict, total=False):
    """A generation record's `tripwires`: how latents were checked, the backend-level tripwire, image totals."""

    version: int
    latents: str  # how the latents were read, or why they were not
    broken_backend: list[BrokenEntry]  # not_quantized, when the census found nothing the recipe expects
    n_broken_images: int
    n_nonfinite_images: int


class ScoreTripwires(TypedDict, total=False):
    """A metric record's `tripwires`: what score found and what it could not evaluate."""

    version: int
    n_broken: int
    n_reference_broken: int
    not_evaluated: list[str]  # the first few, "file: tripwire not evaluated: why"
    n_not_evaluated: int


class RankEntry(TypedDict, total=False):
    """One rank's own figures in a merged record (`ranks`)."""

    host: str
    pid: int | None  # None: the worker died before writing its record (killed while loading; the stage wrote it)
    gpu: str | None
    n_images: int
    finished_utc: str
    load_time_s: float | None
    compile_time_s: float | None
    memory: MemoryRecord | None
    latency: LatencyRecord | None
    prepare: PrepareStep | None
    startup: StartupRecord | None  # added (#25)


class ShardInfo(TypedDict, total=False):
    """In a rank's shard record only."""

    tag: str
    rank: int
    world_size: int
    host: str
    gpu: str | None
    prompt_ids: list[str]


# --------------------------------------------------------------------------------------------- other files


class UnitFile(TypedDict, total=False):
    """generation/shards/<backend>/<tag>.unit.json: which rank took which prompts of a backend."""

    schema: Required[Literal["evalkit.unit/1"]]
    backend: Required[str]
    tag: Required[str]
    rank: int
    world_size: int
    host: str
    pid: int
    prompt_ids: Required[list[str]]
    threads: int | None
    created_utc: str


class MergeUnit(TypedDict, total=False):
    tag: str
    rank: int
    world_size: int
    sha256: str  # of the unit's shard record as merged
    prompt_id: str


class MergeBackend(TypedDict, total=False):
    status: str
    units: list[MergeUnit]
    missing: list[str]  # prompt ids no unit produced


class InputsKey(TypedDict):
    """metrics/inputs.json (score) and report-inputs.json (report): the content key of what the stage's outputs
    were made from. An unchanged rerun compares it and does no work; a file of another shape means a rerun."""

    key: str  # evalkit.inputs_key.content_key of the stage's inputs and options
    covers: str  # in words, what the key covers


class MergeFile(TypedDict, total=False):
    """merge.json: every unit's rank and sha256 per backend, written by the rank that merged."""

    schema: Required[str]  # evalkit.merge/1
    backends: Required[dict[str, MergeBackend]]
    host: str
    updated_utc: str


class InForce(TypedDict, total=False):
    """What a worker's numerics actually were (generation record `numerics`; calibration compares them)."""

    intra_op_threads: int | None
    tf32_matmul: bool | None
    sdpa_backend: str | None
    batch_size: int | None
    compute_plan: dict[str, str] | None  # the run's plan (manifest compute); null before one existed
    activation_dtypes: dict[str, list[str]] | None
    changed_by_loading: dict[str, Any] | None


class Perturbation(TypedDict, total=False):
    description: str
    settings: dict[str, Any]
    backend: str
    in_force: InForce | None
    run_dir: str
    images_key: str
    n_images: int
    n_byte_identical_images: int


class CalibrationFile(TypedDict, total=False):
    """calibration.json, written by `evalkit calibrate` (docs/release-gate.md); check and report read it."""

    schema: Required[str]  # evalkit.calibration/1
    reference_backend: str
    metrics: Required[dict[str, Any]]  # metric -> its floor record (evalkit/calibrate/floor.py)
    run_id: str | None
    device: str
    model: str | None
    generation: GenerationSettings | None
    n_prompts: int
    created_utc: str
    floor_definition: str
    reference_in_force: InForce | None
    perturbations: dict[str, Perturbation]
