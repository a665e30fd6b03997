"""The MLflow tracking server as hpo runs it: ``mlflow server --app-name hpo``, or
``--app-name hpo-basic-auth`` for MLflow's logins (docker-compose.yml, deploy/, ``hpo ui``).

It is MLflow's own server (the same REST API, artifact routes and UI; with
``hpo-basic-auth``, MLflow's basic auth as ``--app-name basic-auth`` sets it up) but for the UI's
HTML page, which gets one inline script first in its ``<head>``: when the browser has not
remembered a choice of the UI's sidebar switch (GenAI | Model training), it remembers "Model
training". MLflow 3's UI (3.17) opens an experiment on its GenAI overview unless the address
(``workflowType=``) or that remembered choice says otherwise, and does not read the
experiment's kind (MLflow issue #24498): without this, a new user who opens the home page and
clicks a study lands on an empty GenAI "Overview". A user who picks GenAI keeps it; the
addresses hpo prints carry ``workflowType`` and work the same on a plain ``mlflow server``.

The key and value are those of the UI's own ``useLocalStorage`` hook (``<key>_v<version>``,
the value as JSON), read by ``tests/test_ui_browser.py`` through a real browser.

MLflow registers the two names through the ``mlflow.app`` entry points of pyproject.toml;
``mlflow server`` loads them in each of its worker processes under uvicorn (its default),
gunicorn or waitress.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The UI's remembered sidebar choice: useLocalStorage({key: "mlflow.workflowType",
# version: 1}) stores JSON.stringify(value) under "mlflow.workflowType_v1".
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"
TRAINING_WORKFLOW = "machine_learning"
# MLflow's name of the UI page's view (the ``@app.route("/")`` function ``serve``).
UI_VIEW = "serve"
_PATCHED = "_hpo_training_first"


def remember_training_script() -> str:
    """The inline script: "Model training" unless the browser remembers a choice.

    Example:
        >>> print(remember_training_script())
        <script>try{if(localStorage.getItem("mlflow.workflowType_v1")===null)localStorage.setItem("mlflow.workflowType_v1","\\"machine_learning\\"")}catch(e){}</script>
    """
    key = json.dumps(WORKFLOW_STORAGE_KEY)
    value = json.dumps(json.dumps(TRAINING_WORKFLOW))
    # A browser that refuses storage (private mode, disabled) still gets the UI.
    return (
        f"<script>try{{if(localStorage.getItem({key})===null)"
        f"localStorage.setItem({key},{value})}}catch(e){{}}</script>"
    )


def ui_page(html: str) -> str:
    """MLflow's ``index.html`` with the script first in its ``<head>``, before the UI's
    bundle reads the remembered choice.

    Example:
        >>> page = ui_page("<html><head><title>MLflow</title></head></html>")
        >>> page.startswith("<html><head><script>try{")
        True
        >>> page.endswith("}catch(e){}</script><title>MLflow</title></head></html>")
        True
    """
    script = remember_training_script()
    at = html.find("<head>")
    if at < 0:
        return script + html
    at += len("<head>")
    return html[:at] + script + html[at:]


def serve_training_first(flask_app: Any) -> None:
    """Make ``flask_app`` (MLflow's) serve the UI page with the script; nothing else changes:
    every other route, and MLflow's request hooks on this one too, stay as they are."""
    original = flask_app.view_functions[UI_VIEW]
    if getattr(original, _PATCHED, False):
        return
    index = Path(flask_app.static_folder or "") / "index.html"
    if not index.is_file():  # a source install without the built UI: MLflow's own message
        return
    page = ui_page(index.read_text(encoding="utf-8"))

    from flask import Response

    def serve() -> Response:
        # Never validated against a cached copy: a page cached from a plain MLflow server on
        # the same address would lack the script.
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    setattr(serve, _PATCHED, True)
    flask_app.view_functions[UI_VIEW] = serve


def _served(flask_app: Any) -> Any:
    """What the worker serves: the FastAPI app that mounts the Flask app under uvicorn (as
    plain ``mlflow server`` does), the Flask app under gunicorn and waitress."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import app

        return app
    return flask_app


def create_app() -> Any:
    """``mlflow server --app-name hpo``: MLflow's server, the UI opening on training runs."""
    from mlflow.server import app as flask_app

    serve_training_first(flask_app)
    return _served(flask_app)


@contextmanager
def _one_worker_at_a_time(name: str) -> Iterator[None]:
    """Hold a lock shared by the server's workers (one machine, one temporary directory)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"hpo-mlflow-auth-{digest}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def create_auth_app() -> Any:
    """``mlflow server --app-name hpo-basic-auth``: MLflow's basic auth
    (``MLFLOW_AUTH_CONFIG_PATH``), the UI opening on training runs.

    ``mlflow server`` prepares the user database and the first admin before it starts its
    workers only for the name ``basic-auth``; here each worker does, one at a time, so that
    two of them never migrate the (SQLite) user database at once. The CLI also shares a token
    between workers and MLflow's job runner only for that name: run it with
    ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, as hpo's deployments do (the job runner
    serves GenAI features hpo does not use).
    """
    from mlflow.server import app as flask_app
    from mlflow.server.auth import auth_config
    from mlflow.server.auth import create_app as basic_auth

    serve_training_first(flask_app)
    with _one_worker_at_a_time(str(auth_config.database_uri)):
        return basic_auth(flask_app)
