"""The V2 codec's pure functions: parsing, binary split, inputs, output plan and encoding."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from service.errors import InvalidInput, PayloadTooLarge
from service.wire.codec import v2 as codec

LIMITS = codec.Limits(max_rows=64, max_files=8)


def _tensor(datatype: str, shape: list[int], data: list | None = None, raw: bytes | None = None):
    return codec.Tensor("input", datatype, shape, data=data, raw=raw)


@pytest.mark.parametrize("value", ["²", "-1", "1e3", "", " ", "٣"])
def test_split_body_refuses_a_header_length_that_is_not_ascii_digits(value: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        codec.split_body(b"{}xx", value)


def test_split_body_splits_json_from_binary() -> None:
    assert codec.split_body(b"{}abc", "2") == (b"{}", b"abc")
    assert codec.split_body(b"{}", None) == (b"{}", b"")


@pytest.mark.parametrize("value", [300, -1, 2**64, 256, 1.5e300])
def test_uint8_values_out_of_range_are_invalid_input(value: float) -> None:
    data = [0] * 783 + [value]
    with pytest.raises(InvalidInput, match="UINT8|numbers"):
        codec.tensor_rows(_tensor("UINT8", [1, 784], data), 64)


def test_uint8_json_values_become_pixels_in_unit_range() -> None:
    rows = codec.tensor_rows(_tensor("UINT8", [1, 784], [255] * 784), 64)
    assert (rows.values.shape, rows.values.dtype, rows.normalized) == (
        (1, 28, 28),
        np.float32,
        False,
    )
    assert float(rows.values.max()) == pytest.approx(1.0)


def test_fp32_input_is_kept_as_sent_for_the_model() -> None:
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    rows = codec.tensor_rows(_tensor("FP32", [2, 1, 28, 28], raw=x.tobytes()), 64)
    assert rows.normalized
    np.testing.assert_array_equal(rows.values, x.reshape(2, 28, 28))  # bit for bit


def test_rows_over_the_limit_are_413_before_reading_data() -> None:
    item = _tensor("UINT8", [10**9, 784], data=[])  # no data: refused on the shape alone
    with pytest.raises(PayloadTooLarge, match="10\\*\\*9|1000000000 rows"):
        codec.tensor_rows(item, 64)


def test_data_list_longer_than_its_shape_is_refused_without_converting_it() -> None:
    item = _tensor("FP32", [1, 784], data=[0.0] * 3_000_000)
    with pytest.raises(InvalidInput, match="3000000 elements"):
        codec.tensor_rows(item, 64)


def test_bytes_split_stops_at_the_element_cap() -> None:
    raw = struct.pack("<I", 0) * 2_000_000  # two million empty elements in 8 MB
    with pytest.raises(PayloadTooLarge, match="limit is 8"):
        codec.deserialize_bytes(raw, 8)


def test_image_data_list_over_the_cap_is_413() -> None:
    item = codec.Tensor("image", "BYTES", [1], data=["AA=="] * 1_000)
    with pytest.raises(PayloadTooLarge):
        codec.image_files(item, 8)


def test_image_elements_accept_base64_and_raw_bytes() -> None:
    item = codec.Tensor("image", "BYTES", [2], data=["aGk=", b"\x89PNG"])
    assert codec.image_files(item, 8) == [b"hi", b"\x89PNG"]


def test_parse_ignores_unknown_fields_and_assigns_binary_in_order() -> None:
    header = orjson.dumps(
        {
            "model_name": "mnist-cnn",  # sent by the KServe SDK
            "inputs": [
                {"name": "input", "shape": [1, 784], "datatype": "UINT8", "extra": 1,
                 "parameters": {"binary_data_size": 784}},
            ],
        }
    )  # fmt: skip
    req = codec.parse_json_request(header, bytes(784), LIMITS)
    assert req.inputs[0].raw == bytes(784)
    with pytest.raises(InvalidInput, match="declare 784"):
        codec.parse_json_request(header, bytes(785), LIMITS)


def test_plan_refuses_unknown_or_repeated_outputs_and_bad_parameters() -> None:
    def plan(outputs: list[codec.Requested]) -> list[codec.OutputSpec]:
        return codec.plan_outputs(codec.V2Request([], outputs))

    with pytest.raises(InvalidInput, match="unknown output 'colour'"):
        plan([codec.Requested("colour")])
    with pytest.raises(InvalidInput, match="twice"):
        plan([codec.Requested("label"), codec.Requested("label")])
    with pytest.raises(InvalidInput, match="classification"):
        plan([codec.Requested("label", {"classification": -1})])
    with pytest.raises(InvalidInput, match="binary_data"):
        plan([codec.Requested("label", {"binary_data": "yes"})])
    assert [s.name for s in plan([])] == ["probabilities", "label"]


def test_encode_renders_tensors_binary_and_classification() -> None:
    probs = np.array([[0.1, 0.7, 0.2] + [0.0] * 7], dtype=np.float32)
    plan = [
        codec.OutputSpec("label", binary=False, classes=0),
        codec.OutputSpec("probabilities", binary=True, classes=0),
        codec.OutputSpec("probabilities", binary=False, classes=2),
    ]
    tensors = codec.encode_outputs(plan, probs)
    header, blob = codec.render_json(tensors, "m", "1", "r")
    body = orjson.loads(header)
    assert body["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}
    assert body["outputs"][1]["parameters"] == {"binary_data_size": 40}
    assert np.frombuffer(blob, "<f4").tolist() == pytest.approx(probs[0].tolist())
    assert body["outputs"][2]["data"] == ["0.700000:1:1", "0.200000:2:2"]
    assert body["id"] == "r"


def test_parse_refuses_a_data_list_over_any_input_limit_before_validation() -> None:
    limits = codec.Limits(max_rows=2, max_files=8)
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8",
                        "data": [0] * (2 * 784 + 1)}]}  # fmt: skip
    with pytest.raises(PayloadTooLarge, match="1569 data elements; the limit is 1568"):
        codec.parse_json_request(orjson.dumps(body), b"", limits)


def test_outputs_default_to_everything_the_input_can_have() -> None:
    image = codec.V2Request([codec.Tensor("image", "BYTES", [1], data=["AA=="])])
    tensor = codec.V2Request([_tensor("UINT8", [1, 784], data=[0] * 784)])
    assert [o.name for o in codec.plan_outputs(image)] == ["probabilities", "label", "kind",
                                                           "number", "error"]  # fmt: skip
    assert [o.name for o in codec.plan_outputs(tensor)] == ["probabilities", "label"]
