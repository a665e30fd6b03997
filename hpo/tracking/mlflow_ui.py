"""What the MLflow UI opens on: the addresses hpo links to and the study's saved runs view.

MLflow 3's UI (3.17) decides between its GenAI pages (traces, "Overview") and its model
training pages (runs, charts, models) from its sidebar switch alone: the ``workflowType``
query parameter of the address, else the choice the browser remembers (``localStorage``),
else GenAI. The experiment's ``mlflow.experimentKind`` tag is not read. So every address hpo
writes (study notes, ensemble descriptions, ``hpo ui``) carries ``workflowType=machine_learning``:
a person following one lands on the training pages, whatever their browser remembers. The
servers hpo sets up run its app (:mod:`hpo.tracking.mlflow_app`), whose UI page makes a browser
that never chose remember the training pages, for the experiments opened from the home page.

The runs page shows, without configuring anything, the view saved with the experiment as an
MLflow "shared view" (the ``mlflow.sharedViewState.<key>`` experiment tag, read when the
address carries ``viewStateShareKey=<key>``): the objective and the searched parameters as
columns, the runs sorted best first, and on the chart tab the learning curves (per-epoch
metrics against the epoch as step) and a parallel-coordinates chart of the parameters against
the objective.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

# The sidebar switch's value for the training pages, as the UI reads it from the address.
WORKFLOW_QUERY = "workflowType=machine_learning"
VIEW_KEY = "hpo"
VIEW_STATE_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# MLflow's limit on an experiment tag's value (MAX_EXPERIMENT_TAG_VAL_LENGTH).
MAX_VIEW_STATE_CHARS = 5000
SECTION = "hpo-study"


def objective_metrics(metrics: Sequence[str]) -> list[str]:
    """The run metrics holding a study's objectives (as the runner logs them).

    Example:
        >>> objective_metrics(["val_accuracy", "val_loss"])
        ['objective', 'objective_2']
    """
    return ["objective" if i == 0 else f"objective_{i + 1}" for i in range(len(metrics))]


def curve_metrics(metrics: Sequence[str]) -> list[str]:
    """The per-epoch metrics worth a learning curve: each objective metric and its training
    (or validation) counterpart, and the loss. A chart of a metric no run logged stays hidden.

    Example:
        >>> curve_metrics(["val_accuracy"])
        ['val_accuracy', 'accuracy', 'val_loss', 'loss']
    """
    out: list[str] = []
    for m in [*metrics, "val_loss"]:
        pair = m.removeprefix("val_") if m.startswith("val_") else f"val_{m}"
        for name in (m, pair):
            if name not in out:
                out.append(name)
    return out


def _line_chart(metric: str) -> dict[str, Any]:
    return {
        "uuid": f"hpo-curve-{metric}",
        "type": "LINE",
        "metricSectionId": SECTION,
        "runsCountToCompare": 100,
        "deleted": False,
        "isGenerated": False,
        "displayName": metric,
        "metricKey": metric,
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "lineSmoothness": 0,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "range": {},
    }


def _parallel_chart(params: Sequence[str], objectives: Sequence[str]) -> dict[str, Any]:
    return {
        "uuid": "hpo-parallel",
        "type": "PARALLEL",
        "metricSectionId": SECTION,
        "runsCountToCompare": 100,
        "deleted": False,
        "isGenerated": False,
        "displayName": "Parameters vs objective",
        "selectedParams": list(params),
        "selectedMetrics": list(objectives),
        "showAllRuns": True,
    }


def view_state(
    params: Sequence[str],
    metrics: Sequence[str],
    directions: Sequence[str],
    chart_params: Sequence[str] | None = None,
) -> str:
    """The saved runs view of a study's experiment (JSON, at most MLflow's tag length).

    ``params`` are the searched parameters' names, ``metrics``/``directions`` the study's
    objectives, ``chart_params`` those of ``params`` every trial has (the parallel-coordinates
    chart draws only the runs that have all its axes, so a conditional parameter would hide
    it; default: all). Parameters past what fits are left out of the columns and the chart.

    Example:
        >>> state = json.loads(view_state(["lr", "units"], ["val_accuracy"], ["maximize"]))
        >>> state["selectedColumns"], state["orderByKey"], state["orderByAsc"]
        (['metrics.`objective`', 'params.`lr`', 'params.`units`'], 'metrics.`objective`', False)
        >>> [c["type"] for c in state["compareRunCharts"]]
        ['PARALLEL', 'LINE', 'LINE', 'LINE', 'LINE']
    """
    objectives = objective_metrics(metrics)
    curves = curve_metrics(metrics)
    charted = set(params if chart_params is None else chart_params)

    def state(shown: Sequence[str]) -> str:
        columns = [f"metrics.`{m}`" for m in objectives] + [f"params.`{p}`" for p in shown]
        return json.dumps(
            {
                "selectedColumns": columns,
                "orderByKey": columns[0],
                "orderByAsc": bool(directions) and directions[0] == "minimize",
                "compareRunCharts": [
                    _parallel_chart([p for p in shown if p in charted], objectives),
                    *(_line_chart(m) for m in curves),
                ],
                "compareRunSections": [
                    {
                        "uuid": SECTION,
                        "name": "Study",
                        "display": True,
                        "isReordered": False,
                        "deleted": False,
                        "isGenerated": False,
                    }
                ],
                "isAccordionReordered": False,
                "hideEmptyCharts": True,
            },
            separators=(",", ":"),
        )

    shown = list(params)
    text = state(shown)
    while len(text) > MAX_VIEW_STATE_CHARS and shown:
        shown.pop()
        text = state(shown)
    return text


def experiment_tags(
    params: Sequence[str],
    metrics: Sequence[str],
    directions: Sequence[str],
    chart_params: Sequence[str] | None = None,
) -> dict[str, str]:
    """The experiment tags that make the study's runs page show its saved view."""
    return {VIEW_STATE_TAG: view_state(params, metrics, directions, chart_params)}


