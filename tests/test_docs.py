"""Every command README.md and docs/USAGE.md show is run, as written but small: budgets cut to 32 images,
trials to 2, seeds to 1, N to 16, each family narrowed to the doctor's tiny settings; /data/celeba is the CelebA
sample, RUN_ID a run of the right kind (a killed one for --resume), NAME the experiment a compare made. A line
marked "a GPU's job" is only resolved (its spec shown); `bench doctor`, `calibrate`, `ui` and `server` are run by
their own tests (minutes each, or servers to stop). TEAM.md's lines parse against the real CLI."""

import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest

from benchmark import checkpoint
from benchmark.cli import cli
from benchmark.doctor import TINY as FAMILY
from conftest import bench, bench_inprocess, store_client

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/USAGE.md", "docs/TEAM.md"]
GPU = "a GPU's job"
# their own tests run these (minutes each; servers that a test must stop)
RUN_BY = {"doctor": "test_doctor.py", "calibrate": "test_calibrate.py", "ui": "test_analysis.py",
          "server": "test_team.py"}
SMALL = {"--budget": "32img", "--trial-budget": "32img", "--trials": "2", "--samples": "16",
         "--sampler-steps": "1,2"}
SCORED = ["eval.samples=16", "eval.real_samples=16", "eval.points=1"]


def commands(doc: str, marked: bool = False) -> list:
    """The bench calls in a Markdown file's indented shell lines (continuations joined; comments, redirects and
    the setup before `&&` dropped); with marked, (command, whether its comment says it is a GPU's job)."""
    out, current = [], ""
    for line in (ROOT / doc).read_text().splitlines():
        if not line.startswith("    ") and not current:
            continue
        text = current + " " + line.strip() if current else line.strip()
        if text.endswith("\\"):
            current = text[:-1].strip()
            continue
        current = ""
        code, _, comment = text.partition("  #")
        code = re.split(r" (?:>|\|) ", code)[0]  # a redirect or pipe is the shell's, not ours
        for part in code.split("&&"):
            part = part.strip().removeprefix(".venv/bin/")
            if part.startswith("bench "):
                out.append((part, GPU in comment) if marked else part)
    return out


def test_the_docs_show_the_commands_people_use():
    seen = {doc: commands(doc) for doc in DOCS}
    assert "bench run --model dcgan --budget 2m" in seen["README.md"]
    assert len(seen["docs/USAGE.md"]) >= 25 and all(seen.values())
    marked = [c for doc in DOCS[:2] for c, gpu in commands(doc, marked=True) if gpu]
    assert marked and all("58h" in c or "--nproc" in c for c in marked), marked  # only what a CPU cannot do


def family_of(typed: str) -> str:
    if typed.endswith(".toml"):
        typed = tomllib.loads((ROOT / typed).read_text()).get("model", Path(typed).stem.split("-")[-1])
    return "ldm" if typed == "diffusion" else typed


