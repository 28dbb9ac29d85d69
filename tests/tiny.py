"""Tiny models with real trained tokenizers, built from configs in seconds (tests, demos, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KINDS = ("gpt2", "llama", "bert-mlm", "bert-cls")


def corpus(limit: int = 400) -> list[str]:
    from scaling.compress.data import _pydoc_texts

    return _pydoc_texts()[:limit]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 1000) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind.startswith("bert"):
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(
            texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
        )
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def build(
    kind: str,
    out: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    vocab_size: int = 1000,
    train_steps: int = 60,
) -> Path:
    """Save a tiny `kind` model with its tokenizer into `out` (save_pretrained layout).

    LMs get `train_steps` quick steps on the corpus: a random model predicts near-uniformly, so quantization
    barely moves its perplexity and quality-driven logic (tuning, reports) would have nothing to see."""
    import torch
    import transformers as tf

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    torch.manual_seed(seed)
    tok = train_tokenizer(kind, corpus(), vocab_size)
    v = len(tok)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(
            tf.GPT2Config(
                vocab_size=v,
                n_embd=hidden,
                n_layer=layers,
                n_head=heads,
                n_positions=512,
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    elif kind == "llama":
        model = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                vocab_size=v,
                hidden_size=hidden,
                intermediate_size=hidden * 2,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=512,
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
    else:
        cfg = tf.BertConfig(
            vocab_size=v,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        )
        model = tf.BertForMaskedLM(cfg) if kind == "bert-mlm" else tf.BertForSequenceClassification(cfg)
    if train_steps and kind != "bert-cls":
        _train(model, tok, kind, train_steps)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _train(model: Any, tok: Any, kind: str, steps: int, seq_len: int = 64, batch: int = 8) -> None:
    import torch

    ids: list[int] = []
    for text in corpus(600):
        ids += tok(text, add_special_tokens=False)["input_ids"]
    blocks = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        b = blocks[torch.randint(0, len(blocks), (batch,), generator=gen)]
        if kind == "bert-mlm":
            chosen = torch.rand(b.shape, generator=gen) < 0.15
            loss = model(
                input_ids=b.masked_fill(chosen, tok.mask_token_id), labels=b.masked_fill(~chosen, -100)
            ).loss
        else:
            loss = model(input_ids=b, labels=b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def cached(kind: str, root: Path) -> Path:
    """Build `kind` under root once (tests share one root per session)."""
    out = root / kind
    if not (out / "config.json").is_file():
        build(kind, out)
    return out
