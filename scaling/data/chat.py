"""Chat SFT data: conversation records, the chat template, and assistant-only labels.

A record (a JSONL line, a Parquet row or an HF example, read whole) is one conversation in one of three
formats, detected from its keys or named with `--data PATH:FORMAT`:

- messages: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}` (OpenAI style);
- alpaca: `{"instruction": ..., "input": ..., "output": ...}` (`input` optional);
- sharegpt: `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}`.

The conversation is rendered with the tokenizer's chat template; the text of each assistant turn (from
where the template's generation prompt ends to where the turn ends, end token included) is a training
target, everything else is masked with -100 unless `--train-on-prompt`. The pieces are tokenized apart, so
a label boundary never falls inside a token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.errors import ConfigError, DataError, Problem

FORMATS = ("messages", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
IGNORE = -100
CHATML = "chatml"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = "llama3"
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# Meta's Llama 3 instruct template (without tools), its special tokens written out rather than taken from
# the tokenizer's bos_token, so the format is the same whatever tokenizer it is given to.
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
BUILT_IN_TEMPLATES = {CHATML: (CHATML_TEMPLATE, CHATML_TOKENS), LLAMA3: (LLAMA3_TEMPLATE, LLAMA3_TOKENS)}
"""--chat-template NAME -> (Jinja template, the special tokens it writes)."""
# A probe conversation to find what the template writes after an assistant's answer.
_PROBE_ANSWER = "Probe answer 42."
_PROBE = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": _PROBE_ANSWER}]

Message = dict[str, str]


class RecordError(ValueError):
    """A record that is not a usable conversation; the caller adds where it is."""


def detect_format(obj: dict) -> str | None:
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    return value


def to_messages(obj: object, fmt: str | None) -> list[Message]:
    """The conversation of one record as role/content messages, checked; RecordError says what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"a conversation record must be a JSON object, got {type(obj).__name__}")
    # Tables (Parquet, HF datasets) hold one schema for all rows: another format's columns are null there.
    obj = {key: value for key, value in obj.items() if value is not None}
    found = fmt or detect_format(obj)
    if found is None:
        raise RecordError(
            f"matches no conversation format (keys {sorted(obj)[:8]}; expected messages, "
            "instruction/output (alpaca) or conversations (sharegpt))"
        )
    if found == "alpaca":
        if "instruction" not in obj or "output" not in obj:
            raise RecordError("alpaca record needs 'instruction' and 'output'")
        prompt = _text(obj["instruction"], "instruction")
        extra = obj.get("input") or ""
        if _text(extra, "input").strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(obj["output"], "output")},
        ]
    else:
        key, role_key, content_key = (
            ("messages", "role", "content") if found == "messages" else ("conversations", "from", "value")
        )
        turns = obj.get(key)
        if not isinstance(turns, list) or not turns:
            raise RecordError(f"{found} record needs a non-empty list '{key}'")
        messages = []
        for n, turn in enumerate(turns):
            if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
                raise RecordError(f"turn {n} needs '{role_key}' and '{content_key}'")
            role = turn[role_key]
            role = SHAREGPT_ROLES.get(role, role) if found == "sharegpt" else role
            if role not in ROLES:
                known = ROLES if found == "messages" else tuple(SHAREGPT_ROLES)
                raise RecordError(f"turn {n}: unknown role {turn[role_key]!r} (known: {', '.join(known)})")
            messages.append({"role": role, "content": _text(turn[content_key], f"turn {n} {content_key}")})
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("no assistant turn: nothing to train on")
    for n, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise RecordError(f"turn {n}: empty assistant answer")
    return messages


def parse_record(text: str, fmt: str | None) -> list[Message]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise RecordError(f"not valid JSON ({e})") from None
    return to_messages(obj, fmt)


def check_format_name(raw_spec: str, field: str | None, task: str = "sft") -> str | None:
    """The format a `--data PATH:FORMAT` names (None: detect per record)."""
    if field is None:
        return None
    formats = record_formats(task)
    if field not in formats:
        raise ConfigError(
            [
                Problem(
                    "--data",
                    f"task {task}: the format after ':' must be one of {', '.join(formats)}",
                    raw_spec,
                )
            ]
        )
    return field


