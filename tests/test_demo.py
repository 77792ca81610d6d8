"""recipes.demo: the quick start's flags are validated and a tiny run prints its table and writes its figure."""

import pytest

from recipes import demo


@pytest.mark.parametrize("argv,match", [(["--epochs", "0"], "--epochs: expected a positive integer"),
                                        (["--models", "node,lstm"], "--models: a comma-separated list"),
                                        (["--models", "node,node"], "--models: a comma-separated list"),
                                        (["--rtol", "-1"], "--rtol")])
def test_bad_flags_are_argparse_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_tiny_run_prints_table_and_saves_figure(tmp_path, capsys):
    assert demo.main(["--epochs", "1", "--n-train", "16", "--batch-size", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NODE-RNN" in out and "HBNODE-RNN" in out and "last value" in out
    assert (tmp_path / "demo.png").stat().st_size > 0
