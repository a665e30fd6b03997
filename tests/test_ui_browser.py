"""What a person sees: the MLflow UI and the Optuna dashboard in a real (headless) Chromium.

A new user (the browser's remembered choices cleared) follows the link ``hpo run`` gives to the
study's trials: the runs table with the objective and parameter columns, best first, and the
chart tab with the parallel coordinates and the learning curves. A new user (a browser profile
of its own) who opens the home page and clicks the study's experiment lands on its training
runs: the server is hpo's app (``mlflow server --app-name hpo``, as compose and Kubernetes run
it), whose UI page makes the browser remember "Model training" unless it remembers a choice.

The study is the one ``tests/test_mlflow_server.py`` checks through the API (the session's
``served_study``): the MLflow UI must show its experiment, the trial runs nested under the study
run, and their metrics, and, once ``hpo ensemble build`` has registered an ensemble of it, the
registered model and its version on the Models pages; ``optuna-dashboard`` on the study store
must list the study. Each page
is saved as a PNG in the test's directory. Both UIs are React apps: the tests wait for the
text that should appear, never for a fixed time.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; without them
the tests skip here and fail in CI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import hpo
from services import (
    DIGITS_SPACE,
    SERVED_TRIALS,
    ServedStudy,
    ServiceProcess,
    forget_ensemble,
    optuna_dashboard,
    started,
    unavailable,
)

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)
# A cold React app on a busy 2-core machine can take a while to render.
PAGE_TIMEOUT = 120.0


@contextmanager
def chromium(root: Path) -> Iterator[Any]:
    """Headless Debian Chromium driven by Debian's chromedriver, with a new profile in
    ``root``."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            unavailable(f"{path} missing: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("the selenium package is not installed")
    root.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    # Both paths given: Selenium does not look for (or download) a browser or a driver.
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={root / 'profile'}"):
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER), log_output=str(root / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One browser for the module's tests (each forgets what it must)."""
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture
def new_browser(tmp_path: Path) -> Iterator[Any]:
    """A browser as a person opening the MLflow UI for the first time has: a profile of its
    own, nothing stored for any site."""
    with chromium(tmp_path / "chromium") as driver:
        yield driver


def remembered_workflow(driver: Any) -> Any:
    """The UI's remembered sidebar choice (GenAI | Model training) for the open page."""
    from hpo.tracking.mlflow_app import WORKFLOW_STORAGE_KEY

    return driver.execute_script(f"return localStorage.getItem('{WORKFLOW_STORAGE_KEY}')")


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except Exception:  # the page is being replaced: try again on the next poll
        return ""


def wait_until(
    driver: Any, what: str, condition: Callable[[Any], Any], shot: Path
) -> Any:  # the condition's first truthy value
    """Poll ``condition`` until it holds; on timeout save a screenshot and fail with the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.5).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(shot))
        pytest.fail(
            f"{driver.current_url}: no {what} after {PAGE_TIMEOUT:.0f} s (screenshot {shot})\n"
            f"page text:\n{page_text(driver)[:3000]}"
        )


def wait_for_text(driver: Any, texts: list[str], shot: Path) -> None:
    wait_until(
        driver,
        " and ".join(repr(t) for t in texts),
        lambda d: all(t in page_text(d) for t in texts),
        shot,
    )


def link(driver: Any, text: str) -> Any:
    """The link (``<a>``) whose text is ``text``, or None."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, f"//a[normalize-space()='{text}']")
    return found[0] if found else None


def forget_the_workflow_choice(driver: Any, url: str) -> None:
    """The browser forgets what the UI remembers (the sidebar's GenAI | Model training switch
    among it): as for a person opening the UI for the first time."""
    origin = url.split("/#")[0].rstrip("/")
    driver.execute_cdp_cmd(
        "Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "local_storage"}
    )


def test_mlflow_ui_opens_hpos_link_on_the_trials_best_first_with_curves_and_parameters(
    browser: Any, served_study: ServedStudy, tmp_path: Path
) -> None:
    """A new user follows the link ``hpo run`` prints (the study note's links are the same):
    the training runs, the objective and searched parameters as columns, best first; on the
    chart tab the parallel coordinates of the parameters against the objective and the
    learning curves over the epochs."""
    from hpo.spaces import load_spec
    from hpo.tracking import mlflow_ui

    client = MlflowClient(served_study.server.url)
    experiment = client.get_experiment_by_name(served_study.name)
    assert experiment is not None
    page = mlflow_ui.page_url(
        served_study.server.url, mlflow_ui.runs_page(experiment.experiment_id)
    )
    assert page is not None and served_study.summary["mlflow_page"] == page, served_study.summary
    # MLflow orders the parameter columns by name.
    searched = sorted(n.name for n in load_spec(DIGITS_SPACE).space.searched_nodes())
    trials = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`hpo.kind` = 'trial'",
        order_by=["metrics.objective DESC"],
    )
    assert len(trials) == SERVED_TRIALS, trials

    forget_the_workflow_choice(browser, served_study.server.url)
    browser.get(page)
    shot = tmp_path / "mlflow-study-runs.png"
    # The first columns (the table draws only those in view): the objective, then parameters.
    wait_for_text(browser, ["Run Name", "Sort: objective", "objective", *searched[:2]], shot)
    text = page_text(browser)
    assert "No data available" not in text and "Traces" not in text.split("Run Name")[1], text
    # The trials are rows of their own, best first, above the study run.
    names = [t.info.run_name for t in trials]
    rows = [text.index(n) for n in [*names, f"study {served_study.name}"]]
    assert rows == sorted(rows), (names, text[:3000])
    browser.save_screenshot(str(shot))

    # The chart tab: its address only differs in the fragment, the app does not reload.
    browser.get(
        mlflow_ui.page_url(
            served_study.server.url, mlflow_ui.runs_page(experiment.experiment_id, charts=True)
        )
    )
    shot = tmp_path / "mlflow-study-charts.png"
    curves = [f"{n} (val_accuracy)" for n in names]
    wait_for_text(browser, ["Parallel Coordinates", *searched[:2], "objective", "Step"], shot)
    wait_for_text(browser, ["val_accuracy", "val_loss", *curves], shot)
    browser.save_screenshot(str(shot))


