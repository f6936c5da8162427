"""The bench config: what a user writes, read strictly; every mistake is one line naming the file and key (exit 2)."""

from pathlib import Path

import pytest

from edgeprune.bench.config import Cell, load_config, require_consent
from edgeprune.cli import main
from edgeprune.errors import InputError, UnsafeFileError

GOOD = """
[bench]
data = "digits"
finetune_epochs = 0.5
floors = {"mlp" = 50.0}

[[models]]
name = "mlp"
path = "models/mlp.pt"

[[methods]]
method = "magnitude"
granularity = "channel"
sparsities = [0.5, 0.75]

[[methods]]
method = "random"
sparsities = [0.5]

[[targets]]
name = "host-cpu"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "mlp.pt").write_bytes(b"a model file")
    path = tmp_path / "nightly.toml"
    path.write_text(text)
    return path


def bench(capsys, cfg: Path, *extra: str) -> tuple[int, str]:
    code = main(["bench", str(cfg), "--history", str(cfg.parent / "h.sqlite"), *extra])
    return code, capsys.readouterr().err


def test_the_matrix_is_every_model_method_sparsity_and_target(tmp_path, monkeypatch):
    monkeypatch.chdir("/")   # paths resolve against the config's folder, not the working directory
    cfg = load_config(write(tmp_path, GOOD))
    assert [c.id for c in cfg.cells] == ["mlp/magnitude/channel/0.5/host-cpu", "mlp/magnitude/channel/0.75/host-cpu",
                                         "mlp/random/weight/0.5/host-cpu"]
    assert cfg.models[0].path == tmp_path / "models" / "mlp.pt"
    assert cfg.finetune_epochs == 0.5 and cfg.floors == {"mlp": 50.0}
    assert Cell("m", "magnitude", "weight", 0.9, "t").id == "m/magnitude/weight/0.9/t"
    # the digest names the run a resume continues: any edit makes it another config
    assert load_config(write(tmp_path, GOOD + "\n# edited\n")).digest != cfg.digest


@pytest.mark.parametrize("old, new, key", [
    ('finetune_epochs = 0.5', 'finetune_epochs = 0.5\nepochs = 3', "[bench] epochs"),
    ('granularity = "channel"', 'granularity = "channel"\nsparsity = 0.5', "[[methods]] #1 sparsity"),
    ('granularity = "channel"', 'granularity = "rows"', "[[methods]] magnitude granularity"),
    ('sparsities = [0.5, 0.75]', 'sparsities = [0.5, 1.5]', "[[methods]] magnitude sparsities"),
    ('sparsities = [0.5, 0.75]', 'sparsities = []', "[[methods]] magnitude sparsities"),
    ('method = "random"', 'method = "nonesuch"', "[[methods]] #2 method"),
    ('name = "host-cpu"', 'name = "no-such-board"', "[[targets]] #1 name"),
    ('name = "host-cpu"', 'name = "host-cpu"\nssh = "orin"', "[[targets]] #1 ssh"),
    ('path = "models/mlp.pt"', 'path = "models/missing.pt"', "[[models]] #1 path"),
    ('finetune_epochs = 0.5', 'finetune_epochs = "half"', "[bench] finetune_epochs"),
    ('floors = {"mlp" = 50.0}', 'floors = {"cnn" = 50.0}', "[bench] floors cnn"),
    ('[[targets]]', '[[targets]]\nname = "host-cpu"\n[[targets]]', "[[targets]] name"),
])
def test_a_bad_key_or_value_is_one_line_naming_the_file_and_key(tmp_path, capsys, old, new, key):
    cfg = write(tmp_path, GOOD.replace(old, new, 1))
    code, err = bench(capsys, cfg)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(cfg) in err and key in err, err
    assert not (tmp_path / "h.sqlite").exists()   # refused before anything ran


def test_a_file_that_is_not_toml_or_not_there(tmp_path, capsys):
    cfg = write(tmp_path, "[bench\n")
    code, err = bench(capsys, cfg)
    assert code == 2 and "not valid TOML" in err and err.count("\n") == 1
    code, err = bench(capsys, tmp_path / "missing.toml")
    assert code == 2 and "not found" in err


def test_code_a_config_names_runs_only_with_consent(tmp_path, capsys, monkeypatch):
    """An arch other than zoo: is imported only with --trust-code or the same --arch, as everywhere."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_arch.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef net(**kw):\n    raise SystemExit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = GOOD.replace('path = "models/mlp.pt"', 'path = "models/mlp.pt"\narch = "evil_arch:net"')
    cfg = write(tmp_path, text)
    code, err = bench(capsys, cfg)
    assert code == 2 and "evil_arch:net" in err and "--trust-code" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "h.sqlite").exists()
    code, err = bench(capsys, cfg, "--arch", "evil_arch:other")
    assert code == 2 and "--trust-code" in err and not marker.exists()
    config = load_config(cfg)
    require_consent(config, False, ["evil_arch:net"])       # the same reference, given: allowed
    require_consent(config, True)                           # --trust-code: allowed
    with pytest.raises(UnsafeFileError):
        require_consent(load_config(write(tmp_path, GOOD.replace('data = "digits"', 'data = "evil_arch:data"'))), False)
    assert not marker.exists()


def test_zoo_architectures_and_named_data_need_no_consent(tmp_path):
    text = GOOD.replace('path = "models/mlp.pt"', 'path = "models/mlp.pt"\narch = "lenet300"')
    config = load_config(write(tmp_path, text))
    assert config.models[0].arch == "zoo:lenet300" and config.code_refs() == []
    require_consent(config, False)
    with pytest.raises(InputError, match="must not contain '/'"):
        load_config(write(tmp_path, GOOD.replace('name = "mlp"', 'name = "a/b"')))


def test_a_target_bench_cannot_measure_is_refused_before_any_work(tmp_path, capsys):
    """A TensorRT target with neither TensorRT here nor a board to measure on: refused up front, in one line."""
    cfg = write(tmp_path, GOOD.replace('name = "host-cpu"', 'name = "jetson-orin-nano"'))
    code, err = bench(capsys, cfg)
    assert code == 2 and "jetson-orin-nano cannot be measured on this machine" in err and "host =" in err and err.count("\n") == 1
    assert not (tmp_path / "h.sqlite").exists() and not (tmp_path / "h.sqlite.cache").exists()
