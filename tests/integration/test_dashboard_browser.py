"""The dashboard in a real headless browser (Debian's Chromium through its chromedriver, driven by selenium) against
real processes: two `bookrec worker` processes on recommend,fresh,refresh, one `bookrec ingest` on a SQLite ratings
store holding real goodbooks book metadata (tests/fixtures/books_sample.csv), and `bookrec dashboard` itself as a
process on a free port, all on the real Redis. Each page shows the live state of those processes; a promotion from
the versions page swaps the workers; an action without the token is refused; a recompute from a reader's page
rewrites their list. The reader page's screenshot goes into the test's temporary directory, and into
docs/img/dashboard-reader.png when BOOKREC_SCREENSHOTS=1 (how the README's picture was taken)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.shared import worker_state
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import ChildProcess, IngestProcess
from tests.conftest import BOOKS_SAMPLE, REPO, TEST_REDIS_URL, TrainedStore, WorkerPool
from tests.integration.test_faults import clone_version, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "img" / "dashboard-reader.png"
TOKEN = "browser-test-token-0123456789"
KEYS = Keys()
READER_BOOKS = ("1", "2", "3", "5", "18", "21")
"""The books the test's reader rates through the stream (real goodbooks books: Hunger Games, Harry Potter, …)."""


@dataclass
class Deployment:
    """The real processes the dashboard shows, its address, and the two versions it can switch between."""

    url: str
    env: dict[str, str]
    redis: redis.Redis
    models: ModelStore
    versions: tuple[str, str]
    reader: str
    dashboard: ChildProcess
    ingest: IngestProcess

    def client(self) -> Client:
        return Client(settings=Settings.from_env(self.env))

    def worker_versions(self) -> list[str]:
        return sorted(s.get("version", "") for s in worker_state.read_all(self.redis, KEYS))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fill_ratings_store(url: str, data_dir: Path) -> None:
    """The session's ratings and goodbooks' real metadata of its books, as `bookrec init` fills a store."""
    store = RatingsStore(url)
    try:
        store.upgrade()
        with (data_dir / "ratings.csv").open() as fh:
            store.import_ratings([(r["user_id"], r["book_id"], float(r["rating"])) for r in csv.DictReader(fh)])
        with BOOKS_SAMPLE.open() as fh:
            store.import_books(list(csv.DictReader(fh)))
    finally:
        store.close()


