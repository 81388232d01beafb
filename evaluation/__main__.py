"""`python -m evaluation`: accuracy of a running server on real uploads."""

import sys

from evaluation.report import main

if __name__ == "__main__":
    sys.exit(main())
