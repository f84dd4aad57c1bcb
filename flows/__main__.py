"""`python -m flows <stage> [ARGS...]`: what dvc.yaml's stages run (flows/stage.py)."""

import sys

from flows.stage import main

sys.exit(main())
