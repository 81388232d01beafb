"""`mnist-serving`: predict (through the client, no torch), serve and train in one command.

`mnist-serving serve ARGS` is `python -m service ARGS`; `mnist-serving train ARGS` is
`python -m training ARGS`. Flags without a subcommand keep meaning `serve`, as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from service import __version__

if TYPE_CHECKING:
    from mnist_client import Prediction

_COMMANDS = ("predict", "serve", "train")


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-serving predict",
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


def predict(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Exit status 0 when every file was predicted, 1 on a server or client error."""
    from mnist_client import Client, ClientError

    args = _predict_parser().parse_args(argv)
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
        return 0
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
    return 0


def _answer(p: Prediction) -> str:
    """The table's answer: the digit, the number (rows joined by "/"), or why not a digit."""
    if p.kind == "not_a_digit":
        return f"not a digit: {p.reason or 'no reason given'}"
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
        sys.stdout.write(f"mnist-serving {__version__}\n")
        return 0
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: mnist-serving {predict,serve,train} ... | --version\n\n"
            "  predict FILE...  read digits and numbers with a running server (--url, --api-key, "
            "--json, --top-k, --one-digit)\n"
            "  serve [FLAGS]    run the server (same as python -m service)\n"
            "  train [FLAGS]    train and export a model version (same as python -m training)\n"
        )
        return 0 if args else 2
    command, rest = (args[0], args[1:]) if args[0] in _COMMANDS else ("serve", args)
    if command == "predict":
        return predict(rest)
    if command == "train":
        try:
            from training.train import main as train
        except ImportError as exc:  # the serving image carries no training code
            sys.stderr.write(
                f"mnist-serving train: training is not installed here ({exc.name or exc}); "
                "install the project with its 'train' extra from a source checkout\n"
            )
            return 2
        return train(rest)
    from service.__main__ import main as serve

    return serve(rest)


if __name__ == "__main__":
    sys.exit(main())
