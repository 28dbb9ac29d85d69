"""`scaling train --task dpo` refuses bad preference pairs before launch (exit 2, one message, file:line);
`--chat-template llama3` is built in for sft and dpo alike."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

GOOD = {"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}


def _train(tmp_path, records, *extra, task="dpo", suffix=""):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["train", "--model", "tiny-gpt2", "--task", task, "--data", f"{data}{suffix}",
            "--output", str(tmp_path / "run"), "--max-steps", "1", "--precision", "fp32", "--seq-len", "32",
            "--micro-batch", "1", "--vocab-size", "64", "--ds-config", "zero0", "--no-progress", "--no-tensorboard",
            *extra]  # fmt: skip
    return CliRunner().invoke(cli, args), data


def _refused(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"text": "plain text"}, "matches no preference format"),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "empty 'rejected' answer"),
        ({"messages": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}, "unknown role"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "chosen": "a", "rejected": "b"}, "must end with a user turn"),
    ],
    ids=["no-format", "empty-answer", "unknown-role", "no-user-turn-last"],
)  # fmt: skip
def test_bad_pair_is_refused_with_file_and_line(tmp_path, bad, fragment):
    result, data = _train(tmp_path, [GOOD, GOOD, bad, GOOD])
    _refused(result, f"{data}:3", fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_format_name_is_refused(tmp_path):
    result, _ = _train(tmp_path, [GOOD], suffix=":alpaca")
    _refused(result, "--data", "task dpo", "pairs, messages")


def test_template_without_end_token_is_refused_for_dpo_too(tmp_path):
    template = tmp_path / "no_end.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    result, _ = _train(tmp_path, [GOOD] * 4, "--chat-template", str(template))
    _refused(result, "--chat-template", str(template), "no end token")


def test_augmentation_is_refused_for_pairs(tmp_path):
    result, _ = _train(tmp_path, [GOOD] * 4, "--augment", "delete:0.1")
    _refused(result, "--augment", "task dpo")


def test_unknown_template_name_lists_the_built_in_ones(tmp_path):
    result, _ = _train(tmp_path, [GOOD] * 4, "--chat-template", "llama2")
    _refused(result, "--chat-template", "chatml, llama3")


def test_sft_with_the_llama3_template_trains_and_saves_it(tmp_path):
    conversation = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "an answer"}]
    }
    result, _ = _train(tmp_path, [conversation] * 8, "--chat-template", "llama3", "--no-export", task="sft")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer_config.json").read_text())
    template = (
        config.get("chat_template") or (tmp_path / "run" / "tokenizer" / "chat_template.jinja").read_text()
    )
    assert "<|start_header_id|>" in template and "<|eot_id|>" in template
