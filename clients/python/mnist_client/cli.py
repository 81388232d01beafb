"""`mnist-client predict PATH...`: read image files and folders with a running server (also
`mnist-serving predict`, which calls this).

Exit status: 0 when every file was read, 1 when some could not be (each has its row), 2 for
a usage error or when the server cannot be used at all (unreachable, wrong key).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any, TextIO

from mnist_client import __version__
from mnist_client._bulk import FileResult
from mnist_client._client import Client
from mnist_client._types import ClientError, Prediction

FORMATS = ("table", "json", "jsonl", "csv")
CSV_COLUMNS = ["file", "kind", "digit", "number", "confidence", "reason", "code", "error",
               "top_k"]  # fmt: skip


def _predict_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Read each image file with a running server: a digit, a number (several "
        "digits), or not a digit. Folders give their image files.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="also the files of subfolders")  # fmt: skip
    parser.add_argument("--glob", help="which files of a folder (default: image suffixes)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="table (default), json, jsonl (a line per file) or csv")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="same as --format json")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the results here (as they arrive), not to stdout")  # fmt: skip
    parser.add_argument("--url", help="server URL (default $MNIST_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $MNIST_API_KEY)")
    parser.add_argument("--top-k", type=int, choices=range(1, 11), metavar="K",
                        help="also show the K most likely digits (1-10)")  # fmt: skip
    parser.add_argument("--one-digit", action="store_true",
                        help="read each image as exactly one digit (a form cell)")  # fmt: skip
    parser.add_argument(
        "--model-version",
        metavar="V",
        help="model version to answer with (default: the server's default)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=2,
                        help="more tries for a busy server or a dropped connection")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def predict(
    argv: Sequence[str],
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    prog: str = "mnist-client predict",
) -> int:
    """Read every file, writing each result as it arrives; see the module for the status."""
    args = _predict_parser(prog).parse_args(argv)
    fmt = args.format or ("json" if args.json else "table")
    from mnist_client._bulk import expand

    paths = expand(args.paths, args.recursive, args.glob)
    if not paths:
        err.write(f"{prog}: no files found in {' '.join(args.paths)}\n")
        return 2
    sink: IO[str] = open(args.output, "w", newline="", encoding="utf-8") if args.output else out  # noqa: SIM115
    writer = _Writer(fmt, sink, bool(args.top_k))
    counts: Counter[str] = Counter()
    progress = _progress(len(paths), err, disabled=args.no_progress)
    try:
        with Client(args.url, api_key=args.api_key, timeout_s=args.timeout,
                    retries=args.retries) as client:  # fmt: skip
            results = client.predict_many(
                paths, top_k=args.top_k, one_digit=args.one_digit, concurrency=args.concurrency,
                version=args.model_version,
            )  # fmt: skip
            for result in results:
                writer.write(result)
                counts[result.prediction.kind] += 1
                if progress is not None:
                    progress.update(1)
    except ClientError as exc:
        if progress is not None:
            progress.close()
        err.write(f"error: {exc.message} ({exc.code})\n")
        return 2
    finally:
        writer.close()
        if sink is not out:
            sink.close()
    if progress is not None:
        progress.close()
    err.write(_summary(counts) + "\n")
    return 1 if counts["error"] else 0


def _progress(total: int, err: TextIO, disabled: bool) -> Any:
    """A tqdm bar on stderr when it is a terminal; None when piped or turned off."""
    if disabled or not err.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=err, unit="file", dynamic_ncols=True)


def _summary(counts: Counter[str]) -> str:
    total = sum(counts.values())
    read = total - counts["error"]
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("digit", "number", "not_a_digit") if counts[k])
    return f"{total} files: {read} read ({kinds or 'none'}), {counts['error']} failed"


class _Writer:
    """Writes results in one format; all but the table go out as they arrive."""

    def __init__(self, fmt: str, sink: IO[str], top_k: bool) -> None:
        self.fmt, self.sink, self.top_k = fmt, sink, top_k
        self.rows: list[FileResult] = []
        self.csv: Any = None
        if fmt == "csv":
            self.csv = csv.writer(sink)
            self.csv.writerow(CSV_COLUMNS if top_k else CSV_COLUMNS[:-1])
            sink.flush()

    def write(self, result: FileResult) -> None:
        if self.fmt == "jsonl":
            self.sink.write(json.dumps(_json_prediction(result.path, result.prediction)) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow(_csv_row(result, self.top_k))
        else:
            self.rows.append(result)
            return
        self.sink.flush()

    def close(self) -> None:
        if self.fmt == "json":
            items = [_json_prediction(r.path, r.prediction) for r in self.rows]
            self.sink.write(json.dumps({"predictions": items}) + "\n")
        elif self.fmt == "table":
            _table(self.rows, self.sink, self.top_k)
        self.sink.flush()


def _table(results: list[FileResult], sink: IO[str], top_k: bool) -> None:
    rows = [
        [r.path, p.kind, _answer(p), "-" if p.confidence is None else f"{p.confidence:.4f}",
         " ".join(f"{t.digit}:{t.probability:.3f}" for t in p.top_k or ())]
        for r in results
        for p in [r.prediction]
    ]  # fmt: skip
    header = ["FILE", "KIND", "ANSWER", "CONFIDENCE"] + (["TOP-K"] if top_k else [])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i == 3 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        sink.write("  ".join(cells).rstrip() + "\n")


def _csv_row(result: FileResult, top_k: bool) -> list[Any]:
    p = result.prediction
    row = [result.path, p.kind, "" if p.digit is None else p.digit, p.number or "",
           "" if p.confidence is None else p.confidence, p.reason or "", p.code or "",
           p.error or ""]  # fmt: skip
    if top_k:
        row.append(" ".join(f"{t.digit}:{t.probability:.6g}" for t in p.top_k or ()))
    return row


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
    sys.stdout.write("usage: mnist-client predict PATH... [--help] | --version\n")
    return 0 if args and args[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
