"""Tokenizers: load an HF one, or train a SentencePiece model on the data and wrap it for `AutoTokenizer`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scaling.data.chat import training_text
from scaling.data.config import DataConfig
from scaling.data.pipeline import RECORD_TASKS
from scaling.data.sources import ReadLimits, is_packed_dir, parse_spec
from scaling.data.streams import open_record_stream
from scaling.errors import ConfigError, DataError, Problem
from scaling.files import apply_umask

MODEL_TYPES = ("unigram", "bpe")
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
MASK, CLS, SEP = "<mask>", "<cls>", "<sep>"
_SPECIAL_PIECES = (PAD, UNK, BOS, EOS, MASK, CLS, SEP)
# Enough text for a small vocabulary; bounds training time and memory whatever the corpus size.
DEFAULT_MAX_SENTENCES = 300_000
SPACE = "\u2581"
"""SentencePiece's visible space, the form spaces take inside pieces."""
MIN_BYTE_FALLBACK_VOCAB = 384
"""Below this vocabulary size the 256 byte pieces would crowd out real ones: seen characters are covered instead."""
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def has_tokenizer(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    if not has_tokenizer(path):
        raise DataError(
            f"tokenizer {path}: not a directory with tokenizer files ({', '.join(_TOKENIZER_FILES)})"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer {path}: cannot be loaded: {e}") from e


def iter_training_text(
    specs: Iterable[str],
    *,
    max_sentences: int,
    max_doc_chars: int = 100_000,
    conversations: bool = False,
    limits: ReadLimits | None = None,
) -> Iterator[str]:
    """Text of the sources in file order, one pass, at most max_sentences records: deterministic by design.
    `conversations`: the sources hold chat records (task sft, dpo); their turns' contents are the text."""
    streams = []
    for raw in specs:
        spec = parse_spec(raw)
        if is_packed_dir(spec.path):
            raise DataError(
                f"data source {raw!r}: a preprocessed directory has no text to train a tokenizer on"
            )
        streams.append(
            open_record_stream(
                spec,
                label_column=None,
                max_doc_chars=max_doc_chars,
                dp_rank=0,
                dp_size=1,
                seed=0,
                records=conversations,
                limits=limits,
            )
        )
    for stream in streams:
        stream.shuffle_files = False
    budget = max_sentences
    for stream in streams:
        share = max(1, budget // len(streams))
        for _ in range(share):
            record = stream.next_record(stop_at_epoch_end=True)
            if record is None:
                break
            yield training_text(record.text) if conversations else record.text


def train_sentencepiece(
    texts: Iterable[str],
    output: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    seed: int = 0,
    fold_whitespace: bool = False,
    chat_template: str | None = None,
):
    """Train SentencePiece on `texts` and write an HF fast tokenizer directory at `output`; returns it.

    Single-threaded with a fixed seed, so every rank that calls this on the same data gets the same vocabulary.
    Ids: pad 0, unk 1, bos 2, eos 3, then <mask>, <cls>, <sep> (usable for clm, mlm and seq-cls alike).
    By default text is kept as it is (newlines, runs of spaces, tabs; no Unicode normalisation) and characters
    outside the vocabulary fall back to bytes, so decode(encode(x)) == x; `fold_whitespace` opts into
    SentencePiece's own normalisation (NFKC, whitespace runs folded to one space, a leading space added).
    Encoding a text with special tokens adds <s> only: a prompt never ends in </s>.
    `chat_template` ('chatml' or a Jinja file) is saved with the tokenizer.
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ConfigError([Problem("--model-type", f"must be one of {MODEL_TYPES}", model_type)])
    model = io.BytesIO()
    # A vocabulary too small to hold the 256 byte pieces beside real ones covers every seen character instead.
    byte_fallback = vocab_size >= MIN_BYTE_FALLBACK_VOCAB
    if fold_whitespace:
        lines = (t.replace("\n", " ") for t in texts if t.strip())
        text_options: dict = {"character_coverage": 0.9995 if byte_fallback else 1.0}
    else:
        lines = (t for t in texts if t)
        text_options = {
            "character_coverage": 0.9995 if byte_fallback else 1.0,
            "normalization_rule_name": "identity",
            "remove_extra_whitespaces": False,
            "add_dummy_prefix": False,
            "allow_whitespace_only_pieces": True,
            # Line-per-record corpora never show a newline or a tab; code and chat need them as pieces.
            "required_chars": "\n\t",
        }
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=byte_fallback,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            user_defined_symbols=[MASK, CLS, SEP],
            num_threads=1,
            minloglevel=2,
            max_sentence_length=1 << 20,
            hard_vocab_limit=False,
            **text_options,
        )
    except RuntimeError as e:
        raise DataError(_training_failure(str(e), vocab_size, model_type)) from None
    if model.getbuffer().nbytes == 0:
        raise DataError("tokenizer training read no text: the sources are empty")
    tok = fast_from_sentencepiece(model.getvalue(), fold_whitespace=fold_whitespace)
    if chat_template is not None:
        from scaling.data.chat import prepare_chat_tokenizer

        prepare_chat_tokenizer(tok, chat_template, trained_here=True)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(output))
    return load_tokenizer(output)


def fast_from_sentencepiece(model_proto: bytes, *, fold_whitespace: bool = False):
    """A `PreTrainedTokenizerFast` equal to a SentencePiece model trained by `train_sentencepiece`.

    Built here rather than by transformers' converters: those follow the T5 or Llama conventions (an </s>
    appended to every encoding, a prefix space added and stripped) that a whitespace-exact tokenizer lacks."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    proto: Any = pb.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module
    proto.ParseFromString(model_proto)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == 1:  # UNIGRAM in sentencepiece_model.proto
        model: Any = models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=byte_fallback)
    else:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        normal = {p.piece for p in proto.pieces if p.type == 1}  # NORMAL
        model = models.BPE(
            vocab, _merges(vocab, normal), unk_token=UNK, byte_fallback=byte_fallback, fuse_unk=True
        )
    tok = Tokenizer(model)
    if fold_whitespace:
        tok.normalizer = normalizers.Sequence(
            [
                normalizers.NFKC(),
                normalizers.Replace(Regex(r"\s+"), " "),
                normalizers.Strip(),
                normalizers.Prepend(" "),
                normalizers.Replace(" ", SPACE),
            ]
        )
    else:
        tok.normalizer = normalizers.Replace(" ", SPACE)
    # SentencePiece's own word split in training (a run of spaces starts a word): no piece crosses it, and
    # encoding word by word keeps BPE fast on long documents.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{SPACE}*[^{SPACE}]+|{SPACE}+"), behavior="isolated")
    steps: list[Any] = [decoders.Replace(SPACE, " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if fold_whitespace:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, UNK, BOS, EOS)])
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in (MASK, CLS, SEP)])
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        mask_token=MASK,
        cls_token=CLS,
        sep_token=SEP,
        clean_up_tokenization_spaces=False,
    )


