"""CLI argument and error handling (no pipeline run needed)."""

import argparse
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from recsys_pipeline.cli import build_parser, main, ui_environment


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every sub-parser of ``recsys`` (read from the parser, so a command added later is covered too)."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_has_a_description_and_documented_options(capsys):
    top = help_of([], capsys)
    assert "``" not in top
    top = " ".join(top.split())
    commands = subcommands()
    assert {"demo", "backfill", "recommend", "rollback", "export", "serve", "ui"} <= set(commands)
    for name, parser in commands.items():
        text = help_of([name], capsys)
        assert "``" not in text, name
        flat = " ".join(text.split())  # argparse wraps lines anywhere between words
        description = parser.description
        assert description and "\n" not in description and description in flat, name
        assert f"{name} {description}" in top, f"`recsys --help` does not list {name} with its description"
        for action in parser._actions:
            assert action.help, f"recsys {name} {action.option_strings}: no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in flat, f"recsys {name} {action.option_strings}"


def test_home_may_follow_the_command(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    assert main(["recommend", "--user", "1", "--home", str(after)]) == 2
    assert f"nothing published at {after}" in capsys.readouterr().err
    assert main(["--home", str(before), "recommend", "--user", "1"]) == 2
    assert f"nothing published at {before}" in capsys.readouterr().err
    # given twice, the later one wins; an unset one after the command keeps the one before it
    assert main(["--home", str(before), "recommend", "--user", "1", "--home", str(after)]) == 2
    assert f"nothing published at {after}" in capsys.readouterr().err


def test_bad_arguments_give_messages_not_tracebacks(tmp_path, capsys):
    home = str(tmp_path / "home")  # every demo below is refused before the home is made
    assert main(["--home", home, "demo", "--start", "2018-09-05", "--end", "2018-09-01"]) == 2
    assert "is after --end" in capsys.readouterr().err
    assert main(["--home", home, "demo", "--start", "foo"]) == 2
    assert "--start 'foo' is not a YYYY-MM-DD date" in capsys.readouterr().err
    assert main(["--home", home, "demo", "--end", "2018-13-01"]) == 2
    assert "--end '2018-13-01' is not a YYYY-MM-DD date (month must be in 1..12)" in capsys.readouterr().err
    assert main(["--home", home, "demo", "--start", "2018-9-24"]) == 2  # as the HTTP API: two-digit month and day
    assert "--start '2018-9-24' is not a YYYY-MM-DD date" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
    with pytest.raises(SystemExit):
        main(["--home", home, "recommend", "--user", "1", "-k", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "nothing"), "recommend", "--user", "1"]) == 2
    assert "run `recsys demo` first" in capsys.readouterr().err


def published_days(home, *days: str):
    """Publish two users' lists for each UTC day of ``days`` as the ``recommendations`` asset does; the model version
    of day n is ``n + 1``."""
    from datetime import date

    import pandas as pd

    from recsys_pipeline.serving.publish import publish_day
    from recsys_pipeline.settings import HomePaths

    paths = HomePaths.at(home)
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "title": ["Alpha", "Beta", "Gamma"], "users": 1, "rank": [1, 2, 3]}
    )
    for n, text in enumerate(days):
        day = date.fromisoformat(text)
        recs = pd.DataFrame(
            {
                "partition_date": day,
                "user_id": ["u1", "u1", "u2", "u2"],
                "rank": [1, 2, 1, 2],
                "item_id": [["a", "b"], ["b", "c"], ["c", "a"]][n % 3] * 2,
                "score": [0.9, 0.8] * 2,
                "strategy": "personalized",
                "model_run_id": f"run-{n + 1}",
                "model_version": str(n + 1),
                "produced_on": day,
                "model_partition_date": day,
                "explanation": [
                    '{"because":["c","b"],"contributions":[0.5,0.2],"modalities":{"text":1.0}}',
                    '{"because":[],"contributions":[],"modalities":{"text":0.75,"image":0.25}}',
                    None,
                    None,
                ],
            }
        )
        publish_day(paths, day, recs, items)
    return paths


