"""Task specs are data: the shipped YAML files are complete and consistent, and a new spec is one file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from labelloop.specs import SpecError, SpecRegistry, TaskSpec, load_spec_file

SHIPPED = {"vehicle_extraction", "ocr_lines", "caption", "grounding"}
TRUTH_DIR = Path(__file__).parent / "data" / "vllm_truth"


@pytest.fixture(scope="module")
def registry() -> SpecRegistry:
    return SpecRegistry()


def test_shipped_specs_load(registry: SpecRegistry) -> None:
    assert set(registry.names()) >= SHIPPED
    for name in SHIPPED:
        spec = registry.get(name)
        assert spec.media == "image"
        assert spec.label_config == f"{name}.xml"
        assert spec.prompt.strip() and spec.export.question.startswith("<image>")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_schema_and_fields_agree(registry: SpecRegistry, name: str) -> None:
    spec = registry.get(name)
    schema = spec.json_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema.get("additionalProperties") is False
    props = schema["properties"]
    assert set(spec.fields) == set(props), "every schema property is a declared field and vice versa"
    for fname, field in spec.fields.items():
        prop = props[fname]
        variants = prop.get("anyOf", [prop])
        if field.required:
            assert fname in schema["required"]
        if field.kind == "choice":
            assert next(v for v in variants if "enum" in v)["enum"] == field.choices
            assert field.compare == "exact"
        elif field.kind == "box":
            arr = next(v for v in variants if v.get("type") == "array")
            assert arr["minItems"] == arr["maxItems"] == 4 and arr["items"]["type"] == "integer"
            assert field.compare == "iou"
        elif field.kind in ("regions", "objects"):
            item = prop["items"]
            box_key, value_key = ("bbox", "text") if field.kind == "regions" else ("bbox_2d", "label")
            assert set(item["required"]) == {box_key, value_key}
            assert item["properties"][box_key]["minItems"] == 4
            assert field.compare == "set"
        else:
            assert field.kind == "text" and field.compare in ("exact", "text")


def test_prompt_hash_tracks_prompt_and_schema(registry: SpecRegistry) -> None:
    spec = registry.get("caption")
    same = TaskSpec.model_validate(spec.model_dump())
    assert same.prompt_hash == spec.prompt_hash
    reworded = spec.model_copy(update={"prompt": spec.prompt + " Be brief."})
    assert reworded.prompt_hash != spec.prompt_hash
    schema = json.loads(json.dumps(spec.json_schema))
    schema["properties"]["caption"]["maxLength"] = 200
    assert spec.model_copy(update={"json_schema": schema}).prompt_hash != spec.prompt_hash


def test_ground_truth_records_are_valid_records(registry: SpecRegistry) -> None:
    """The test server's sidecars are real examples of each spec's record."""
    n = 0
    for path in TRUTH_DIR.glob("*.json"):
        for spec_name, record in json.loads(path.read_text())["records"].items():
            rec = {k: v for k, v in record.items() if not k.startswith("_")}
            jsonschema.validate(rec, registry.get(spec_name).json_schema)
            n += 1
    assert n >= 5


def test_plate_syntax(registry: SpecRegistry) -> None:
    """The OCR plate field accepts official Chinese formats only (labelloop.prelabel.plates.syntax)."""
    from labelloop.prelabel.plates.syntax import PLATE_REGEX

    spec = registry.get("vehicle_extraction")
    ocr = spec.options["ocr_fields"]["plate_number"]
    assert ocr["box_field"] == "plate_box" and spec.fields["plate_box"].kind == "box"
    assert ocr["syntax"] == "cn_plate" and "patterns" not in ocr
    rx = re.compile(PLATE_REGEX)
    for plate in ["京A12345", "粤B12345D", "京AD12345", "粤B1234学"]:
        assert rx.fullmatch(plate), plate
    field_pattern = re.compile(spec.fields["plate_number"].pattern)
    for not_plate in ["10283819", "221021325353", "CASH", "RM8", "TOTAL", "2013-06-29", "DDS32", "ABC1234"]:
        assert not rx.fullmatch(not_plate), not_plate
    assert field_pattern.match("京A12345")


def test_a_new_spec_is_one_file(tmp_path: Path, registry: SpecRegistry) -> None:
    data = registry.get("caption").model_dump(mode="json", exclude={"source_path"})
    data.update(
        name="product_caption", prompt="Describe the product in this photo.", label_config="product_caption.xml"
    )
    (tmp_path / "product_caption.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    reg = SpecRegistry(dirs=[tmp_path])
    spec = reg.get("product_caption")
    assert spec.source_path == tmp_path / "product_caption.yaml"
    assert set(reg.names()) >= SHIPPED


def test_bad_spec_files_are_rejected_with_the_reason(tmp_path: Path) -> None:
    data = yaml.safe_load((Path(__file__).parents[1] / "labelloop/specs/caption.yaml").read_text())
    (tmp_path / "other_name.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="must match the file name"):
        load_spec_file(tmp_path / "other_name.yaml")
    data["fields"]["caption"]["kind"] = "choice"  # a choice without choices
    (tmp_path / "caption.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="choices"):
        load_spec_file(tmp_path / "caption.yaml")