def runs_page(experiment_id: str, charts: bool = False) -> str:
    """The address (relative to the UI's root) of an experiment's training runs, in the saved
    view; on the chart tab with ``charts``.

    Example:
        >>> runs_page("3")
        '#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=hpo'
    """
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}&viewStateShareKey={VIEW_KEY}{mode}"


def run_page(experiment_id: str, run_id: str) -> str:
    """The address of a run's page.

    Example:
        >>> run_page("1", "abc")
        '#/experiments/1/runs/abc?workflowType=machine_learning'
    """
    return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"


def version_page(name: str, version: int | str) -> str:
    """The address of a registered model version's page.

    Example:
        >>> version_page("cnn ens", 2)
        '#/models/cnn%20ens/versions/2?workflowType=machine_learning'
    """
    return f"#/models/{quote(name, safe='')}/versions/{version}?{WORKFLOW_QUERY}"


def home_page() -> str:
    """The address of the list of experiments, on the training pages."""
    return f"#/experiments?{WORKFLOW_QUERY}"


def study_pages(uri: str, base: str, limit: int = 20) -> list[tuple[str, str]]:
    """``(study, address)`` of the training runs of the studies tracked in ``uri``, the most
    recently created first (at most ``limit``); empty when the store cannot be read."""
    from mlflow import MlflowClient

    try:
        found = MlflowClient(uri).search_experiments(
            filter_string="tags.`hpo.study` LIKE '%'",
            order_by=["creation_time DESC"],
            max_results=limit,
        )
    except Exception:  # the UI serves the store anyway; the list is a convenience
        return []
    return [(e.name, f"{base}/{runs_page(str(e.experiment_id))}") for e in found]


def page_url(tracking_uri: str, page: str) -> str | None:
    """``page`` on the UI of an HTTP tracking server (without any user or password), or None
    for a local store (``hpo ui`` serves one).

    Example:
        >>> page_url("http://bob:secret@mlflow:5000/", runs_page("2"))
        'http://mlflow:5000/#/experiments/2/runs?workflowType=machine_learning&viewStateShareKey=hpo'
        >>> page_url("sqlite:///mlflow.db", runs_page("2")) is None
        True
    """
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}/{page}"