def test_mlflow_ui_shows_the_trials_nested_under_the_study_run(
    browser: Any, served_study: ServedStudy, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    client = MlflowClient(served_study.server.url)
    experiment = client.get_experiment_by_name(served_study.name)
    assert experiment is not None
    study_run = f"study {served_study.name}"
    trials = [f"trial {n}" for n in range(SERVED_TRIALS)]

    # The runs table of the "Model training" view (MLflow 3 opens on its GenAI overview), as
    # a fresh page: the app, left on the saved view, keeps that view's state over a change of
    # the address's fragment alone.
    browser.get("about:blank")
    browser.get(
        f"{served_study.server.url}/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    shot = tmp_path / "mlflow-runs.png"
    wait_for_text(
        browser, [served_study.name, study_run, f"{SERVED_TRIALS + 1} matching runs"], shot
    )
    # Trial runs are children: hidden until the study run's row is expanded.
    parent = wait_until(browser, f"link {study_run!r}", lambda d: link(d, study_run), shot)
    assert not any(link(browser, t) for t in trials), "trials shown as top-level runs"
    parent.find_element(
        By.XPATH, "./ancestor::div[contains(@class, 'ag-cell-wrapper')]//button"
    ).click()
    wait_for_text(browser, trials, shot)
    for trial in trials:
        child = link(browser, trial)
        assert child is not None
        # Indented under the study run, below it.
        assert child.location["x"] > parent.location["x"], (trial, child.location)
        assert child.location["y"] > parent.location["y"], (trial, child.location)
    browser.save_screenshot(str(shot))


def test_mlflow_ui_shows_a_trials_metrics_and_parent(
    browser: Any, served_study: ServedStudy, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    client = MlflowClient(served_study.server.url)
    experiment = client.get_experiment_by_name(served_study.name)
    assert experiment is not None
    best = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`hpo.kind` = 'trial'",
        order_by=["metrics.val_accuracy DESC"],
        max_results=1,
    )[0]
    url = f"{served_study.server.url}/#/experiments/{experiment.experiment_id}/runs/"
    url += best.info.run_id

    # Overview: the parent run, and the final value of every metric.
    browser.get(url)
    shot = tmp_path / "mlflow-trial.png"
    wait_for_text(browser, [best.info.run_name, "Parent run", f"study {served_study.name}"], shot)
    wait_for_text(browser, ["val_accuracy", "final_val_accuracy", "epoch_seconds"], shot)
    value = best.data.metrics["val_accuracy"]
    assert f"{value:.3f}"[:4] in page_text(browser), value  # e.g. 0.6431... shown as 0.6431
    browser.save_screenshot(str(shot))

    # Model metrics: one chart per metric, over the epochs (steps). The page draws only the
    # charts in view, so narrow them down the way a person would: with the search box.
    browser.get(url + "/model-metrics")
    shot = tmp_path / "mlflow-trial-curves.png"
    search = wait_until(
        browser,
        "chart search box",
        lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']"),
        shot,
    )[0]
    search.send_keys("val_")
    legends = [f"{best.info.run_name} ({m})" for m in ("val_accuracy", "val_loss")]
    wait_for_text(browser, [*legends, "Step"], shot)
    browser.save_screenshot(str(shot))


@pytest.fixture
def dashboard(served_study: ServedStudy, tmp_path: Path) -> Iterator[ServiceProcess]:
    """``optuna-dashboard`` on the study store, as the compose service runs it."""
    service = optuna_dashboard(served_study.storage, tmp_path / "dashboard")
    started(service)
    try:
        yield service
    finally:
        service.stop()


def test_optuna_dashboard_lists_the_study(
    browser: Any, served_study: ServedStudy, dashboard: ServiceProcess, tmp_path: Path
) -> None:
    base = dashboard.health_url.removesuffix("/api/meta")
    browser.get(f"{base}/dashboard")
    shot = tmp_path / "optuna-dashboard.png"
    wait_for_text(browser, [served_study.name, "Direction: MAXIMIZE"], shot)
    browser.save_screenshot(str(shot))

    # Its page, reached by clicking its card: the optimization history of the trials.
    from selenium.webdriver.common.by import By

    name = served_study.name
    browser.find_element(By.XPATH, f"//*[text()[contains(., '{name}')]]").click()
    shot = tmp_path / "optuna-dashboard-study.png"
    wait_for_text(browser, [f"{name} (id=", "History", "Hyperparameter Importance"], shot)
    browser.save_screenshot(str(shot))


ENSEMBLE = "served-digits-ens"


@pytest.fixture(scope="module")
def served_ensemble(
    served_study: ServedStudy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """``hpo ensemble build`` of the served study, registered on the real server."""
    workdir = tmp_path_factory.mktemp("served-ensemble")
    result = hpo(
        "ensemble",
        "build",
        served_study.name,
        "--name",
        ENSEMBLE,
        "--top",
        str(SERVED_TRIALS),
        "--size",
        "5",
        "--storage",
        served_study.storage,
        "--tracking-uri",
        served_study.server.url,
        "--json",
        cwd=workdir,
        env={"HPO_OUTBOX_DIR": str(workdir / "outbox")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield json.loads(result.stdout)
    forget_ensemble(served_study.server, served_study.name, ENSEMBLE)


def test_mlflow_ui_shows_the_registered_ensemble_and_its_version(
    browser: Any, served_study: ServedStudy, served_ensemble: Any, tmp_path: Path
) -> None:
    version = served_ensemble["version"]
    assert served_ensemble["name"] == ENSEMBLE and version >= 1, served_ensemble
    url = served_study.server.url

    # The Models page lists the registered model with its latest version.
    browser.get(f"{url}/#/models")
    shot = tmp_path / "mlflow-models.png"
    wait_for_text(browser, [ENSEMBLE, f"Version {version}"], shot)
    browser.save_screenshot(str(shot))

    # Its page: the version; then the version's page, with the run that made it. (Opened by
    # address: MLflow 3.x shows a "new Model Registry UI" dialog over the list on first visit.)
    browser.get(f"{url}/#/models/{ENSEMBLE}")
    shot = tmp_path / "mlflow-model.png"
    wait_for_text(browser, [ENSEMBLE, f"Version {version}"], shot)
    browser.save_screenshot(str(shot))
    browser.get(f"{url}/#/models/{ENSEMBLE}/versions/{version}")
    shot = tmp_path / "mlflow-model-version.png"
    wait_for_text(browser, [f"Version {version}", f"ensemble {ENSEMBLE}"], shot)
    # Its description (how it was built, test metrics, members linked to their trial runs),
    # its test metrics as tags and its input signature.
    members = [m for m in served_ensemble["members"]]
    first = f"{members[0]['study']} trial {members[0]['trial']}"
    wait_for_text(browser, ["Test metrics", "Members", first, "test_accuracy"], shot)
    assert link(browser, first) is not None, first
    browser.save_screenshot(str(shot))
    from selenium.webdriver.common.by import By

    schema = wait_until(
        browser,
        "the schema section",
        lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Schema']"),
        shot,
    )
    browser.execute_script("arguments[0].scrollIntoView()", schema[0])
    wait_for_text(browser, ["Inputs", "Outputs"], shot)
    browser.save_screenshot(str(tmp_path / "mlflow-model-version-schema.png"))


def test_mlflow_ui_opens_the_study_from_the_home_page_on_its_training_runs(
    new_browser: Any, served_study: ServedStudy, tmp_path: Path
) -> None:
    """As a new user (a browser that never opened the UI): the home page, a click on the
    experiment, the training runs (not MLflow 3's GenAI overview), the study's note."""
    browser = new_browser
    client = MlflowClient(served_study.server.url)
    experiment = client.get_experiment_by_name(served_study.name)
    assert experiment is not None
    study_run = f"study {served_study.name}"

    from selenium.webdriver.common.by import By

    # The home page lists the most recently updated experiments, as a study just run is.
    # Other tests made later ones on this shared server: the study's experiment is marked
    # updated now (renamed to its own name, which sets its last update time).
    client.rename_experiment(experiment.experiment_id, served_study.name)
    # The study's name links to its experiment (the sidebar may hold another link of that
    # name, to the list of experiments). The address a person types: no workflowType in it.
    browser.get(f"{served_study.server.url}/")
    shot = tmp_path / "mlflow-home.png"
    here = f"/experiments/{experiment.experiment_id}"
    found = wait_until(
        browser,
        f"a link to {here}",
        lambda d: [
            a
            for a in d.find_elements(By.XPATH, f"//a[normalize-space()='{served_study.name}']")
            if (a.get_attribute("href") or "").rstrip("/").endswith(here)
        ],
        shot,
    )
    browser.save_screenshot(str(shot))
    # MLflow 3.17's sidebar switch (GenAI | Model training) alone decides where an experiment
    # opens (its mlflow.experimentKind tag is not read; the home page's links carry no choice).
    # hpo's server app made this new browser remember "Model training"; nothing was clicked.
    assert remembered_workflow(browser) == '"machine_learning"'
    assert "workflowType" not in (found[0].get_attribute("href") or "")
    found[0].click()
    # It opens on its training runs, not on the GenAI overview ("No data available").
    shot = tmp_path / "mlflow-experiment.png"
    # The study run, its trials and (when another test built one first) an ensemble run.
    wait_for_text(browser, [study_run, "matching runs", "Run Name"], shot)
    assert "/runs" in browser.current_url, browser.current_url
    text = page_text(browser)
    shown = int(text.split(" matching runs")[0].split()[-1])
    assert shown >= SERVED_TRIALS + 1, text[:2000]
    assert "No data available" not in text and "Traces" not in text.split("Run Name")[1], text
    browser.save_screenshot(str(shot))

    # The study run's page: its description summarizes the study, with a link to the best run.
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`hpo.kind` = 'study'"
    )
    best_run = parent.data.tags["hpo.best_run_id"]
    best = client.get_run(best_run).info.run_name
    browser.get(
        f"{served_study.server.url}/#/experiments/{experiment.experiment_id}/runs/"
        + parent.info.run_id
    )
    shot = tmp_path / "mlflow-study-run.png"
    wait_for_text(browser, [f"hpo study {served_study.name}", "Objective: maximize"], shot)
    more = browser.find_elements(By.XPATH, "//*[normalize-space()='Show more']")
    if more:  # a long description is folded
        browser.execute_script("arguments[0].scrollIntoView()", more[-1])
        more[-1].click()
    wait_for_text(
        browser,
        ["image_cnn_digits.yaml", "Best trial:", f"{SERVED_TRIALS} of {SERVED_TRIALS}"],
        shot,
    )
    browser.save_screenshot(str(shot))
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    assert any(f"/runs/{best_run}?" in h for h in hrefs), hrefs
    assert link(browser, best) is not None, best
    # Its links to the trials open the saved runs view on the training pages.
    from hpo.tracking import mlflow_ui

    for charts in (False, True):
        page = mlflow_ui.runs_page(experiment.experiment_id, charts=charts)
        assert any(h.endswith(page) for h in hrefs), (page, hrefs)

    # A user who chose GenAI keeps that choice: the page sets it only when none is stored.
    browser.execute_script(
        "localStorage.setItem(arguments[0], arguments[1])", "mlflow.workflowType_v1", '"genai"'
    )
    browser.get("about:blank")
    browser.get(f"{served_study.server.url}/")
    shot = tmp_path / "mlflow-home-genai.png"
    wait_until(browser, "a link to the study", lambda d: link(d, served_study.name), shot)
    assert remembered_workflow(browser) == '"genai"'


def test_the_hpo_app_is_mlflows_server_but_for_the_ui_page(
    served_study: ServedStudy, tmp_path: Path
) -> None:
    """``--app-name hpo`` changes the UI's HTML page alone: the client logs and reads a run and
    its artifact through it; the UI's files come as installed."""
    import re
    import urllib.request
    import uuid

    from mlflow.server import app as mlflow_app

    from hpo.tracking.mlflow_app import remember_training_script, ui_page

    url = served_study.server.url
    client = MlflowClient(url)
    experiment = client.create_experiment(f"hpo-app-{uuid.uuid4().hex[:8]}")
    try:
        run = client.create_run(experiment, run_name="through the hpo app")
        run_id = run.info.run_id
        client.log_param(run_id, "units", "32")
        for step, value in enumerate((0.5, 0.75)):
            client.log_metric(run_id, "val_accuracy", value, step=step)
        client.log_text(run_id, "served by hpo's app\n", "notes/readme.txt")
        client.set_terminated(run_id)
        got = client.get_run(run_id)
        assert got.data.params == {"units": "32"} and got.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "val_accuracy")
        assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.75)]
        assert [f.path for f in client.list_artifacts(run_id, "notes")] == ["notes/readme.txt"]
        got_file = client.download_artifacts(run_id, "notes/readme.txt", str(tmp_path))
        assert Path(got_file).read_text() == "served by hpo's app\n"
    finally:
        client.delete_experiment(experiment)

    static = Path(mlflow_app.static_folder or "")
    installed = (static / "index.html").read_text(encoding="utf-8")
    with urllib.request.urlopen(f"{url}/", timeout=60) as response:
        page = response.read().decode()
    assert page == ui_page(installed) != installed
    assert page.replace(remember_training_script(), "", 1) == installed
    bundle = re.search(r'src="static-files/([^"]+\.js)"', installed)
    assert bundle, installed
    with urllib.request.urlopen(f"{url}/static-files/{bundle[1]}", timeout=60) as response:
        assert response.read() == (static / bundle[1]).read_bytes()
