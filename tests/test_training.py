"""Training trigger: registration, launchers, and the GPU-free dataset check on good and tampered data."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_export_support import make_settings, vehicle_items

from labelloop.config import Settings, StorageSettings
from labelloop.db import Database, TrainingRun
from labelloop.export import ExportResult, VersionError, export_dataset
from labelloop.specs import SpecRegistry
from labelloop.storage import LocalStore, ObjectStore
from labelloop.training import LaunchError, launch_training, prepare_registration, render_command
from labelloop.training.check_dataset import check_dataset
from labelloop.validation import validate_spec

VEHICLE = SpecRegistry().get("vehicle_extraction")


def _export(db: Database, store: ObjectStore, settings: Settings, n: int = 6) -> ExportResult:
    vehicle_items(db, store, n)
    summary = validate_spec(db, store, settings, VEHICLE)
    result = export_dataset(db, store, settings, VEHICLE, validation_run_id=summary.validation_run_id)
    assert result.created
    return result


@pytest.fixture
def exported(sqlite_db: Database, tmp_path: Path) -> tuple[Database, LocalStore, Settings, ExportResult]:
    settings = make_settings(tmp_path, val_fraction=0.0)  # every record in train: one file to check
    store = LocalStore(settings.storage.root)
    return sqlite_db, store, settings, _export(sqlite_db, store, settings)


def _runs(db: Database) -> list[TrainingRun]:
    with db.session() as s:
        return list(s.scalars(select(TrainingRun).order_by(TrainingRun.id)))


def test_registration_is_what_qwen_vl_finetune_needs(exported) -> None:  # type: ignore[no-untyped-def]
    _db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    version_dir = settings.storage.root.resolve() / result.prefix  # type: ignore[operator]
    assert reg.name == reg.dataset_use == "labelloop_vehicle_extraction_v0001"
    assert reg.data_dict_entry() == {
        "annotation_path": str(version_dir / "qwen_train.json"),
        "data_path": str(version_dir),
    }
    assert (reg.min_pixels, reg.max_pixels) == (settings.export.min_pixels, settings.export.max_pixels)
    run_dir = Path(reg.run_dir)
    doc = json.loads((run_dir / "registration.json").read_text())
    assert doc["data_dict"] == {reg.name: reg.data_dict_entry()} and doc["dataset_use"] == reg.name
    # the snippet is valid Python that registers the dataset in qwen-vl-finetune's data_dict
    data_dict: dict[str, Any] = {}
    exec((run_dir / "qwen_data_dict.py").read_text(), {"data_dict": data_dict})
    assert data_dict == {reg.name: reg.data_dict_entry()}


def test_default_launcher_checks_the_dataset_and_records_success(exported) -> None:  # type: ignore[no-untyped-def]
    db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    launched = launch_training(db, settings, reg, airflow_run_id="manual__1")
    assert launched.status == "succeeded" and launched.return_code == 0, launched.log_tail
    assert '"samples": 6' in launched.log_tail and '"problems": 0' in launched.log_tail
    (run,) = _runs(db)
    assert (run.status, run.return_code, run.launcher) == ("succeeded", 0, "subprocess")
    assert run.dataset_uri == result.uri and run.dataset_version_id == result.dataset_version_id
    assert run.airflow_run_id == "manual__1" and run.finished_at is not None
    assert run.command is not None and "labelloop.training.check_dataset" in run.command


@pytest.mark.parametrize("tamper", ["delete_image", "second_placeholder", "system_turn", "box_outside"])
def test_the_dataset_check_fails_on_a_tampered_export(exported, tamper: str) -> None:  # type: ignore[no-untyped-def]
    db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    annotations = Path(reg.annotation_path)
    samples = json.loads(annotations.read_text())
    if tamper == "delete_image":
        (Path(reg.data_path) / samples[2]["image"]).unlink()
    elif tamper == "second_placeholder":
        human = samples[1]["conversations"][0]
        human["value"] = "<image>\n<image>\n" + human["value"]
    elif tamper == "system_turn":
        samples[0]["conversations"][0]["from"] = "system"
    else:
        answer = json.loads(samples[0]["conversations"][1]["value"])
        answer["vehicle_box"] = [0, 0, 2000, 100]
        samples[0]["conversations"][1]["value"] = json.dumps(answer)
    if tamper != "delete_image":
        annotations.write_text(json.dumps(samples))
    launched = launch_training(db, settings, reg)
    assert launched.status == "failed" and launched.return_code == 1
    expected = {
        "delete_image": "cannot be opened",
        "second_placeholder": "more <image> placeholders than images",
        "system_turn": "turn 0 is from 'system'",
        "box_outside": "outside the 1008x756 frame",
    }[tamper]
    assert expected in launched.log_tail
    if tamper != "delete_image":
        assert "qwen_train.json: content differs from manifest.json" in launched.log_tail
    assert _runs(db)[-1].status == "failed"


def test_check_dataset_without_a_manifest_still_loads_like_the_trainer(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    copy = tmp_path / "copy"
    copy.mkdir()
    samples = json.loads(Path(reg.annotation_path).read_text())
    (copy / "ann.jsonl").write_text("\n".join(json.dumps(s) for s in samples))
    n, problems, opened = check_dataset(copy / "ann.jsonl", Path(reg.data_path))
    assert (n, problems, opened) == (6, [], 6)
    n, problems, _ = check_dataset(copy / "ann.jsonl", copy)  # images not under this data_path
    assert n == 6 and len(problems) == 6 and all("cannot be opened" in p for p in problems)


def test_prepare_refuses_a_version_whose_manifest_changed(exported) -> None:  # type: ignore[no-untyped-def]
    _db, store, settings, result = exported
    summary = {**result.as_dict(), "manifest_sha256": "0" * 64}
    with pytest.raises(VersionError, match="refusing to train"):
        prepare_registration(store, settings, summary)


def test_command_template_keeps_paths_with_spaces_as_one_argument(exported) -> None:  # type: ignore[no-untyped-def]
    _db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    reg.data_path = "/data/my dataset"
    template = "torchrun --nproc_per_node=8 train.py --dataset_use {dataset_use} --data {data_path}"
    argv = render_command(template + " --max_pixels {max_pixels}", reg)
    assert argv[-3:] == ["/data/my dataset", "--max_pixels", str(settings.export.max_pixels)]
    with pytest.raises(LaunchError, match="unknown field 'gpus'"):
        render_command("train {gpus}", reg)


def test_http_launcher_posts_the_registration(exported) -> None:  # type: ignore[no-untyped-def]
    db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b'{"job": "abc"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings.training.launcher = "http"
        settings.training.webhook_url = f"http://127.0.0.1:{server.server_port}/train"
        launched = launch_training(db, settings, reg, summary=result.as_dict())
    finally:
        server.shutdown()
    assert launched.status == "submitted" and launched.return_code == 202
    assert received[0]["registration"]["dataset_use"] == reg.dataset_use
    assert received[0]["dataset"]["version"] == "v0001"
    settings.training.launcher = "kubernetes"
    with pytest.raises(LaunchError, match="KubernetesPodOperator"):
        launch_training(db, settings, reg)


def test_qwen_entry_registers_the_dataset_for_the_real_trainer_layout(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _db, store, settings, result = exported
    reg = prepare_registration(store, settings, result.as_dict())
    # a stand-in for the qwen-vl-finetune checkout: data_dict lookup as upstream, a train script
    root = tmp_path / "qwen-vl-finetune"
    (root / "qwenvl" / "data").mkdir(parents=True)
    (root / "qwenvl" / "train").mkdir(parents=True)
    (root / "qwenvl" / "__init__.py").write_text("")
    (root / "qwenvl" / "train" / "__init__.py").write_text("")
    (root / "qwenvl" / "data" / "__init__.py").write_text(
        "data_dict = {}\n"
        "def data_list(names):\n"
        "    out = []\n"
        "    for n in names:\n"
        "        if n not in data_dict:\n"
        "            raise ValueError(f'do not find {n}')\n"
        "        out.append(data_dict[n])\n"
        "    return out\n"
    )
    (root / "qwenvl" / "train" / "train_qwen.py").write_text(
        "import json, sys\n"
        "from qwenvl.data import data_list\n"
        "if __name__ == '__main__':\n"
        "    use = sys.argv[sys.argv.index('--dataset_use') + 1]\n"
        "    out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "    (cfg,) = data_list(use.split(','))\n"
        "    n = len(json.load(open(cfg['annotation_path'])))\n"
        "    open(out, 'w').write(json.dumps({'samples': n, 'data_path': cfg['data_path']}))\n"
    )
    out = tmp_path / "trained.json"
    cmd = [
        sys.executable,
        "-m",
        "labelloop.training.qwen_entry",
        "--registration",
        reg.registration_path,
        "--qwen-root",
        str(root),
        "--",
        "--dataset_use",
        reg.dataset_use,
        "--output_dir",
        str(out),
    ]
    subprocess.run(cmd, check=True, cwd=tmp_path)
    assert json.loads(out.read_text()) == {"samples": 6, "data_path": reg.data_path}


@pytest.mark.s3
def test_versions_on_s3_are_downloaded_and_verified(
    sqlite_db: Database, tmp_path: Path, s3_settings: StorageSettings
) -> None:
    from labelloop.storage.s3 import S3Store

    settings = make_settings(tmp_path, val_fraction=0.0)
    settings.storage = s3_settings
    store = S3Store(s3_settings)
    result = _export(sqlite_db, store, settings, n=3)
    assert result.uri == f"s3://{s3_settings.bucket}/datasets/vehicle_extraction/v0001"
    reg = prepare_registration(store, settings, result.as_dict())
    local = Path(reg.data_path)
    # the version folder, with the pool images beside it, so ../images/<sha>.png resolves
    assert local == (settings.training.workdir / "vehicle_extraction" / "v0001" / "dataset" / "v0001").resolve()
    assert (local / "manifest.json").is_file() and len(list((local.parent / "images").iterdir())) == 3
    assert not (local / "images").exists()
    launched = launch_training(sqlite_db, settings, reg)
    assert launched.status == "succeeded", launched.log_tail
    # a second preparation reuses the verified copy
    assert prepare_registration(store, settings, result.as_dict()).data_path == reg.data_path
