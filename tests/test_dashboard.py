"""The dashboard in real headless Chromium (Debian's, through Playwright), against a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from fruitpipe.capture import CapturePolicy

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


DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
AXE = REPO / ".cache" / "test-tools" / "node_modules" / "axe-core" / "axe.min.js"


def bar_values(page, chart: str) -> dict[str, float]:
    return page.eval_on_selector_all(
        f"#{chart} rect.bar", "els => Object.fromEntries(els.map(e => [e.dataset.label, +e.dataset.value]))")


def shot(page, name: str) -> None:
    """A screenshot of the whole page, kept by CI as an artefact (test-artifacts/ is ignored by git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    return errors


def sign_in(page) -> None:
    page.click("#admin-btn")
    page.wait_for_selector("#admin-dialog[open]")
    page.fill("#token", TOKEN)
    page.click("#admin-ok")
    page.wait_for_selector("#admin-btn[data-signed-in='true']")


def add_available_version(backend, tmp_path: Path, name: str = "v20990101-000000-aaaaaa") -> str:
    """A second, activatable copy of the shipped model in the store's registry."""
    from fruitpipe import bundle

    from .conftest import DEFAULT_MODEL
    m = bundle.verify(DEFAULT_MODEL)
    raw = m.to_dict()
    raw["version"] = name
    src = tmp_path / name
    bundle.write(src, bundle.Manifest.from_dict(raw), {f: (DEFAULT_MODEL / f).read_bytes() for f in m.files})
    backend.registry.add(src, name)
    return name


def test_dashboard_end_to_end(browser, tmp_path):
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "val", 2)
    app = make_app(make_backend(tmp_path / "store", mode="good", seed=seed, eval_dir=eval_dir, sleep=2.0))
    apple = sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        # some traffic first, so the live charts have real numbers to show
        for label in ("freshbanana", "freshbanana", "rottenoranges"):
            img = sorted((FRUITS / "test" / label).glob("*.jpg"))[1]
            assert api.post("/predict", files={"file": ("x.jpg", img.read_bytes(), "image/jpeg")}).status_code == 200
        expected = api.post("/predict", files={"file": ("a.jpg", apple.read_bytes(), "image/jpeg")}).json()

        page = browser.new_page(viewport=DESKTOP)
        errors = watch_errors(page)
        page.goto(url + "/")
        page.wait_for_selector("#live-version:not(:has-text('…'))")
        assert page.text_content("#live-version") == api.get("/health").json()["model_version"]

        # predict a real image through the file picker
        page.set_input_files("#file", str(apple))
        page.wait_for_selector("#result:not([hidden])")
        assert page.get_attribute("#verdict", "data-verdict") == expected["verdict"] == "rotten"
        probs = bar_values(page, "prob-chart")
        assert probs == pytest.approx(expected["probabilities"], abs=1e-6)
        spoken = f"rotten apples {100 * expected['probabilities']['rottenapples']:.1f}%"
        assert spoken in page.get_attribute("#prob-chart", "aria-label")  # values readable by screen readers
        assert "rotten apples" in page.text_content("#predict-status")  # the aria-live region says the result

        # live charts drawn from /stats
        # a request's latency is recorded once its last byte is sent, after its prediction is counted:
        # a /stats read in between sees 5 predictions and 4 latencies; the next refresh (3 s) has both
        page.wait_for_function("() => document.querySelector('#kpi-predictions').textContent === '5' && "
                               "document.querySelector('#latency-chart').dataset.points === '5'")
        stats = api.get("/stats").json()
        assert bar_values(page, "class-chart") == {k: float(v) for k, v in stats["by_class"].items()}
        assert bar_values(page, "verdict-chart") == {k: float(v) for k, v in stats["by_verdict"].items()}
        assert page.get_attribute("#latency-chart", "data-points") == str(len(stats["recent_latencies_ms"]))

        # a write without signing in asks for the token; cancelling it writes nothing
        page.click("#retrain-btn")
        page.wait_for_selector("#admin-dialog[open]")
        page.click("#admin-cancel")
        page.wait_for_selector("#retrain-error:not([hidden])")
        assert "sign-in" in page.text_content("#retrain-error")
        assert api.get("/retraining-status").json()["state"] == "idle"

        # sign in (Enter in the token field only signs in: nothing starts)
        page.click("#admin-btn")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_selector("#admin-btn[data-signed-in='true']")
        assert page.evaluate("sessionStorage.getItem('fruitpipe-token')") == TOKEN
        assert api.get("/retraining-status").json()["state"] == "idle"
        assert page.is_hidden("#retrain-error")

        # upload three files (one real photo, one duplicate of it, one text file) with the class picker
        page.select_option("#upload-class", "rottenapples")
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        photo = sorted((FRUITS / "train" / "rottenapples").glob("*.jpg"))[9]
        twin = tmp_path / "twin.jpg"
        twin.write_bytes(photo.read_bytes())
        page.set_input_files("#upload-files", [str(photo), str(twin), str(bad)])
        page.click("#upload-form button")
        page.wait_for_selector("#upload-summary[data-summary]")
        assert page.text_content("#upload-summary") == "1 added, 1 duplicate, 1 rejected"
        statuses = page.eval_on_selector_all("#upload-list li", "els => els.map(e => e.dataset.status)")
        assert statuses == ["rejected", "added", "duplicate"]  # the rejected file first, never out of sight
        assert page.is_visible("#upload-list li[data-status='rejected']")
        assert "notes.txt" in page.text_content("#upload-list li[data-status='rejected']")
        page.wait_for_function("() => document.querySelector('#dataset-total').textContent === '1'")
        # the chart shows what a retrain trains on: the seed data (3 a class here) plus the uploads
        d = api.get("/dataset").json()
        assert d["seed"] == dict.fromkeys(d["counts"], 3) and d["counts"]["rottenapples"] == 1
        assert bar_values(page, "dataset-chart") == {c: d["seed"][c] + d["counts"][c] for c in d["counts"]}
        parts = page.eval_on_selector_all("#dataset-chart rect.part", "els => Object.fromEntries(els.map(e => [e.dataset.label, +e.dataset.value]))")
        assert parts == d["seed"]
        assert page.text_content("#dataset-sum") == "19"

        # a token gone wrong after sign-in (e.g. the server restarted with a new one): the error shows
        # in the upload card, the file counts as not sent (not "rejected"), and the next write asks again
        page.evaluate("sessionStorage.setItem('fruitpipe-token', 'wrong')")
        page.set_input_files("#upload-files", [str(photo)])
        page.click("#upload-form button")
        page.wait_for_selector("#upload-error:not([hidden])")
        assert "token" in page.text_content("#upload-error") and page.is_hidden("#retrain-error")
        assert page.evaluate("sessionStorage.getItem('fruitpipe-token')") is None
        page.wait_for_selector("#upload-summary[data-summary='1 not sent']")
        assert page.eval_on_selector_all("#upload-list li", "els => els.map(e => e.dataset.status)") == ["not_sent"]

        # signing in with a wrong token: checked at once (GET /auth/check), the error shows inside
        # the dialog, which stays open, and the page stays signed out
        page.click("#admin-btn")
        page.wait_for_selector("#admin-dialog[open]")
        with page.expect_response(lambda r: r.url.endswith("/auth/check")) as check:
            page.fill("#token", "wrong-token")
            page.click("#admin-ok")
        assert check.value.status in (401, 403)
        page.wait_for_selector("#admin-error:not([hidden])")
        assert "wrong" in page.text_content("#admin-error")
        assert page.is_visible("#admin-dialog") and page.get_attribute("#admin-btn", "data-signed-in") == "false"
        assert page.evaluate("sessionStorage.getItem('fruitpipe-token')") is None
        page.fill("#token", TOKEN)  # the right one now, in the same dialog
        page.click("#admin-ok")
        page.wait_for_selector("#admin-btn[data-signed-in='true']")
        assert page.is_hidden("#admin-dialog")

        # retrain: a confirmation dialog first; cancelling starts nothing
        page.click("#retrain-btn")
        page.wait_for_selector("#retrain-dialog[open]")
        page.click("#retrain-cancel")
        page.wait_for_timeout(300)
        assert api.get("/retraining-status").json()["state"] == "idle"
        page.evaluate("""() => { window.__widths = [];
            new MutationObserver(() => window.__widths.push(parseFloat(document.querySelector('#retrain-bar').style.width)))
              .observe(document.querySelector('#retrain-bar'), {attributes: true}); }""")
        page.click("#retrain-btn")
        page.click("#retrain-confirm")
        page.wait_for_selector("#retrain-state[data-state='running']")
        page.wait_for_function("() => parseFloat(document.querySelector('#retrain-bar').style.width) > 0")
        shot(page, "dashboard-desktop-retraining")
        page.wait_for_selector("#retrain-state[data-state='succeeded']", timeout=120_000)
        live = api.get("/models").json()["live"]
        page.wait_for_selector(f"#versions tr[data-version='{live}'] .pill.live")
        assert "Promoted" in page.text_content("#retrain-result")
        widths = page.evaluate("window.__widths")
        assert len(widths) >= 2 and widths == sorted(widths), widths  # the bar never went backwards
        # ...and a late, lower answer for the same run cannot pull it back; a new run starts from 0
        seen = page.evaluate("""() => [["r1", 40], ["r1", 30], ["r1", 55], ["r2", 10]].map(([run, p]) => {
            renderRetrain({state: "running", run_id: run, percent: p, log_tail: [], result: {}});
            return parseFloat(document.querySelector('#retrain-bar').style.width); })""")
        assert seen == [40, 40, 55, 10]
        # model performance now comes from the gate evaluation of the live version
        page.wait_for_function("() => document.querySelectorAll('#f1-chart rect.bar').length === 6")
        shot(page, "dashboard-desktop-retrained")
        assert not errors, errors


