"""What the evaluation asks a running server, through its public HTTP API only."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from PIL import Image

#: Files per /v1/predict request, and requests in flight.
BATCH = 16
WORKERS = 4


@dataclass(frozen=True)
class Answer:
    """One file's answer, in the terms the evaluation counts.

    `kind` is the server's own `kind` when it sends one ("digit", "number",
    "not_a_digit"); a server without it answers "digit". A file refused with a 4xx as
    having nothing to read counts as "not_a_digit" too: it is not read as a digit.
    """

    kind: str
    digit: int | None
    number: str | None
    confidence: float | None
    status: int


def _answer(prediction: dict[str, Any]) -> Answer:
    kind = str(prediction.get("kind", "digit"))
    digit = prediction.get("digit")
    number = prediction.get("number")
    if number is None and digit is not None:
        number = str(digit)
    return Answer(kind, digit, number, prediction.get("confidence"), 200)


def _post(client: httpx.Client, files: list[tuple[str, bytes]]) -> list[Answer]:
    body = [("files", (name, data, "application/octet-stream")) for name, data in files]
    r = client.post("/v1/predict", files=body)
    if r.status_code == 200:
        return [_answer(p) for p in r.json()["predictions"]]
    if 400 <= r.status_code < 500 and len(files) > 1:
        # One refused file fails a multi-file request on older servers: ask one by one.
        return [a for f in files for a in _post(client, [f])]
    if 400 <= r.status_code < 500 and r.status_code not in (401, 403, 429):
        return [Answer("not_a_digit", None, None, None, r.status_code)]
    r.raise_for_status()
    raise httpx.HTTPStatusError(f"unexpected status {r.status_code}", request=r.request, response=r)


def predict_files(client: httpx.Client, files: list[tuple[str, bytes]]) -> list[Answer]:
    """Answers for every (filename, bytes), in order, BATCH files per request."""
    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return [a for answers in pool.map(lambda c: _post(client, c), chunks) for a in answers]


def naive_pixels(data: bytes) -> np.ndarray:
    """The baseline's input: the whole image resized to 28x28, nothing else.

    Grey levels are inverted when the border is bright, since the model reads light ink on
    dark and a client that knew nothing else would still do that much.
    """
    img: Image.Image = Image.open(io.BytesIO(data))
    img.seek(0)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    gray = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return (255 - gray if np.median(border) >= 128 else gray).astype(np.uint8)


def predict_tensors(
    client: httpx.Client, model: str, pixels: np.ndarray, batch: int = 64
) -> np.ndarray:
    """Digits the V2 `input` tensor path answers for [N,28,28] uint8 pixels (ink = 255)."""

    def infer(start: int) -> list[int]:
        chunk = pixels[start : start + batch]
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(chunk), 28, 28],
                    "datatype": "UINT8",
                    "data": chunk.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "label"}],
        }
        r = client.post(f"/v2/models/{model}/infer", json=body)
        r.raise_for_status()
        out = next(o for o in r.json()["outputs"] if o["name"] == "label")
        return [int(v) for v in out["data"]]

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        rows = [d for part in pool.map(infer, range(0, len(pixels), batch)) for d in part]
    return np.array(rows, dtype=np.int64)


def served_model(client: httpx.Client) -> tuple[str, str]:
    """(name, version) of the model the server answers with."""
    r = client.get("/v1/models")
    r.raise_for_status()
    served = r.json()["served"]
    return str(served["name"]), str(served["version"])
