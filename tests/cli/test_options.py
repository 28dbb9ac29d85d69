"""The run options are generated from the config sections: every option has help text, every generated
default is its field's default, and a flag means the same default in every command that takes it."""

from __future__ import annotations

import json
from dataclasses import MISSING
from typing import Any

import click
import pytest
from click.testing import CliRunner

from scaling.cli.main import cli
from scaling.config.cli_options import FieldOption, explicit_options
from scaling.config.fields import default_of, flag_of, option_fields
from scaling.config.sections import OptimConfig


def _commands() -> dict[str, click.Command]:
    from scaling.cli.config import config
    from scaling.cli.distill import _build_command
    from scaling.cli.doctor import doctor
    from scaling.cli.estimate import estimate
    from scaling.cli.launch import launch
    from scaling.cli.train import train

    out = {
        "train": train,
        "distill": _build_command(),
        "estimate": estimate,
        "launch": launch,
        "doctor": doctor,
    }
    out.update({f"config {name}": config.commands[name] for name in ("resolve", "validate", "explain")})
    return out


COMMANDS = _commands()


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name: str) -> None:
    missing = [p.opts[0] for p in _options(COMMANDS[name]) if not (p.help or "").strip()]
    assert not missing, f"`scaling {name}` options without help: {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_generated_defaults_are_the_field_defaults(name: str) -> None:
    generated = [p for p in _options(COMMANDS[name]) if isinstance(p, FieldOption)]
    assert generated
    for opt in generated:
        field = next(f for f in option_fields(opt.section) if f.name == opt.field_name)
        default = default_of(field)
        expected = None if default is MISSING else _normal(default)
        assert _normal(opt.default) == expected, (name, opt.opts, opt.default, expected)


def test_the_run_options_are_generated_and_every_option_field_is_offered() -> None:
    from scaling.compress.distill import DistillConfig
    from scaling.config.sections import (
        CheckpointConfig,
        DeepSpeedSource,
        DpoConfig,
        LogConfig,
        ModelConfig,
        ParallelConfig,
    )
    from scaling.data.config import DataConfig
    from scaling.launch.command import LaunchSpec

    offered: set[tuple[type, str]] = set()
    for command in COMMANDS.values():
        offered |= {(p.section, p.field_name) for p in _options(command) if isinstance(p, FieldOption)}
    sections = (
        ModelConfig,
        OptimConfig,
        CheckpointConfig,
        LogConfig,
        ParallelConfig,
        DeepSpeedSource,
        DpoConfig,
    )
    for section in (*sections, DataConfig, DistillConfig, LaunchSpec):
        for field in option_fields(section):
            assert (section, field.name) in offered, (section.__name__, field.name)
    # No hand-written option repeats a section field's flag (it would be a second default and help text).
    field_flags = {flag_of(f) for section in (*sections, DataConfig, DistillConfig, LaunchSpec)
                   for f in option_fields(section)}  # fmt: skip
    # doctor's --output names the run directory to probe, by default the one of the job after `--`.
    own_meaning = {("doctor", "--output")}
    for name, command in COMMANDS.items():
        hand_written = {flag for p in _options(command) if not isinstance(p, FieldOption) for flag in p.opts}
        hand_written -= {flag for command_name, flag in own_meaning if command_name == name}
        assert not hand_written & field_flags, (name, sorted(hand_written & field_flags))


def test_a_flag_has_one_default_across_commands() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for name, command in COMMANDS.items():
        for opt in _options(command):
            for flag in opt.opts:
                if flag in seen:
                    assert seen[flag][1] == _normal(opt.default), (flag, seen[flag], (name, opt.default))
                else:
                    seen[flag] = (name, _normal(opt.default))
    assert {"--micro-batch", "--seq-len", "--gpus-per-node", "--model", "--set"} <= set(seen)


def test_estimate_takes_trains_micro_batch_by_default(tmp_path) -> None:
    model = tmp_path / "model.json"
    model.write_text(
        json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 64})
    )
    result = CliRunner().invoke(cli, ["estimate", "--model", str(model), "--json"])
    assert result.exit_code == 0, result.output
    layout = json.loads(result.output)["layout"]
    assert layout["micro_batch"] == OptimConfig().micro_batch == 8


def test_explicit_means_typed_or_from_the_environment() -> None:
    @click.command()
    @click.option("--a", default=1)
    @click.option("--b", default=2, envvar="SCALING_TEST_B")
    @click.option("--c", default=3)
    @click.pass_context
    def show(ctx: click.Context, **params: Any) -> None:
        click.echo(",".join(sorted(explicit_options(ctx))))

    result = CliRunner().invoke(show, ["--a", "1"], env={"SCALING_TEST_B": "5"})
    assert result.output.strip() == "a,b"


def test_run_values_default_to_the_sections() -> None:
    from scaling.config.deepspeed import RunValues
    from scaling.config.run import run_values
    from scaling.config.sections import ParallelConfig

    built = run_values(
        OptimConfig(), ParallelConfig(), world_size=1, explicit=frozenset(), total_steps=RunValues.total_steps
    )
    assert built == RunValues(cpu_only=None)


def test_a_negative_flag_is_a_plain_switch() -> None:
    flags = {flag for p in _options(COMMANDS["launch"]) for flag in (*p.opts, *p.secondary_opts)}
    assert "--no-ssh" in flags and "--no-no-ssh" not in flags
