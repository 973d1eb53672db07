"""``python -m benchmarks SUITE [--data-dir D] [--output-dir O] [--seeds 0,1,2] [--methods a,b]``:
the same as ``forceprune bench``."""
import sys

from forceprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
