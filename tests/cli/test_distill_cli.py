"""Bad input to `scaling compress distill`: exit 2, one clear message, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from ranks_distill import make_model

from scaling.cli.main import cli


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, clm_tokenizer):
    return make_model(
        "gpt2", "clm", clm_tokenizer, tmp_path_factory.mktemp("distill-cli") / "teacher", layers=4
    )


@pytest.fixture
def ok_args(tmp_path, teacher, small_corpus):
    return ["--teacher", str(teacher), "--student-layers", "2", "--task", "clm", "--data", str(small_corpus),
            "--output", str(tmp_path / "run"), "--max-steps", "2", "--precision", "fp32"]  # fmt: skip


def run(*args):
    return CliRunner().invoke(cli, ["compress", "distill", *map(str, args)])


def replace(args, flag, value):
    out = list(args)
    out[out.index(flag) + 1] = str(value)
    return out


def assert_usage_error(result, tmp_path, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_teacher_that_is_not_a_model(ok_args, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_usage_error(run(*replace(ok_args, "--teacher", tmp_path / "empty")), tmp_path, "not a model")
    assert_usage_error(run(*replace(ok_args, "--teacher", tmp_path / "nope")), tmp_path, "no such directory")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text('{"model_type": "gpt2"}')
    assert_usage_error(run(*replace(ok_args, "--teacher", config_only)), tmp_path, "no weights")


def test_teacher_trained_for_another_task(ok_args, tmp_path):
    assert_usage_error(
        run(*replace(ok_args, "--task", "seq-cls")), tmp_path, "GPT2LMHeadModel", "--task seq-cls"
    )


def test_student_layers_larger_than_the_teacher(ok_args, tmp_path):
    result = run(*replace(ok_args, "--student-layers", 6))
    assert_usage_error(result, tmp_path, "--student-layers 6 is larger than the teacher, which has 4 layers")
    result = run(*ok_args, "--student-layer-map", "0,9")
    assert_usage_error(result, tmp_path, "do not exist")


@pytest.mark.parametrize("alpha", ["1.5", "-0.2"])
def test_alpha_outside_the_unit_interval(ok_args, tmp_path, alpha):
    assert_usage_error(run(*ok_args, "--alpha", alpha), tmp_path, "--alpha", "must be within [0, 1]")


def test_lora_is_refused_for_distillation(ok_args, tmp_path):
    assert_usage_error(run(*ok_args, "--lora-r", "4"), tmp_path, "distillation trains the whole student")


def test_student_and_student_layers_together(ok_args, tmp_path):
    result = run(*ok_args, "--student", "tiny-gpt2")
    assert_usage_error(result, tmp_path, "exactly one of --student and --student-layers")


def test_vocabulary_mismatch(ok_args, tmp_path, teacher, clm_tokenizer):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(teacher)
    student.resize_token_embeddings(student.config.vocab_size + 40)
    student.save_pretrained(tmp_path / "student")
    i = ok_args.index("--student-layers")
    result = run(*ok_args[:i], *ok_args[i + 2 :], "--student", tmp_path / "student")
    assert_usage_error(result, tmp_path, "vocabulary mismatch", "teacher has 512 tokens", "552")


def test_tokenizer_other_than_the_teachers(ok_args, tmp_path):
    import tiny

    other = tiny.train_tokenizer("gpt2", tiny.corpus(100), vocab_size=300)
    other.save_pretrained(tmp_path / "other-tok")
    result = run(*ok_args, "--tokenizer", tmp_path / "other-tok")
    assert_usage_error(result, tmp_path, "differs from the teacher's tokenizer")


def test_resume_with_another_objective(ok_args, tmp_path, teacher):
    from scaling.compress.distill import DISTILL_CONFIG_FILE, DistillConfig

    (tmp_path / "run").mkdir()
    saved = DistillConfig(teacher=str(teacher), student_layers=2, alpha=0.3)
    (tmp_path / "run" / DISTILL_CONFIG_FILE).write_text(saved.to_json())
    result = run(*ok_args, "--alpha", "0.5", "--resume", "auto")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot resume" in result.output and "alpha (0.3 -> 0.5)" in result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [DISTILL_CONFIG_FILE]


def test_pipeline_layout_is_refused_with_the_reason(ok_args, tmp_path):
    result = run(*ok_args, "--pipeline-stages", "2")
    assert_usage_error(result, tmp_path, "--pipeline-stages", "teacher cannot be evaluated per stage")


def test_attention_loss_with_sequence_parallelism_is_refused_before_anything_is_written(ok_args, tmp_path):
    from scaling.cli.distill import _distill_config, distill
    from scaling.cli.train_options import run_request_from_options
    from scaling.compress.distill import prepare
    from scaling.errors import ConfigError

    argv = [*ok_args, "--attention-loss", "1", "--sequence-parallel", "2"]
    params = distill.make_context("distill", argv).params
    request = run_request_from_options(
        {**params, "model": params["teacher"]}, world_size=2, explicit=frozenset()
    )
    with pytest.raises(ConfigError, match="--attention-loss needs whole attention maps"):
        prepare(request, _distill_config(params))
    assert not (tmp_path / "run").exists()


def test_sequence_parallel_set_in_the_json_is_accepted(ok_args, tmp_path):
    from scaling.cli.distill import _distill_config, distill
    from scaling.cli.train_options import run_request_from_options
    from scaling.compress.distill import prepare
    from scaling.errors import ConfigError

    params = distill.make_context("distill", [*ok_args, "--set", "sequence_parallel_size=2"]).params
    request = run_request_from_options(
        {**params, "model": params["teacher"]}, world_size=2, explicit=frozenset()
    )
    run_config, _ = prepare(request, _distill_config(params))  # distillation runs on Ulysses now
    assert run_config.parallel.sequence_parallel == 2
    params = distill.make_context("distill", [*ok_args, "--pipeline-stages", "2"]).params
    request = run_request_from_options(
        {**params, "model": params["teacher"]}, world_size=2, explicit=frozenset()
    )
    with pytest.raises(ConfigError, match="per stage"):
        prepare(request, _distill_config(params))


def test_missing_teacher(tmp_path, small_corpus):
    result = run(
        "--student-layers", "2", "--data", small_corpus, "--output", tmp_path / "run", "--max-steps", "1"
    )
    assert_usage_error(result, tmp_path, "--teacher is required")


def test_compress_help_lists_distill_without_importing_torch():
    code = (
        "import sys; from click.testing import CliRunner; from scaling.cli.main import cli; "
        "r = CliRunner().invoke(cli, ['compress', '--help']); assert r.exit_code == 0, r.output; "
        "assert 'distill' in r.output; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
