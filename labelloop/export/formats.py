"""Serialise samples into the three fine-tuning formats, exactly as each trainer reads them.

* **Qwen-VL** (``qwen-vl-finetune``): ``{"image": str | [str], "conversations": [{"from": "human" |
  "gpt", "value"}]}``; one ``<image>`` per image in human turns; no system turn (the trainer would
  train it as an assistant turn). Image paths are relative to the registered ``data_path``.
* **LLaMA-Factory** ShareGPT: ``{"messages": [{"role": "user" | "assistant", "content"}],
  "images": [...]}`` plus a ``dataset_info.json`` entry (``formatting: sharegpt`` with the
  role/content tags); paths relative to the dataset dir (its default ``media_dir``).
* **ms-swift** jsonl: ``{"messages", "images", "objects"?}``; boxes via ``<bbox>`` and
  ``objects.bbox`` in original pixels (``bbox_type: real``), converted by ms-swift per model.
"""

from __future__ import annotations

from typing import Any

from labelloop.export.samples import Sample

FORMATS = ("qwen", "llamafactory", "swift")
SPLITS = ("train", "val")
FILE_NAMES = {
    "qwen": "qwen_{split}.json",
    "llamafactory": "llamafactory_{split}.json",
    "swift": "swift_{split}.jsonl",
}
LLAMAFACTORY_INFO = "dataset_info.json"


def file_name(fmt: str, split: str) -> str:
    return FILE_NAMES[fmt].format(split=split)


def qwen_entry(s: Sample) -> dict[str, Any]:
    if s.videos:  # qwen-vl-finetune: "video" beside "conversations", one <video> per file
        return {
            "video": s.videos[0] if len(s.videos) == 1 else list(s.videos),
            "conversations": [{"from": "human", "value": s.question}, {"from": "gpt", "value": s.answer}],
        }
    return {
        "image": s.images[0] if len(s.images) == 1 else list(s.images),
        "conversations": [{"from": "human", "value": s.question}, {"from": "gpt", "value": s.answer}],
    }


def llamafactory_entry(s: Sample) -> dict[str, Any]:
    media = {"videos": list(s.videos)} if s.videos else {"images": list(s.images)}
    return {
        "messages": [{"role": "user", "content": s.question}, {"role": "assistant", "content": s.answer}],
        **media,
    }


def swift_entry(s: Sample) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "messages": [{"role": "user", "content": s.question}, {"role": "assistant", "content": s.swift.text}],
        **({"videos": list(s.videos)} if s.videos else {"images": list(s.images)}),
    }
    objects = s.swift.objects()
    if objects is not None:
        entry["objects"] = objects
    return entry


ENTRY_BUILDERS = {"qwen": qwen_entry, "llamafactory": llamafactory_entry, "swift": swift_entry}


def llamafactory_dataset_info(dataset_name: str, splits: dict[str, int], media: str = "image") -> dict[str, Any]:
    """``dataset_info.json`` with one entry per non-empty split (``<name>_train``, ``<name>_val``);
    video datasets map the ``videos`` column instead of ``images``."""
    media_column = "videos" if media == "video" else "images"
    info: dict[str, Any] = {}
    for split, n in splits.items():
        if n == 0:
            continue
        info[f"{dataset_name}_{split}"] = {
            "file_name": file_name("llamafactory", split),
            "formatting": "sharegpt",
            "columns": {"messages": "messages", media_column: media_column},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    return info
