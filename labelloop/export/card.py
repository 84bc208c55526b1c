"""The dataset card: ``README.md`` in the version folder, with PNG plots under ``card/``.

Whoever picks a version for training should see, without running anything, how big it is, where
its labels came from (human review, audit, auto-accept; which model versions), how the labels are
distributed (choice fields, grounding labels, block types) and how confident the model was. Plots
are drawn with matplotlib's Agg canvas on bare ``Figure`` objects (no pyplot global state), so
they render headless and in threads.
"""

from __future__ import annotations

import io
import statistics
from array import array
from collections import Counter, defaultdict
from typing import Any

from labelloop.specs import TaskSpec

TOP_LABELS = 30


def _doubles() -> array[float]:  # a named factory: CardStats crosses processes (pickled)
    return array("d")


class CardStats:
    """Accumulates what the card shows while records stream through the export."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.provenance: Counter[str] = Counter()
        self.model_versions: Counter[str] = Counter()
        self.annotators: set[str] = set()
        self.split_records: Counter[str] = Counter()
        self.split_samples: Counter[str] = Counter()
        self.distributions: dict[str, Counter[str]] = defaultdict(Counter)
        #: typed arrays (8 bytes a value): 100k records must not cost 100k float objects
        self.confidence: dict[str, array[float]] = defaultdict(_doubles)
        #: documents: pages by provenance, and pages accepted under an uncalibrated threshold
        self.page_provenance: Counter[str] = Counter()
        self.uncalibrated_pages = 0
        #: videos: seconds per record, and per event (end - start)
        self.durations: list[float] = []
        self.event_durations: list[float] = []
        self.events_per_record: list[int] = []

    def merge(self, other: CardStats) -> None:
        """Add another shard's statistics (shards are merged in record order)."""
        self.provenance.update(other.provenance)
        self.model_versions.update(other.model_versions)
        self.annotators |= other.annotators
        self.split_records.update(other.split_records)
        self.split_samples.update(other.split_samples)
        for name, counts in other.distributions.items():
            self.distributions[name].update(counts)
        for prov, values in other.confidence.items():
            self.confidence[prov].extend(values)
        self.page_provenance.update(other.page_provenance)
        self.uncalibrated_pages += other.uncalibrated_pages
        self.durations += other.durations
        self.event_durations += other.event_durations
        self.events_per_record += other.events_per_record

    def add(
        self,
        *,
        split: str,
        provenance: str,
        model: str | None,
        model_version: str | None,
        annotator: str | None,
        confidence: float | None,
        record: dict[str, Any],
        n_samples: int,
        duration_s: float | None = None,
        pages: list[dict[str, Any]] | None = None,
    ) -> None:
        self.provenance[provenance] += 1
        self.model_versions[f"{model or '?'} {model_version or ''}".strip()] += 1
        if annotator:
            self.annotators.add(annotator)
        self.split_records[split] += 1
        self.split_samples[split] += n_samples
        if confidence is not None:
            self.confidence[provenance].append(float(confidence))
        if duration_s is not None:
            self.durations.append(float(duration_s))
        for page in pages or []:
            self.page_provenance[str(page.get("provenance"))] += 1
            self.uncalibrated_pages += bool(page.get("uncalibrated"))
        for name, f in self.spec.fields.items():
            value = record.get(name)
            if f.kind == "choice" and value is not None:
                self.distributions[name][str(value)] += 1
            elif f.kind == "objects" and isinstance(value, list):
                self.distributions[f"{name} labels"].update(str(o.get("label")) for o in value)
            elif f.kind == "events" and isinstance(value, list):
                self.distributions[f"{name} labels"].update(str(e.get("label")) for e in value)
                self.events_per_record.append(len(value))
                self.event_durations += [float(e["end"]) - float(e["start"]) for e in value]
            elif f.kind == "blocks":
                types = self.distributions["block types"]
                for page in record.get("pages") or []:
                    types.update(str(b.get("type")) for b in page.get("blocks") or [])

    @property
    def n_records(self) -> int:
        return sum(self.split_records.values())


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def bar_plot(title: str, counts: Counter[str]) -> bytes:
    from matplotlib.figure import Figure

    top = counts.most_common(TOP_LABELS)
    fig = Figure(figsize=(7, max(2.0, 0.3 * len(top) + 1)))
    ax = fig.subplots()
    labels = [k for k, _ in top][::-1]
    ax.barh(labels, [v for _, v in top][::-1], color="#4c6ef5")
    ax.set_title(title)
    ax.set_xlabel("count")
    fig.tight_layout()
    return _png(fig)