def test_recommend_answers_from_the_current_day_or_the_date_asked(tmp_path, capsys):
    home = str(tmp_path / "home")
    published_days(home, "2018-09-22", "2018-09-23", "2018-09-24")
    assert main(["--home", home, "recommend", "--user", "u1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("Top 2 of 2018-09-24 for user u1 (champion v3, model run run-3")
    assert "-k 10: 2 published for this user" in err  # asked for more than the day's list holds
    assert main(["--home", home, "recommend", "--user", "u1", "-k", "2"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["--home", home, "recommend", "--user", "x" * 5000]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unknown user 'xxx") and "…" in err and len(err) < 300  # a long id is not echoed whole
    assert main(["--home", home, "recommend", "--user", "u1", "--date", "2018-09-23"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("Top 2 of 2018-09-23 for user u1 (champion v2")
    assert out.index("Beta") < out.index("Gamma")  # that day's list: b then c
    assert main(["--home", home, "recommend", "--user", "u1", "--date", "2018-09-01"]) == 1
    assert (
        "no recommendations published for 2018-09-01; published days: 2018-09-22 .. 2018-09-24 (3 days)"
        in capsys.readouterr().err
    )
    assert main(["--home", home, "recommend", "--user", "u1", "--date", "24/09/2018"]) == 2
    assert "--date '24/09/2018' is not a YYYY-MM-DD date" in capsys.readouterr().err
    assert main(["--home", home, "recommend", "--user", "u1", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[5].startswith("Because you liked")
    assert lines[6:] == ["   1  Gamma; Beta", "   2  (content: text 0.75, image 0.25)"]
    assert main(["--home", home, "recommend", "--user", "u2", "--explain"]) == 0
    assert "published without explanations" in capsys.readouterr().err


def test_rollback_to_a_day_never_published_is_exit_code_1_and_changes_nothing(tmp_path, capsys):
    from recsys_pipeline.serving.snapshot import current_day

    home = str(tmp_path / "home")
    paths = published_days(home, "2018-09-23", "2018-09-24")
    assert main(["--home", home, "rollback", "--date", "2018-09-20"]) == 1
    assert "no published recommendations of 2018-09-20; published days: 2018-09-23 .. 2018-09-24" in (
        capsys.readouterr().err
    )
    assert main(["--home", home, "rollback", "--date", "yesterday"]) == 2
    assert current_day(paths).isoformat() == "2018-09-24"


def test_rollback_is_a_dagster_run_and_serving_answers_from_that_day(tmp_path):
    """``recsys rollback --date D`` in a child process: one run of rollback_recommendations on the home's instance,
    tagged with its origin, an observation of that day's recommendations partition, and `recsys recommend` (and
    the HTTP app) answering from D."""
    import dagster as dg
    from fastapi.testclient import TestClient

    from recsys_pipeline.serving.app import create_app

    home = tmp_path / "home"
    paths = published_days(home, "2018-09-23", "2018-09-24")
    env = {**os.environ, "RECSYS_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "rollback", "--date", "2018-09-23"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "answer from 2018-09-23 (was 2018-09-24)" in out.stdout
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "rollback_recommendations" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["recsys/origin"] == "rollback"
        (observed,) = instance.fetch_observations(dg.AssetKey("recommendations"), limit=10).records
        assert observed.partition_key == "2018-09-23"
        assert observed.asset_observation.metadata["previous_current_day"].value == "2018-09-24"
    client = TestClient(create_app(paths))
    body = client.get("/recommendations/u1").json()
    assert (body["date"], body["model_version"]) == ("2018-09-23", "1")  # the first day published: version 1
    assert client.get("/health").json()["date"] == "2018-09-23"
    shown = subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "recommend", "--user", "u1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.stdout.startswith("Top 2 of 2018-09-23 for user u1 (champion v1")
    # a reader that stops early (`recsys recommend ... | head -1`, here one that reads nothing): no traceback
    piped = subprocess.Popen(
        [sys.executable, "-m", "recsys_pipeline.cli", "recommend", "--user", "u1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    piped.stdout.close()
    assert piped.wait(timeout=120) == 0
    assert piped.stderr.read() == b""


@pytest.mark.slow
def test_failed_step_is_reported(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    # no movies.csv: item_catalog fails inside Dagster; the CLI names the step instead of crashing
    env = {**os.environ, "RECSYS_MOVIELENS_PATH": str(tmp_path), "RECSYS_HOME": str(tmp_path / "home")}
    env.pop("RECSYS_PARTITIONS_START", None)
    out = subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "demo"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1
    assert "step failed: item_catalog" in out.stderr and "movies.csv" in out.stderr
    # the cause in a few lines, not Dagster's stack traces (they stay in the run's log)
    assert 'File "' not in out.stderr and len(out.stderr.splitlines()) < 15, out.stderr


def test_backfill_rejects_bad_ranges(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "backfill", "--start", "2018-09-05", "--end", "2018-09-01"]) == 2
    assert "--start 2018-09-05 is after --end 2018-09-01" in capsys.readouterr().err
    assert main(["--home", home, "backfill", "--start", "2018-02-30", "--end", "2018-03-01"]) == 2
    assert "--start '2018-02-30' is not a YYYY-MM-DD date" in capsys.readouterr().err
    assert main(["--home", home, "backfill", "--start", "1990-01-01", "--end", "1990-01-02"]) == 2
    assert "--start 1990-01-01 is not a daily partition: they run from 1996-03-29" in capsys.readouterr().err
    assert main(["--home", home, "backfill", "--start", "2018-09-01", "--end", "2999-01-01"]) == 2
    assert "--end 2999-01-01 is not a daily partition" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--home", home, "backfill", "--start", "2018-09-01"])
    assert "--end" in capsys.readouterr().err


def test_a_path_setting_naming_nothing_stops_before_the_run(tmp_path, monkeypatch, capsys):
    from recsys_pipeline.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("RECSYS_MOVIELENS_PATH", str(tmp_path / "no-such-release"))
    monkeypatch.setenv("RECSYS_IMAGE_ROOT", os.pathsep.join([str(tmp_path), str(tmp_path / "no-posters")]))
    for command in (["backfill", "--start", "2018-09-01", "--end", "2018-09-02"], ["demo"]):  # the same words
        assert main(["--home", str(home), *command]) == 2
        err = capsys.readouterr().err
        assert f"RECSYS_MOVIELENS_PATH={tmp_path / 'no-such-release'}: no such folder" in err
        assert f"RECSYS_IMAGE_ROOT={tmp_path / 'no-posters'}: no such folder" in err and "(nothing was run)" in err
        assert not (home / "dagster" / "storage").exists()  # no run was started
    # a daily-files source is checked by its own settings; existing paths pass
    monkeypatch.setenv("RECSYS_SOURCE_KIND", "daily_files")
    monkeypatch.setenv("RECSYS_EVENTS_DIR", str(tmp_path))
    monkeypatch.setenv("RECSYS_CATALOG_PATH", str(tmp_path / "items.csv"))
    monkeypatch.setenv("RECSYS_IMAGE_ROOT", str(tmp_path))
    assert get_settings().missing_paths() == [f"RECSYS_CATALOG_PATH={tmp_path / 'items.csv'}: no such file"]
    (tmp_path / "items.csv").write_text("item_id,title\n")
    assert get_settings().missing_paths() == []


def test_no_warehouse_an_unwritable_out_or_a_file_as_home_is_one_line_not_a_traceback(tmp_path, capsys):
    home, out = tmp_path / "home", tmp_path / "export"
    assert main(["--home", str(home), "export", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no warehouse at" in err and "(nothing was written)" in err
    assert not out.exists()
    (home).mkdir(exist_ok=True)
    from recsys_pipeline.settings import HomePaths

    HomePaths.at(home).warehouse.write_bytes(b"")  # exists: the --out check comes next
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--home", str(home), "export", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recsys export: error: --out {blocker / 'sub'}: ") and "(nothing was written)" in err
    assert main(["--home", str(home), "export", "--out", ""]) == 2  # not the current folder
    assert "--out is empty" in capsys.readouterr().err
    (out / "item_features.npz").mkdir(parents=True)
    assert main(["--home", str(home), "export", "--out", str(out)]) == 2
    assert "item_features.npz exists and is not a file (nothing was written)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["item_features.npz"]
    for command in (["recommend", "--user", "1"], ["export", "--out", str(out)]):
        assert main(["--home", str(blocker), *command]) == 2
        assert f"the home {blocker} is a file, not a folder" in capsys.readouterr().err


def test_export_writes_both_training_inputs_and_a_command_that_survives_spaces(tmp_path, capsys, toy):
    import shlex

    import pandas as pd

    from recsys_pipeline.content.features import ItemFeatures
    from recsys_pipeline.settings import HomePaths, ensure_home
    from tests.reliability.support import toy_warehouse, with_hits

    paths = ensure_home(HomePaths.at(tmp_path / "home"))
    toy_warehouse(paths, toy)
    out = tmp_path / "with space"
    assert main(["--home", str(paths.root), "export", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "item_features.npz"]  # no temporaries
    interactions = pd.read_parquet(out / "interactions.parquet")
    features = ItemFeatures.from_npz(out / "item_features.npz")
    assert len(interactions) == len(with_hits(toy.interactions())) and interactions["user_id"].nunique() > 1
    assert sorted(features.item_ids) == sorted(toy.features().item_ids)
    command = shlex.split(capsys.readouterr().out.splitlines()[-1].removeprefix("train: "))
    value = {flag: command[command.index(flag) + 1] for flag in ("--interactions", "--features", "--out")}
    assert value == {
        "--interactions": str(out / "interactions.parquet"),
        "--features": str(out / "item_features.npz"),
        "--out": str(out / "model"),
    }


def test_a_read_only_home_is_one_line_for_the_commands_that_write_it(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    real_access = os.access
    # root ignores permission bits and a read-only mount needs privileges: the home answers as a read-only one would
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(home)) else real_access(p, mode))
    for command in (["backfill", "--start", "2018-09-01", "--end", "2018-09-02"], ["demo"], ["tune"]):
        assert main(["--home", str(home), *command]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"recsys {command[0]}: error: the home {home} is not writable ({home}: a read-only file system or no "
            "permission); this command records its runs and tables there\n"
        )
    assert sorted(p.name for p in home.iterdir()) == ["dagster"]  # nothing was made there


@pytest.mark.slow
def test_backfill_is_one_run_over_the_range(tmp_path, movielens_slice):
    import os
    import subprocess
    import sys

    import dagster as dg

    from recsys_pipeline.data import warehouse

    data = movielens_slice(tmp_path / "ml", "2018-08-25", "2018-09-25")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "RECSYS_MOVIELENS_PATH": str(data),
        "RECSYS_HOME": str(home),
        "RECSYS_PARTITIONS_START": "2018-08-25",
        "HOME": str(tmp_path / "user"),  # what the libraries would write under ~
    }
    for name in ("MLFLOW_DISABLE_TELEMETRY", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-m", "recsys_pipeline.cli", "backfill", "--start", "2018-09-01", "--end", "2018-09-07"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "daily partitions 2018-09-01 .. 2018-09-07 (one single-run backfill)" in out.stdout
    # MLflow's telemetry id and matplotlib's font cache go nowhere / under the home; ONNX Runtime's device id (it
    # is imported by Lightning) is the one file left under ~ (README, known limits)
    written = sorted(str(p.relative_to(tmp_path / "user")) for p in (tmp_path / "user").rglob("*") if p.is_file())
    assert not [p for p in written if not p.startswith(".cache/Microsoft/DeveloperTools/.onnxruntime/")], written
    assert (home / "cache" / "matplotlib").is_dir()
    ratings = __import__("pandas").read_csv(data / "ratings.csv")
    seconds = ratings["timestamp"]
    expected = int(((seconds >= 1535760000) & (seconds < 1535760000 + 7 * 86400)).sum())  # 2018-09-01 00:00 UTC
    with warehouse.session(home / "warehouse.duckdb", read_only=True) as con:
        assert warehouse.row_count(con, "raw_events") == expected > 0
        assert warehouse.row_count(con, "interactions") == expected
        assert warehouse.row_count(con, "item_catalog") > 0
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].tags["dagster/asset_partition_range_end"] == "2018-09-07"
        assert runs[0].tags["recsys/origin"] == "backfill"  # the UI's runs list tells it from a demo or a schedule
        status = instance.get_materialized_partitions(dg.AssetKey("interactions"))
        assert status == {f"2018-09-0{d}" for d in range(1, 8)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_ends_with_one_line_and_exit_code_130(tmp_path, signum):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_pipeline.cli", "serve", "--port", str(port), "--home", str(tmp_path / "home")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
        # a shell without job control starts background commands with SIGINT ignored; Ctrl-C is the case here
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # up once /health answers (503: nothing published in this home)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "recsys serve did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as schema:
            assert "/recommendations/{user_id}" in json.loads(schema.read())["paths"]
        with pytest.raises(urllib.error.HTTPError) as docs:  # it would load Swagger UI from a CDN: blank offline
            urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5)
        assert docs.value.code == 404
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert f"OpenAPI schema: http://127.0.0.1:{port}/openapi.json" in out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == "recsys: interrupted"
    assert [line for line in lines if line.startswith("recsys")] == ["recsys: interrupted"]


def test_tune_refuses_a_negative_k_core_before_starting_a_run(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["tune", "--k-core", "-1"])
    assert exited.value.code == 2
    assert "--k-core: must be at least 0, got -1" in capsys.readouterr().err
    assert build_parser().parse_args(["tune", "--k-core", "10"]).k_core == 10


def test_ui_silences_exactly_the_known_dagster_warnings():
    # what dagster dev 1.13 prints at every start, and two that must still show (same categories)
    code = """if True:
        import warnings
        from dagster_shared.utils.warnings import BetaWarning, SupersessionWarning
        warnings.warn("Function `dev_command` is superseded and its usage is discouraged. Use 'dg dev' instead.",
                      SupersessionWarning)
        warnings.warn("Parameter `backfill_policy` of function `asset` is currently in beta, and may have breaking "
                      "changes in minor version releases.", BetaWarning)
        warnings.warn("Parameter `pool` of function `asset` is currently in beta", BetaWarning)
        warnings.warn("Function `other_command` is superseded", SupersessionWarning)
    """
    out = subprocess.run(
        [sys.executable, "-c", code], env=ui_environment(dict(os.environ)), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Invalid -W option" not in out.stderr
    assert "dev_command" not in out.stderr and "backfill_policy" not in out.stderr
    assert "`pool`" in out.stderr and "other_command" in out.stderr


class Terminal(io.StringIO):
    """What a terminal shows of the text written to it: ``\\r`` returns to the line's start, later text overwrites."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        lines, line, col = [], [], 0
        for char in self.getvalue():
            if char == "\n":
                lines.append("".join(line).rstrip())
                line, col = [], 0
            elif char == "\r":
                col = 0
            else:
                line[col : col + 1] = [char]
                col += 1
        return [*lines, "".join(line).rstrip()]


def test_a_line_printed_while_a_progress_bar_is_drawn_goes_above_it():
    from tqdm import tqdm

    from recsys_pipeline.cli import _LinesAboveBars

    terminal = Terminal()
    out = _LinesAboveBars(terminal)
    with tqdm(
        total=10, desc="text_embeddings", unit="item", file=terminal, leave=False, mininterval=0, miniters=1
    ) as bar:
        bar.update(3)
        print("==> recommendations", file=out, flush=True)
        bar.update(1)
        screen = terminal.screen()
        assert "==> recommendations" in screen, screen  # a line of its own, nothing glued before or after it
        assert "4/10" in screen[-1]  # the bar, drawn again below the line
    print("    done in 1.0 s", file=out)
    assert terminal.screen()[-2:] == ["    done in 1.0 s", ""]  # the closed bar (leave=False) left nothing


def test_mlflow_notices_are_muted_its_log_records_are_not():
    code = """if True:
        import logging
        from mlflow.utils.logging_utils import eprint
        from recsys_pipeline.cli import _mute_mlflow_notices
        from mlflow.utils.autologging_utils import MlflowEventsAndWarningsBehaviorGlobally
        _mute_mlflow_notices()
        with MlflowEventsAndWarningsBehaviorGlobally(  # on its way out it calls enable_logging()
            disable_event_logs=False, disable_warnings=False, reroute_warnings=False
        ):
            pass
        eprint("Successfully registered model 'recsys_ranker'.")  # how mlflow.register_model prints it
        eprint("Created version '1' of model 'recsys_ranker'.")
        logging.getLogger("mlflow.store").warning("a warning from MLflow")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "registered model" not in out.stderr and "Created version" not in out.stderr
    assert "a warning from MLflow" in out.stderr


def metric_names(cold: bool, k: int = 20, groups=("with_image", "without_image")) -> list[str]:
    """The figures ``evaluation.evaluate`` names (see its docstring): base, warm_, cold_, per item group, and for a
    split with held-out items the cold_candidates_ ones."""
    base = ["recall_at_10", f"recall_at_{k}", "ndcg_at_10", f"ndcg_at_{k}", "coverage", "n_users"]
    names = [*base, *(f"warm_{m}" for m in base), *(f"cold_{m}" for m in base)]
    names += [f"{g}_{m}" for g in groups for m in base]
    if cold:
        names += [f"cold_candidates_{m}" for m in base] + [f"cold_candidates_random_recall_at_{k}"]
        names += [f"cold_candidates_{g}_{m}" for g in groups for m in base]
    return names


def realistic_summary_inputs(mlflow_uri: str) -> dict:
    """What the demo reads back from the warehouse, at its real sizes and names (figures random, some missing)."""
    import numpy as np
    import pandas as pd

    from recsys_pipeline.cli import SUMMARY_TABLES
    from recsys_pipeline.evaluation.ablation import ABLATION_COLUMNS

    rng = np.random.default_rng(0)
    # the demo's protocols: item_cold_mixed adds the "new share" column
    protocols = {"user_last_fraction": False, "item_cold_start": True, "item_cold_mixed": False, "temporal": False}
    metrics = pd.DataFrame(
        [
            (protocol, model, name, float("nan") if name.startswith("cold_") and not cold else rng.random())
            if name != "cold_share_at_20"
            else (protocol, model, name, rng.random())
            for protocol, cold in protocols.items()
            for model in ("ours", "popularity")
            for name in [*metric_names(cold), *(["cold_share_at_20"] if protocol == "item_cold_mixed" else [])]
        ],
        columns=["protocol", "model", "metric", "value"],
    )
    ours = metrics[metrics["model"] == "ours"]
    ablation = []
    for variant, modalities, status in [
        ("text", "text", "masked at inference"),
        ("text_image", "text+image", "masked at inference"),
        ("all", "text+image+audio", "evaluation model"),
        ("all_concat", "text+image+audio", "same as all"),
    ]:
        ablation += [
            (
                variant,
                modalities,
                "attention",
                status,
                r.protocol,
                r.metric,
                r.value if variant in ("all", "all_concat") else rng.random(),  # "same as": a copy
            )
            for r in ours.itertuples()
        ]
    ablation.append(("audio", "audio", "attention", "skipped: no audio vectors", "", "", float("nan")))
    long_title = (
        "Dragon Ball Z the Movie: The World's Strongest (a.k.a. Dragon Ball Z: The Strongest Guy in The World) "
        "(Doragon bôru Z: Kono yo de ichiban tsuyoi yatsu) (1990)"
    )
    titles = [long_title, "Shawshank Redemption, The (1994)", *(f"Movie number {i} (2001)" for i in range(8))]
    return dict(
        rows={table: int(rng.integers(0, 10_000_000)) for table in SUMMARY_TABLES},
        media_failures=pd.DataFrame(
            {
                "modality": ["audio", "image", "image"],
                "reason": ["no_source", "missing", "corrupt"],
                "items": [9742, 6795, 2],
            }
        ),
        timings={
            step: float(rng.random() * 400)
            for step in (
                "item_catalog",
                "text_embeddings",
                "text_embeddings_text_embeddings_finite_unit_norm",  # an asset check's step
                "model_evaluation_model_beats_popularity",
                "recommendations",
            )
        },
        metrics=metrics,
        ablation=pd.DataFrame(ablation, columns=ABLATION_COLUMNS),
        user="1",
        recommendations=pd.DataFrame({"rank": range(1, 11), "title": titles, "score": rng.random(10).round(3)}),
        liked=pd.DataFrame({"title": titles, "value": rng.integers(1, 11, 10) / 2}),
        mlflow_uri=mlflow_uri,
    )


def test_the_demo_summary_fits_100_columns():
    import re

    from recsys_pipeline.cli import format_summary

    text = format_summary(**realistic_summary_inputs("sqlite:////home/someone/projects/recsys/.recsys/mlflow.db"))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert not re.search(r"\d\.\d{5,}", text), "figures are rounded to 4 places"
    times = lines[lines.index("Wall time per step (s):") + 1 :][:6]
    assert len({len(line) for line in times}) == 1, times  # one column of seconds
    start = next(i for i, line in enumerate(lines) if line.startswith("Modality ablation"))
    after = itertools.dropwhile(lambda line: not line.startswith("|"), lines[start:])
    table = itertools.takewhile(lambda line: line.startswith("|"), after)
    header, _, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert header[:2] == ["protocol", "variant"] and {"NDCG@10", "Recall@20"} <= set(header)
    keys = [tuple(row[:2]) for row in body]
    assert len(keys) == len(set(keys)) == 4 * 3  # protocols x variants with figures of their own: no repeated row
    assert "all_concat: same as all" in text and "audio: skipped: no audio vectors" in text
    # a home deep enough that the MLflow command cannot fit: the URI alone on the line after it
    deep = "sqlite:///" + "/very-long-folder-name" * 5 + "/.recsys/mlflow.db"
    lines = format_summary(**realistic_summary_inputs(deep)).splitlines()
    assert [line for line in lines if len(line) > 100] == [f"        {deep}"]


def test_an_explanation_names_titles_cut_to_a_readable_width():
    from recsys_pipeline.cli import BECAUSE_TITLE_CHARS, _because

    long = "Dragon Ball Z the Movie: The World's Strongest (a.k.a. Dragon Ball Z) (1990)"
    stored = '{"because":["a","b"],"contributions":[0.5,0.2],"modalities":{"text":1.0}}'
    named = _because(stored, {"a": long, "b": "Beta"})
    first, second = named.split("; ")
    assert len(first) == BECAUSE_TITLE_CHARS and first.endswith("…") and long.startswith(first[:-1])
    assert second == "Beta"
    new_item = '{"because":[],"contributions":[],"modalities":{"text":0.75,"image":0.25}}'
    assert _because(new_item, {}) == "(content: text 0.75, image 0.25)"


@pytest.mark.slow
def test_ui_started_as_a_script_s_background_job_stops_everything_on_sigterm(tmp_path):
    """A background job of a non-interactive shell starts with SIGINT ignored; ``recsys ui`` must still stop
    ``dagster dev`` and the servers it started when it gets SIGTERM (it forwards SIGINT to their group)."""
    import contextlib
    import os
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("DAGSTER_HOME", None)
    log = open(tmp_path / "ui.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys_pipeline.cli", "ui", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that a failing test can still clean the group up
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `recsys ui &` in a script
    )
    url = f"http://127.0.0.1:{port}/server_info"

    def answers() -> bool:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return True
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 240
        while not answers():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 130
        deadline = time.monotonic() + 30
        while answers():  # the webserver (a grandchild) must be gone too, not orphaned
            assert time.monotonic() < deadline, "the Dagster webserver still answers after recsys ui exited"
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # whatever a failure left behind: dagster dev and its servers name the port on their command lines
        subprocess.run(["pkill", "-KILL", "-f", f"(-p|--port) {port}( |$)"], check=False)
        log.close()


def test_serve_warns_when_it_listens_beyond_loopback_without_an_api_key(tmp_path, monkeypatch, capsys):
    import recsys_pipeline.serving.app as app

    monkeypatch.setattr(app, "serve", lambda paths, host, port: None)  # no server: the warning is what is checked
    monkeypatch.delenv("RECSYS_API_KEY", raising=False)
    assert main(["--home", str(tmp_path), "serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert "warning: serving on 0.0.0.0 without RECSYS_API_KEY" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "serve", "--port", "8123"]) == 0  # 127.0.0.1: no warning
    assert "without RECSYS_API_KEY" not in capsys.readouterr().err
    monkeypatch.setenv("RECSYS_API_KEY", "s3cret-key-of-enough-length")
    assert main(["--home", str(tmp_path), "serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert "without RECSYS_API_KEY" not in capsys.readouterr().err
