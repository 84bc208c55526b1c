"""A contract test server for the mineru.net v4 API (local files), following its documented flow:
``POST /api/v4/file-urls/batch`` -> ``{code: 0, data: {batch_id, file_urls}}``, ``PUT`` to the upload
URL, ``GET /api/v4/extract-results/batch/{id}`` -> ``extract_result[].state`` in waiting-file,
pending, running, converting, done, failed, then ``full_zip_url``. Bearer token required.

The result zip holds ``layout.json``, ``*_model.json``, ``*_content_list.json`` and ``full.md`` made
from the hand-written 2.x files in tests/data/mineru (mineru.net's pipeline output has that shape).
``scenario`` picks behaviour: ok, failed, stuck (waiting-file forever), rate_limit (429 twice on
each API call), expired (the zip URL answers 403, as an expired signed URL does).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "mineru" / "mineru-2.x" / "a4doc" / "auto"
TOKEN = "test-token-123"


def result_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in DATA.iterdir():
            name = "layout.json" if f.name.endswith("_middle.json") else f.name.replace("a4doc", "doc")
            if name.endswith(".md"):
                name = "full.md"
            z.writestr(name, f.read_bytes())
        z.writestr("images/x.jpg", b"\xff\xd8")
        z.writestr("../evil.json", b"{}")  # must never be written outside the extraction folder
    return buf.getvalue()


class CloudServer:
    def __init__(self, scenario: str = "ok") -> None:
        self.scenario = scenario
        self.log: list[tuple[str, str]] = []
        self.uploads: dict[str, bytes] = {}
        self.polls: dict[str, int] = {}
        self.rate_limited = 0
        self.auth_seen: list[str | None] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _json(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _api_guard(self) -> bool:
                srv.auth_seen.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._json(401, {"code": -10001, "msg": "invalid token", "data": None})
                    return False
                if srv.scenario == "rate_limit" and srv.rate_limited % 3 < 2:
                    srv.rate_limited += 1
                    self._json(429, {"code": -60001, "msg": "rate limit", "data": None})
                    return False
                srv.rate_limited += 1
                return True

            def do_POST(self) -> None:
                srv.log.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/api/v4/file-urls/batch" or not self._api_guard():
                    return None if self.path == "/api/v4/file-urls/batch" else self._json(404, {})
                batch = uuid.uuid4().hex
                srv.batches[batch] = body
                host = f"http://127.0.0.1:{srv.server.server_address[1]}"
                self._json(
                    200, {"code": 0, "msg": "ok", "data": {"batch_id": batch, "file_urls": [f"{host}/upload/{batch}"]}}
                )

            def do_PUT(self) -> None:
                srv.log.append(("PUT", self.path))
                data = self.rfile.read(int(self.headers["Content-Length"]))
                srv.uploads[self.path.rsplit("/", 1)[1]] = data
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                srv.log.append(("GET", self.path))
                if self.path.startswith("/zip/"):
                    if srv.scenario == "expired":
                        self.send_response(403)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    blob = result_zip()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(blob)))
                    self.end_headers()
                    self.wfile.write(blob)
                    return
                if not self.path.startswith("/api/v4/extract-results/batch/") or not self._api_guard():
                    return
                batch = self.path.rsplit("/", 1)[1]
                name = srv.batches[batch]["files"][0]["name"]
                n = srv.polls[batch] = srv.polls.get(batch, 0) + 1
                host = f"http://127.0.0.1:{srv.server.server_address[1]}"
                if batch not in srv.uploads or srv.scenario == "stuck":
                    state: dict[str, Any] = {"state": "waiting-file"}
                elif n < 3:
                    state = {"state": ["pending", "running", "converting"][n - 1]}
                elif srv.scenario == "failed":
                    state = {"state": "failed", "err_msg": "file parse failed: encrypted"}
                else:
                    state = {"state": "done", "full_zip_url": f"{host}/zip/{batch}"}
                result = {"file_name": name, "data_id": srv.batches[batch]["files"][0]["data_id"], **state}
                self._json(200, {"code": 0, "msg": "ok", "data": {"batch_id": batch, "extract_result": [result]}})

        self.batches: dict[str, Any] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
