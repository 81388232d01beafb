"""`mnist-serving`: predict (the mnist-client command, no torch), serve and train in one command.

`mnist-serving serve ARGS` is `python -m service ARGS`; `mnist-serving train ARGS` is
`python -m training ARGS`. Flags without a subcommand keep meaning `serve`, as before.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service import __version__

_COMMANDS = ("predict", "serve", "train")


def predict(argv: Sequence[str]) -> int:
    """`mnist-serving predict`: the client distribution's command (mnist_client.cli)."""
    from mnist_client.cli import predict as client_predict

    return client_predict(argv, prog="mnist-serving predict")


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
