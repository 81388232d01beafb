"""`python -m service.runtime.check`: load and warm the versions the policy serves, then exit
(0 = servable).

The multi-worker supervisor runs this in a child process so that it fails fast with one line
without importing torch itself.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.config import Settings
from service.errors import describe_validation


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"error: invalid setting {describe_validation(exc, 'settings')}\n")
        return 2
    from service.serving.repository import ModelLoadError, ModelRepository

    try:
        models = ModelRepository(settings)
        models.start()  # every version the policy serves, within the memory bound
    except ModelLoadError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    clf = models.current
    served = ", ".join(models.served.models)
    sys.stdout.write(f"ok: {clf.name} v{clf.version} on {clf.device} (versions {served})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
