"""Drive a server with the KServe SDK's REST and gRPC clients; print the results as JSON.

Run as a subprocess by test_kserve_sdk.py: the SDK and tritonclient register the same
protobuf symbols (package `inference`) and cannot be imported into one process.
Usage: python -m tests.e2e.kserve_driver '{"http": URL, "grpc": HOST:PORT, "key": KEY,
"files": [PNG paths], "pixels": NPY path}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

MODEL = "mnist-cnn"


def _image_request(files: list[str]) -> InferRequest:
    data = np.array([Path(f).read_bytes() for f in files], dtype=np.object_)
    image = InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(data, binary_data=True)  # the SDK sends bytes only as binary
    return InferRequest(MODEL, [image], request_id="k1", request_outputs=[RequestedOutput("label")])


def _pixel_request(pixels: np.ndarray) -> InferRequest:
    tensor = InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=False)
    return InferRequest(MODEL, [tensor])


def _labels(response: Any) -> list[int]:
    return [int(v) for v in response.get_output_by_name("label").as_numpy().reshape(-1)]


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {cfg['key']}"}
    pixels = np.load(cfg["pixels"])
    out: dict[str, Any] = {}

    # NOTE: a fresh headers dict per infer call: the SDK (0.21) writes the binary header
    # length and content type into the dict it is given, which poisons the next call.
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out["rest_live"] = await rest.is_server_live(cfg["http"])
        out["rest_model_ready"] = await rest.is_model_ready(cfg["http"], MODEL, headers=headers)
        # The SDK's REST is_model_ready turns any non-2xx into False: the 401 is the server's.
        out["rest_model_ready_without_key"] = await rest.is_model_ready(cfg["http"], MODEL)
        reply = await rest.infer(
            cfg["http"], _image_request(cfg["files"]), model_name=MODEL, headers=dict(headers)
        )
        out["rest_image_labels"] = _labels(reply)
        out["rest_image_id"] = reply.id
        reply = await rest.infer(
            cfg["http"], _pixel_request(pixels), model_name=MODEL, headers=dict(headers)
        )
        out["rest_pixel_labels"] = _labels(reply)
        try:
            await rest.infer(
                cfg["http"],
                _pixel_request(pixels[:, :700]),
                model_name=MODEL,
                headers=dict(headers),
            )
        except Exception as exc:  # the SDK raises httpx.HTTPStatusError with the body
            response = getattr(exc, "response", None)
            out["rest_error"] = [response.status_code, response.json()] if response else repr(exc)
    finally:
        await rest.close()

    client = InferenceGRPCClient(cfg["grpc"], retries=0, timeout=30)
    metadata = tuple(headers.items())
    try:
        out["grpc_live"] = await client.is_server_live()
        out["grpc_model_ready"] = await client.is_model_ready(MODEL, headers=metadata)
        try:
            await client.is_model_ready(MODEL)
        except grpc.RpcError as exc:
            out["grpc_model_ready_without_key"] = exc.code().name
        reply = await client.infer(_image_request(cfg["files"]), headers=metadata)
        out["grpc_image_labels"] = _labels(reply)
        reply = await client.infer(_pixel_request(pixels), headers=metadata)
        out["grpc_pixel_labels"] = _labels(reply)
        try:
            await client.infer(_pixel_request(pixels[:, :700]), headers=metadata)
        except grpc.RpcError as exc:
            out["grpc_error"] = [exc.code().name, exc.details()]
    finally:
        await client.close()
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))) + "\n")