def confidence_plot(confidence: dict[str, array[float]]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    provs = sorted(confidence)
    ax.hist([list(confidence[p]) for p in provs], bins=20, range=(0.0, 1.0), stacked=True, label=provs)
    ax.set_title("record confidence (min over fields) by provenance")
    ax.set_xlabel("confidence")
    ax.set_ylabel("records")
    if provs:
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def waiting_section(n_waiting: int, waiting: list[dict[str, Any]]) -> list[str]:
    """The card's list of documents left out because some of their pages are not final yet."""
    out = ["", "## Documents still waiting", ""]
    if not n_waiting:
        return [*out, "None: every document with a record has all its pages final."]
    out.append(
        f"{n_waiting} document(s) are not in this version: some of their pages are not reviewed yet "
        "(a document enters a version only when every page is final)."
    )
    out.append("")
    rows = [
        (
            w["record_id"],
            f"`{str(w['item_sha256'])[:16]}`",
            w.get("source") or "",
            ", ".join(str(p) for p in w["final_pages"]) or "none",
            ", ".join(f"{p} ({st})" for p, st in w["waiting_pages"].items()) or "?",
        )
        for w in waiting
    ]
    out.append(_table(("record", "item", "source", "final pages", "waiting pages (status)"), rows))
    if n_waiting > len(waiting):
        out += ["", f"... and {n_waiting - len(waiting)} more (`labelloop status`)."]
    return out


def render_card(
    stats: CardStats, meta: dict[str, Any], *, waiting: list[dict[str, Any]] | None = None
) -> tuple[str, dict[str, bytes]]:
    """(README.md text, {"card/<name>.png": bytes}); ``meta`` is the manifest without files,
    ``waiting`` the documents still partly reviewed (documents only)."""
    spec = stats.spec
    n = stats.n_records or 1
    plots: dict[str, bytes] = {}
    counts = meta["counts"]
    coords = meta["coordinates"]
    out = [
        f"# {spec.name} {meta['version']}",
        "",
        spec.description or "",
        "",
        f"Created {meta['created_at']} by labelloop from validation run {meta['validation_run_id']}. "
        f"Content hash `{meta['content_hash'][:16]}`. `manifest.json` lists every file with its sha256.",
        "",
        "## Contents",
        "",
        _table(
            ("split", "records", "samples"),
            [(s, stats.split_records[s], stats.split_samples[s]) for s in ("train", "val")]
            + [("total", counts["records"], counts["samples"])],
        ),
        "",
        f"{counts['images']} {'videos' if spec.media == 'video' else 'images'}"
        + (
            ", referenced in the spec's image pool (`../images/`, shared by every version; "
            f"{counts.get('images_stored', 0)} new in this version)"
            if meta.get("image_layout", "pool") == "pool"
            else " in this folder's `images/`"
        )
        + ". Split by item (salted sha256), "
        "validation share "
        f"{meta['val_fraction']:.0%}; all pages of a document stay in one split.",
        "",
        "## Provenance",
        "",
        _table(
            ("provenance", "records", "share"),
            [(p, c, f"{c / n:.1%}") for p, c in sorted(stats.provenance.items())],
        ),
        "",
        "human: corrected or confirmed in review; audited: an auto-accept sampled for review; "
        "auto: accepted on model confidence.",
        "",
        _table(("model version", "records"), sorted(stats.model_versions.items())),
        "",
        f"{len(stats.annotators)} distinct annotator(s).",
    ]
    if stats.page_provenance:
        n_pages = sum(stats.page_provenance.values()) or 1
        out += [
            "",
            "Per page (documents are reviewed a page at a time; `provenance.jsonl` has each page's "
            "provenance, annotator and annotation):",
            "",
            _table(
                ("page provenance", "pages", "share"),
                [(p, c, f"{c / n_pages:.1%}") for p, c in sorted(stats.page_provenance.items())],
            ),
        ]
        if stats.uncalibrated_pages:
            out += ["", f"{stats.uncalibrated_pages} page(s) auto-accepted under an uncalibrated manual threshold."]
    if spec.media == "document":
        out += waiting_section(int(counts.get("documents_waiting", 0)), waiting or [])
    if stats.distributions:
        out += ["", "## Label distributions"]
        for title, counter in sorted(stats.distributions.items()):
            name = f"card/{_slug(title)}.png"
            plots[name] = bar_plot(title, counter)
            total = sum(counter.values()) or 1
            out += [
                "",
                f"### {title}",
                "",
                _table(
                    ("value", "count", "share"),
                    [(k, v, f"{v / total:.1%}") for k, v in counter.most_common()],
                ),
                "",
                f"![{title}]({name})",
            ]
    if stats.durations or stats.events_per_record:
        out += ["", "## Video", ""]
        if stats.durations:
            d = stats.durations
            out.append(
                f"{len(d)} videos, {sum(d) / 3600:.2f} h in all; duration min {min(d):.1f} s, median "
                f"{statistics.median(d):.1f} s, max {max(d):.1f} s."
            )
        if stats.events_per_record:
            n_ev, ed = sum(stats.events_per_record), stats.event_durations
            line = f"{n_ev} events, {n_ev / len(stats.events_per_record):.2f} per video"
            if ed:
                line += f"; event length min {min(ed):.2f} s, median {statistics.median(ed):.2f} s, max {max(ed):.2f} s"
            out.append(line + ".")
    values = [v for vs in stats.confidence.values() for v in vs]
    out += ["", "## Confidence", ""]
    if values:
        plots["card/confidence.png"] = confidence_plot(stats.confidence)
        out += [
            f"{len(values)} records with a confidence: min {min(values):.3f}, median "
            f"{statistics.median(values):.3f}, mean {statistics.fmean(values):.3f}.",
            "",
            "![confidence](card/confidence.png)",
        ]
    else:
        out.append("No record carries a confidence.")
    out += [
        "",
        "## Files and how to train",
        "",
        "Image paths in every annotation file are relative to this folder"
        + (
            ": `../images/<sha256>.<ext>`, the spec's image pool beside the versions (written once per "
            "image, never changed, shared by every version). Keep this folder inside its spec folder, "
            "or copy it with `labelloop` (materialize), which brings the pool along."
            if meta.get("image_layout", "pool") == "pool"
            else ": `images/<sha256>.<ext>` in this folder (hard links or server-side copies of the pool)."
        ),
        "",
        "- `qwen_train.json`, `qwen_val.json`: qwen-vl-finetune (`image` + `conversations`). Register "
        '`{"annotation_path": "<this folder>/qwen_train.json", "data_path": "<this folder>"}` in '
        "`qwenvl/data/__init__.py` (`data_dict`), or let labelloop's training DAG do it; the trainer "
        "joins `data_path` and the image path.",
        "- `llamafactory_train.json`, `llamafactory_val.json`, `dataset_info.json`: LLaMA-Factory "
        "ShareGPT; use this folder as `dataset_dir` (its default `media_dir`, joined with each path).",
        "- `swift_train.jsonl`, `swift_val.jsonl`: ms-swift; run from this folder (relative image paths "
        "resolve against the working directory) with `QWENVL_BBOX_FORMAT=new`, which renders `<bbox>` as "
        "`[x1, y1, x2, y2]`.",
        "- `provenance.jsonl`: per record: provenance, model version, annotator, confidence, record "
        "hash, split, validation run; documents also per page.",
        "",
        "## Coordinates",
        "",
        f"Boxes in the Qwen-VL and LLaMA-Factory answers are `{coords['qwen_coordinate_mode']}`"
        + (
            f": absolute pixels of the image as Qwen2.5-VL's processor resizes it with "
            f"min_pixels={coords['min_pixels']} and max_pixels={coords['max_pixels']}. Train with the "
            "same `--min_pixels`/`--max_pixels`, or every box is off."
            if coords["qwen_coordinate_mode"] == "absolute_resized"
            else ": a 0-1000 grid over the image (Qwen2-VL, Qwen3-VL)."
        ),
        "LLaMA-Factory shrinks images above its `image_max_pixels` before the processor does: set it "
        "at least as high as max_pixels so the frames agree. ms-swift gets original pixels "
        "(`bbox_type: real`) and converts them for the model itself.",
        "",
    ]
    return "\n".join(out), plots
