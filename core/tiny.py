"""Tiny models and tokenizers made on the spot: no download, deterministic, a few seconds on a CPU.

Used by the quickstart (``base_model: builtin:tiny-llama``), the tests and the benchmarks. The tokenizer is a
byte-level BPE trained with ``tokenizers`` on a small built-in corpus, so it can encode any text; the model is
a Llama-style decoder with random weights built from a config.
"""

from __future__ import annotations

import random
from pathlib import Path

from gym.chat_templates import CHATML

CHATML_TEMPLATE = CHATML  # one ChatML template for gym: gym.chat_templates

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an of to and in is it that for on with as was at by this be are from or have not but what all were "
    "when we there can you your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men say small every "
    "found still between name should home big give air line set own under read last never us left end along "
    "while might next sound below saw something thought both few those always looked show large often "
    "together asked house world going want school important until form food keep children feet land side "
    "without boy once animals life enough took sometimes four head above kind began almost live page got "
    "earth need far hand high year mother light parts country father let night following picture being study "
    "second eyes soon times story boys since white days ever paper hard near sentence better best across "
    "during today others however sure means knew its try told young miles sun ways thing whole hear example "
    "heard several change answer room sea against top turned learn point city play toward five using himself "
    "usually question instruction input output response user assistant system please explain list give "
    "write describe summarize translate add plus equals sum what is"
).split()


def builtin_corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """English-like sentences, numbers and arithmetic, enough for a BPE to learn useful merges."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 16))]
        corpus.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":"]))
        a, b = rng.randint(0, 99999), rng.randint(0, 99999)
        corpus.append(f"What is {a} + {b}? {a} + {b} = {a + b}")
    corpus.append("### Instruction:\n### Input:\n### Response:\n")
    return corpus


def build_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None, chat_template: str = CHATML_TEMPLATE):
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE, chatml special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or builtin_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = chat_template
    return fast


def build_model(tokenizer, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate_size: int = 128, max_positions: int = 2048, seed: int = 0):
    """A Llama-style causal LM with random weights sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, vocab_size: int = 512, **model_kwargs) -> Path:
    """Write a tokenizer and a random tiny model to ``path``, loadable by plain ``from_pretrained``."""
    path = Path(path)
    tokenizer = build_tokenizer(vocab_size)
    model = build_model(tokenizer, **model_kwargs)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
