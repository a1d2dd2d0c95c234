"""Every command the docs show works as written: `bench run` lines resolve their spec (--show-spec: the model,
spec file, budget and every --set key), `bench compare` lines plan their runs (--print-commands), every other
line parses against the real CLI (command, options, their types and choices), and `bench --version` runs.
Placeholders (RUN_ID, NAME, /data/celeba) stand for a run id, an experiment and the CelebA sample."""

import re
import shlex
from pathlib import Path

import click
import pytest

from benchmark.cli import cli
from conftest import bench, bench_inprocess

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/USAGE.md", "docs/TEAM.md"]


def commands(doc: str) -> list[str]:
    """The bench calls in a Markdown file's indented shell lines (continuations joined; comments, redirects and
    the setup before `&&` dropped)."""
    out, current = [], ""
    for line in (ROOT / doc).read_text().splitlines():
        if not line.startswith("    ") and not current:
            continue
        text = current + " " + line.strip() if current else line.strip()
        if text.endswith("\\"):
            current = text[:-1].strip()
            continue
        current = ""
        code = re.split(r" (?:>|\|) ", text.split("  #")[0])[0]  # a redirect or pipe is the shell's, not ours
        for part in code.split("&&"):
            part = part.strip().removeprefix(".venv/bin/")
            if part.startswith("bench "):
                out.append(part)
    return out


def concrete(command: str, celeba: Path) -> list[str]:
    text = command.replace("/data/celeba", str(celeba)).replace("../shared/data/celeba-sample", str(celeba))
    text = text.replace("RUN_ID", "0" * 32).replace("my-dcgan.toml", "experiments/smoke-dcgan.toml")
    return shlex.split(text)[1:]


def test_the_docs_show_the_commands_people_use():
    seen = {doc: commands(doc) for doc in DOCS}
    assert "bench run --model dcgan --budget 2m" in seen["README.md"]
    assert len(seen["docs/USAGE.md"]) >= 25 and all(seen.values())


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_in_the_docs_works_as_written(doc, celeba, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    checked = []
    for command in commands(doc):
        args = concrete(command, celeba)
        if args[0] == "run" and "--resume" not in args:
            code, out, err = bench_inprocess(*args, "--show-spec", capsys=capsys)
            assert code == 0 and out.startswith("| key |"), (command, err[-800:])
        elif args[0] == "compare":
            code, out, err = bench_inprocess(*[a for a in args if a != "--print-commands"], "--print-commands",
                                             capsys=capsys)
            planned = [line for line in out.splitlines() if line.startswith("bench run ")]
            assert code == 0 and planned, (command, err[-800:])
        elif args == ["--version"]:
            assert re.match(r"bench, version \d", bench("--version").stdout), command
        else:
            try:
                ctx = click.Context(cli, info_name="bench")
                name, sub, rest = cli.resolve_command(ctx, list(args))
                while isinstance(sub, click.Group):
                    ctx = click.Context(sub, info_name=name, parent=ctx)
                    name, sub, rest = sub.resolve_command(ctx, rest)
                sub.make_context(name, rest, parent=ctx)
            except click.exceptions.Exit:
                pass
            except click.ClickException as err:
                pytest.fail(f"{doc}: `{command}`: {err.format_message()}")
        checked.append(command)
    assert checked == commands(doc)
