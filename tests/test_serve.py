"""`magvlt serve`'s API on a tiny random-weight run: every endpoint, every bad input, batching and the queue."""

import asyncio
import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from synthetic import write_run

from magvlt.cli import main
from magvlt.serve.app import Limits, create_app
from magvlt.serve.batching import Batcher, QueueFull
from magvlt.serve.engine import Engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(write_run(tmp_path_factory.mktemp("run")), device="cpu")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, Limits(max_body_bytes=200_000, max_pixels=512 * 512))) as c:
        yield c


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def picture(size=(24, 20), color=(200, 30, 30)) -> bytes:
    return png_bytes(Image.new("RGB", size, color))


def mask(size=(24, 20), box=(0, 0, 12, 10)) -> bytes:
    im = Image.new("L", size, 0)
    im.paste(255, box)
    return png_bytes(im)


def is_png(data: bytes, size=(16, 16)) -> bool:
    return Image.open(io.BytesIO(data)).size == size


def events(text: str) -> list[tuple[str, dict]]:
    """Server-sent events as (event, data)."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_health_says_ok_with_what_the_model_does(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["tasks"] == ["t2i", "i2t", "inpaint", "infill", "pairs"] and r.json()["image_size"] == [16, 16]


def test_page_docs_and_openapi_are_served(client):
    assert "<canvas" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/t2i", "/v1/t2i/stream", "/v1/i2t", "/v1/i2t/stream", "/v1/inpaint", "/v1/infill", "/v1/pairs"} <= set(
        paths
    )


def test_t2i_is_a_png_fixed_by_its_seed(client):
    r = client.post("/v1/t2i", json={"prompt": "a large red circle", "seed": 3, "steps": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and is_png(r.content)
    again = client.post("/v1/t2i", json={"prompt": "a large red circle", "seed": 3, "steps": 3})
    assert again.content == r.content


def test_i2t_infill_and_inpaint(client):
    r = client.post("/v1/i2t", files={"image": ("a.png", picture())}, data={"steps": "3"})
    assert r.status_code == 200 and isinstance(r.json()["caption"], str)
    r = client.post(
        "/v1/infill", files={"image": ("a.png", picture())}, data={"text": "a large [MASK] circle", "steps": "2"}
    )
    assert r.status_code == 200 and r.json()["text"].startswith("a large ") and r.json()["text"].endswith(" circle")
    r = client.post(
        "/v1/inpaint",
        files={"image": ("a.png", picture()), "mask": ("m.png", mask())},
        data={"prompt": "a small blue square", "steps": "2"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and is_png(r.content)


def test_pairs_are_base64_pngs_with_captions(client):
    r = client.post("/v1/pairs", json={"n": 3, "seed": 1, "steps": 2})
    assert r.status_code == 200 and len(r.json()) == 3
    assert all(is_png(base64.b64decode(p["image"])) and isinstance(p["caption"], str) for p in r.json())
    assert len(client.post("/v1/pairs").json()) == 4


def test_streams_send_every_refinement_step_then_the_result(client):
    r = client.post("/v1/t2i/stream", json={"prompt": "a small green square", "seed": 3, "steps": 4})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert [e for e, _ in got] == ["step"] * 4 + ["done"] and [d["step"] for _, d in got[:4]] == [1, 2, 3, 4]
    plain = client.post("/v1/t2i", json={"prompt": "a small green square", "seed": 3, "steps": 4}).content
    assert base64.b64decode(got[-1][1]["image"]) == plain == base64.b64decode(got[-2][1]["image"])
    r = client.post("/v1/i2t/stream", files={"image": ("a.png", picture())}, data={"steps": "5"})
    got = events(r.text)
    assert [e for e, _ in got] == ["step"] * 5 + ["done"] and "_" in got[0][1]["text"]
    assert isinstance(got[-1][1]["caption"], str)


def test_the_mask_rule_any_white_pixel_marks_its_token(engine):
    """16x16 model images of 8x8 tokens (2x2 pixels each); a 32x32 mask maps 4x4 pixels onto a token."""
    im = Image.new("L", (32, 32), 0)
    im.paste(255, (0, 0, 4, 4))  # token (0, 0) fully
    im.paste(255, (8, 0, 9, 1))  # one pixel of token (0, 2)
    cells = engine.token_mask(im).reshape(8, 8)
    assert cells[0, :3].tolist() == [True, False, True] and cells.sum() == 2


BAD_JSON = [
    ({"prompt": ""}, 422),
    ({"prompt": "   "}, 422),
    ({"prompt": "red " * 60}, 422),  # over the model's 18 tokens
    ({"prompt": "x" * 1001}, 422),
    ({}, 422),
    ({"prompt": 5}, 422),
    ({"prompt": "a red circle", "seed": "3"}, 422),
    ({"prompt": "a red circle", "seed": -1}, 422),
    ({"prompt": "a red circle", "seed": 2**70}, 422),
    ({"prompt": "a red circle", "steps": 0}, 422),
    ({"prompt": "a red circle", "steps": 65}, 422),
    ({"prompt": "a red circle", "steps": 2.5}, 422),
    ({"prompt": "a red circle", "candidates": 0}, 422),
    ({"prompt": "a red circle", "candidates": 33}, 422),
    (["a red circle"], 422),
]


@pytest.mark.parametrize("path", ["/v1/t2i", "/v1/t2i/stream"])
@pytest.mark.parametrize("body,status", BAD_JSON)
def test_bad_t2i_input_is_a_json_4xx(client, path, body, status):
    r = client.post(path, json=body)
    assert r.status_code == status and "detail" in r.json()


def test_malformed_and_non_utf8_bodies_are_422(client):
    for body in (b"{not json", b"\xff\xfe\x00garbage", b""):
        r = client.post("/v1/t2i", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "detail" in r.json()


@pytest.mark.parametrize("body", [{"n": 0}, {"n": 17}, {"n": "2"}, {"seed": -5}, {"steps": 0}])
def test_bad_pairs_input_is_422(client, body):
    assert client.post("/v1/pairs", json=body).status_code == 422


def bomb() -> bytes:
    """A 4,000 x 4,000 PNG: a few kB on the wire, 16 M pixels decoded."""
    return png_bytes(Image.new("L", (4000, 4000), 0))


@pytest.mark.parametrize(
    "path,data",
    [
        ("/v1/i2t", {}),
        ("/v1/i2t/stream", {}),
        ("/v1/infill", {"text": "a [MASK]"}),
        ("/v1/inpaint", {"prompt": "a red circle"}),
    ],
)
def test_bad_uploads_are_4xx(client, path, data):
    extra = {"mask": ("m.png", mask())} if path == "/v1/inpaint" else {}
    assert client.post(path, files={"image": ("a.png", b"not an image at all"), **extra}, data=data).status_code == 422
    assert client.post(path, files={"image": ("a.png", picture()[:40]), **extra}, data=data).status_code == 422
    assert client.post(path, files=extra or None, data=data).status_code == 422  # no image
    assert client.post(path, data={**data, "image": "text, not a file"}).status_code == 422
    for huge in (bomb(), png_bytes(Image.new("L", (4000, 1)))):  # a strip is 1M pixels once scaled to 16 high
        r = client.post(path, files={"image": ("b.png", huge), **extra}, data=data)
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
    r = client.post(path, files={"image": ("a.png", picture()), **extra}, data={**data, "steps": "100"})
    assert r.status_code == 422
    r = client.post(path, files={"image": ("a.png", picture()), **extra}, data={**data, "candidates": "many"})
    assert r.status_code == 422


def test_an_oversized_body_is_413(client):
    r = client.post("/v1/i2t", files={"image": ("a.png", b"\0" * 300_000)})
    assert r.status_code == 413 and "detail" in r.json()
    r = client.post("/v1/t2i", json={"prompt": "a" * 300_000})
    assert r.status_code == 413


@pytest.mark.parametrize(
    "fields,files",
    [
        ({"prompt": "a red circle"}, {"mask": ("m.png", mask((10, 10), (0, 0, 5, 5)))}),  # wrong size
        ({"prompt": "a red circle"}, {"mask": ("m.png", mask(box=(0, 0, 0, 0)))}),  # nothing to regenerate
        ({"prompt": "a red circle"}, {"mask": ("m.png", b"GIF89a nope")}),
        ({"prompt": "a red circle"}, {}),
        ({"prompt": ""}, {"mask": ("m.png", mask())}),
        ({"prompt": "red " * 60}, {"mask": ("m.png", mask())}),
        ({}, {"mask": ("m.png", mask())}),
    ],
)
def test_bad_inpainting_input_is_422(client, fields, files):
    r = client.post("/v1/inpaint", files={"image": ("a.png", picture()), **files}, data=fields)
    assert r.status_code == 422 and "detail" in r.json()


@pytest.mark.parametrize("text", ["", "   ", "red [MASK] " * 20])
def test_bad_infill_text_is_422(client, text):
    r = client.post("/v1/infill", files={"image": ("a.png", picture())}, data={"text": text})
    assert r.status_code == 422 and "detail" in r.json()


def test_an_argvlt_run_refuses_what_it_cannot_do(tmp_path):
    engine = Engine.load(write_run(tmp_path, causal=True), device="cpu")
    with TestClient(create_app(engine)) as c:
        assert c.get("/health").json()["tasks"] == ["t2i", "i2t"]
        assert c.post("/v1/pairs", json={"n": 1}).status_code == 422
        assert c.post("/v1/t2i", json={"prompt": "a red circle", "steps": 1}).status_code == 200


class SlowEngine:
    """Counts model calls; each waits until released, so requests pile up behind it."""

    tasks, image_size, name, max_prompt_tokens = ("t2i",), (16, 16), "slow", 18

    def __init__(self):
        self.calls, self.release = [], threading.Event()

    def check_prompt(self, prompt):
        pass

    def t2i(self, prompts, seeds, steps, candidates, on_step=None):
        self.release.wait(10)
        self.calls.append(list(prompts))
        if "boom" in prompts:
            raise RuntimeError("a bug")
        return [Image.new("RGB", (16, 16)) for _ in prompts]


def test_concurrent_requests_share_model_calls_and_a_full_queue_is_429():
    engine = SlowEngine()
    app = create_app(engine, Limits(max_batch=8, max_wait_ms=200, max_queue=10))

    async def scenario():
        import httpx

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                asks = [c.post("/v1/t2i", json={"prompt": f"p{i}"}) for i in range(14)]
                tasks = [asyncio.ensure_future(a) for a in asks]
                await asyncio.sleep(0.5)
                engine.release.set()
                return await asyncio.gather(*tasks)

    replies = asyncio.run(scenario())
    codes = sorted(r.status_code for r in replies)
    assert codes.count(200) >= 10 and set(codes) <= {200, 429}
    busy = [r for r in replies if r.status_code == 429]
    assert all(r.headers["retry-after"] == "1" and "detail" in r.json() for r in busy)
    assert max(len(c) for c in engine.calls) == 8 and len(engine.calls) < 14


def test_a_failing_batch_is_a_500_and_the_worker_lives_on():
    engine = SlowEngine()
    engine.release.set()
    with TestClient(create_app(engine), raise_server_exceptions=False) as c:
        r = c.post("/v1/t2i", json={"prompt": "boom"})
        assert r.status_code == 500 and r.json() == {"detail": "internal error"}
        assert c.post("/v1/t2i", json={"prompt": "fine"}).status_code == 200


def test_batcher_groups_by_key_and_keeps_order():
    seen = []

    def run(key, payloads, on_step):
        seen.append((key, list(payloads)))
        return [f"{key}:{p}" for p in payloads]

    batcher = Batcher(run, max_batch=3, max_wait=0.2, max_queue=100)

    async def scenario():
        batcher.start()
        try:
            jobs = [batcher.enqueue(k, i) for i, k in enumerate("aabaaab")]
            return await asyncio.gather(*(j.future for j in jobs))
        finally:
            await asyncio.to_thread(batcher.stop)

    assert asyncio.run(scenario()) == [f"{k}:{i}" for i, k in enumerate("aabaaab")]
    assert seen == [("a", [0, 1, 3]), ("b", [2, 6]), ("a", [4, 5])]


def test_the_queue_is_bounded():
    batcher = Batcher(lambda key, payloads, on_step: payloads, max_queue=2)

    async def scenario():
        batcher.enqueue("a", 1)
        batcher.enqueue("a", 2)
        with pytest.raises(QueueFull):
            batcher.enqueue("a", 3)

    asyncio.run(scenario())


def test_cli_refuses_a_missing_model_dir_and_bad_options(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for option in (["--max-batch", "0"], ["--threads", "0"], ["--max-wait-ms", "-1"], ["--port", "70000"]):
        assert main(["serve", "--model", str(tmp_path), *option]) == 2
        assert "magvlt: error: --" in capsys.readouterr().err


def test_a_request_gets_the_same_output_alone_or_batched(engine):
    one = engine.t2i(["a large red circle"], [5], steps=2, candidates=1)
    mixed = engine.t2i(["a small blue square", "a large red circle"], [7, 5], steps=2, candidates=1)
    assert np.array_equal(np.asarray(one[0]), np.asarray(mixed[1]))
    alone = engine.pairs([2], [9], steps=2)
    batched = engine.pairs([1, 2], [4, 9], steps=2)
    assert [c for _, c in alone[0]] == [c for _, c in batched[1]]
