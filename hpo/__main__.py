import os
import sys

# `python -m hpo` puts the working directory first on sys.path, so a `typer.py` or `json.py`
# lying there would be imported instead of the real module (and run). Drop it, as `python -P`
# would; hpo itself is imported already, and `PYTHONPATH=.` still adds the directory on purpose.
if not sys.flags.safe_path and sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    del sys.path[0]

from hpo.cli import main

main()
