"""The FastAPI app of `magvlt serve`: JSON API under /v1, server-sent refinement streams, the page at /.

Every request is validated before it is queued, so a model batch only holds good requests; bad input gets a 4xx
with a JSON `{"detail": ...}` body (FastAPI's convention), a full queue 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import warnings
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from magvlt.errors import UserError
from magvlt.serve.batching import Batcher, QueueFull
from magvlt.serve.engine import Engine

STATIC = Path(__file__).parent / "static"
MAX_SEED = 2**63 - 1
MAX_STEPS, MAX_CANDIDATES, MAX_PAIRS, MAX_PROMPT_CHARS = 64, 32, 16, 1000  # candidates: the paper keeps 1 of 32
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image at the model's resolution"}}
SSE = {200: {"content": {"text/event-stream": {}}, "description": "`step` events, then `done` (or `error`)"}}


@dataclass(frozen=True)
class Limits:
    """Batching and input limits of one server."""

    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096


# ---------------------------------------------------------------- request bodies and form fields

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="same seed, same output (see docs/serve.md)")]
Candidates = Annotated[int, Field(ge=1, le=MAX_CANDIDATES, description="samples drawn; the most likely is kept")]


def steps_field(default: int):
    return Field(default, ge=1, le=MAX_STEPS, description="refinement steps")


class T2IRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, examples=["a large red circle"])
    seed: Seed = 0
    steps: int = steps_field(10)
    candidates: Candidates = 1


class PairsRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    n: int = Field(4, ge=1, le=MAX_PAIRS, description="pairs to generate")
    seed: Seed = 0
    steps: int = steps_field(10)


class Caption(BaseModel):
    caption: str


class Infilled(BaseModel):
    text: str


class Pair(BaseModel):
    image: str = Field(description="base64-encoded PNG")
    caption: str


ImageFile = Annotated[UploadFile, File(description="an image file (PNG, JPEG, WebP, ...)")]
Text = Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)]
FormSeed = Annotated[int, Form(ge=0, le=MAX_SEED)]
FormSteps = Annotated[int, Form(ge=1, le=MAX_STEPS, description="refinement steps")]
FormCandidates = Annotated[int, Form(ge=1, le=MAX_CANDIDATES)]


# ---------------------------------------------------------------- images, events, errors


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64png(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode("ascii")


def fitted_pixels(width: int, height: int, size: tuple[int, int]) -> float:
    """Pixels of an image once its shorter side is scaled up to the model's (height, width), as the model reads it."""
    scale = max(1.0, size[0] / height, size[1] / width)
    return width * height * scale * scale


def decode_image(data: bytes, max_pixels: int, size: tuple[int, int], field: str) -> Image.Image:
    """Upload bytes -> RGB image; 413 past max_pixels as sent or as resized for the model (an image bomb, a
    1-pixel-high strip), 422 for anything that is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if fitted_pixels(im.width, im.height, size) > max_pixels:
                    raise HTTPException(
                        413,
                        f"{field} is {im.width}x{im.height} pixels; at most {max_pixels} "
                        f"pixels are read, after scaling to the model's {size[1]}x{size[0]}",
                    )
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, f"{field} has too many pixels (at most {max_pixels} are read)") from None
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure on an upload is the client's bad file
        raise HTTPException(422, f"{field} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def frame_data(frame) -> dict:
    """A refinement frame as event data: an image (base64 PNG) or a text with '_' for masked tokens."""
    return {"image": b64png(frame)} if isinstance(frame, Image.Image) else {"text": frame}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes (declared or sent) gets 413 before the app reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        body = {"detail": f"request body over {self.limit} bytes"}
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


# ---------------------------------------------------------------- the app


def run_batch(engine: Engine):
    """The batcher's model call: key (task, steps, candidates, streamed) and one payload dict per request."""

    def run(key, payloads: list[dict], on_step):
        task, steps, candidates, _ = key
        col = {name: [p[name] for p in payloads] for name in payloads[0]}
        if task == "t2i":
            return engine.t2i(col["prompt"], col["seed"], steps, candidates, on_step)
        if task == "i2t":
            return engine.i2t(col["image"], col["seed"], steps, candidates, on_step)
        if task == "inpaint":
            return engine.inpaint(col["image"], col["mask"], col["prompt"], col["seed"], steps, candidates)
        if task == "infill":
            return engine.infill(col["image"], col["text"], col["seed"], steps, candidates)
        return engine.pairs(col["n"], col["seed"], steps)

    return run


