import pytest

from benchmark.errors import UserError
from benchmark.models.dcgan import DEFAULTS
from benchmark.spec import build_spec, load_toml
from conftest import ROOT


def test_seed_dcgan_experiment_is_the_report_as_written():
    spec = build_spec("dcgan", DEFAULTS, load_toml(ROOT / "experiments" / "seed-dcgan.toml"))
    assert (spec.lr_g, spec.lr_d, spec.beta1, spec.beta2) == (1e-4, 1e-4, 0.5, 0.9999)
    assert (spec.batch_size, spec.z_dim, spec.budget) == (128, 100, "50ep")


def test_overrides_win_and_are_typed():
    spec = build_spec("dcgan", DEFAULTS, {"budget": "1h"}, ["lr_g=2e-4", "eval.samples=10", "channels_last=false"],
                      {"budget": "2ep"})
    assert spec.lr_g == 2e-4 and spec.eval["samples"] == 10 and spec.channels_last is False
    assert spec.budget == "2ep"
    assert "lr_g = 0.0002" in spec.to_toml()


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown key 'nope'"), ("eval.nope=1", "unknown key 'eval.nope'"),
    ("lr_g=fast", "lr_g must be float"), ("batch_size=1.5", "batch_size must be int"),
    ("precision=fp8", "precision must be one of"), ("lr_g", "key=value"), ("budget=58x", "bad budget"),
])
def test_bad_overrides_are_user_errors(override, message):
    with pytest.raises(UserError, match=message):
        build_spec("dcgan", DEFAULTS, {}, [override])


def test_unreadable_experiment_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("budget = [unclosed")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml(bad)


@pytest.mark.parametrize("override", ["seed=1", "lr_g=2e-4", "beta2=0.999", "batch_size=64", "budget=3m",
                                      "data=/elsewhere", "eval.samples=500", "eval.bn=batch", "ngf=32"])
def test_hash_changes_with_any_field(override):
    base = build_spec("dcgan", DEFAULTS)
    assert base.hash() == build_spec("dcgan", DEFAULTS).hash()
    assert build_spec("dcgan", DEFAULTS, overrides=[override]).hash() != base.hash()


def test_show_spec_lists_every_key_with_a_meaning_and_the_usage_doc_holds_its_tables(capsys):
    from benchmark.models import FAMILIES, key_help
    from benchmark.spec import COMMON, EVAL, spec_table
    from conftest import bench_inprocess

    usage = (ROOT / "docs" / "USAGE.md").read_text()
    for name, (_, defaults, _) in FAMILIES.items():
        table = spec_table(name, defaults, key_help(name))
        rows = [line for line in table.splitlines()[2:]]
        assert len(rows) == len({**COMMON, **defaults}) + len(EVAL)
        assert all(not row.endswith("|  |") for row in rows), [r for r in rows if r.endswith("|  |")]  # a meaning each
        assert table in usage, f"docs/USAGE.md's {name} table is stale: paste `bench run --model {name} --show-spec`"
        code, out, err = bench_inprocess("run", "--model", name, "--show-spec", capsys=capsys)
        assert code == 0 and out.strip() == table, err
    # the value the rest of the command line gives a key is shown beside its default
    code, out, _ = bench_inprocess("run", "--model", "dcgan", "--show-spec", "--set", "lr_g=2e-4", "--budget", "5m",
                                   capsys=capsys)
    assert "| this command line |" in out.splitlines()[0]
    assert "| `lr_g` | `0.0001` | float | Adam learning rate of G | `0.0002` |" in out and "| `\"5m\"` |" in out
    # the alias brings its spec file: the seed report's ldm settings show as what this command line gives
    code, out, _ = bench_inprocess("run", "--model", "diffusion", "--show-spec", capsys=capsys)
    assert "| `batch_size` | `128` | int | images per training step | `5` |" in out


def test_experiment_is_the_deprecated_name_of_spec(tmp_path, capsys):
    from conftest import bench_inprocess

    spec = ROOT / "experiments" / "seed-dcgan.toml"
    code, out, err = bench_inprocess("run", "--experiment", str(spec), "--show-spec", capsys=capsys)
    assert code == 0 and "--experiment FILE is deprecated on bench run: use --spec FILE" in err
    assert "| `budget` | `\"2m\"` | str |" in out and "`\"50ep\"` |" in out  # the file's settings were read
    code, _, err = bench_inprocess("run", "--experiment", str(spec), "--spec", str(spec), capsys=capsys)
    assert code == 2 and "give the spec file once" in err
