"""Load an exported Qwen-VL dataset the way qwen-vl-finetune does, and fail on a broken one.

    python -m labelloop.training.check_dataset ANNOTATION_PATH DATA_PATH

The default training "command" where there is no GPU, and a cheap pre-flight before a real run.
It mirrors ``qwenvl/data/data_processor.py``: ``.jsonl`` is read line by line, anything else with
``json.load``; ``image`` is a str or a list; in human turns each ``<image>``/``<video>`` consumes
the next file and leftovers are an error; every file is ``Path(data_path) / name``. On top it
checks what silently ruins a fine-tune: turns must alternate human/gpt (a ``system`` turn would be
trained as an assistant turn), every image must open with PIL, JSON answers' boxes must lie inside
the frame the trainer resizes the image to, and, when ``manifest.json`` sits in DATA_PATH, every
file read must match its sha256. Exit status 0 = loadable, 1 = broken (problems on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from labelloop.prelabel.qwen_resize import smart_resize

MAX_SHOWN = 50
#: keys whose values are boxes; the manifest names the spec's own (``coordinates.box_keys``)
BOX_KEYS = frozenset({"bbox_2d", "bbox"})


def load_annotations(path: Path) -> list[Any]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _boxes(obj: Any, keys: frozenset[str]) -> Iterator[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and isinstance(v, list):
                yield v
            else:
                yield from _boxes(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            yield from _boxes(v, keys)


class DatasetChecker:
    def __init__(self, data_path: Path, manifest: dict[str, Any] | None) -> None:
        self.data_path = data_path
        self.manifest = manifest
        self.files = (manifest or {}).get("files", {})
        self.coords = (manifest or {}).get("coordinates")
        self.box_keys = BOX_KEYS | frozenset((self.coords or {}).get("box_keys") or [])
        self.problems: list[str] = []
        self.images_opened = 0
        self._sizes: dict[str, tuple[int, int] | None] = {}

    def _verify_sha(self, rel: str, data: bytes) -> None:
        meta = self.files.get(rel)
        if meta is not None and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            self.problems.append(f"{rel}: content differs from manifest.json")

    def check_file(self, path: Path) -> None:
        try:
            rel = path.resolve().relative_to(self.data_path.resolve()).as_posix()
        except ValueError:
            return
        self._verify_sha(rel, path.read_bytes())

    def video_present(self, name: str) -> None:
        """The trainer opens videos with decord/torchvision; here: the file exists and matches the
        manifest (decoding is the trainer's; ingest already proved each video decodes)."""
        path = self.data_path / name
        if not path.is_file():
            self.problems.append(f"video {name}: not found under {self.data_path}")
            return
        self._verify_sha(name, path.read_bytes())

    def image_size(self, name: str) -> tuple[int, int] | None:
        """Open like the trainer (EXIF-transposed, RGB, fully decoded); (w, h) or None."""
        if name not in self._sizes:
            path = self.data_path / name
            try:
                data = path.read_bytes()
                with Image.open(path) as img:
                    img = ImageOps.exif_transpose(img).convert("RGB")
                    img.load()
                    self._sizes[name] = img.size
                self.images_opened += 1
                self._verify_sha(name, data)
            except Exception as e:
                self.problems.append(f"image {name}: cannot be opened: {type(e).__name__}: {e}")
                self._sizes[name] = None
        return self._sizes[name]

    def check_sample(self, i: int, item: Any) -> None:
        where = f"sample {i}"
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            self.problems.append(f"{where}: no conversations list")
            return
        images = item.get("image") or []
        images = [images] if isinstance(images, str) else images
        videos = item.get("video") or []
        videos = [videos] if isinstance(videos, str) else videos
        pool, vpool = list(images), list(videos)
        turns = item["conversations"]
        if len(turns) < 2 or len(turns) % 2:
            self.problems.append(f"{where}: {len(turns)} turns, expected human/gpt pairs")
        answers: list[str] = []
        for t, turn in enumerate(turns):
            role = turn.get("from") if isinstance(turn, dict) else None
            text = turn.get("value") if isinstance(turn, dict) else None
            want = "human" if t % 2 == 0 else "gpt"
            if role != want:
                self.problems.append(f"{where}: turn {t} is from {role!r}, expected {want!r}")
            if not isinstance(text, str):
                self.problems.append(f"{where}: turn {t} has no text value")
                continue
            if role == "human":
                for seg in re.split(r"(<image>|<video>)", text):
                    if seg == "<image>" and not pool:
                        self.problems.append(f"{where}: more <image> placeholders than images")
                    elif seg == "<image>":
                        pool.pop(0)
                    elif seg == "<video>" and not vpool:
                        self.problems.append(f"{where}: more <video> placeholders than videos")
                    elif seg == "<video>":
                        vpool.pop(0)
            else:
                if "<image>" in text:
                    self.problems.append(f"{where}: <image> inside an answer")
                answers.append(text)
        if pool:
            self.problems.append(f"{where}: {len(pool)} image(s) not consumed by <image> placeholders")
        if vpool:
            self.problems.append(f"{where}: {len(vpool)} video(s) not consumed by <video> placeholders")
        for name in videos:
            self.video_present(name)
        sizes = [self.image_size(name) for name in images]
        if self.coords and len(images) == 1 and sizes[0] is not None:
            self._check_boxes(where, answers, sizes[0])

    def _check_boxes(self, where: str, answers: list[str], size: tuple[int, int]) -> None:
        assert self.coords is not None
        if self.coords["qwen_coordinate_mode"] == "absolute_resized":
            h, w = smart_resize(
                size[1], size[0], min_pixels=self.coords["min_pixels"], max_pixels=self.coords["max_pixels"]
            )
        else:
            w, h = 1000, 1000
        for text in answers:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                continue  # text answers (captions, Markdown) carry no boxes
            for box in _boxes(parsed, self.box_keys):
                ok = len(box) == 4 and all(isinstance(v, int | float) for v in box)
                if not ok or not (0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h):
                    self.problems.append(f"{where}: box {box} outside the {w}x{h} frame the trainer sees")


def check_dataset(annotation_path: Path, data_path: Path) -> tuple[int, list[str], int]:
    """(samples, problems, images opened) of one annotation file."""
    manifest_path = data_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text("utf-8")) if manifest_path.is_file() else None
    checker = DatasetChecker(data_path, manifest)
    if manifest is not None:
        checker.check_file(annotation_path)
    try:
        samples = load_annotations(annotation_path)
    except (OSError, json.JSONDecodeError) as e:
        return 0, [f"{annotation_path}: cannot be read: {e}"], 0
    if not isinstance(samples, list):
        return 0, [f"{annotation_path}: not a list of samples"], 0
    for i, item in enumerate(samples):
        checker.check_sample(i, item)
    return len(samples), checker.problems, checker.images_opened


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("annotation_path", type=Path)
    ap.add_argument("data_path", type=Path)
    args = ap.parse_args(argv)
    n, problems, opened = check_dataset(args.annotation_path, args.data_path)
    summary = {"annotation_path": str(args.annotation_path), "samples": n, "images_opened": opened}
    summary["problems"] = len(problems)
    print(json.dumps(summary))
    for p in problems[:MAX_SHOWN]:
        print(p, file=sys.stderr)
    if len(problems) > MAX_SHOWN:
        print(f"... and {len(problems) - MAX_SHOWN} more", file=sys.stderr)
    return 1 if problems or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
