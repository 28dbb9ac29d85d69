"""One launch path for every job kind: `scaling launch -- distill` plans the same rank entry as train, the rank
entry (`python -m scaling.rank KIND`) finds its kind behind deepspeed's `--local_rank`, and what the installed
package needs (presets, the rank module) lives inside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from ranks_distill import make_model

from scaling.cli.main import cli
from scaling.launch.job import KINDS, job_kind
from scaling.rank import split_args

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, clm_tokenizer):
    return make_model("gpt2", "clm", clm_tokenizer, tmp_path_factory.mktemp("job") / "teacher", layers=4)


def distill_args(teacher: Path, corpus: Path, out: Path) -> list[str]:
    return ["--teacher", str(teacher), "--student-layers", "2", "--task", "clm", "--data", str(corpus),
            "--output", str(out), "--max-steps", "2", "--precision", "fp32"]  # fmt: skip


def test_launch_dry_run_of_a_distillation_plans_the_rank_entry(tmp_path, teacher, small_corpus):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "launch", "--num-gpus", "2", "--master-port", "29611", "--dry-run", "--init-timeout", "33", "--",
        "distill", *distill_args(teacher, small_corpus, out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "# 1 node(s), 2 rank(s)" in result.output
    assert (
        f"--module scaling.rank distill --resolved-config {out / 'run_config.json'} --init-timeout 33.0"
        in result.output
    )
    assert not out.exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["distill", "--data", "x.txt", "--output", "o"], "--teacher is required"),
        (["distill", "--teacher", "t", "--student-layers", "2", "--alpha", "3", "--data", "x", "--output", "o"],
         "--alpha"),
        (["distill", "--teacher", "t", "--data", "x", "--output", "o", "--hostfile", "h"],
         "--hostfile: is a launch option"),
        (["sft", "--output", "o"], "expected `-- train|distill"),
    ],
)  # fmt: skip
def test_launch_of_a_bad_distillation_exits_2(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["launch", "--num-gpus", "2", "--dry-run", "--", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_rank_entry_finds_the_kind_behind_deepspeeds_local_rank():
    assert split_args(["--local_rank=1", "distill", "--resolved-config", "r.json"]) == (
        "distill",
        ["--resolved-config", "r.json", "--local_rank=1"],
    )
    assert split_args(["train", "--model", "m"]) == ("train", ["--model", "m"])
    assert split_args(["--model", "m"])[0] is None


def test_rank_entry_without_a_kind_exits_2():
    proc = subprocess.run([sys.executable, "-m", "scaling.rank", "--local_rank=0", "--model", "x"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "expected a job kind" in proc.stderr


def test_every_kind_names_its_command_and_resolved_files():
    from scaling.compress.distill import DISTILL_CONFIG_FILE
    from scaling.config.run import RUN_CONFIG_FILE

    for name in KINDS:
        kind = job_kind(name)
        assert kind.name == name and kind.files[0] == RUN_CONFIG_FILE
        assert kind.click_command().name == name
    # the distill kind names the file the distillation objective writes into checkpoints
    assert job_kind("distill").files == (RUN_CONFIG_FILE, DISTILL_CONFIG_FILE)


def test_presets_are_package_data_with_one_copy():
    """The installed package finds presets without a checkout; the checkout's ds_configs/ is the same folder."""
    import scaling
    from scaling.config.deepspeed import PRESET_DIR, list_presets

    package = Path(scaling.__file__).resolve().parent / "ds_configs"
    assert PRESET_DIR.resolve() == package
    assert (REPO / "ds_configs").resolve() == package  # a link, not a second copy that could drift
    assert list_presets() == sorted(p.stem for p in package.glob("*.json")) and "zero3" in list_presets()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"ds_configs/*.json"' in pyproject


def test_product_package_ships_no_test_fixtures():
    import scaling

    root = Path(scaling.__file__).resolve().parent
    for fixture in ("distributed/spawn.py", "compress/tiny.py", "models/gguf.py"):
        assert not (root / fixture).exists(), fixture
    assert not (root / "launch" / "rank_entry.py").exists()


def test_bench_outside_a_checkout_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", "list"])
    assert result.exit_code == 2 and "source checkout" in result.output


# import name -> distribution name, where they differ
_DIST = {
    "yaml": "pyyaml",
    "neural_compressor": "neural-compressor",
    "google": "protobuf",
    "mlflow": "mlflow-skinny",
}
# imported only inside `try: ... except ImportError`, to patch or probe an optional backend
_OPTIONAL = {"torchao", "intel_extension_for_pytorch"}


def test_every_runtime_import_is_declared():
    """A wheel installed from its metadata must have what the package imports (psutil was missing)."""
    import ast
    import re

    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
    declared = {re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower() for spec in specs}
    imported: dict[str, str] = {}
    for path in (REPO / "scaling").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                imported.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    third_party = {
        name: where
        for name, where in imported.items()
        if name not in sys.stdlib_module_names and name not in {"scaling", "__future__"} | _OPTIONAL
    }
    missing = {
        n: w for n, w in third_party.items() if _DIST.get(n, n).replace("_", "-").lower() not in declared
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
