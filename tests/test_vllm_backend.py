"""The vLLM path end to end against the test server: request shape, retries, resize round trips,
confidence from value tokens, and every injected fault ending as a retry or a failed prediction."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_vllm import (
    VLLMTestServer,
    ingest_images,
    make_image,
    predictions,
    run_batch,
    sha256,
)
from PIL import Image

from labelloop.config import PrelabelSettings, Settings
from labelloop.db import Database
from labelloop.prelabel.vllm import VLLMBackend
from labelloop.prelabel.vllm.backend import schema_errors
from labelloop.prelabel.vllm.client import ChatClient, ChatError, DataURL, encode_body
from labelloop.prelabel.vllm.confidence import (
    TokenLogprob,
    align_tokens,
    field_confidences,
    parse_logprobs,
)
from labelloop.prelabel.vllm.jsonspans import JSONSpanError, Node, parse_spans
from labelloop.specs import SpecRegistry
from labelloop.specs.schema_check import compile_check
from labelloop.storage import LocalStore

pytest_plugins = ["fixtures_vllm"]

SPECS = SpecRegistry()
VEHICLE = SPECS.get("vehicle_extraction")
KEY = "ab" * 32  # a sha256-shaped request key for client-level tests


def toks(*pairs: tuple[str, float]) -> list[TokenLogprob]:
    return [TokenLogprob(t, lp, tuple(t.encode())) for t, lp in pairs]


# --------------------------------------------------------------------------- confidence (unit)


def _tokens_for(text: str, value_lp: dict[str, float], structural_lp: float = -2.0) -> list[TokenLogprob]:
    """Character tokens: those inside a listed value get its logprob, the rest ``structural_lp``."""
    lp = [structural_lp] * len(text)
    for value, v_lp in value_lp.items():
        i = text.index(value)
        for j in range(i, i + len(value)):
            lp[j] = v_lp
    return [TokenLogprob(c, x, tuple(c.encode())) for c, x in zip(text, lp, strict=True)]


def test_confidence_counts_value_tokens_only() -> None:
    spec = SPECS.get("caption")
    text = '{"caption": "a red car"}'
    # keys, quotes and braces are made very unlikely: if they counted, confidence would collapse
    tokens = _tokens_for(text, {"a red car": math.log(0.99)}, structural_lp=math.log(0.1))
    routing, detail = field_confidences(text, tokens, spec, aggregator="joint")
    assert detail["caption"]["n_tokens"] == len("a red car")
    assert routing["caption"] == pytest.approx(0.99 ** len("a red car"))
    assert detail["caption"]["min"] == pytest.approx(0.99)
    assert detail["caption"]["joint"] == routing["caption"]


def test_confidence_of_boxes_uses_the_number_tokens_and_lists_take_the_worst_element() -> None:
    spec = SPECS.get("grounding")
    text = '{"objects": [{"bbox_2d": [12, 5, 340, 99], "label": "dog"}, {"bbox_2d": [1, 2, 3, 4], "label": "cat"}]}'
    tokens = _tokens_for(text, {"340": math.log(0.5), "cat": math.log(0.8)}, structural_lp=math.log(0.2))
    # every other value character is certain (logprob 0)
    for i, t in enumerate(tokens):
        if t.token.isdigit() and t.logprob == math.log(0.2):
            tokens[i] = TokenLogprob(t.token, 0.0, t.bytes)
        if text[i] in "dog" and 40 < i < 60:
            tokens[i] = TokenLogprob(t.token, 0.0, t.bytes)
    routing, detail = field_confidences(text, tokens, spec, aggregator="joint")
    first, second = detail["objects"]["elements"]
    assert first["n_tokens"] == len("12534099dog")
    assert first["joint"] == pytest.approx(0.5**3)  # "340" is three tokens at 0.5 each
    assert second["joint"] == pytest.approx(0.8**3)
    # the list's closing "]" is structural here (p=0.2) and is the "no more objects" decision
    assert detail["objects"]["close"] == pytest.approx(0.2)
    assert routing["objects"] == pytest.approx(min(0.5**3, 0.8**3, 0.2))


def test_confidence_of_empty_values_is_the_closing_decision() -> None:
    spec = VEHICLE
    record = {
        "plate_number": "",
        "plate_color": "blue",
        "vehicle_type": "car",
        "brand": "Toyota",
        "color": "red",
        "plate_box": None,
        "vehicle_box": [1, 2, 3, 4],
    }
    text = json.dumps(record)
    tokens = _tokens_for(text, {"null": math.log(0.7), "blue": math.log(0.9)}, structural_lp=0.0)
    close_quote = text.index('"plate_number": ""') + len('"plate_number": "')
    tokens[close_quote] = TokenLogprob('"', math.log(0.4), (34,))
    routing, _detail = field_confidences(text, tokens, spec, aggregator="joint")
    assert routing["plate_number"] == pytest.approx(0.4)
    assert routing["plate_box"] == pytest.approx(0.7**4)
    assert routing["plate_color"] == pytest.approx(0.9**4)
    assert routing["brand"] == pytest.approx(1.0)


def test_alignment_with_openai_byte_tokens_and_vllm_replacement_tokens() -> None:
    text = '{"t": "京A1"}'
    jing = "京".encode()
    openai_style = [
        TokenLogprob('{"t": "', 0.0, tuple(b'{"t": "')),
        TokenLogprob("bytes:\\xe4\\xba", -0.1, tuple(jing[:2])),
        TokenLogprob("bytes:\\xac", -0.2, tuple(jing[2:])),
        TokenLogprob("A", -0.3, (65,)),
        TokenLogprob("1", -0.4, (49,)),
        TokenLogprob('"}', 0.0, (34, 125)),
    ]
    spans = align_tokens(openai_style, text)
    assert spans[1] == spans[2] == (7, 8) and spans[3] == (8, 9)
    vllm_style = [
        TokenLogprob('{"t": "', 0.0),
        TokenLogprob("\ufffd", -0.1, (239, 191, 189)),
        TokenLogprob("\ufffd", -0.2, (239, 191, 189)),
        TokenLogprob("A", -0.3),
        TokenLogprob("1", -0.4),
        TokenLogprob('"}', 0.0),
        TokenLogprob("<|im_end|>", 0.0),
    ]
    spans = align_tokens(vllm_style, text)
    assert spans[1] == spans[2] == (7, 8) and spans[3] == (8, 9) and spans[6] == (12, 12)
    spec = SPECS.get("caption").model_copy(deep=True)
    spec.fields = {"t": spec.fields["caption"]}
    for tokens in (openai_style, vllm_style):
        routing, _ = field_confidences(text, tokens, spec, aggregator="joint")
        assert routing["t"] == pytest.approx(math.exp(-1.0))


def test_confidence_is_zero_when_tokens_do_not_spell_the_answer() -> None:
    routing, detail = field_confidences('{"caption": "x"}', toks(('{"cap', 0.0), ("zzz", 0.0)), SPECS.get("caption"))
    assert routing == {"caption": 0.0} and "unavailable" in detail["caption"]["error"]
    routing, detail = field_confidences('{"caption": "x"}', [], SPECS.get("caption"))
    assert routing == {"caption": 0.0} and "no logprobs" in detail["caption"]["error"]


def test_parse_logprobs_clamps_impossible_tokens() -> None:
    out = parse_logprobs([{"token": "a", "logprob": -9999.0, "bytes": [97]}, {"token": "b", "logprob": None}])
    assert out[0].logprob == -9999.0 and out[1].logprob == -1e4 and out[1].bytes is None


def test_span_parser_gives_every_value_its_exact_characters() -> None:
    """The regex-driven span parser: each node's slice of the text parses to the node's value."""
    rng = random.Random(5)

    def value(depth: int = 0) -> Any:
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice([None, True, False, 0, -12, 3.5e-3, 1e20, "abc", 'q"uo\\te', "粤B12345", "", "\n"])
        if r < 0.7:
            return {
                rng.choice(["a", 'b"k', "c\\d", "粤", ""]) + str(i): value(depth + 1) for i in range(rng.randint(0, 4))
            }
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    def check(node: Node, expected: Any, text: str) -> None:
        assert json.loads(text[node.start : node.end]) == expected
        for key, child in node.members.items():
            check(child, expected[key], text)
        for child, exp in zip(node.items, expected if node.kind == "array" else [], strict=True):
            check(child, exp, text)

    for _ in range(500):
        v = value()
        text = json.dumps(v, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2]))
        check(parse_spans(f" {text}\n"), v, f" {text}\n")
    for bad in ('{"a": }', "[1,", '"abc', '{"a" 1}', "[1] x", "{", "tru"):
        with pytest.raises(JSONSpanError):
            parse_spans(bad)


def test_fast_schema_check_never_passes_what_jsonschema_rejects() -> None:
    """The compiled check is only trusted to say "valid": fuzz every spec's schema against
    jsonschema (mutated default records: wrong types, missing and extra keys, bounds)."""
    from jsonschema.validators import validator_for
    from vllm_server import default_record

    rng = random.Random(11)
    atoms = [
        None,
        True,
        False,
        0,
        1,
        -1,
        1.0,
        1.5,
        2**70,
        "",
        "a",
        "blue",
        "x" * 2000,
        [],
        {},
        [1, 2, 3, 4],
        [True, 1, 2, 3],
    ]
    atoms += [[1.0, 2, 3, 4], [1, 2, 3], {"a": 1}, "pages/ab12/3.png", float("nan"), 0.0]

    def mutate(v: Any, depth: int = 0) -> Any:
        if rng.random() < 0.15 or depth > 5:
            return rng.choice(atoms)
        if isinstance(v, dict):
            v = dict(v)
            op = rng.random()
            if op < 0.3 and v:
                v.pop(rng.choice(list(v)))
            elif op < 0.5:
                v[rng.choice(["extra", "bbox", "text", "label"])] = rng.choice(atoms)
            elif v:
                k = rng.choice(list(v))
                v[k] = mutate(v[k], depth + 1)
            return v
        if isinstance(v, list):
            v = list(v)
            if rng.random() < 0.3 and v:
                v.pop()
            elif v:
                i = rng.randrange(len(v))
                v[i] = mutate(v[i], depth + 1)
            else:
                v.append(rng.choice(atoms))
            return v
        return rng.choice(atoms)

    for name in ("vehicle_extraction", "caption", "grounding", "ocr_lines", "document_layout"):
        schema = SPECS.get(name).json_schema
        fast = compile_check(schema)
        assert fast is not None, f"{name}: the specs' schemas stay inside the fast subset"
        reference = validator_for(schema)(schema)
        base = default_record(schema, 500, 400)
        assert fast(base) == (not list(reference.iter_errors(base)))
        for _ in range(2000):
            inst = mutate(base)
            if fast(inst):
                assert not list(reference.iter_errors(inst)), (name, inst)
    assert compile_check({"type": "object", "$ref": "#/x"}) is None, "outside the subset: jsonschema decides alone"
    assert schema_errors({"caption": ""}, SPECS.get("caption").json_schema), "a fast no still gets the messages"


# --------------------------------------------------------------------------- client


def _chat(client: ChatClient, server: VLLMTestServer, **kw: Any) -> Any:
    data = make_image(56, 56)
    import base64

    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    msgs = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}
    ]
    args = {"model": server.config.model, "messages": msgs, "json_schema": SPECS.get("caption").json_schema}
    return client.chat(**{**args, "schema_name": "caption", **kw})


def _client(server: VLLMTestServer, **kw: Any) -> ChatClient:
    return ChatClient(server.base_url, **{"max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, **kw})


def test_request_body_splices_data_urls_as_they_are() -> None:
    url = DataURL("image/png", b"iVBORw0KGgo+/=")
    body = {"messages": [{"content": [{"type": "image_url", "image_url": {"url": url}}, {"text": '粤 "q"'}]}]}
    raw = encode_body(body)
    assert b'"url":"data:image/png;base64,iVBORw0KGgo+/="' in raw
    assert json.loads(raw) == json.loads(json.dumps(body, default=str))
    with pytest.raises(TypeError):
        encode_body({"x": object()})


def test_the_test_server_rejects_a_truncated_image(vllm_server: VLLMTestServer) -> None:
    """It reads sizes from headers, but a payload that vLLM could not decode still fails."""
    import base64

    import httpx

    data = make_image(280, 140)
    body = {
        "model": vllm_server.config.model,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}],
    }
    for payload, status in ((data, 200), (data[: len(data) * 2 // 3], 400)):
        body["messages"][0]["content"][0]["image_url"]["url"] = (
            "data:image/jpeg;base64," + base64.b64encode(payload).decode()
        )
        r = httpx.post(f"{vllm_server.base_url}/chat/completions", json=body, timeout=10)
        assert r.status_code == status, r.text
    assert "could not read the image" in r.json()["message"]


def test_the_test_servers_gate_holds_requests_until_opened(vllm_server: VLLMTestServer) -> None:
    """The scale-out kill test relies on the gate to freeze progress while it looks."""
    import base64
    import concurrent.futures

    import httpx

    url = "data:image/jpeg;base64," + base64.b64encode(make_image(280, 140)).decode()
    body = {
        "model": vllm_server.config.model,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }
    assert httpx.post(f"{vllm_server.url}/control/gate", json={"closed": "yes"}).status_code == 400
    httpx.post(f"{vllm_server.url}/control/gate", json={"closed": True}).raise_for_status()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(httpx.post, f"{vllm_server.base_url}/chat/completions", json=body, timeout=10)
        time.sleep(0.5)
        assert not fut.done() and vllm_server.stats()["completed"] == 0
        opened = httpx.post(f"{vllm_server.url}/control/gate", json={"closed": False}).json()
        assert opened == {"closed": False, "queued": 1}
        assert fut.result().status_code == 200


def test_request_uses_response_format_json_schema_and_logprobs(vllm_server: VLLMTestServer) -> None:
    async def go() -> Any:
        c = _client(vllm_server)
        try:
            return await _chat(c, vllm_server, top_logprobs=3, max_tokens=77, request_id=KEY)
        finally:
            await c.aclose()

    res = asyncio.run(go())
    sent = vllm_server.stats()["last_request"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "caption", "schema": SPECS.get("caption").json_schema, "strict": True},
    }
    assert "guided_json" not in sent and "extra_body" not in sent
    assert sent["logprobs"] is True and sent["top_logprobs"] == 3
    assert sent["temperature"] == 0 and sent["max_tokens"] == 77
    assert res.finish_reason == "stop" and json.loads(res.content)["caption"]
    assert len(res.logprobs[0]["top_logprobs"]) == 3 and {"token", "logprob", "bytes"} <= set(res.logprobs[0])
    assert res.prompt_tokens > 0 and res.completion_tokens == len(res.logprobs)


def test_without_response_format_the_answer_is_unconstrained(vllm_server: VLLMTestServer) -> None:
    """Why the schema goes in response_format: a server ignoring it (guided_json on vLLM >= 0.12)
    answers free text, here fenced JSON that the backend would reject."""

    async def go() -> Any:
        c = _client(vllm_server)
        try:
            return await _chat(c, vllm_server, json_schema=None)
        finally:
            await c.aclose()

    assert asyncio.run(go()).content.startswith("```json")


def test_retry_after_is_honoured_and_5xx_retried(vllm_server: VLLMTestServer) -> None:
    vllm_server.faults(KEY, {"kind": "429", "retry_after": 0.4}, "500")

    async def go() -> Any:
        c = _client(vllm_server)
        try:
            t0 = time.perf_counter()
            res = await _chat(c, vllm_server, request_id=KEY)
            return res, time.perf_counter() - t0
        finally:
            await c.aclose()

    res, elapsed = asyncio.run(go())
    assert res.attempts == 3 and res.finish_reason == "stop"
    assert elapsed >= 0.4, "the 429's Retry-After (0.4 s) outweighs the 10 ms backoff"
    assert [f["kind"] for f in vllm_server.stats()["faults_served"]] == ["429", "500"]


def test_errors_that_end_the_request(vllm_server: VLLMTestServer) -> None:
    vllm_server.faults(KEY, *["500"] * 5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens there once the socket closes

    async def go() -> list[ChatError]:
        errors = []
        c = _client(vllm_server, max_retries=2)
        dead = ChatClient(f"http://127.0.0.1:{dead_port}/v1", max_retries=1, backoff_initial_s=0.01)
        for client, kw in ((c, {"request_id": KEY}), (c, {"model": "no-such-model"}), (dead, {})):
            try:
                await _chat(client, vllm_server, **kw)
            except ChatError as e:
                errors.append(e)
        await c.aclose()
        await dead.aclose()
        return errors

    server_error, not_found, refused = asyncio.run(go())
    assert server_error.status == 500 and server_error.attempts == 3 and "injected" in server_error.body
    assert not_found.status == 404 and not_found.attempts == 1, "a 404 is not retried"
    assert "connection error after 2 attempt(s)" in refused.reason


def test_connection_pool_allows_the_configured_concurrency() -> None:
    for n in (1, 8, 32, 68, 100):
        assert ChatClient("http://127.0.0.1:1/v1", max_connections=n).pool_size >= n


# --------------------------------------------------------------------------- backend via the runner


def _vehicle_truth(w: int, h: int, **extra: Any) -> dict[str, Any]:
    record = {
        "plate_number": "粤B12345",
        "plate_color": "blue",
        "vehicle_type": "suv",
        "brand": "Toyota",
        "color": "white",
        "plate_box": [round(w * 0.41), round(h * 0.71), round(w * 0.59), round(h * 0.79)],
        "vehicle_box": [round(w * 0.08), round(h * 0.2), round(w * 0.93), round(h * 0.96)],
        **extra,
    }
    return {"width": w, "height": h, "records": {"vehicle_extraction": record}}


ODD_IMAGES = {
    # name: (bytes, original (displayed) size)
    "landscape.jpg": (make_image(1000, 750, seed=1), (1000, 750)),
    "strip.jpg": (make_image(4000, 300, seed=2), (4000, 300)),
    "rotated.jpg": (make_image(1000, 750, seed=3, exif_orientation=6), (750, 1000)),
    "tiny.png": (make_image(37, 23, seed=4, fmt="PNG"), (37, 23)),
    "large.jpg": (make_image(3000, 2000, seed=5), (3000, 2000)),
}


@pytest.mark.parametrize("mode", ["absolute_resized", "relative_1000"])
def test_boxes_survive_the_resize_round_trip(
    mode: str, request: pytest.FixtureRequest, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    server: VLLMTestServer = request.getfixturevalue(
        "vllm_server" if mode == "absolute_resized" else "vllm_server_relative"
    )
    settings = server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    truth = {}
    for name, (data, (w, h)) in ODD_IMAGES.items():
        truth[name] = _vehicle_truth(w, h)
        server.truth(sha256(data), truth[name])
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", {n: d for n, (d, _) in ODD_IMAGES.items()})
    stats = run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store), concurrency=4)
    assert (stats.ok, stats.failed) == (len(ODD_IMAGES), 0)
    sizes = server.stats()["sizes"]
    for name, item in items.items():
        (pred,) = predictions(sqlite_db, item_id=item.id)
        w, h = ODD_IMAGES[name][1]
        assert (item.width, item.height) == (w, h), "ingest and the backend agree on original pixels"
        want = truth[name]["records"]["vehicle_extraction"]
        got = pred.record
        assert {k: got[k] for k in ("plate_number", "plate_color", "vehicle_type", "brand", "color")} == {
            k: want[k] for k in ("plate_number", "plate_color", "vehicle_type", "brand", "color")
        }
        sent_w, sent_h = sizes[item.sha256]
        assert sent_w % 28 == 0 and sent_h % 28 == 0, "the server received a smart_resize'd image"
        resize = pred.confidence_detail["resize"]
        assert (resize["width"], resize["height"]) == (sent_w, sent_h)
        assert (resize["orig_width"], resize["orig_height"]) == (w, h)
        if mode == "absolute_resized":
            tol = math.ceil(max(w / sent_w, h / sent_h)) + 1
        else:
            tol = math.ceil(max(w, h) / 1000) + 1
        for key in ("plate_box", "vehicle_box"):
            assert all(abs(a - b) <= tol for a, b in zip(got[key], want[key], strict=True)), (name, key, got[key])


def test_sample_images_values_boxes_and_confidences(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, sample_data: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    from labelloop.ingest.run import ingest

    ingest(sqlite_db, store, settings, str(sample_data / "images"))
    backend = VLLMBackend(settings, store)
    stats = run_batch(sqlite_db, store, SPECS.get("grounding"), backend, concurrency=8)
    assert stats.failed == 0 and stats.ok == len(list((sample_data / "images").iterdir()))
    truth = json.loads((Path(__file__).parent / "data/vllm_truth/qwen-multiple_items.json").read_text())
    want = truth["records"]["grounding"]
    pred = _pred_by_sha(sqlite_db, truth["sha256"], "grounding")
    got = pred.record["objects"]
    assert [o["label"] for o in got] == [o["label"] for o in want["objects"]]
    for g, w in zip(got, want["objects"], strict=True):
        assert all(abs(a - b) <= 2 for a, b in zip(g["bbox_2d"], w["bbox_2d"], strict=True))
    elements = pred.confidence_detail["fields"]["objects"]["elements"]
    hat = [o["label"] for o in got].index("hat")  # the sidecar gives the hat 0.35
    assert elements[hat]["joint"] == pytest.approx(0.35, abs=0.02)
    assert all(e["joint"] > 0.85 for i, e in enumerate(elements) if i != hat)
    assert pred.field_confidence["objects"] == pytest.approx(0.35, abs=0.02) == pred.confidence
    assert pred.latency_ms and pred.latency_ms >= 20  # the server's 20 ms per request
    assert pred.prompt_tokens > 300 and pred.completion_tokens > 100  # 476x644 image = 391 patches
    assert pred.model == settings.vllm.model and pred.prompt_hash == VLLMBackend(settings).prompt_hash(
        SPECS.get("grounding")
    )


def _pred_by_sha(db: Database, sha: str, spec: str) -> Any:
    from sqlalchemy import select

    from labelloop.db import Item, Prediction

    with db.session() as s:
        return s.scalars(select(Prediction).join(Item).where(Item.sha256 == sha, Prediction.spec == spec)).one()


def test_a_low_confidence_field_is_lower_than_the_others_and_keys_do_not_count(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings)
    store = LocalStore(settings.storage.root)
    low, noisy_keys = make_image(640, 480, seed=11), make_image(640, 480, seed=12)
    vllm_server.truth(sha256(low), _vehicle_truth(640, 480, _confidence={"plate_number": 0.6}))
    # every structural token (keys, quotes, brackets) at p=0.3: must not change any field's figure
    vllm_server.truth(
        sha256(noisy_keys), _vehicle_truth(640, 480, _confidence={"plate_number": 0.6}, _structural_p=0.3)
    )
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", {"low.jpg": low, "keys.jpg": noisy_keys})
    run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store), concurrency=2)
    (a,) = predictions(sqlite_db, item_id=items["low.jpg"].id)
    (b,) = predictions(sqlite_db, item_id=items["keys.jpg"].id)
    fc = a.field_confidence
    assert fc["plate_number"] == pytest.approx(0.6, abs=0.01)
    others = {k: v for k, v in fc.items() if k != "plate_number"}
    assert min(others.values()) > 0.9 > fc["plate_number"]
    assert a.confidence == fc["plate_number"]
    assert b.field_confidence == pytest.approx(fc)
    # the box confidence counts exactly its number tokens (digits are single tokens)
    box = a.confidence_detail["fields"]["plate_box"]
    sent = json.loads(a.raw_output)["plate_box"]
    assert box["n_tokens"] == sum(len(str(v)) for v in sent)


def test_every_fault_is_retried_or_recorded_and_the_batch_goes_on(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings, timeout_s=1.0, max_retries=3)
    store = LocalStore(settings.storage.root)
    faults: dict[str, list[Any]] = {
        "two_500s": ["500", "500"],
        "rate_limited": [{"kind": "429", "retry_after": 0.05}],
        "hang": ["hang"],
        "malformed": ["malformed"],
        "schema": ["schema"],
        "truncated": ["truncated"],
        "always_500": ["500"] * 6,
        "clean_1": [],
        "clean_2": [],
    }
    images = {f"{name}.jpg": make_image(300 + 28 * i, 200, seed=100 + i) for i, name in enumerate(faults)}
    for fs, data in zip(faults.values(), images.values(), strict=True):
        if fs:
            vllm_server.faults(sha256(data), *fs)
    items = ingest_images(sqlite_db, store, settings, tmp_path / "in", images)
    # one of nine failing for a transient reason would fail the batch at the default 10%
    loose = PrelabelSettings(max_transient_failure_share=0.2)
    stats = run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store), concurrency=4, policy=loose)
    assert (stats.considered, stats.ok, stats.failed) == (9, 5, 4)
    assert (stats.transient, stats.permanent) == (1, 3)
    by_name = {name: predictions(sqlite_db, item_id=items[f"{name}.jpg"].id) for name in faults}
    assert all(len(p) == 1 for p in by_name.values()), "every item stored exactly once"
    p = {k: v[0] for k, v in by_name.items()}
    for ok in ("two_500s", "rate_limited", "hang", "clean_1", "clean_2"):
        assert p[ok].status == "ok" and p[ok].record["plate_number"], ok
    assert p["two_500s"].confidence_detail["attempts"] == 3
    assert p["hang"].confidence_detail["attempts"] == 2, "timed out once, then answered"
    expected = {
        "malformed": "invalid JSON",
        "schema": "schema violation",
        "truncated": "truncated: finish_reason=length",
        "always_500": "HTTP 500 after 4 attempt(s)",
    }
    for name, reason in expected.items():
        assert p[name].status == "failed" and p[name].error.startswith(reason), (name, p[name].error)
        assert p[name].failure_kind == ("transient" if name == "always_500" else "permanent"), name
        assert p[name].record is None and p[name].confidence is None
        assert p[name].raw_output, f"{name}: the raw answer is kept for review"
    assert "injected internal error" in p["always_500"].raw_output
    assert p["truncated"].completion_tokens and not p["truncated"].raw_output.rstrip().endswith("}")
    assert "unexpected_field" in p["schema"].error
    served = [f["kind"] for f in vllm_server.stats()["faults_served"]]
    assert sorted(served) == sorted(k if isinstance(k, str) else k["kind"] for fs in faults.values() for k in fs[:4])


def test_max_tokens_cut_is_a_failed_prediction(
    vllm_server: VLLMTestServer, sqlite_settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    settings = vllm_server.settings(sqlite_settings, max_tokens=10)
    store = LocalStore(settings.storage.root)
    ingest_images(sqlite_db, store, settings, tmp_path / "in", {"a.jpg": make_image(200, 200)})
    stats = run_batch(sqlite_db, store, VEHICLE, VLLMBackend(settings, store))
    (p,) = predictions(sqlite_db)
    assert stats.failed == 1 and p.error.startswith("truncated") and p.completion_tokens == 10


def test_an_unreadable_image_is_a_failed_prediction(sqlite_settings: Settings) -> None:
    from labelloop.db import Item

    backend = VLLMBackend(sqlite_settings)
    item = Item(id=1, sha256="0" * 64, media_type="image", mime="image/jpeg", ext="jpg", size_bytes=3, storage_key="x")
    res = asyncio.run(backend.predict(item, b"not an image", VEHICLE))
    assert res.status == "failed" and res.error.startswith("image could not be prepared")
    wide = Image.new("RGB", (4020, 20))
    import io

    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    res = asyncio.run(backend.predict(item, buf.getvalue(), VEHICLE))
    assert res.status == "failed" and "aspect ratio" in res.error
