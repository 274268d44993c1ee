"""The dashboard in real headless Chromium (Debian's, through Playwright), against a real server."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from .conftest import FRUITS, REPO, needs_shared
from .service_support import TOKEN, live_server, make_app, make_backend, small_dataset

pytestmark = [needs_shared, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `bash scripts/ensure_test_tools.sh`")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def bar_values(page, chart: str) -> dict[str, float]:
    return page.eval_on_selector_all(
        f"#{chart} rect.bar", "els => Object.fromEntries(els.map(e => [e.dataset.label, +e.dataset.value]))")


def test_dashboard_end_to_end(browser, tmp_path):
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "val", 2)
    app = make_app(make_backend(tmp_path / "store", mode="good", seed=seed, eval_dir=eval_dir, sleep=2.0))
    ARTIFACTS.mkdir(exist_ok=True)
    apple = sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        # some traffic first, so the live charts have real numbers to show
        for label in ("freshbanana", "freshbanana", "rottenoranges"):
            img = sorted((FRUITS / "test" / label).glob("*.jpg"))[1]
            assert api.post("/predict", files={"file": ("x.jpg", img.read_bytes(), "image/jpeg")}).status_code == 200
        expected = api.post("/predict", files={"file": ("a.jpg", apple.read_bytes(), "image/jpeg")}).json()

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
        page.goto(url + "/")
        page.wait_for_selector("#live-version:not(:has-text('…'))")
        assert page.text_content("#live-version") == api.get("/health").json()["model_version"]

        # predict a real image through the file picker
        page.set_input_files("#file", str(apple))
        page.wait_for_selector("#result:not([hidden])")
        assert page.get_attribute("#verdict", "data-verdict") == expected["verdict"] == "rotten"
        probs = bar_values(page, "prob-chart")
        assert probs == pytest.approx(expected["probabilities"], abs=1e-6)

        # live charts drawn from /stats
        page.wait_for_function("() => document.querySelector('#kpi-predictions').textContent === '5'")
        stats = api.get("/stats").json()
        assert bar_values(page, "class-chart") == {k: float(v) for k, v in stats["by_class"].items()}
        assert bar_values(page, "verdict-chart") == {k: float(v) for k, v in stats["by_verdict"].items()}
        assert page.get_attribute("#latency-chart", "data-points") == str(len(stats["recent_latencies_ms"]))

        # upload two images (one real photo, one text file) with the class picker
        page.fill("#token", TOKEN)
        page.select_option("#upload-class", "rottenapples")
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("#upload-files", [str(sorted((FRUITS / "train" / "rottenapples").glob("*.jpg"))[9]),
                                               str(bad)])
        page.click("#upload-form button")
        page.wait_for_function("() => document.querySelectorAll('#upload-list li[data-status]').length === 2")
        statuses = page.eval_on_selector_all("#upload-list li", "els => els.map(e => e.dataset.status)")
        assert statuses == ["added", "rejected"]
        page.wait_for_function("() => document.querySelector('#dataset-total').textContent === '1'")
        assert bar_values(page, "dataset-chart")["rottenapples"] == 1

        # retrain with live progress
        page.click("#retrain-btn")
        page.wait_for_selector("#retrain-state[data-state='running']")
        page.wait_for_function("() => parseFloat(document.querySelector('#retrain-bar').style.width) > 0")
        page.screenshot(path=str(ARTIFACTS / "dashboard-retraining.png"), full_page=True)
        page.wait_for_selector("#retrain-state[data-state='succeeded']", timeout=120_000)
        live = api.get("/models").json()["live"]
        page.wait_for_selector(f"#versions tr[data-version='{live}'] .pill.live")
        assert "Promoted" in page.text_content("#retrain-result")
        # model performance now comes from the gate evaluation of the live version
        page.wait_for_function("() => document.querySelectorAll('#f1-chart rect.bar').length === 6")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert not errors, errors

        # phone width: no horizontal scrolling, everything still there
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(url + "/")
        phone.wait_for_selector("#versions tbody tr")
        phone.set_input_files("#file", str(apple))
        phone.wait_for_selector("#result:not([hidden])")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)


MARKUP = '<img src=x onerror="window.__xss=(window.__xss||0)+1"><script>window.__xss=1</script>'


def test_dashboard_renders_data_as_text_under_a_strict_csp(browser, tmp_path):
    """A model manifest with markup in ``version`` and ``created``, and a gate reason with markup:
    the dashboard shows the markup as text, no element is injected and no script runs. The page
    and its assets carry the strict Content-Security-Policy, and the dashboard works under it."""
    from fruitpipe import bundle

    from .conftest import DEFAULT_MODEL
    backend = make_backend(tmp_path / "store")
    m = bundle.verify(DEFAULT_MODEL)
    files = {name: (DEFAULT_MODEL / name).read_bytes() for name in m.files}
    for folder, status in (("v20990101-000000-aaaaaa", None), ("v20990102-000000-bbbbbb", MARKUP)):
        raw = m.to_dict()
        raw["version"], raw["created"] = MARKUP, f"2099-01-0{1 if status is None else 2}T00:00:00Z{MARKUP}"
        src = tmp_path / folder
        bundle.write(src, bundle.Manifest.from_dict(raw), files)
        backend.registry.add(src, folder, rejected_reason=status)
    with live_server(make_app(backend)) as url, httpx.Client(base_url=url, timeout=30) as api:
        for path in ("/", "/static/app.js", "/static/style.css"):
            csp = api.get(path).headers["content-security-policy"]
            assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp
        assert "<script>" not in api.get("/").text.split("<body>")[1].replace('<script src="/static/app.js"></script>', "")
        page = browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_function("() => document.querySelectorAll('#versions tbody tr').length >= 4")
        page.wait_for_timeout(300)  # let any injected handler (onerror) fire if there were one
        assert page.evaluate("window.__xss") is None
        assert page.eval_on_selector_all("#versions img, #versions script", "els => els.length") == 0
        texts = page.eval_on_selector_all("#versions tbody td", "els => els.map(e => e.textContent)")
        assert texts.count(MARKUP) == 2  # both versions' names, shown literally
        assert any(t.endswith(MARKUP) and t.startswith("2099-01-01 00:00:00") for t in texts)
        assert f"rejected: {MARKUP}" in texts
        # the page really runs under its policy: an inline script injected now is refused
        page.evaluate("""() => { const s = document.createElement('script');
                                 s.textContent = 'window.__inline = 1'; document.body.append(s); }""")
        assert page.evaluate("window.__inline") is None
        assert any("Content Security Policy" in p for p in problems)  # ...and reported as such
        assert not [p for p in problems if "Content Security Policy" not in p], problems


def test_api_docs_render_offline(browser, tmp_path):
    """/docs is Swagger UI served by our own server: it renders every operation with no network,
    and the browser reports no CSP violation and no request to another origin."""
    with live_server(make_app(make_backend(tmp_path / "store"))) as url:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        problems: list[str] = []
        foreign: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(url) else None)
        page.goto(url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=20000)
        paths = set(page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)"))
        assert {"/predict", "/predict/batch", "/retrain", "/health"} <= paths
        assert not problems, problems
        assert not foreign, foreign
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs-desktop.png"))
        page.close()