def small(args: list[str]) -> list[str]:
    """The command as written, at the scale a test affords."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in SMALL and i + 1 < len(args):
            out += [arg, SMALL[arg]]
            i += 2
            continue
        if arg == "--seeds" and args[i + 1].isdigit():
            out += [arg, "1"]
            i += 2
            continue
        out.append(re.sub(r"^eval\.samples=\d+$", "eval.samples=16", arg))
        i += 1
    verb = out[0]
    if verb == "run" and "--resume" not in out:
        typed = out[out.index("--model") + 1] if "--model" in out else out[out.index("--spec") + 1]
        scored = any(a.startswith("eval.samples=") for a in out)
        out += FAMILY[family_of(typed)] + [x for k in (SCORED if scored else ["eval.samples=0"]) for x in ("--set", k)]
        if "--budget" not in out:  # a spec file's own budget
            out += ["--budget", "32img"]
    elif verb == "study":
        out += FAMILY[family_of(out[out.index("--model") + 1])] + [x for k in SCORED for x in ("--set", k)]
        if "--trials" not in out:
            out += ["--trials", "2"]
    elif verb == "compare" and "--print-commands" not in out:
        for typed in out[out.index("--models") + 1].split(","):
            out += [x for item in FAMILY[family_of(typed)][1::2] for x in ("--set", f"{typed}:{item}")]
        out += [x for k in SCORED for x in ("--set", k)]
    return [*out, "--quiet"] if verb in ("run", "study", "compare", "eval", "sample") else out


class World:
    """The runs the docs' placeholders stand for, made as the lines need them."""

    def __init__(self, celeba: Path, capsys):
        self.celeba, self.capsys = celeba, capsys
        self.client = store_client()

    def run(self, *args: str) -> str:
        code, out, err = bench_inprocess("run", *args, "--quiet", capsys=self.capsys)
        assert code == 0, err[-2000:]
        return self.latest()

    def latest(self) -> str:
        runs = self.client.search_runs([e.experiment_id for e in self.client.search_experiments()],
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id

    def finished(self, family: str, made: dict) -> str:
        """A finished, scored run of family: trained once, then the same one for every line that needs it."""
        if family not in made:
            made[family] = self.run("--model", family, "--budget", "32img", *FAMILY[family], "--set",
                                    "synthetic_images=256", "--set", "eval.samples=16", "--set",
                                    "eval.real_samples=16", "--set", "eval.points=1", "--experiment-name", "docs-runs")
        return made[family]

    def killed(self, with_checkpoint: bool) -> str:
        """A run SIGKILLed and left RUNNING: once it holds a checkpoint, or before its first one."""
        # with a checkpoint after every step; without, one eval point (at the end) and no timed checkpoint
        every, points, budget = ("0", "4", "256img") if with_checkpoint else ("1000", "1", "1024img")
        proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", "--model", "dcgan", *FAMILY["dcgan"],
                                 "--budget", budget, "--set", "eval.samples=0", "--set", "synthetic_images=256",
                                 "--set", f"checkpoint_minutes={every}", "--set", f"eval.points={points}",
                                 "--experiment-name", "docs-killed", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline, run_id = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            exp = self.client.get_experiment_by_name("docs-killed")
            runs = self.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
            mine = [r for r in runs if not r.data.tags.get("docs.used")]
            folder = Path(mine[0].info.artifact_uri.replace("file://", "")) if mine else None
            if folder and (folder / "spec.toml").exists():  # started by bench run: its spec is logged
                last = folder / "checkpoints" / "last.pt"
                if _holds(last) if with_checkpoint else not last.exists():
                    run_id = mine[0].info.run_id
                    break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert run_id and last.exists() == with_checkpoint, proc.stderr.read()[-2000:]
        self.client.set_tag(run_id, "docs.used", "1")
        return run_id


def _holds(path: Path) -> bool:
    try:
        return checkpoint.load(path)["meter"]["images_seen"] > 0
    except Exception:  # noqa: BLE001 - not written yet, or caught mid-rename
        return False


def concrete(command: str, world: World, made: dict) -> list[str]:
    """The placeholders filled: the data, a run of the kind the line needs, the experiment a compare made."""
    text = command.replace("my-dcgan.toml", "experiments/smoke-dcgan.toml")
    text = text.replace("experiments/", f"{ROOT}/experiments/")  # the repo's spec files, from the test's folder
    if "NAME" in text or "compare-20261201-0930" in text:
        text = re.sub(r"NAME|compare-20261201-0930", made["compare"], text)
    if "RUN_ID" in text:
        if "--restart" in text:
            run_id = world.killed(with_checkpoint=False)
        elif "--resume" in text:
            run_id = world.killed(with_checkpoint=True)
        else:
            run_id = world.finished("ddpm" if "--sampler-steps" in text else "dcgan", made)
        text = text.replace("RUN_ID", run_id)
    data = ("/data/celeba", "../shared/data/celeba-sample")
    return [str(world.celeba) if arg in data else arg for arg in shlex.split(text)[1:]]


@pytest.mark.parametrize("doc", DOCS[:2])
def test_every_command_in_the_readme_and_usage_runs(doc, celeba, capsys):
    world, made = World(celeba, capsys), {}
    for command, gpu in commands(doc, marked=True):
        written = concrete(command, world, made)
        args, verb = small(written), written[0]
        if gpu:  # resolved only: a CPU cannot run it as written, and a tiny version of it is what the rest runs
            code, out, err = bench_inprocess(*written, "--show-spec", capsys=capsys)
            assert code == 0 and out.startswith("| key |"), (command, err[-800:])
        elif verb in RUN_BY:
            assert f'"{verb}"' in (ROOT / "tests" / RUN_BY[verb]).read_text(), (command, RUN_BY[verb])
        elif args == ["--version"]:
            assert re.match(r"bench, version \d", bench("--version").stdout), command
        else:
            if verb == "eval" and "--fake" in args and "fake" not in made:
                # the folder of images a user would have drawn
                code, _, err = bench_inprocess("sample", world.finished("dcgan", made), "--n", "16", "--out",
                                               args[args.index("--fake") + 1], "--quiet", capsys=capsys)
                assert code == 0, err[-800:]
                made["fake"] = True
            if verb == "eval" and "--fake" in args and "--samples" not in args:
                args += ["--samples", "16"]
            before = {e.name for e in world.client.search_experiments()}
            code, out, err = bench_inprocess(*args, capsys=capsys)
            assert code == 0, (command, args, err[-1500:])
            if verb == "compare" and "--print-commands" not in args:  # its runs' experiment (its report has one too)
                (made["compare"],) = {e.name for e in world.client.search_experiments()} - before - {"reports"}


def test_every_command_in_team_md_parses():
    for command in commands("docs/TEAM.md"):
        args = shlex.split(command)[1:]
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
            pytest.fail(f"TEAM.md: `{command}`: {err.format_message()}")
