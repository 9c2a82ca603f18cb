"""CLI argument and error handling (no pipeline run needed)."""

import pytest

from recsys_pipeline.cli import main


def test_bad_arguments_give_messages_not_tracebacks(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "demo", "--start", "2018-09-05", "--end", "2018-09-01"]) == 2
    assert "is after --end" in capsys.readouterr().err
    assert main(["--home", home, "demo", "--start", "foo"]) == 2
    assert "--start 'foo' is not a YYYY-MM-DD date" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--home", home, "recommend", "--user", "1", "-k", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "nothing"), "recommend", "--user", "1"]) == 2
    assert "run `recsys demo` first" in capsys.readouterr().err


def test_failed_step_is_reported(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    # no movies.csv: item_catalog fails inside Dagster; the CLI names the step instead of crashing
    env = {**os.environ, "RECSYS_MOVIELENS_PATH": str(tmp_path), "RECSYS_HOME": str(tmp_path / "home")}
    env.pop("RECSYS_PARTITIONS_START", None)
    out = subprocess.run([sys.executable, "-m", "recsys_pipeline.cli", "demo"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "step failed: item_catalog" in out.stderr and "movies.csv" in out.stderr
