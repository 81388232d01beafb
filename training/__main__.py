"""`python -m training`: train and export a new model version.

`python -m training artifacts VERSION_DIR...` builds the compiled artifacts of existing
version folders instead (training/artifacts.py).
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["artifacts"]:
        from training.artifacts import main as artifacts

        sys.exit(artifacts(sys.argv[2:]))
    from training.train import main

    sys.exit(main())
