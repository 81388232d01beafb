"""`python -m training`: train and export a new model version."""

import sys

from training.train import main

if __name__ == "__main__":
    sys.exit(main())