def record_formats(task: str) -> tuple[str, ...]:
    """The record formats of a task that reads whole records (sft: conversations, dpo: preference pairs)."""
    if task == "dpo":
        from scaling.data import preference

        return preference.FORMATS
    return FORMATS


def record_conversations(text: str, fmt: str | None, task: str) -> list[list[Message]]:
    """The conversations a record holds: one (sft), or the prompt with each answer (dpo)."""
    if task == "dpo":
        from scaling.data.preference import parse_pair

        return parse_pair(text, fmt).conversations()
    return [parse_record(text, fmt)]


def training_text(text: str) -> str:
    """The contents of a conversation or preference record, for training a tokenizer ('' for a record that is
    neither)."""
    try:
        return "\n".join(m["content"] for m in parse_record(text, None))
    except RecordError:
        from scaling.data.preference import training_text as pair_text

        return pair_text(text)


# -- templates ------------------------------------------------------------------------------------------


def prepare_chat_tokenizer(tokenizer, choice: str | None, *, trained_here: bool) -> str:
    """Give the tokenizer its chat template; returns the template's name for messages.

    An explicit `--chat-template` wins (a built-in one gets its special tokens added to the vocabulary); else
    the tokenizer's own; else, for a tokenizer trained here, ChatML with its special tokens added."""
    if choice is not None:
        if choice in BUILT_IN_TEMPLATES:
            _use_built_in(tokenizer, choice)
            return choice
        path = Path(choice)
        if not path.is_file():
            raise ConfigError(
                [
                    Problem(
                        "--chat-template",
                        f"neither a built-in template ({', '.join(BUILT_IN_TEMPLATES)}) nor a readable Jinja file",
                        choice,
                    )
                ]
            )
        tokenizer.chat_template = path.read_text(encoding="utf-8")
        return str(path)
    if getattr(tokenizer, "chat_template", None):
        return f"the chat_template of tokenizer {tokenizer.name_or_path}"
    if trained_here:
        _use_built_in(tokenizer, CHATML)
        return CHATML
    raise ConfigError(
        [
            Problem(
                "--chat-template",
                f"tokenizer {tokenizer.name_or_path} has no chat_template",
                fix=f"give --chat-template {'|'.join(BUILT_IN_TEMPLATES)} or a Jinja file",
            )
        ]
    )


def _use_built_in(tokenizer, name: str) -> None:
    template, tokens = BUILT_IN_TEMPLATES[name]
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        # As added special tokens, each is one id that is never split, and decoding can skip it.
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = template


