"""What ``deploy/`` holds, validated offline as far as it can be without a cluster or a second machine:

- the Helm values and the run config parse, agree with the image (Dockerfile) and keep the ``duckdb`` pool;
- the run config validates against the job's run config schema with dagster-k8s's real ``k8s_job_executor``
  (``RECSYS_EXECUTOR=k8s``), and a misspelt key fails that validation;
- the multi-node DDP script hands torchrun and the training entry point arguments their own parsers accept;
- (slow) the script trains for real as two "nodes" on this machine (two torchrun agents over 127.0.0.1, gloo).

Not validated here (deploy/README.md says so): the chart's templates (no Helm), a cluster, pods on several nodes,
DuckDB's file lock on a network volume, DDP between real machines.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from recsys_pipeline.settings import POSTGRES_URL_SCHEME

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VENV_BIN = str(Path(sys.executable).parent)


def _dockerfile() -> dict:
    """``ENV`` pairs and the ``CMD`` list of deploy/Dockerfile."""
    env, cmd, lines = {}, None, DEPLOY.joinpath("Dockerfile").read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
        elif word == "CMD":
            cmd = json.loads(rest)
    return {"env": env, "cmd": cmd}


def test_helm_values_run_the_code_location_image_on_postgres_with_the_duckdb_pool():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    image = _dockerfile()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "recsys_pipeline.definitions"]
    assert image["cmd"] == ["dagster", "api", "grpc", *deployment["dagsterApiGrpcArgs"], "-h", "0.0.0.0", "-p", "3030"]
    assert deployment["port"] == 3030 and deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert env == {k: image["env"][k] for k in ("RECSYS_PROFILE", "RECSYS_EXECUTOR", "RECSYS_HOME")}
    assert env["RECSYS_PROFILE"] == "postgres" and env["RECSYS_EXECUTOR"] == "k8s"
    assert [m["mountPath"] for m in deployment["volumeMounts"]] == [env["RECSYS_HOME"]]
    secrets = {s["name"] for s in deployment["envSecrets"]}
    assert secrets == {s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]}
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["postgresql"]["enabled"] is True
    assert values["concurrency"]["pools"] == {"defaultLimit": 1, "granularity": "op"}  # as recsys_pipeline/dagster.yaml
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True


def test_run_config_validates_against_the_k8s_job_executor(monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s not installed (pip install -e '.[k8s]')")
    from recsys_pipeline.definitions import build_definitions

    monkeypatch.setenv("RECSYS_PROFILE", "postgres")
    monkeypatch.setenv("RECSYS_POSTGRES_URL", f"{POSTGRES_URL_SCHEME}dagster@recsys-postgresql:5432/dagster")
    monkeypatch.setenv("RECSYS_EXECUTOR", "k8s")
    job = build_definitions().resolve_job_def("recsys_pipeline_job")
    assert job.executor_def.name == "k8s"  # dagster_k8s.k8s_job_executor, pool-aware
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())
    validated = dg.validate_run_config(job, run_config)
    executor = validated["execution"]["k8s"]  # the config as the executor receives it, defaults filled in
    assert executor["max_concurrent"] == 4 and executor["job_namespace"] == "dagster"
    assert executor["per_step_k8s_config"]["recommender_model"]["container_config"]["resources"]["limits"] == {
        "memory": "16Gi"
    }
    assert validated["ops"]["model_evaluation"]["config"]["ablation_variants"] == []
    misspelt = {**run_config, "execution": {"config": {"max_concurent": 4}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        dg.validate_run_config(job, misspelt)


def _script_argv(tmp_path: Path, **env: str) -> list[str]:
    """The arguments deploy/ddp/train-multinode.sh gives torchrun (a stand-in torchrun records them)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torchrun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_OUT"\n')
    (fake / "torchrun").chmod(0o755)
    out = tmp_path / "argv"
    run_env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "ARGV_OUT": str(out), **env}
    subprocess.run(["bash", str(DEPLOY / "ddp" / "train-multinode.sh"), "--max-epochs", "3"], env=run_env, check=True)
    return out.read_text().splitlines()


def test_ddp_script_gives_torchrun_and_the_trainer_arguments_they_accept(tmp_path):
    from torch.distributed.run import get_args_parser

    from recsys_pipeline.models.two_tower.train import parse_args

    env = dict(NNODES="3", NODE_RANK="1", MASTER_ADDR="10.0.0.1", NPROC_PER_NODE="2", DATA="/shared/export")
    torchrun = get_args_parser().parse_args(_script_argv(tmp_path, **env))
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node) == ("3", 1, "2")
    assert (torchrun.master_addr, torchrun.master_port, torchrun.module) == ("10.0.0.1", 29500, True)
    assert torchrun.training_script == "recsys_pipeline.models.two_tower.train"
    train = parse_args(torchrun.training_script_args)
    assert (train.strategy, train.num_nodes, train.devices, train.max_epochs) == ("ddp", 3, 2, 3)
    assert train.interactions == "/shared/export/interactions.parquet" and train.out == "/shared/export/model"
    missing = subprocess.run(
        ["bash", str(DEPLOY / "ddp" / "train-multinode.sh")],
        env={k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "set NNODES" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_script_trains_as_two_nodes_over_loopback(tmp_path, toy):
    """Two torchrun agents on this machine, NODE_RANK 0 and 1, one CPU process each (gloo over 127.0.0.1): the
    world of two nodes trains, only rank 0 writes the model and prints its stats."""
    from recsys_pipeline.models.two_tower.recommender import TwoTowerRecommender

    toy.interactions().to_parquet(tmp_path / "interactions.parquet")
    toy.features().to_npz(tmp_path / "item_features.npz")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "NNODES": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "ACCELERATOR": "cpu",
        "DATA": str(tmp_path),
    }
    extra = ["--max-epochs", "1", "--num-threads", "1", "--config-json", '{"batch_size": 64, "num_negatives": 16}']
    nodes = [
        subprocess.Popen(
            ["bash", str(DEPLOY / "ddp" / "train-multinode.sh"), *extra],
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    printed = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out, _ in outputs]
    stats = json.loads((tmp_path / "model" / "train_stats.json").read_text())
    assert printed == [[stats], []]  # node 0 (global rank 0) only
    assert stats["epochs_trained"] == 1
    scores = TwoTowerRecommender.load(tmp_path / "model").score(["u1", "u2"], ["i1", "i2", "i3"])
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