def create_app(engine: Engine, limits: Limits = Limits()) -> FastAPI:
    """The app serving `engine`; its batch worker runs while the app does (lifespan)."""
    batcher = Batcher(run_batch(engine), limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="magvlt serve",
        version="1",
        lifespan=lifespan,
        description="MAGVLT over HTTP: text to image, image to text, inpainting, text infilling and "
        "image + caption pairs, each by iterative masked decoding. The page is at `/`.",
    )
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_error_handlers(app)

    def supports(task: str) -> None:
        if task not in engine.tasks:
            raise UserError(f"{task} needs a MAGVLT model; this run does only {', '.join(engine.tasks)}")

    def checked(check, value: str) -> str:
        """The value, once `check` (an engine check raising UserError: 422) has passed it."""
        check(value)
        return value

    async def image_of(upload: UploadFile, field: str) -> Image.Image:
        """The uploaded image as sent (decoded off the event loop)."""
        data = await upload.read()
        return await asyncio.to_thread(decode_image, data, limits.max_pixels, engine.image_size, field)

    async def model_image_of(upload: UploadFile) -> Image.Image:
        """The uploaded image at the model's size: the queue holds only small images."""
        return await asyncio.to_thread(engine.fit, await image_of(upload, "image"))

    async def run(task: str, steps: int, candidates: int, payload: dict):
        supports(task)
        return await batcher.submit((task, steps, candidates, False), payload)

    def stream(task: str, steps: int, candidates: int, payload: dict, final) -> StreamingResponse:
        """Queue a streamed job now (so a full queue is a 429) and send its frames, then its result, as SSE."""
        supports(task)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_step(step, steps_, frame):  # worker thread
            data = {"step": step, "steps": steps_, **frame_data(frame)}
            loop.call_soon_threadsafe(events.put_nowait, ("step", data))

        job = batcher.enqueue((task, steps, candidates, True), payload, on_step)
        job.future.add_done_callback(lambda future: events.put_nowait(("end", future)))

        async def body():
            while (item := await events.get())[0] == "step":
                yield sse(*item)
            future = item[1]
            if future.exception() is None:
                yield sse("done", final(future.result()))
            else:
                yield sse("error", {"detail": error_detail(future.exception())})

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        """200 once the model is loaded: what it does and the server's limits."""
        h, w = engine.image_size
        return {
            "status": "ok",
            "model": engine.name,
            "tasks": list(engine.tasks),
            "image_size": [h, w],
            "max_prompt_tokens": engine.max_prompt_tokens,
            "waiting": batcher.waiting,
            "batches": batcher.batches,
            "limits": {
                **asdict(limits),
                "max_steps": MAX_STEPS,
                "max_candidates": MAX_CANDIDATES,
                "max_pairs": MAX_PAIRS,
                "max_prompt_chars": MAX_PROMPT_CHARS,
            },
        }

    @app.post("/v1/t2i", response_class=Response, responses=PNG)
    async def t2i(req: T2IRequest):
        """Text to image: a PNG."""
        payload = {"prompt": checked(engine.check_prompt, req.prompt), "seed": req.seed}
        return Response(png(await run("t2i", req.steps, req.candidates, payload)), media_type="image/png")

    @app.post("/v1/t2i/stream", response_class=StreamingResponse, responses=SSE)
    async def t2i_stream(req: T2IRequest):
        """Text to image, streamed: a `step` event per refinement step ({step, steps, image}), then `done`."""
        payload = {"prompt": checked(engine.check_prompt, req.prompt), "seed": req.seed}
        return stream("t2i", req.steps, req.candidates, payload, lambda image: {"image": b64png(image)})

    @app.post("/v1/i2t", response_model=Caption)
    async def i2t(image: ImageFile, seed: FormSeed = 0, steps: FormSteps = 12, candidates: FormCandidates = 1):
        """Image to text: the caption."""
        payload = {"image": await model_image_of(image), "seed": seed}
        return {"caption": await run("i2t", steps, candidates, payload)}

    @app.post("/v1/i2t/stream", response_class=StreamingResponse, responses=SSE)
    async def i2t_stream(image: ImageFile, seed: FormSeed = 0, steps: FormSteps = 12, candidates: FormCandidates = 1):
        """Image to text, streamed: a `step` event per refinement step ({step, steps, text}), then `done`."""
        payload = {"image": await model_image_of(image), "seed": seed}
        return stream("i2t", steps, candidates, payload, lambda caption: {"caption": caption})

    @app.post("/v1/inpaint", response_class=Response, responses=PNG)
    async def inpaint(
        image: ImageFile,
        mask: Annotated[UploadFile, File(description="PNG, white = regenerate")],
        prompt: Text,
        seed: FormSeed = 0,
        steps: FormSteps = 10,
        candidates: FormCandidates = 1,
    ):
        """Inpainting: the image with the tokens under the mask's white regenerated for the prompt (a PNG)."""
        supports("inpaint")
        picture, painted = await image_of(image, "image"), await image_of(mask, "mask")
        if painted.size != picture.size:
            raise UserError(
                f"mask is {painted.width}x{painted.height}; it must be the image's size, "
                f"{picture.width}x{picture.height}"
            )
        tokens = await asyncio.to_thread(engine.token_mask, painted)
        if not tokens.any():
            raise UserError("the mask covers no image token: paint white (at least half a token) to regenerate")
        payload = {
            "image": await asyncio.to_thread(engine.fit, picture),
            "mask": tokens,
            "prompt": checked(engine.check_prompt, prompt),
            "seed": seed,
        }
        return Response(png(await run("inpaint", steps, candidates, payload)), media_type="image/png")

    @app.post("/v1/infill", response_model=Infilled)
    async def infill(
        image: ImageFile, text: Text, seed: FormSeed = 0, steps: FormSteps = 12, candidates: FormCandidates = 1
    ):
        """Text infilling: the text with each [MASK] marker (one token) filled in, given the image."""
        supports("infill")
        payload = {"image": await model_image_of(image), "text": checked(engine.check_masked_text, text), "seed": seed}
        return {"text": await run("infill", steps, candidates, payload)}

    @app.post("/v1/pairs", response_model=list[Pair])
    async def pairs(req: PairsRequest | None = None):
        """Joint generation: n unconditional (image, caption) pairs (no body: the defaults)."""
        req = req or PairsRequest()
        made = await run("pairs", req.steps, 1, {"n": req.n, "seed": req.seed})
        return [{"image": b64png(image), "caption": caption} for image, caption in made]

    return app


def error_detail(e: BaseException) -> str:
    """What a client is told about a failed request: its own mistake in full, nothing of an internal error."""
    return str(e) if isinstance(e, UserError) else "internal error"


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors: 422 for bad input (without echoing it back), 429 + Retry-After for a full queue, 500 else."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        fields = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    @app.exception_handler(UserError)
    async def bad_input(request: Request, e: UserError):
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, e: QueueFull):
        return JSONResponse(
            {"detail": f"server busy: {e}; retry shortly"}, status_code=429, headers={"Retry-After": "1"}
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        return JSONResponse({"detail": "internal error"}, status_code=500)