def http(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET, or of a POST of the form `data` (with a bearer `token`)."""
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def deployment(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them")
    root = tmp_path_factory.mktemp("dashboard")
    shutil.copytree(trained.store, root / "models")
    models = ModelStore(root / "models")
    second = clone_version(models.root, trained.version)
    database = f"sqlite:///{root / 'ratings.db'}"
    fill_ratings_store(database, trained.data_dir)
    env = TrainedStore(trained.data_dir, models.root, trained.version).env(
        BOOKREC_DATABASE_URL=database,
        BOOKREC_INGEST_BLOCK_MS="100",
        BOOKREC_DASHBOARD_TOKEN=TOKEN,
    )
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    promote(models, client, KEYS, trained.version)
    pool = WorkerPool(env, "recommend,fresh,refresh", 2, log=root / "workers.log")
    ingest = IngestProcess(env, root / "ingest.log")
    port = free_port()
    dashboard = ChildProcess(
        [sys.executable, "-m", "bookrec", "dashboard", "--port", str(port)], env, root / "dashboard.log"
    )
    try:
        pool.wait_ready(client, 2, trained.version, timeout=90)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url, dashboard), "the dashboard to answer", timeout=30)
        versions = (trained.version, second)
        service = Deployment(url, env, client, models, versions, "dashboard-reader", dashboard, ingest)
        producer = service.client()
        producer.rate_many([{"user_id": service.reader, "book_id": b, "rating": 5} for b in READER_BOOKS[:-1]])
        producer.rate(service.reader, READER_BOOKS[-1], 4, wait=True, timeout=60)  # committed and the list recomputed
        client.xadd(KEYS.ratings_stream, {"user_id": service.reader, "book_id": "1"})  # no rating: a dead letter
        wait_for(lambda: client.xlen(KEYS.ratings_dead) == 1, "the bad event to be dead-lettered")
        yield service
    finally:
        dashboard.stop(timeout=15)
        ingest.stop(timeout=15)
        pool.stop()
        client.flushdb()
        client.close()


def _answers(url: str, dashboard: ChildProcess) -> bool:
    if dashboard.exit_code() is not None:
        raise AssertionError(f"bookrec dashboard exited with {dashboard.exit_code()}: {dashboard.log_tail()}")
    try:
        return http(f"{url}/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, deployment: Deployment) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.page_load_strategy = "eager"  # covers point at the web, closed here: do not wait for them
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations show there
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def spaced(text: str) -> str:
    """`text` with its runs of whitespace as one space, as a browser shows it (and selenium reads it)."""
    return " ".join(text.split())


def texts(driver, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_every_page_shows_the_live_state_of_the_real_processes(deployment: Deployment, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    production = deployment.models.production()
    browser.get(deployment.url + "/")
    assert production in browser.find_element(By.ID, "production").text
    assert "ndcg@10" in browser.find_element(By.CSS_SELECTOR, "table.metrics").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline"), "the learning curves are drawn"
    loaded = texts(browser, "tr.worker td.loaded")
    assert len(loaded) == 2 and all(production in cell for cell in loaded), loaded
    ingest = browser.find_element(By.ID, "ingest").text
    assert "0 delivered and not acknowledged" in ingest, "the ingest has acknowledged every event"
    assert f"{socket.gethostname()}-{deployment.ingest.process.pid}" in ingest, "the live ingest consumer"
    assert browser.find_element(By.ID, "ingest-dead").text.startswith("1 in")
    assert f"user_id={deployment.reader}" in browser.find_element(By.CSS_SELECTOR, "table.dead").text

    browser.get(deployment.url + "/versions")
    rows = [row.get_attribute("data-version") for row in browser.find_elements(By.CSS_SELECTOR, "tr.version")]
    assert sorted(rows) == sorted(deployment.versions)

    entry = deployment.client().get(deployment.reader).entry
    browser.get(deployment.url + "/reader?" + urllib.parse.urlencode({"user": deployment.reader}))
    assert entry["model_version"] in browser.find_element(By.ID, "list-version").text
    assert entry["ratings_through"] in browser.find_element(By.ID, "list-through").text
    listed = texts(browser, "li.book .title")
    assert listed == [spaced(item["title"] or f"book {item['book_id']}") for item in entry["items"]]
    with BOOKS_SAMPLE.open() as fh:
        titles = {row["book_id"]: row["title"] for row in csv.DictReader(fh)}
    rated = texts(browser, "li.rating .title")
    assert sorted(rated) == sorted(spaced(titles[b]) for b in READER_BOOKS), "their ratings, with real titles"
    covers = browser.find_elements(By.CSS_SELECTOR, "li.rating .cover")
    assert all(cover.size["width"] > 0 and cover.size["height"] > 0 for cover in covers), "placeholders keep their size"
    settled = "return [...document.querySelectorAll('.cover img')].every(image => image.complete)"
    wait_for(lambda: browser.execute_script(settled), "every cover to load, or fail and be removed")
    refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused, f"the page broke its own Content-Security-Policy {len(refused)} times: {refused[:1]}"
    screenshot(browser, tmp_path / "dashboard-reader.png")


def screenshot(browser, path: Path) -> None:
    """The whole page (not only the window) as a PNG at `path`, copied to docs/img/ when BOOKREC_SCREENSHOTS=1."""
    import base64

    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    if os.environ.get("BOOKREC_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOT)


def test_an_action_without_the_token_is_refused(deployment: Deployment, browser) -> None:
    from selenium.webdriver.common.by import By

    production = deployment.models.production()
    other = next(v for v in deployment.versions if v != production)
    browser.get(deployment.url + "/versions")
    browser.find_element(By.CSS_SELECTOR, f'button[name="version"][value="{other}"]').click()

    problem = browser.find_element(By.ID, "problem").text
    assert "promotion refused: this action needs the dashboard's token" in problem
    status, _ = http(deployment.url + "/rollback", {}, token="not-the-token-at-all")
    assert status == 403
    assert deployment.models.production() == production
    assert deployment.redis.get(KEYS.model_current).decode() == production
    log = deployment.dashboard.log_tail(20_000)
    assert "refused promote from 127.0.0.1" in log and "refused rollback from 127.0.0.1" in log
    assert TOKEN not in log


def test_a_promotion_from_the_versions_page_swaps_the_workers(deployment: Deployment, browser) -> None:
    from selenium.webdriver.common.by import By

    production = deployment.models.production()
    other = next(v for v in deployment.versions if v != production)
    browser.get(deployment.url + "/versions")
    browser.find_element(By.ID, "token-versions").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, f'button[name="version"][value="{other}"]').click()

    assert f"promoted {other} (was {production})" in browser.find_element(By.ID, "message").text
    wait_for(lambda: deployment.worker_versions() == [other, other], f"both workers to serve {other}", timeout=60)
    browser.get(deployment.url + "/")
    loaded = texts(browser, "tr.worker td.loaded")
    assert len(loaded) == 2 and all(other in cell for cell in loaded), loaded
    assert "promoted" in deployment.dashboard.log_tail(20_000) and TOKEN not in deployment.dashboard.log_tail(20_000)


def idle(deployment: Deployment) -> bool:
    """Whether no job is queued or running on the serving queues (a promotion's refresh rewrites every list)."""
    from rq import Queue
    from rq.registry import StartedJobRegistry

    for name in ("recommend", "fresh", "refresh"):
        if (
            Queue(name, connection=deployment.redis).count
            or StartedJobRegistry(name, connection=deployment.redis).count
        ):
            return False
    return True


def test_a_recompute_from_the_reader_page_rewrites_their_list(deployment: Deployment, browser) -> None:
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer
    from selenium.webdriver.common.by import By

    wait_for(lambda: idle(deployment), "the serving queues to be idle", timeout=60)
    before = deployment.client().get(deployment.reader).entry["generated_at"]
    browser.get(deployment.url + "/reader?" + urllib.parse.urlencode({"user": deployment.reader}))
    browser.find_element(By.ID, "token-reader").send_keys(TOKEN)
    browser.find_element(By.ID, "recompute").click()

    message = browser.find_element(By.ID, "message").text
    job_id = re.search(r"recompute enqueued as recommend job ([\w-]+)", message).group(1)
    job = Job.fetch(job_id, connection=deployment.redis, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, f"recommend job {job_id}", timeout=60)
    after = deployment.client().get(deployment.reader).entry["generated_at"]
    assert after > before and job.kwargs["user_ids"] == [deployment.reader]
    browser.refresh()
    assert after in browser.find_element(By.ID, "list-generated").text
