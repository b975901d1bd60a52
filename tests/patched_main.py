"""main.py with the probe or fault that PATCH in the environment names (tests/patches.py) put in place."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import patches  # noqa: E402

patches.apply(os.environ["PATCH"])

import main  # noqa: E402

sys.exit(main.main(sys.argv[1:]))
