"""A user's mistake is one clear line on stderr and a non-zero exit, never a traceback."""

import pytest

from conftest import bench, bench_inprocess, face_folder


@pytest.mark.parametrize("args, message", [
    (["run", "--data", "does/not/exist"], "data path not found"),
    (["run", "--budget", "58x"], "bad budget '58x'"),
    (["run", "--budget", "-1h"], "bad budget '-1h'"),
    (["run", "--budget", "0ep"], "must be positive"),
    (["run", "--model", "stylegan9"], "unknown model 'stylegan9'"),
    (["run", "--model", "dcgn"], "did you mean 'dcgan'?"),
    (["run", "--set", "lr_gg=1"], "unknown key 'lr_gg'"),
    (["run", "--set", "eval.sample=8"], "did you mean 'eval.samples'?"),
    (["run", "--set", "samples=8"], "did you mean 'eval.samples'?"),
    (["report", "--experiment", "dcgn"], "no MLflow experiment named dcgn"),
    (["run", "--set", "batch_size=big"], "batch_size must be int"),
    (["run", "--spec", "missing.toml"], "spec file not found"),
    (["run", "--resume", "0123456789abcdef"], "no MLflow run"),
    (["run", "--resume", ""], "an empty run id"),
    (["run", "--restart"], "--restart goes with --resume"),
    (["eval", "--real", "synthetic"], "both --real and --fake"),
])
def test_one_line_errors(args, message, capsys):
    code, _, err = bench_inprocess(*args, "--quiet", capsys=capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err


def test_data_errors_empty_nonimage_unreadable_experiment(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe not toml")
    for args, message in [(["run", "--data", str(tmp_path / "empty")], "no images found"),
                          (["run", "--data", str(tmp_path / "texts")], "no images found"),
                          (["run", "--spec", str(tmp_path / "bad.toml")], "spec file")]:
        code, _, err = bench_inprocess(*args, "--quiet", capsys=capsys)
        assert code != 0 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], err


def test_corrupt_jpeg_among_good_ones_is_skipped_and_counted(celeba, tmp_path, capsys, caplog):
    folder = face_folder(celeba, tmp_path / "faces", 20)
    (folder / "000000.jpg").write_bytes(b"\xff\xd8\xff truncated")
    code, out, err = bench_inprocess("data", "prepare", str(folder), "--quiet", capsys=capsys)
    assert code == 0 and '"skipped": 1' in out and '"images": 20' in out
    assert "000000.jpg" in caplog.text and "Traceback" not in err


def test_help_lists_models_and_budget_forms():
    out = bench("run", "--help").stdout  # a real process: the installed entry point works
    assert "dcgan" in out and "58h" in out and "--resume" in out


def test_every_command_has_help_and_every_option_says_what_it_does():
    import click
    from click.testing import CliRunner

    from benchmark.cli import cli

    missing, runner = [], CliRunner()

    def walk(command: click.Command, path: list[str]) -> None:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (path, result.output)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"bench {' '.join(path)} {param.opts[0]}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(cli, [])
    assert not missing, missing


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["study", "--help"]])
def test_version_and_help_import_neither_torch_nor_mlflow(args):
    """They answer in a blink: the model list comes from a catalog without code (python -X importtime)."""
    proc = bench(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "click" in imported and not imported & {"torch", "mlflow", "numpy"}, sorted(imported)[:20]
