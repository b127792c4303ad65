"""Byte-level BPE tokenizers with chat templates, built locally for the tiny and random builds of families whose text
encoder is an LLM (FLUX.2 [dev]: Mistral-Small-3.2; FLUX.2 [klein]: Qwen3).

Why local: the real tokenizers (Mistral's tekken BPE, 131k tokens, inside a PixtralProcessor; Qwen3's 151k BPE) ship
in no installed package and evalkit never downloads. For random or tiny weights only the tokenizer's *kind* and the
sequence length matter: both FLUX.2 pipelines wrap the prompt in a chat template and pad it to max_sequence_length,
so the text encoder's work is the same whatever the ids are. The manifest's tokenizer note says these were used.

- The vocabulary: 8,192 byte-level BPE tokens (GPT-2/Qwen/tekken style, "Ġ" marks a leading space) trained with the
  `tokenizers` library's BpeTrainer on a fixed synthetic corpus of CLIP's word list (open-clip-torch's merges file,
  the list evalkit's T5 stand-in uses too). Training is deterministic: the same bytes in every process with one
  `tokenizers` version (checked in tests).
- Qwen kind: a Qwen2TokenizerFast with Qwen's special tokens and a template that renders a user turn exactly as
  Qwen3's own does with add_generation_prompt=True, enable_thinking=False (what Flux2KleinPipeline asks for).
- Mistral kind: a tokenizers-backed PreTrainedTokenizerFast with Mistral's control tokens at their real ids (0..19)
  and a Mistral-Small-3.x-style template ("<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]"). The real
  pipeline holds a PixtralProcessor, which transformers 5 will not import without torchvision; Flux2Pipeline's
  text-to-image path only calls `tokenizer.apply_chat_template`, which a bare tokenizer provides.

Importing this module imports no torch; the builders import transformers and tokenizers inside.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from evalkit.families.tokenizers import vocabulary_words

BPE_VOCAB = 8192  # byte-level BPE tokens (256 bytes + merges), before special tokens
CORPUS_WORDS = 20000  # words of CLIP's list the BPE is trained on

# Qwen2's pre-tokenisation split (its tokenizer.json); tekken's differs only in how it splits case, which changes
# token counts a little, not the kind of tokenizer.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
                r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


Vocab = tuple[tuple[str, int], ...]  # (token, id) in id order
Merges = tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=None)
def trained_byte_level_bpe(vocab_size: int = BPE_VOCAB) -> tuple[Vocab, Merges]:
    """(vocab as (token, id) pairs in id order, merges): the 256-byte alphabet plus merges learnt from CLIP's word
    list with Zipf-like counts (each word lower-case and capitalised, with a leading space), so common English words
    become single tokens as in a real LLM vocabulary."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    words = vocabulary_words(CORPUS_WORDS)

    def corpus():  # merge order roughly follows word frequency in CLIP's training text
        for i, w in enumerate(words):
            n = max(1, 200000 // (i + 20))
            yield " ".join([w] * n)
            yield " ".join([w.capitalize()] * max(1, n // 8))

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = tuple(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges  # type: ignore[return-value]


def _vocab_from(first_id: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab, merges = trained_byte_level_bpe()
    return {t: i + first_id for t, i in vocab}, list(merges)


# The pipelines send one user turn (FLUX.2 [dev] adds a system message); other roles render plainly. A message's
# content may be a string or a list of {"type": "text", "text": ...} parts (Flux2Pipeline's format_input uses both).
_CONTENT = ("{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
            "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text') "
            "| map(attribute='text') | join('') -%}{%- endif -%}")

# Renders "<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n": Qwen3's template with
# add_generation_prompt=True, enable_thinking=False, as Flux2KleinPipeline calls it.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}" + _CONTENT +
    "{{- '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def build_qwen_tokenizer(model_max_length: int = 32768) -> Any:
    """A Qwen2TokenizerFast (Qwen3's tokenizer class) over the local BPE, Qwen's specials right after it."""
    from transformers import Qwen2TokenizerFast

    vocab, merges = _vocab_from(0)
    for tok in QWEN_SPECIALS:
        vocab[tok] = len(vocab)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", model_max_length=model_max_length,
                             chat_template=QWEN3_CHAT_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens(["<think>", "</think>"])
    return tok


# Mistral's control tokens at the ids tekken gives them (0..19 of the real vocabulary); "[IMG]" (10) is
# Mistral3Config.image_token_index.
MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]")
MISTRAL_IMAGE_TOKEN_ID = MISTRAL_SPECIALS.index("[IMG]")
MISTRAL_PAD_TOKEN_ID = MISTRAL_SPECIALS.index("<pad>")
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}" + _CONTENT +
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + content + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + content + '[/INST]' -}}"
    "{%- else -%}{{- content + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def build_mistral_tokenizer(model_max_length: int = 131072) -> Any:
    """A tokenizers-backed PreTrainedTokenizerFast over the local BPE, Mistral's control tokens at ids 0..19."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    bpe_vocab, merges = _vocab_from(len(MISTRAL_SPECIALS))
    vocab = {t: i for i, t in enumerate(MISTRAL_SPECIALS)}
    vocab.update(bpe_vocab)
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=model_max_length,
                                   chat_template=MISTRAL_CHAT_TEMPLATE)


def load_tokenizer_with_chat_template(folder: Path) -> Any:
    """The tokenizer saved in `folder` (a processor's folder holds one too), with its chat template: a processor
    keeps the template in its own chat_template.jinja / chat_template.json, which a bare tokenizer does not read."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tok.chat_template:
        for name, read in (("chat_template.jinja", lambda t: t),
                           ("chat_template.json", lambda t: json.loads(t)["chat_template"])):
            if (folder / name).is_file():
                tok.chat_template = read((folder / name).read_text(encoding="utf-8"))
                break
    return tok
