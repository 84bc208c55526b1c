"""Run qwen-vl-finetune's ``train_qwen.py`` with a labelloop dataset registered on the fly.

qwen-vl-finetune only knows datasets listed in ``qwenvl/data/__init__.py``'s ``data_dict``;
registering normally means editing that file per version. This entry point imports the package,
adds the ``data_dict`` entry from labelloop's ``registration.json`` and then runs
``qwenvl.train.train_qwen`` as ``__main__`` with the remaining arguments, so the upstream
checkout stays untouched. Used as the production training command, under ``torchrun``::

    torchrun --nproc_per_node=8 -m labelloop.training.qwen_entry \\
        --registration {registration} --qwen-root /opt/Qwen3-VL/qwen-vl-finetune -- \\
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --dataset_use {dataset_use} \\
        --min_pixels {min_pixels} --max_pixels {max_pixels} --output_dir {output_dir} ...
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description="train_qwen.py with a labelloop dataset in data_dict")
    ap.add_argument("--registration", type=Path, required=True, help="labelloop registration.json")
    ap.add_argument("--qwen-root", type=Path, required=True, help="the qwen-vl-finetune folder")
    args = ap.parse_args(ours)
    sys.path.insert(0, str(args.qwen_root.resolve()))
    import qwenvl.data  # type: ignore[import-not-found]

    registration = json.loads(args.registration.read_text("utf-8"))
    qwenvl.data.data_dict.update(registration["data_dict"])
    sys.argv = [str(args.qwen_root / "qwenvl" / "train" / "train_qwen.py"), *rest]
    runpy.run_module("qwenvl.train.train_qwen", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
