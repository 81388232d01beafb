"""gRPC found without this repository's code: server reflection alone (as grpcurl does),
and Node loading the .proto that the server serves (@grpc/proto-loader, installed in
.node-grpc by `make install`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.conftest import png_bytes
from tests.support.server import ROOT, ServerProcess

NODE_MODULES = ROOT / ".node-grpc" / "node_modules"
SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess()
    proc.start(tmp_path_factory.mktemp("discovery"))
    yield proc
    assert proc.stop() == 0, proc.log()


def test_the_proto_is_served_with_options_for_other_languages(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/grpc/inference.proto", timeout=10)
    assert r.status_code == 200
    assert r.text == (ROOT / "service" / "rpc" / "inference.proto").read_text()
    assert 'option go_package = "' in r.text
    assert 'option java_package = "' in r.text


def test_reflection_alone_lists_and_calls_the_service(server: ServerProcess, mnist_sample) -> None:
    images, labels = mnist_sample
    with grpc.insecure_channel(server.grpc_url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        method = service.methods_by_name["ModelInfer"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = request_class(model_name="mnist-cnn")
        tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(png_bytes(images[0]))
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        response = call(request, timeout=30)
    names = [o.name for o in response.outputs]
    label = response.raw_output_contents[names.index("label")]
    assert int.from_bytes(label, "little", signed=True) == int(labels[0])


def test_reflection_can_be_turned_off(tmp_path: Path) -> None:
    proc = ServerProcess(env={"MNIST_GRPC_REFLECTION": "false"})
    proc.start(tmp_path)
    try:
        with grpc.insecure_channel(proc.grpc_url) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            with pytest.raises(grpc.RpcError) as exc:
                database.get_services()
            assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert proc.stop() == 0, proc.log()


NODE_CLIENT = r"""
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const fs = require("fs");
const [url, target, image] = process.argv.slice(2);
(async () => {
  const proto = await (await fetch(`${url}/grpc/inference.proto`)).text();
  fs.writeFileSync("inference.proto", proto);
  const def = loader.loadSync("inference.proto", { keepCase: true, longs: Number });
  const { inference } = grpc.loadPackageDefinition(def);
  const client = new inference.GRPCInferenceService(target, grpc.credentials.createInsecure());
  const request = {
    model_name: "mnist-cnn",
    inputs: [{ name: "image", datatype: "BYTES", shape: [1],
               contents: { bytes_contents: [fs.readFileSync(image)] } }],
  };
  client.ModelInfer(request, (err, res) => {
    if (err) { console.error(err.message); process.exit(1); }
    const i = res.outputs.findIndex((o) => o.name === "label");
    console.log(JSON.stringify({ label: Number(res.raw_output_contents[i].readBigInt64LE()) }));
    process.exit(0);
  });
})();
"""


def test_node_calls_model_infer_from_the_served_proto(
    server: ServerProcess, mnist_sample, tmp_path: Path
) -> None:
    assert NODE_MODULES.is_dir(), f"{NODE_MODULES} is missing: `make install` installs it"
    images, labels = mnist_sample
    (tmp_path / "client.js").write_text(NODE_CLIENT)
    (tmp_path / "seven.png").write_bytes(png_bytes(images[1]))
    run = subprocess.run(
        ["node", "client.js", server.url, server.grpc_url, "seven.png"],
        cwd=tmp_path, env={"NODE_PATH": str(NODE_MODULES), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"label": int(labels[1])}
