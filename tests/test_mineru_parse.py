"""MinerU output parser: both output generations, coordinates and block confidence.

The MinerU files under ``tests/data/mineru/`` are HAND-WRITTEN following MinerU's documented
schema (magic-pdf 1.3.12 and mineru 2.5.4; see ``tests/data/mineru/README.md``); they are NOT real
MinerU output, because MinerU's models cannot be installed here. They describe a two-page A4 page
(595 x 842 pt) whose model.json is in 200 dpi render pixels (1654 x 2339 px), and our pages are
rendered at 144 dpi (1190 x 1684 px, 2 px per point).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from labelloop.documents.mineru_parse import (
    MinerUOutput,
    MinerUOutputError,
    find_output_dir,
    load_output_dir,
    model_px_to_pt,
    output_from_api,
    parse_output,
    poly_to_bbox,
)
from labelloop.documents.record import Block, DocumentRecord, Page, confidence_summary, page_image_key
from labelloop.documents.render import PageGeometry, pt_to_px, px_to_pt

DATA = Path(__file__).parent / "data" / "mineru"
DIR_13 = DATA / "magic-pdf-1.3" / "a4doc" / "ocr"
DIR_2X = DATA / "mineru-2.x" / "a4doc" / "auto"
SHA = "ab" * 32


def a4_geoms(n: int = 2, dpi: int = 144) -> list[PageGeometry]:
    return [PageGeometry(i, 595.0, 842.0, dpi, 1190, 1684, page_image_key(SHA, i)) for i in range(n)]


def by_type(blocks: list[Block], type_: str) -> list[Block]:
    return [b for b in blocks if b.type == type_]


# --------------------------------------------------------------------------- coordinates


def test_model_json_poly_to_our_pixels_hand_computed() -> None:
    # The title poly from MinerU's docs: [236,188, 1417,188, 1417,262, 236,262] at 200 dpi on A4.
    # By hand: x1 = 236 * 595/1654 = 84.897 pt -> * 144/72 = 169.79 px
    #          y1 = 188 * 842/2339 = 67.677 pt -> 135.35 px
    #          x2 = 1417 * 595/1654 = 509.743 pt -> 1019.49 px
    #          y2 = 262 * 842/2339 = 94.316 pt -> 188.63 px
    poly = [236.0, 188.0, 1417.0, 188.0, 1417.0, 262.0, 236.0, 262.0]
    pt = model_px_to_pt(poly_to_bbox(poly), {"width": 1654, "height": 2339}, 595.0, 842.0)
    assert pt == pytest.approx((84.897, 67.677, 509.743, 94.316), abs=1e-3)
    assert pt_to_px(pt, 144) == pytest.approx((169.79, 135.35, 1019.49, 188.63), abs=0.01)

    # the same through the parser (a model.json-only output): the title block lands there
    model = json.loads((DIR_13 / "a4doc_model.json").read_text())
    parsed = parse_output(MinerUOutput(model=model), a4_geoms())
    title = by_type(parsed.blocks[0], "title")[0]
    assert title.bbox == pytest.approx([169.79, 135.35, 1019.49, 188.63], abs=0.01)
    assert parsed.detail["pages"][0]["from"] == "model"


def test_points_pixels_round_trip() -> None:
    box = (12.5, 700.25, 590.0, 841.9)
    for dpi in (72, 96, 144, 200, 300):
        assert px_to_pt(pt_to_px(box, dpi), dpi) == pytest.approx(box)
    assert pt_to_px((595.0, 842.0, 595.0, 842.0), 144) == (1190.0, 1684.0, 1190.0, 1684.0)


def test_poly_and_plain_bbox() -> None:
    assert poly_to_bbox([10, 20, 30, 20, 30, 40, 10, 40]) == (10, 20, 30, 40)
    assert poly_to_bbox([1, 2, 3, 4]) == (1, 2, 3, 4)


# --------------------------------------------------------------------------- magic-pdf 1.3


def test_magic_pdf_13_output() -> None:
    out = load_output_dir(DIR_13)
    assert (out.version, out.generation, out.backend) == ("1.3.12", "magic-pdf-1.3", "ocr")
    parsed = parse_output(out, a4_geoms())
    page0 = parsed.blocks[0]
    assert [b.type for b in page0] == [
        "title",
        "text",
        "caption",
        "table",
        "equation",
        "image",
        "caption",
        "discarded",
    ]
    title = page0[0]
    # middle.json is in points: [85, 68, 510, 95] * 2 px/pt
    assert title.bbox == [170.0, 136.0, 1020.0, 190.0]
    assert title.content == "The response of flow duration curves to afforestation"
    # _parse_type "ocr": every text span is OCR; score = layout (model.json 0.953) x span 0.981
    assert title.source == "ocr"
    assert title.score == pytest.approx(0.953 * 0.981, abs=1e-5)
    text = page0[1]
    # the weakest OCR text span (0.962) counts; the inline formula span is not OCR text
    assert text.score == pytest.approx(0.921 * 0.962, abs=1e-5)
    assert text.content == "Flow duration curves of $n=10$ catchments were analysed after afforestation."
    table = by_type(page0, "table")[0]
    assert table.content.startswith("<table>") and "<html>" not in table.content
    assert "<td>Stewarts Creek</td>" in table.content
    assert table.score == pytest.approx(0.972)
    eq = by_type(page0, "equation")[0]
    assert eq.content == r"Q_{t} = a + b \log t"
    assert by_type(page0, "image")[0].content == ""
    assert by_type(page0, "discarded")[0].content == "253"
    # page 2: one OCR line read at 0.612 pulls the block down
    assert parsed.blocks[1][0].score == pytest.approx(0.93 * 0.612, abs=1e-5)
    assert parsed.markdown.startswith("# The response of flow duration curves")
    assert parsed.detail["unscored_blocks"] == 0


def test_magic_pdf_13_content_list_has_no_boxes() -> None:
    items = json.loads((DIR_13 / "a4doc_content_list.json").read_text())
    assert all("bbox" not in it for it in items)
    assert items[4]["img_caption"] == ["Fig. 1. Location of the catchments."]
    with pytest.raises(MinerUOutputError, match="no block coordinates"):
        parse_output(MinerUOutput(content_list=items), a4_geoms())


# --------------------------------------------------------------------------- mineru 2.x


def test_mineru_2x_output() -> None:
    out = load_output_dir(DIR_2X)
    assert (out.version, out.generation, out.backend) == ("2.5.4", "mineru-2", "pipeline")
    parsed = parse_output(out, a4_geoms())
    page0, page1 = parsed.blocks
    title = page0[0]
    assert title.bbox == [170.0, 136.0, 1020.0, 190.0]
    # text layer (span score 1.0): the layout score alone
    assert (title.source, title.score) == ("text_layer", pytest.approx(0.953))
    # an OCR'd block in a pipeline document: span scores < 1.0 identify OCR
    ocr_block = page1[0]
    assert ocr_block.source == "ocr"
    assert ocr_block.score == pytest.approx(0.93 * 0.874, abs=1e-5)
    lst = by_type(page1, "list")[0]
    assert lst.content == "1. Low flows decline first.\n2. High flows follow."
    assert lst.score == pytest.approx(0.962)
    fc, _ = confidence_summary(
        DocumentRecord(
            pages=[Page(**g.as_dict(), blocks=b) for g, b in zip(a4_geoms(), parsed.blocks, strict=True)],
            markdown=parsed.markdown,
        )
    )
    assert fc == {"blocks": pytest.approx(0.93 * 0.874, abs=1e-5)}


def test_mineru_2x_content_list_bbox_is_thousandths() -> None:
    items = json.loads((DIR_2X / "a4doc_content_list.json").read_text())
    assert items[4]["image_caption"] == ["Fig. 1. Location of the catchments."]
    parsed = parse_output(MinerUOutput(content_list=items), a4_geoms())
    title = parsed.blocks[0][0]
    # [142, 80, 857, 112] / 1000 * (1190 x 1684 px)
    assert title.type == "title"
    assert title.bbox == pytest.approx([168.98, 134.72, 1019.83, 188.61], abs=0.01)
    # no layout score anywhere: unscored blocks go to review (score 0), and the detail says so
    assert all(b.score == 0.0 for page in parsed.blocks for b in page)
    assert parsed.detail["unscored_blocks"] == sum(len(p) for p in parsed.blocks)
    # with model.json next to it, the layout scores are matched by overlap
    model = json.loads((DIR_2X / "a4doc_model.json").read_text())
    parsed = parse_output(MinerUOutput(content_list=items, model=model), a4_geoms())
    assert parsed.blocks[0][0].score == pytest.approx(0.953)
    assert by_type(parsed.blocks[0], "table")[0].content.startswith("<table>")
    assert by_type(parsed.blocks[0], "equation")[0].content == r"Q_{t} = a + b \log t"


def test_vlm_middle_json_without_scores_is_unscored() -> None:
    middle = json.loads((DIR_2X / "a4doc_middle.json").read_text())
    middle["_backend"] = "vlm"
    for page in middle["pdf_info"]:
        for block in page["para_blocks"]:
            for b in [block, *block.get("blocks", [])]:
                for line in b.get("lines", []):
                    for span in line["spans"]:
                        span.pop("score", None)
    parsed = parse_output(MinerUOutput(middle=middle), a4_geoms())
    assert parsed.detail["mineru_backend"] == "vlm"
    assert parsed.detail["unscored_blocks"] == sum(len(p) for p in parsed.blocks) > 0
    assert {b.score for p in parsed.blocks for b in p} == {0.0}


# --------------------------------------------------------------------------- robustness


def test_mineru_api_strings_equal_files() -> None:
    files = load_output_dir(DIR_2X)
    response = {
        "backend": "pipeline",
        "version": "2.5.4",
        "results": {
            "a4doc": {
                "md_content": files.markdown,
                "middle_json": json.dumps(files.middle),
                "model_output": json.dumps(files.model),
                "content_list": json.dumps(files.content_list),
            }
        },
    }
    api = output_from_api(response, "a4doc")
    assert parse_output(api, a4_geoms()).blocks == parse_output(files, a4_geoms()).blocks
    with pytest.raises(MinerUOutputError):
        output_from_api({"results": {}}, "a4doc")
    with pytest.raises(MinerUOutputError, match="invalid JSON"):
        output_from_api({"results": {"a4doc": {"middle_json": "{not json"}}})


def test_page_size_mismatch_is_rescaled() -> None:
    middle = json.loads((DIR_2X / "a4doc_middle.json").read_text())
    for page in middle["pdf_info"]:
        page["page_size"] = [1190, 1684]  # MinerU saw the page at twice the size
    parsed = parse_output(MinerUOutput(middle=middle), a4_geoms())
    assert parsed.blocks[0][0].bbox == [85.0, 68.0, 510.0, 95.0]


def test_more_pages_than_the_pdf_is_an_error() -> None:
    out = load_output_dir(DIR_2X)
    with pytest.raises(MinerUOutputError, match="2 pages for a 1-page PDF"):
        parse_output(out, a4_geoms(1))


def test_boxes_overshooting_the_page_are_clipped() -> None:
    middle = copy.deepcopy(json.loads((DIR_2X / "a4doc_middle.json").read_text()))
    middle["pdf_info"][0]["para_blocks"][0]["bbox"] = [-3, 60, 600, 95]
    parsed = parse_output(MinerUOutput(middle=middle), a4_geoms())
    assert parsed.blocks[0][0].bbox == [0.0, 120.0, 1190.0, 190.0]


def test_record_rejects_a_box_outside_its_page() -> None:
    g = a4_geoms(1)[0]
    bad = Block(type="text", bbox=[10, 10, 1200, 50], content="x", score=1.0, source="text_layer")
    with pytest.raises(ValidationError, match="outside the page"):
        Page(**g.as_dict(), blocks=[bad])
    with pytest.raises(ValidationError, match="x1 <= x2"):
        Block(type="text", bbox=[50, 10, 10, 50], content="x", score=1.0, source="text_layer")
    with pytest.raises(ValidationError, match="numbered"):
        DocumentRecord(pages=[Page(**a4_geoms(2)[1].as_dict())], markdown="")


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (["ocr"], "ocr"),  # magic-pdf 1.3 -m ocr
        (["auto"], "auto"),  # 1.3 -m auto / 2.x pipeline
        (["vlm"], "vlm"),  # every 2.x VLM backend
        (["txt", "auto"], "auto"),  # several: preference order
        (["hybrid_auto"], "hybrid_auto"),  # 3.x
    ],
)
def test_find_output_dir(tmp_path: Path, layout: list[str], expected: str) -> None:
    for method in layout:
        d = tmp_path / "doc" / method
        d.mkdir(parents=True)
        (d / "doc_middle.json").write_text("{}")
    (tmp_path / "doc" / "images").mkdir()
    assert find_output_dir(tmp_path, "doc") == tmp_path / "doc" / expected


def test_find_output_dir_missing(tmp_path: Path) -> None:
    (tmp_path / "doc" / "auto").mkdir(parents=True)
    with pytest.raises(MinerUOutputError, match="no output"):
        find_output_dir(tmp_path, "doc")