def _merges(vocab: dict[str, int], normal: set[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece BPE vocabulary: every split of a piece into two pieces, ordered
    by the merged piece's rank (SentencePiece's merge order)."""
    found = []
    for piece in normal:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((vocab[piece], vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(found)]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what maps text to ids (vocabulary, merges, normalisation), stable across save/load."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = json.loads(backend.to_str())
        payload.pop("added_tokens", None)
        blob = json.dumps(payload, sort_keys=True) + json.dumps(sorted(tokenizer.get_vocab().items()))
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_tokenizer(
    model_source: str, tokenizer: str | None, data: DataConfig, *, task: str, vocab_size: int, save_dir: Path
):
    """The run's tokenizer: an explicit directory, the model directory's own, or SentencePiece trained on data.train."""
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif has_tokenizer(model_source):
        tok = load_tokenizer(model_source)
    else:
        if not data.train:
            raise ConfigError(
                [Problem("--data", "a tokenizer must be trained for this model but no data is given")]
            )
        save_dir = Path(save_dir)
        # Every rank may call this at once: train into a private dir, then publish it with one atomic rename.
        if not has_tokenizer(save_dir):
            save_dir.parent.mkdir(parents=True, exist_ok=True)
            # Staged beside the target, on the same filesystem, so the rename is atomic.
            staging = Path(tempfile.mkdtemp(prefix=".tok-", dir=save_dir.parent))
            train_sentencepiece(
                iter_training_text(
                    data.train,
                    max_sentences=DEFAULT_MAX_SENTENCES,
                    conversations=task in RECORD_TASKS,
                    limits=ReadLimits.of(data),
                ),
                staging,
                vocab_size=vocab_size,
            )
            apply_umask(staging)
            try:
                os.replace(staging, save_dir)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)  # another rank published the same tokenizer first
        tok = load_tokenizer(save_dir)
    check_tokenizer_for_task(tok, task)
    return tok


def check_tokenizer_for_task(tok, task: str) -> None:
    if task == "mlm" and tok.mask_token_id is None:
        raise ConfigError(
            [Problem("tokenizer", "task mlm needs a tokenizer with a mask token", tok.name_or_path)]
        )
    if tok.eos_token_id is None and tok.sep_token_id is None and task != "seq-cls":
        raise ConfigError(
            [Problem("tokenizer", "packing needs an eos (or sep) token between documents", tok.name_or_path)]
        )


def _training_failure(error: str, vocab_size: int, model_type: str) -> str:
    """SentencePiece's complaint in terms of our options (its advice names its own flags, not ours)."""
    head = f"tokenizer training failed (--vocab-size {vocab_size}, {model_type})"
    chars = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", error)
    if chars:
        needed = int(chars.group(2))
        return (
            f"{head}: the training text has {needed - len(_SPECIAL_PIECES)} distinct characters and every one "
            f"needs a piece of the vocabulary. Binary data or text read in the wrong encoding looks like this "
            f"(check the sources, or name their encoding with --encoding); for real text with that many "
            f"characters, pass --vocab-size {needed} or more, or give a --tokenizer"
        )
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", error)
    if too_high:
        return f"{head}: too little text for that vocabulary: pass --vocab-size {too_high.group(2)} or less, or more --data"
    return f"{head}: {error}"
