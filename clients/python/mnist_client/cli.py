"""`mnist-client predict FILE...`: read image files with a running server (also
`mnist-serving predict`, which calls this)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from mnist_client import __version__
from mnist_client._client import Client
from mnist_client._types import ClientError, Prediction, PredictResult


def _predict_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Read each image file with a running server: a digit, a number (several "
        "digits), or not a digit.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--url", help="server URL (default $MNIST_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $MNIST_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--top-k", type=int, choices=range(1, 11), metavar="K",
                        help="also show the K most likely digits (1-10)")  # fmt: skip
    parser.add_argument("--one-digit", action="store_true",
                        help="read each image as exactly one digit (a form cell)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    return parser


def predict(
    argv: Sequence[str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    prog: str = "mnist-client predict",
) -> int:
    """Exit status 0 when every file was predicted, 1 on a server or client error."""
    args = _predict_parser(prog).parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
            result = client.predict(*args.files, top_k=args.top_k, one_digit=args.one_digit)
    except ClientError as exc:
        if args.json:
            body = {"error": exc.message, "code": exc.code, "details": exc.details or None}
            out.write(json.dumps({k: v for k, v in body.items() if v is not None}) + "\n")
        else:
            err.write(f"error: {exc.message} ({exc.code})\n")
            for d in exc.details:
                err.write(f"  {d.get('filename', '?')}: {d.get('error', '')}\n")
        return 1
    if args.json:
        payload = {
            "model": {"name": result.model.name, "version": result.model.version},
            "predictions": [
                _json_prediction(path, p) for path, p in zip(args.files, result, strict=True)
            ],
        }
        out.write(json.dumps(payload) + "\n")
        return _status(result)
    rows = [
        [path, p.kind, _answer(p), "-" if p.confidence is None else f"{p.confidence:.4f}",
         " ".join(f"{t.digit}:{t.probability:.3f}" for t in p.top_k or ())]
        for path, p in zip(args.files, result, strict=True)
    ]  # fmt: skip
    header = ["FILE", "KIND", "ANSWER", "CONFIDENCE"] + (["TOP-K"] if args.top_k else [])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i == 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        out.write("  ".join(cells).rstrip() + "\n")
    return _status(result)


def _status(result: PredictResult) -> int:
    """0 when every file was read, 1 when some could not be."""
    return 1 if any(p.kind == "error" for p in result) else 0


def _answer(p: Prediction) -> str:
    """The table's answer: the digit, the number (rows joined by "/"), or why not a digit."""
    if p.kind == "not_a_digit":
        return f"not a digit: {p.reason or 'no reason given'}"
    if p.kind == "error":
        return f"error: {p.error} ({p.code})"
    if p.digit is not None:
        return str(p.digit)
    if p.number is not None:
        return p.number.replace("\n", "/")
    return "-"


def _json_prediction(path: str, p: Prediction) -> dict[str, Any]:
    item: dict[str, Any] = {
        "file": path,
        "kind": p.kind,
        "digit": p.digit,
        "number": p.number,
        "confidence": p.confidence,
        "reason": p.reason,
        "code": p.code,
        "error": p.error,
        "digits": [
            {"digit": d.digit, "confidence": d.confidence, "box": list(d.box)} for d in p.digits
        ],
    }
    if p.top_k:
        item["top_k"] = [[t.digit, t.probability] for t in p.top_k]
    return item


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--version", "-V"):
        sys.stdout.write(f"mnist-client {__version__}\n")
        return 0
    if args and args[0] == "predict":
        return predict(args[1:])
    sys.stdout.write(
        "usage: mnist-client predict FILE... [--url URL] [--api-key KEY] [--json] ... | --version\n"
    )
    return 0 if args and args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
