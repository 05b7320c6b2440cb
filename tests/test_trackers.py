"""report_to: the real CLI on real Ray logs each finished cell and the decision to a real local MLflow file store,
to TensorBoard event files and to W&B in offline mode; each is read back with the tracker's own reader (MLflow's
client, TensorBoard's EventAccumulator, W&B's record protobufs). A tracker that cannot be reached never fails a
cell and is reported once."""

import glob
import json
import socket
import struct

import pandas as pd
import pytest

from ablate.handoff.backends import trl_name

from conftest import ablate_cli, small_matrix


def wandb_records(path: str) -> list:
    """The records of an offline W&B run file (.wandb): W&B's LevelDB-style log of its own Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST continue it
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


def wandb_runs(root) -> list[dict]:
    runs = []
    for f in glob.glob(f"{root}/wandb/offline-run-*/run-*.wandb"):
        run = {"history": [], "summary": {}, "artifacts": []}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type)
                run["config"] = {c.key: json.loads(c.value_json) for c in r.run.config.update}
            elif kind == "history":
                run["history"].append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                )
            elif kind == "summary":
                run["summary"].update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
            elif kind == "artifact":
                run["artifacts"].append((r.artifact.type, [m.path for m in r.artifact.manifest.contents]))
        runs.append(run)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    (tmp / "m.yaml").write_text(json.dumps(small_matrix(report_to=["mlflow", "tensorboard", "wandb"])))
    env = dict(
        MLFLOW_TRACKING_URI=(tmp / "mlruns").as_uri(),
        MLFLOW_ALLOW_FILE_STORE="true",  # MLflow 3 keeps the file store behind this switch
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp / "wb"),
        WANDB_PROJECT="ablate-test",
        ABLATE_TENSORBOARD_DIR=str(tmp / "tb"),
    )
    r = ablate_cli("run", "m.yaml", "--results", "res", cwd=tmp, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    again = ablate_cli("run", "m.yaml", "--results", "res", cwd=tmp, **env)  # nothing to train: decision again
    assert again.returncode == 0, again.stderr
    cells = pd.read_parquet(tmp / "res" / "t" / "cells.parquet")
    logs = {
        cid: tuple(
            [json.loads(x) for x in (tmp / "res" / "t" / "cells" / cid / n).read_text().splitlines()]
            for n in ("train_log.jsonl", "eval_log.jsonl")
        )
        for cid in cells["cell_id"]
    }
    return tmp, r, cells, logs


def test_mlflow_file_store_has_a_parent_and_one_run_per_cell(tracked, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tmp, r, cells, logs = tracked
    assert "warning" not in r.stderr, r.stderr
    client = MlflowClient(tracking_uri=(tmp / "mlruns").as_uri())
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("ablate.role") == "matrix"]
    assert len(parents) == 1, "a second `ablate run` on the same results reuses the parent run"
    parent = parents[0]
    assert parent.info.run_name == "t" and parent.info.status == "FINISHED"
    children = {x.data.tags["ablate.cell_id"]: x for x in runs if x.data.tags.get("ablate.role") == "cell"}
    assert set(children) == set(cells["cell_id"])
    for row in cells.itertuples():
        run = children[row.cell_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.run_name == row.label
        assert run.data.params["objective"] == row.objective and run.data.params["lora_rank"] == "4"
        assert (
            run.data.params["train.batch_size"] == "16" and run.data.params["data.hashes.train"] == row.train_data_hash
        )
        train, evals = logs[row.cell_id]
        hist = client.get_metric_history(run.info.run_id, "rewards/margins")  # TRL's MLflowCallback names
        assert [(m.step, m.value) for m in hist] == [(x["step"], pytest.approx(x["rewards/margins"])) for x in train]
        hist = client.get_metric_history(run.info.run_id, "eval_accuracy")
        assert [(m.step, m.value) for m in hist] == [(x["step"], pytest.approx(x["eval_accuracy"])) for x in evals]
        assert run.data.metrics["heldout_accuracy"] == pytest.approx(row.heldout_accuracy)
        files = [f.path for f in client.list_artifacts(run.info.run_id, "adapter")]
        assert "adapter/adapter_model.safetensors" in files and run.info.status == "FINISHED"
    report = (tmp / "res" / "t" / "report.md").read_text()
    local = client.download_artifacts(parent.info.run_id, "report.md", str(tmp))
    assert open(local).read() == report
    assert {f.path for f in client.list_artifacts(parent.info.run_id)} >= {"report.md", "cells.parquet"}
    assert parent.data.params["rule"] == "recipe" and parent.data.tags["ablate.winner"]


def test_tensorboard_event_files_read_back_with_tensorboard(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    tmp, _, cells, logs = tracked
    for row in cells.itertuples():
        (d,) = glob.glob(str(tmp / "tb" / "t" / f"*-{row.cell_id}"))
        acc = EventAccumulator(d, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        train, evals = logs[row.cell_id]
        got = [(e.step, e.value) for e in acc.Scalars("train/loss")]  # TRL's TensorBoardCallback names
        assert got == [(x["step"], pytest.approx(x["loss"], rel=1e-6)) for x in train]
        got = [(e.step, e.value) for e in acc.Scalars(trl_name("eval_rewards/margins"))]
        assert got == [(x["step"], pytest.approx(x["eval_rewards/margins"], rel=1e-6, abs=1e-7)) for x in evals]
        assert acc.Scalars("summary/heldout_accuracy")[-1].value == pytest.approx(row.heldout_accuracy)
        assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
    acc = EventAccumulator(str(tmp / "tb" / "t" / "decision"), size_guidance={"tensors": 0})
    acc.Reload()
    text = tensor_util.make_ndarray(acc.Tensors("report")[-1].tensor_proto).item().decode()
    assert text == (tmp / "res" / "t" / "report.md").read_text()


def test_wandb_offline_runs_have_group_curves_summary_and_adapter(tracked):
    tmp, _, cells, logs = tracked
    runs = wandb_runs(tmp / "wb")
    assert {r["group"] for r in runs} == {"t"} and len(runs) == len(cells) + 2
    decisions = [r for r in runs if r["job_type"] == "decision"]
    assert len(decisions) == 2 and all(r["artifacts"][0][0] == "report" for r in decisions)  # one per `ablate run`
    for row in cells.itertuples():
        (run,) = [r for r in runs if r["name"] == row.label]
        assert run["job_type"] == "cell" and run["config"]["objective"] == row.objective
        train, evals = logs[row.cell_id]
        got = [(h["train/global_step"], h["train/loss"]) for h in run["history"] if "train/loss" in h]
        assert got == [(x["step"], pytest.approx(x["loss"])) for x in train]
        got = [(h["train/global_step"], h["eval/accuracy"]) for h in run["history"] if "eval/accuracy" in h]
        assert got == [(x["step"], pytest.approx(x["eval_accuracy"])) for x in evals]
        assert run["summary"]["heldout_accuracy"] == pytest.approx(row.heldout_accuracy)
        (kind, files), *_ = run["artifacts"]
        assert kind == "model" and "adapter_model.safetensors" in files


def test_unreachable_tracker_never_fails_a_cell_and_is_reported_once(tmp_path):
    (tmp_path / "m.yaml").write_text(json.dumps(small_matrix(report_to=["mlflow", "tensorboard"])))
    env = dict(
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        ABLATE_TENSORBOARD_DIR=str(tmp_path / "tb"),
    )
    r = ablate_cli("run", "m.yaml", "--results", "res", cwd=tmp_path, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    cells = pd.read_parquet(tmp_path / "res" / "t" / "cells.parquet")
    assert (cells["status"] == "done").all()
    assert r.stderr.count("report_to mlflow failed") == 1, r.stderr
    assert "Cells and results are unaffected" in r.stderr and "Traceback" not in r.stderr
    assert len(glob.glob(str(tmp_path / "tb" / "t" / "*-*"))) == len(cells)  # the other tracker went on


def test_missing_tracker_package_is_a_validation_error(tmp_path, monkeypatch):
    import importlib.util

    from ablate.errors import UserError
    from ablate.matrix.plan import make_plan

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    (tmp_path / "m.yaml").write_text(json.dumps(small_matrix(report_to=["wandb"])))
    with pytest.raises(UserError, match=r"report_to: wandb: the wandb package is not installed here; pip install"):
        make_plan(tmp_path / "m.yaml")