def render(tokenizer, messages: list[Message], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def split_turns(tokenizer, messages: list[Message]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces, in order; their concatenation is the whole."""
    full = render(tokenizer, messages)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (
            full.startswith(prompt)
            and full.startswith(upto)
            and len(prompt) >= pos
            and upto.startswith(prompt)
        ):
            raise RecordError(
                "the chat template does not render a conversation as its turns in order (a prefix of the "
                "conversation is not a prefix of its text), so the assistant turns cannot be located"
            )
        if len(prompt) > pos:
            pieces.append((full[pos : len(prompt)], False))
        pieces.append((full[len(prompt) : len(upto)], True))
        pos = len(upto)
    if pos < len(full):
        pieces.append((full[pos:], False))
    return pieces


@dataclass(frozen=True)
class EndToken:
    """The token a template writes after every assistant answer: what teaches the model to stop."""

    text: str
    id: int


def end_token(tokenizer, template_name: str) -> EndToken:
    """The template's end token, checked to be one token of the vocabulary; ConfigError naming both if not."""
    from scaling.data.pipeline import encode_texts

    try:
        answer = next(text for text, target in split_turns(tokenizer, _PROBE) if target)
    except Exception as e:  # a Jinja template may fail in any way on the probe
        raise ConfigError(
            [Problem("--chat-template", f"cannot render a conversation: {e}", template_name)]
        ) from None
    suffix = answer[answer.rfind(_PROBE_ANSWER) + len(_PROBE_ANSWER) :].lstrip()
    if not suffix:
        raise ConfigError(
            [
                Problem(
                    "--chat-template",
                    "writes no end token after an assistant turn: a model trained on it never stops",
                    template_name,
                )
            ]
        )
    special = sorted(
        (t for t in tokenizer.get_vocab() if t and suffix.startswith(t) and t in _special_tokens(tokenizer)),
        key=len,
        reverse=True,
    )
    text = special[0] if special else suffix.split()[0]
    ids = encode_texts(tokenizer, [text])[0]
    # GPT-2-style tokenizers name one token for EOS and UNK alike: that token is known, not an unknown one.
    if len(ids) != 1 or (ids[0] == tokenizer.unk_token_id and text != tokenizer.unk_token):
        raise ConfigError(
            [
                Problem(
                    "--chat-template",
                    f"its end token {text!r} is not a token of the vocabulary (it encodes as {len(ids)} pieces)",
                    template_name,
                )
            ]
        )
    return EndToken(text, ids[0])


def _special_tokens(tokenizer) -> set[str]:
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(getattr(tokenizer, "get_added_vocab", dict)())
    return tokens


# -- tokenization ---------------------------------------------------------------------------------------


def encode_conversations(
    tokenizer, conversations: list[list[Message]], *, train_on_prompt: bool
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per conversation: labels are the ids on assistant pieces, -100 elsewhere."""
    from scaling.data.pipeline import encode_texts

    split = [split_turns(tokenizer, messages) for messages in conversations]
    flat = encode_texts(tokenizer, [text for pieces in split for text, _ in pieces])
    out: list[tuple[list[int], list[int]]] = []
    k = 0
    for pieces in split:
        ids: list[int] = []
        labels: list[int] = []
        for _, target in pieces:
            piece = flat[k]
            k += 1
            ids.extend(piece)
            labels.extend(piece if target or train_on_prompt else [IGNORE] * len(piece))
        out.append((ids, labels))
    return out


def check_end_targets(
    tokenizer, conversation: list[Message], end: EndToken, template_name: str, where: str
) -> None:
    """Every assistant turn must end in the template's end token as a target (else the model never stops)."""
    from scaling.data.pipeline import encode_texts

    answers = [text for text, target in split_turns(tokenizer, conversation) if target]
    for n, ids in enumerate(encode_texts(tokenizer, answers)):
        if end.id not in ids:
            raise DataError(
                f"{where}: assistant turn {n + 1} does not end with the end token {end.text!r} of chat template "
                f"{template_name} (a model trained on it never stops)"
            )


def iter_file_records(path: str) -> Iterator[tuple[int, str]]:
    """(line or row number from 1, record as JSON text) of a JSONL or Parquet file."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, json.dumps(row)
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def check_sources(specs: list[str], tokenizer, template_name: str, task: str = "sft") -> int:
    """Read every record (sft: conversation, dpo: preference pair) of the local sources before launch;
    DataError at the first bad one, with its file and line. Returns the number of records checked (HF
    datasets are checked when read)."""
    from scaling.data.sources import expand_files, parse_spec

    end = end_token(tokenizer, template_name)
    checked = 0
    for raw in specs:
        spec = parse_spec(raw)
        fmt = check_format_name(raw, spec.field, task)
        if spec.hf:
            continue
        for path in expand_files(spec):
            if not path.lower().endswith((".jsonl", ".json", ".ndjson", ".parquet")):
                raise DataError(
                    f"data source {raw!r}: task {task} reads JSONL or Parquet records, not {path}"
                )
            for n, text in iter_file_records(path):
                where = f"{path} row {n}" if path.lower().endswith(".parquet") else f"{path}:{n}"
                try:
                    conversations = record_conversations(text, fmt, task)
                except RecordError as e:
                    raise DataError(f"{where}: {e}") from None
                for messages in conversations:
                    check_end_targets(tokenizer, messages, end, template_name, where)
                checked += 1
    return checked