def test_predict_views_under_the_csp(browser, tmp_path):
    """Under the page's real CSP: a 12 MP phone photo is sent scaled down (<= 600 KB, upright, right
    answer); a HEIC Chromium cannot decode goes as picked; the "where the model looked" overlay
    draws the API's grid (hottest cell = the grid's argmax); a batch gives a table with thumbnails
    and a CSV of the same answers."""
    import csv
    import io

    import numpy as np
    from PIL import Image

    from .intake_support import camera_heic
    banana = sorted((FRUITS / "test" / "freshbanana").glob("*.jpg"))[3]
    # a phone photo: 4032x3024 sensor pixels with EXIF orientation 6 (shown upright as 3024x4032),
    # with sensor-like noise so it weighs what a real one does
    upright = Image.open(banana).convert("RGB").resize((3024, 4032), Image.Resampling.BICUBIC)
    noisy = np.asarray(upright, dtype=np.int16) + np.random.default_rng(0).normal(0, 5, (4032, 3024, 3)).astype(np.int16)
    stored = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    big = tmp_path / "IMG_0001.jpg"
    stored.save(big, "JPEG", quality=92, exif=exif.tobytes())
    assert stored.size == (4032, 3024) and big.stat().st_size > 2_000_000
    heic = tmp_path / "apple.heic"
    heic.write_bytes(camera_heic())

    store = tmp_path / "store"
    app = make_app(make_backend(store), capture=CapturePolicy(sample_rate=0.0))  # feedback is taken
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        page = browser.new_page(viewport=DESKTOP, accept_downloads=True)
        errors = watch_errors(page)
        sent: list[bytes] = []

        def intercept(route):  # the request body as it leaves the browser
            sent.append(route.request.post_data_buffer)
            route.continue_()
        page.route("**/predict*", intercept)
        page.goto(url + "/")
        page.wait_for_selector("#versions tbody tr")

        page.set_input_files("#file", str(big))
        page.wait_for_selector("#result:not([hidden])")
        assert len(sent) == 1 and 100_000 < len(sent[0]) <= 600 * 1024, len(sent[0])
        print(f"12 MP photo: {big.stat().st_size} bytes picked, {len(sent[0])} bytes sent")
        assert b'filename="IMG_0001.jpg"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8' in sent[0]
        assert page.text_content("#pred-class").startswith("fresh banana")
        size_line = page.text_content("#pred-size")
        assert "Original 3024×4032" in size_line and "sent 1200×1600" in size_line  # EXIF orientation honoured
        assert int(page.get_attribute("#pred-size", "data-sent-bytes")) <= 600 * 1024

        page.set_input_files("#file", str(heic))
        page.wait_for_function("() => document.querySelector('#pred-size').textContent.startsWith('Sent as picked')")
        # sent as picked (Playwright shows a picked file's part empty; the server decoded the HEIC)
        assert b'filename="apple.heic"\r\nContent-Type: image/heif' in sent[1]
        assert page.get_attribute("#verdict", "data-verdict") == "fresh"
        page.wait_for_selector("#preview", state="hidden")  # Chromium cannot show HEIC: no broken image

        # where the model looked: ticking the toggle for the photo shown (the HEIC) asks again with
        # ?explain=true; there is no preview to draw on, so no overlay
        with page.expect_response(lambda r: "/predict?explain=true" in r.url) as resp:
            page.check("#explain-toggle")
        assert resp.value.ok and resp.value.json()["explanation"]["grid"]
        page.wait_for_selector("#heat-caption:not([hidden])")
        assert page.is_hidden("#heatmap")
        apple = sorted((FRUITS / "test" / "freshapples").glob("*.jpg"))[0]
        with page.expect_response(lambda r: "/predict?explain=true" in r.url) as resp:
            page.set_input_files("#file", str(apple))
        grid = np.array(resp.value.json()["explanation"]["grid"])
        page.wait_for_selector("#heatmap:not([hidden])")
        assert page.is_visible("#heat-caption") and "where the evidence" in page.text_content("#heat-caption")
        alpha = np.array(page.evaluate("""() => {
            const c = document.querySelector('#heatmap'), ctx = c.getContext('2d');
            const rows = +c.dataset.rows, cols = +c.dataset.cols, out = [];
            for (let i = 0; i < rows; i++) { const r = []; for (let j = 0; j < cols; j++) {
              r.push(ctx.getImageData(Math.floor((j + .5) * c.width / cols), Math.floor((i + .5) * c.height / rows), 1, 1).data[3]); }
              out.push(r); }
            return out; }"""))
        assert alpha.shape == grid.shape == (7, 7)
        assert np.unravel_index(alpha.argmax(), alpha.shape) == np.unravel_index(grid.argmax(), grid.shape)
        # smoothly upscaled: along the middle row the opacity takes many values, not 7 steps
        row = page.evaluate("""() => { const c = document.querySelector('#heatmap');
            return [...c.getContext('2d').getImageData(0, Math.floor(c.height / 2), c.width, 1).data].filter((_, i) => i % 4 === 3); }""")
        assert len(row) > 100 and len(set(row)) > 30
        box = page.eval_on_selector("#heatmap", "c => [c.getBoundingClientRect().width, c.getBoundingClientRect().height]")
        img = page.eval_on_selector("#preview", "c => [c.getBoundingClientRect().width, c.getBoundingClientRect().height]")
        assert box == pytest.approx(img, abs=1)  # the overlay covers the photo exactly

        # the toggle on a photo already classified without it: ticking asks for the explanation and
        # draws it; unticking hides it; re-ticking shows it again (the answer is kept: no new request)
        page.uncheck("#explain-toggle")
        assert page.is_hidden("#heatmap") and page.is_hidden("#heat-caption")
        orange = sorted((FRUITS / "test" / "freshoranges").glob("*.jpg"))[2]
        n_sent = len(sent)
        page.set_input_files("#file", str(orange))
        page.wait_for_function("() => document.querySelector('#pred-class').textContent.startsWith('fresh oranges')")
        assert len(sent) == n_sent + 1 and page.is_hidden("#heatmap")
        with page.expect_response(lambda r: "/predict?explain=true" in r.url) as resp:
            page.check("#explain-toggle")
        assert b'filename="' + orange.name.encode() in sent[-1]  # the same photo, sent again
        page.wait_for_selector("#heatmap:not([hidden])")
        assert page.get_attribute("#heatmap", "data-rows") == str(len(resp.value.json()["explanation"]["grid"]))
        page.uncheck("#explain-toggle")
        assert page.is_hidden("#heatmap") and page.is_hidden("#heat-caption")
        n_sent = len(sent)
        page.check("#explain-toggle")
        page.wait_for_selector("#heatmap:not([hidden])")
        assert page.is_visible("#heat-caption") and len(sent) == n_sent

        # a model that cannot be explained (the API's 409 cannot_explain): the prediction, no heat map
        def cannot_explain(route):
            route.fulfill(status=409, json={"error": "cannot_explain",
                                            "detail": "recipe 'emb' has no fine-tuned block to explain"})
        page.route("**/predict?explain=true", cannot_explain)
        page.set_input_files("#file", str(banana))
        page.wait_for_function("() => document.querySelector('#heat-caption').textContent.startsWith('No heat map')")
        assert page.is_hidden("#heatmap") and page.text_content("#pred-class").startswith("fresh banana")
        page.unroute("**/predict?explain=true", cannot_explain)

        # a batch: three fruit photos, a cat, and a text file
        picks = [sorted((FRUITS / "test" / c).glob("*.jpg"))[5] for c in ("freshoranges", "rottenbanana", "freshapples")]
        picks.append(sorted((FRUITS.parent / "not_fruit" / "cat").glob("*.jpg"))[0])
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image")
        page.set_input_files("#file", [str(p) for p in picks] + [str(notes), str(heic)])
        page.wait_for_selector("#batch-csv:not([hidden])")
        # the HEIC row: a neutral "no preview" box, not a broken image; its prediction still there
        page.wait_for_selector("#batch-table tbody tr:last-child .thumb.none")
        heic_row = page.eval_on_selector("#batch-table tbody tr:last-child", "e => [e.dataset.verdict, e.cells[0].textContent]")
        assert heic_row == ["fresh", "no preview"]
        # every column in view at desktop sizes: nothing cut off by the table's scroll box
        for width in (1366, 1920):
            page.set_viewport_size({"width": width, "height": 900})
            fit = page.eval_on_selector("#batch .table-wrap", """w => {
                const box = w.getBoundingClientRect();
                return {scroll: w.scrollWidth, client: w.clientWidth, right: box.right,
                        cols: [...w.querySelectorAll('thead th')].map(th => th.getBoundingClientRect().right)}; }""")
            assert fit["scroll"] <= fit["client"] and max(fit["cols"]) <= fit["right"] + 1, (width, fit)
        page.set_viewport_size(DESKTOP)
        expected = [api.post("/predict", files={"file": ("x.jpg", p.read_bytes(), "image/jpeg")}).json() for p in picks]
        rows = page.eval_on_selector_all("#batch-table tbody tr", """els => els.map(e => ({
            verdict: e.dataset.verdict, name: e.cells[1].textContent, conf: e.cells[4].textContent,
            shown: e.cells[2].textContent, why: e.cells[3].textContent,
            thumb: e.querySelector('img')?.src, loaded: e.querySelector('img')?.naturalWidth }))""")
        assert [r["name"] for r in rows[:5]] == [p.name for p in picks] + ["notes.txt"]
        assert [r["verdict"] for r in rows[:5]] == [e["verdict"] for e in expected] + ["error"]
        # the unreadable file: "error", and what went wrong in words (the API's code, then its detail)
        assert rows[4]["shown"] == "error" and rows[4]["why"].startswith("not an image: "), rows[4]
        assert all(r["thumb"].startswith("blob:") and r["loaded"] > 0 for r in rows[:4])  # img-src blob: allowed
        # a not-fruit answer shows no fruit confidence (its top class's probability would read as
        # "that sure it is not fruit")
        assert expected[3]["verdict"] == "not_fruit"
        assert [r["conf"] for r in rows[:4]] == [f"{e['confidence'] * 100:.1f}%" for e in expected[:3]] + ["–"]
        with page.expect_download() as dl:
            page.click("#batch-csv")
        table = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert [t["file"] for t in table] == [p.name for p in picks] + ["notes.txt", "apple.heic"]
        assert [t["predicted_class"] for t in table[:4]] == [e["predicted_class"] for e in expected]
        assert [float(t["confidence"]) for t in table[:4]] == pytest.approx([e["confidence"] for e in expected], abs=1e-4)
        assert table[4]["verdict"] == "" and table[4]["error"].startswith("not_an_image")

        # "Wrong? tell us" in each answered row (not the text file's): the second photo's, sent
        row = "#batch-table tbody tr:nth-child(2)"
        assert page.eval_on_selector_all("#batch-table tbody tr", "els => els.map(e => !!e.querySelector('.feedback-open'))") \
            == [True, True, True, True, False, True]
        assert page.get_attribute(f"{row} .feedback-open", "aria-label") == f"Wrong? tell us about {picks[1].name}"
        page.click(f"{row} .feedback-open")
        page.select_option(f"{row} .feedback select", "rottenoranges")
        with page.expect_response(lambda r: r.url.endswith("/feedback")) as fb:
            page.click(f"{row} .feedback button[type=submit]")
        assert fb.value.status == 200
        pid = page.get_attribute(f"{row} .feedback", "data-prediction-id")
        assert fb.value.json() == {"prediction_id": pid, "correct": "rottenoranges", "kept": True}
        page.wait_for_function(f"() => document.querySelector('{row} .feedback-note').textContent.startsWith('Thanks')")
        record = json.loads((store / "capture" / f"{pid}.json").read_text())
        assert record["feedback"]["correct"] == "rottenoranges" and record["verdict"] == rows[1]["verdict"]
        assert not errors, errors


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not AXE.is_file():
        pytest.fail("axe-core is not installed: run `bash scripts/ensure_test_tools.sh`")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map(n => n.target.join(' '))}))""")
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("size", SIZES)
def test_every_view_accessible_and_fits(browser, tmp_path, size):
    """Every view at desktop and phone size: axe-core finds no serious or critical violation, the
    page never scrolls sideways, and a screenshot of each is kept. On a phone: a one-line header,
    camera and file buttons instead of the drop zone, and each version's status, accuracy and
    activate button in view. (axe is injected, so this context bypasses the CSP: for axe only.)"""
    backend = make_backend(tmp_path / "store")
    extra = add_available_version(backend, tmp_path)
    vp = SIZES[size]
    with live_server(make_app(backend)) as url:
        context = browser.new_context(viewport=vp, bypass_csp=True, device_scale_factor=2 if size == "phone" else 1)
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector(f"#versions tr[data-version='{extra}'] button")
        page.wait_for_selector("#confusion table")
        page.wait_for_selector("#model-arch[data-backbone='mobilenet_v2']")  # the live model's architecture
        assert page.text_content("#model-arch").startswith(
            "Architecture: mobilenet_v2 backbone (int8, 224×224 input, its last block (17) fine-tuned on our photos)")
        views: dict[str, list] = {}

        def view(name: str) -> None:
            assert page.evaluate("document.documentElement.scrollWidth") <= vp["width"], name
            shot(page, f"dashboard-{size}-{name}")
            views[name] = axe_violations(page)

        view("home")
        if size == "phone":
            assert page.eval_on_selector(".top", "e => e.getBoundingClientRect().height") < 56  # one line
            assert page.is_hidden("#drop") and page.is_visible("#camera-btn") and page.is_visible("#pick-btn")
            assert page.get_attribute("#camera", "capture") == "environment"
            assert page.get_attribute("#camera", "accept") == "image/*"
            row = f"#versions tr[data-version='{extra}']"
            for part in (".pill", "td:nth-child(4)", "button"):
                r = page.eval_on_selector(f"{row} {part}", "e => e.getBoundingClientRect().toJSON()")
                assert 0 <= r["left"] and r["right"] <= vp["width"] and r["width"] > 0, part
        else:
            assert page.is_visible("#drop") and page.is_hidden("#camera-btn")
            # the drop zone is a button: reached with Tab, Enter opens the file chooser
            page.evaluate("document.activeElement.blur()")
            for _ in range(3):  # from the top of the page: the sign-in button, then the drop zone
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "drop":
                    break
            assert page.evaluate("document.activeElement.id") == "drop"
            # Enter clicks the (multiple) file input. Observed in the page, not through Playwright's
            # file-chooser interception, which races the key press in newer Chromium builds (CI saw
            # a 30 s timeout); the listener cancels the click so no native picker is left open.
            page.evaluate("""() => { window.__picked = null;
                document.getElementById('file').addEventListener('click', (e) => {
                  window.__picked = e.target.multiple; e.preventDefault(); }, {once: true}); }""")
            page.keyboard.press("Enter")
            page.wait_for_function("window.__picked !== null", timeout=10_000)
            assert page.evaluate("window.__picked") is True
        # the architecture comparison (static/compare.json from scripts/report.py), the live one marked
        page.wait_for_selector("#compare-box:not([hidden])")
        page.click("#compare-box summary")
        rows = page.eval_on_selector_all("#compare-table tbody tr", "els => els.map(e => e.dataset.variant)")
        assert len(rows) >= 7 and "custom_cnn" in rows and "efficientnet_lite1" in rows, rows
        assert page.eval_on_selector_all("#compare-table tr.live-row", "els => els.map(e => e.dataset.variant)") == [
            "mobilenet_v2_finetuned"]
        view("compare")
        # confusion-matrix heads fit their cells (none clipped, so none collides with its neighbour)
        clipped = page.eval_on_selector_all("#confusion th", "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
        assert not clipped, clipped

        page.check("#explain-toggle")
        page.set_input_files("#file", str(sorted((FRUITS / "test" / "rottenapples").glob("*.jpg"))[0]))
        page.wait_for_selector("#heatmap:not([hidden])")
        view("photo-explained")
        batch = [sorted((FRUITS / "test" / c).glob("*.jpg"))[4] for c in ("freshbanana", "rottenoranges", "freshapples")]
        broken = tmp_path / "broken.jpg"  # a row the server cannot read: its error in words, checked too
        broken.write_bytes(batch[0].read_bytes()[:3000])
        page.set_input_files("#file", [str(p) for p in batch] + [str(broken)])
        page.wait_for_selector("#batch-csv:not([hidden])")
        assert page.text_content("#batch-table tbody tr:last-child td:nth-child(4)").startswith("truncated: ")
        page.click("#batch-table tbody tr:first-child .feedback-open")  # a row's feedback form, open
        view("batch")
        page.click("#admin-btn")
        page.wait_for_selector("#admin-dialog[open]")
        view("sign-in")
        page.fill("#token", TOKEN)
        page.click("#admin-ok")
        page.set_input_files("#upload-files", [str(sorted((FRUITS / "train" / "freshbanana").glob("*.jpg"))[0]), str(REPO / "README.md")])
        page.click("#upload-form button")
        page.wait_for_selector("#upload-summary[data-summary]")
        view("uploaded")
        page.click("#retrain-btn")
        page.wait_for_selector("#retrain-dialog[open]")
        view("retrain-confirm")
        page.click("#retrain-cancel")
        context.close()
        bad = {k: v for k, v in views.items() if v}
        assert not bad, json.dumps(bad, indent=1)


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
            assert "img-src 'self' data: blob:;" in csp  # blob: for the photo previews and batch thumbnails
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


def test_a_running_retrain_can_be_stopped_from_the_dashboard(browser, tmp_path):
    seed = small_dataset(tmp_path / "seed", "train", 3)
    eval_dir = small_dataset(tmp_path / "eval", "test", 2)
    app = make_app(make_backend(tmp_path / "store", mode="good", seed=seed, eval_dir=eval_dir, sleep=300.0))
    with live_server(app) as url:
        page = browser.new_page()
        errors = watch_errors(page)
        page.goto(url + "/")
        assert page.is_hidden("#retrain-stop")  # nothing running
        sign_in(page)
        page.click("#retrain-btn")
        page.wait_for_selector("#retrain-dialog[open]")
        page.check("#retrain-force")  # the store has no uploads: nothing new to learn
        page.click("#retrain-confirm")
        page.wait_for_selector("#retrain-stop:not([hidden])")
        page.click("#retrain-stop")
        page.wait_for_selector("#retrain-state[data-state='cancelled']")
        assert page.text_content("#retrain-result").startswith("Stopped: cancelled at stage")
        assert page.is_hidden("#retrain-stop") and page.is_enabled("#retrain-btn")
        page.close()
        assert not errors, errors


def test_a_running_shadow_can_be_stopped_from_the_dashboard(browser, tmp_path):
    """A running shadow shows under its version with a "Stop shadow" button, reached with Tab from
    the row's activate button and pressed with Enter: the shadow is stopped (never promoted), the
    banner says so, and axe finds no serious or critical violation on the row with the button."""
    backend = make_backend(tmp_path / "store")
    version = add_available_version(backend, tmp_path)
    with live_server(make_app(backend)) as url:
        live = httpx.get(url + "/models").json()["live"]
        r = httpx.post(f"{url}/models/{version}/shadow", json={"requests": 50},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        context = browser.new_context(viewport=DESKTOP, bypass_csp=True)  # bypass: for axe only
        page = context.new_page()
        errors = watch_errors(page)
        page.goto(url + "/")
        sign_in(page)
        stop = "#versions tr.shadow-row button"
        page.wait_for_selector(stop)
        assert page.text_content("#versions tr.shadow-row").startswith("in shadow since ")
        assert page.get_attribute(stop, "aria-label") == f"Stop shadow of {version}"
        assert axe_violations(page) == []
        shot(page, "dashboard-shadow-running")
        page.focus(f"#versions tr[data-version='{version}'] button")  # its activate button
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Stop shadow"
        page.keyboard.press("Enter")
        page.wait_for_selector(stop, state="detached")
        page.wait_for_function("() => document.getElementById('model-events')?.textContent.includes('stopped')")
        assert page.text_content("#model-events").startswith(f"Shadow: {version} stopped (stopped_by_operator")
        assert page.is_hidden("#versions-error")
        models = httpx.get(url + "/models").json()
        assert models["shadow"]["status"] == "stopped" and models["live"] == live
        context.close()
        assert not errors, errors
