"""SentencePiece training, the AutoTokenizer round trip, determinism, and build_tokenizer's choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling.data import DataConfig, build_tokenizer, tokenizer_fingerprint
from scaling.data.pipeline import encode_texts
from scaling.data.tokenizer import iter_training_text, train_sentencepiece
from scaling.errors import ConfigError

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_through_autotokenizer(tmp_path, model_type):
    from transformers import AutoTokenizer

    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=6000))
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=600, model_type=model_type)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([tok.mask_token_id, tok.cls_token_id, tok.sep_token_id]) == [
        "<mask>",
        "<cls>",
        "<sep>",
    ]
    assert len(tok) == 600
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:400]
    for line in filter(str.strip, lines):
        ids = tok(line, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == line
    # The pipeline's fast batched path gives exactly the ids of `tokenizer(...)`.
    assert encode_texts(tok, lines) == tok(lines, add_special_tokens=False)["input_ids"]


def test_training_is_deterministic(tmp_path):
    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=4000))
    a = train_sentencepiece(texts, tmp_path / "a", vocab_size=500, model_type="unigram")
    b = train_sentencepiece(texts, tmp_path / "b", vocab_size=500, model_type="unigram")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_build_tokenizer_trains_for_a_preset_then_reuses(tmp_path):
    data = DataConfig(train=[str(SHAKESPEARE)])
    tok = build_tokenizer("tiny-gpt2", None, data, task="mlm", vocab_size=500, save_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and tok.mask_token_id is not None
    stamp = (tmp_path / "tok" / "tokenizer.json").stat().st_mtime_ns
    again = build_tokenizer("tiny-gpt2", None, data, task="clm", vocab_size=500, save_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").stat().st_mtime_ns == stamp
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    # An explicit tokenizer dir, and a model dir holding one, are loaded as they are.
    explicit = build_tokenizer(
        "tiny-gpt2", str(tmp_path / "tok"), data, task="clm", vocab_size=99, save_dir=tmp_path / "x"
    )
    from_model = build_tokenizer(
        str(tmp_path / "tok"), None, data, task="clm", vocab_size=99, save_dir=tmp_path / "y"
    )
    assert len(explicit) == len(from_model) == 500 and not (tmp_path / "x").exists()


def test_mlm_needs_a_mask_token(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"a": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>").save_pretrained(
        str(tmp_path / "t")
    )
    with pytest.raises(ConfigError, match="mask token"):
        build_tokenizer(
            "x", str(tmp_path / "t"), DataConfig(), task="mlm", vocab_size=10, save_dir=tmp_path / "s"
        )


def test_padding_and_truncation_saved_in_tokenizer_json_do_not_leak_into_batches(tmp_path, clm_tokenizer):
    """sentence-transformers checkpoints (all-MiniLM-L6-v2) save tokenizer.json with padding to 128 and
    truncation on: the batched fast path must still see the bare text, or every seq-cls sample becomes
    `[CLS] text [PAD]... [SEP]` with the pads attended."""
    from transformers import AutoTokenizer

    from scaling.data import build_eval_batches

    tok = AutoTokenizer.from_pretrained(clm_tokenizer)
    tok.backend_tokenizer.enable_padding(length=48, pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    tok.backend_tokenizer.enable_truncation(max_length=40)
    saved = tmp_path / "padded"
    tok.save_pretrained(saved)
    tok = AutoTokenizer.from_pretrained(saved)
    assert tok.backend_tokenizer.padding is not None  # the trap is in the saved file
    lines = ["a short line", "a somewhat longer line of text " * 12]
    assert encode_texts(tok, lines) == tok(lines, add_special_tokens=False)["input_ids"]
    assert len(encode_texts(tok, lines)[0]) < 10

    data_file = tmp_path / "cls.tsv"
    data_file.write_text("sentence\tlabel\na short line\t1\nanother short one\t0\n", encoding="utf-8")
    (batch,) = build_eval_batches(
        DataConfig(eval=[f"{data_file}:sentence"], seq_len=64),
        tok,
        task="seq-cls",
        micro_batch=2,
        dp_rank=0,
        dp_size=1,
        max_batches=1,
    )
    attended = batch["input_ids"][batch["attention_mask"].bool()]
    assert tok.pad_token_id not in attended.tolist()
    assert batch["input_ids"].shape[1] < 20


def _python_sources() -> list[str]:
    import json
    import textwrap

    files = [*sorted(Path(json.__file__).parent.glob("*.py")), Path(textwrap.__file__)]
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_shakespeare_and_python_source_exactly(tmp_path, model_type):
    """Newlines, indentation, runs of spaces and tabs survive; characters never seen fall back to bytes."""
    from transformers import AutoTokenizer

    shakespeare = list(iter_training_text([str(SHAKESPEARE)], max_sentences=3000))
    python = _python_sources()
    train_sentencepiece(shakespeare + python, tmp_path / "tok", vocab_size=800, model_type=model_type)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.is_fast
    for text in [*shakespeare, *python, "def f(x):\n    return x\t# \u20ac \u6f22\n\n  end  "]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.unk_token_id not in tok("\u6f22\u5b57 \U0001f600", add_special_tokens=False)["input_ids"]
    code = tok.tokenize("if x:\n        y = 1")
    assert any("\n" in piece for piece in code) and any(set(piece) == {"\u2581"} for piece in code), code


def test_a_prompt_encodes_with_bos_and_without_a_trailing_eos(tmp_path):
    from transformers import AutoTokenizer

    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=2000))
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=500, model_type="unigram")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids = tok("First Citizen:")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "First Citizen:"


def test_whitespace_folding_is_an_option(tmp_path):
    from transformers import AutoTokenizer

    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=2000))
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=500, fold_whitespace=True)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.decode(tok("a\n\n   b\tc", add_special_tokens=False)["input_ids"]) == "a b c"


def test_chat_template_is_saved_with_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    texts = list(iter_training_text([str(SHAKESPEARE)], max_sentences=1000))
    train_sentencepiece(texts, tmp_path / "tok", vocab_size=500, chat_template="chatml")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in rendered
    assert len(tok("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1
