"""`scaling train --task sft` refuses bad conversations and templates before launch: exit 2, one message."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scaling.cli.main import cli

GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _train(tmp_path, records, *extra):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["train", "--model", "tiny-gpt2", "--task", "sft", "--data", str(data), "--output", str(tmp_path / "run"),
            "--max-steps", "1", "--precision", "fp32", "--seq-len", "16", "--micro-batch", "1", "--vocab-size", "64",
            "--no-progress", *extra]  # fmt: skip
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
        ({"text": "plain text"}, "matches no conversation format"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}, "unknown role"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "empty assistant",
        ),
    ],
    ids=["no-format", "no-assistant", "unknown-role", "empty-answer"],
)
def test_bad_conversation_is_refused_with_file_and_line(tmp_path, bad, fragment):
    result, data = _train(tmp_path, [GOOD, GOOD, bad, GOOD])
    _refused(result, f"{data}:3", fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_wrong_named_format_is_refused(tmp_path):
    result, data = _train(tmp_path, [GOOD])
    result = CliRunner().invoke(
        cli,
        ["train", "--model", "tiny-gpt2", "--task", "sft", "--data", f"{data}:sharegpt",
         "--output", str(tmp_path / "run2"), "--max-steps", "1"],
    )  # fmt: skip
    _refused(result, f"{data}:1", "'conversations'")


def test_unknown_format_name_is_refused(tmp_path):
    result, data = _train(tmp_path, [GOOD])
    result = CliRunner().invoke(
        cli,
        ["train", "--model", "tiny-gpt2", "--task", "sft", "--data", f"{data}:openai",
         "--output", str(tmp_path / "run2"), "--max-steps", "1"],
    )  # fmt: skip
    _refused(result, "--data", "messages, alpaca, sharegpt")


def test_template_without_end_token_names_template_and_exits_2(tmp_path):
    template = tmp_path / "no_end.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    result, _ = _train(tmp_path, [GOOD] * 4, "--chat-template", str(template))
    _refused(result, "--chat-template", str(template), "no end token")


def test_missing_template_file_is_refused(tmp_path):
    result, _ = _train(tmp_path, [GOOD] * 4, "--chat-template", str(tmp_path / "none.jinja"))
    _refused(
        result, "--chat-template", "neither a built-in template (chatml, llama3) nor a readable Jinja file"
    )


def test_augmentation_is_refused_for_chat_records(tmp_path):
    result, _ = _train(tmp_path, [GOOD] * 4, "--augment", "delete:0.1")
    _refused(result, "--augment", "task sft")
