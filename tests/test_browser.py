"""The app in a real browser (Chromium through Playwright): live decoding, the Decode tab's step
player (keys, buttons, play, colour by metric, checker marks, figure step markers, permalinks), a
phone (390 x 844: Run scrolls to the results, tooltips fit the screen), Re-run of a stored run,
tooltips, the Runs, Compare and Sweeps tabs, energies and dependency violations, re-masking, XDLM's
revisions, and HTML injection through a prompt, a stored token and a stored prompt. The desktop
viewport is 1440 x 900.

One server (one model worker, a SQLite file in a temporary directory) and one browser serve
the module; each test opens its own page. Screenshots go to $EXPLORER_ARTIFACTS (default
tests/artifacts/): decode_mid_run.png, decode_after_run.png, decode_scrubbed.png,
phone_after_run.png and phone_tooltip.png (390 x 844, the screen as seen),
runs_tab.png, compare_tab.png, sweeps_tab.png and sweeps_compare.png (a sweep's figure, cells
and runs; two of its runs in Compare), energies_violations.png and energies.png (a run with Uni-E),
violations.png (the violations and energies section of the two-full-stops preset),
violations_full.png, remasking.png and remasking_tokens.png (the RCR preset); branching:
branch_panel.png (a token clicked), branch_alternatives.png ("which decision mattered?"),
branch_child.png (the branch decoded), branch_compare.png (with its parent, at the branch step),
branch_runs_tree.png (the Runs tab with the branches under their parent) and
branch_panel_mobile.png (390 x 844, a token tapped); XDLM: xdlm_full.png (an embedded-xdlm run with
revisions) and xdlm_compare.png (that run against the MDLM on the same prompt and seed), and
docs/screenshot_xdlm.png (the tokens with a revised token's history up, and the changes map);
DiffusionGemma (the story-gemma example on its own server): gemma_full.png and docs/screenshot_gemma.png
(a middle step's noise chips, accepted tokens and draft, over the canvas maps).
Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import re
import zipfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from app_server import decode_args, running_app
from gradio_client import Client

from explorer.store.bundle import export_run, import_run
from explorer.store.sweeps import sweep_cells, sweep_rows
from explorer.sweeps.execute import run_sweep
from explorer.sweeps.spec import parse_spec

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

ARTIFACTS = Path(os.environ.get("EXPLORER_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
TIMEOUT_MS = 30_000

TOKEN_PAYLOAD = '<img src=x onerror="window.__xss=2">'
PROMPT_PAYLOAD = "<script>window.__xss=3</script> once upon a time"

# Counts read in one go, so they describe one state of the page.
TOKEN_STATE_JS = """() => {
  const line = document.querySelector('#tokens .tokens-line');
  return {status: document.querySelector('#status').innerText,
          committed: line ? line.querySelectorAll('.tok:not(.masked)').length : 0,
          masked: line ? line.querySelectorAll('.tok.masked').length : 0};
}"""
TABLE_ROWS_JS = """(selector) => Array.from(document.querySelectorAll(`${selector} [role=row]`))
    .map(row => Array.from(row.querySelectorAll('[role=gridcell]')).map(cell => cell.innerText.trim()))"""
NO_INJECTION_JS = """() => ({xss: typeof window.__xss === 'undefined' ? null : window.__xss,
                             imgs: document.querySelectorAll('img[src="x"]').length,
                             scripts: Array.from(document.querySelectorAll('script'))
                                           .filter(s => s.textContent.includes('__xss')).length})"""


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("browser")) as (services, url):
        yield services, url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server[1])
    page.wait_for_selector("#run-btn")
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def two_runs(server):
    """Two completed runs made over the API: the same prompt and seed, two strategies."""
    client = Client(server[1], verbose=False)
    ids = []
    for strategy in ("low_confidence", "margin"):
        status = client.predict(
            *decode_args(prompt="once upon a time", strategy=strategy, gen_length=32, steps=16), api_name="/decode"
        )[0]
        match = re.search(r"run (\d+) · completed", status)
        assert match, status
        ids.append(int(match.group(1)))
    return tuple(ids)


# ---- helpers -------------------------------------------------------------------------------------


def set_number(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.press(selector, "Enter")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def wait_for_table_row(page, run_id: int) -> None:
    """Wait until the runs table shows a cell holding exactly this run id."""
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('#runs-table [role=gridcell]'))
                                          .some(cell => cell.innerText.trim() === '{run_id}')""")


def assert_not_injected(page) -> None:
    state = page.evaluate(NO_INJECTION_JS)
    assert state == {"xss": None, "imgs": 0, "scripts": 0}, state


def tooltip_of(page, locator) -> str:
    """Hover the token and read the text its CSS tooltip (::after, from data-tip) shows."""
    locator.hover()
    content = locator.evaluate("el => getComputedStyle(el, '::after').content")
    assert content not in ("none", "normal", ""), "no tooltip is shown on hover"
    assert content[0] == content[-1] == '"', content  # a CSS string: text, never markup
    # undo CSS string escapes in one pass: hex ones (a line break is "\\a "), \" and \\
    unescape = lambda m: chr(int(m.group(1), 16)) if m.group(1) else m.group(2)  # noqa: E731
    return re.sub(r"\\([0-9a-fA-F]{1,6}) ?|\\(.)", unescape, content[1:-1])


def wait_mid_run(page, committed: int) -> dict:
    """Wait until the run is streaming with at least `committed` tokens shown and some masked."""
    page.wait_for_function(f"""() => {{ const s = ({TOKEN_STATE_JS})();
        return s.status.includes('Decoding') && s.committed >= {committed} && s.masked >= 8; }}""")
    state = page.evaluate(TOKEN_STATE_JS)
    assert "Decoding…" in state["status"], state
    assert state["committed"] + state["masked"] == 64 and 0 < state["committed"] < 64, state
    return state


def wait_text(page, selector: str, text: str, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the element's text includes `text`; on a timeout, say what it holds instead."""
    try:
        page.wait_for_function(
            f"() => document.querySelector({selector!r})?.innerText.includes({text!r})", timeout=timeout
        )
    except sync_api.TimeoutError:
        shown = page.evaluate(f"() => document.querySelector({selector!r})?.innerText ?? null")
        pytest.fail(f"{selector} never said {text!r}; it says {shown!r}")


def wait_completed(page) -> dict:
    page.wait_for_function("document.querySelector('#status').innerText.includes('completed')", timeout=60_000)
    return page.evaluate(TOKEN_STATE_JS)


@contextlib.contextmanager
def phone_page(browser, server):
    """A phone's page (390 x 844, touch) on the app, loaded; no JavaScript error may happen in it."""
    context = browser.new_context(viewport=MOBILE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server[1])
        page.wait_for_selector("#run-btn")
        yield page
    finally:
        context.close()
    assert not errors, errors


# ---- tests ---------------------------------------------------------------------------------------


# ---- the Decode tab's player ------------------------------------------------------------------------

PLAYER_JS = """() => { const host = document.querySelector('#tokens'), range = host.querySelector('.pl-range');
  return {step: Number(host.dataset.step), label: host.querySelector('.pl-label')?.textContent ?? null,
          max: Number(range?.max), range: Number(range?.value)}; }"""
LIVE_Z_JS = """() => { const t = document.querySelector('#heatmap .js-plotly-plot')?.data?.[0];
  return t && t.meta === 'live-heatmap' && t.z ? t.z.length : -1; }"""
LINE_JS = """() => Array.from(document.querySelectorAll('#tokens .tokens-line .tok'))
    .map(t => t.classList.contains('masked') ? '▒' : t.innerText)"""
MARKER_TAGS_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('.step-marker'))
    .filter(m => m.style.display !== 'none')
    .map(m => [m.closest('[id]').id, m.querySelector('.step-marker-tag').textContent]))"""
# Where a token's tooltip (its ::after box) is drawn, in viewport pixels: a fixed box is placed
# against the viewport only when no ancestor makes a containing block for it (transform, filter,
# contain: paint/layout/content/strict, ...), which is listed too.
TOOLTIP_BOX_JS = """el => {
  const s = getComputedStyle(el, '::after');
  const blockers = [];
  for (let a = el.parentElement; a; a = a.parentElement) {
    const c = getComputedStyle(a);
    if (c.transform !== 'none' || c.filter !== 'none' || c.perspective !== 'none' || c.backdropFilter !== 'none' ||
        /paint|layout|content|strict/.test(c.contain) || /transform|filter/.test(c.willChange))
      blockers.push(`${a.tagName.toLowerCase()}.${a.className}: contain ${c.contain}, transform ${c.transform}`);
  }
  return {position: s.position, top: parseFloat(s.top), left: parseFloat(s.left), width: parseFloat(s.width),
          height: parseFloat(s.height), blockers, vw: window.innerWidth, vh: window.innerHeight};
}"""


def player(page) -> dict:
    return page.evaluate(PLAYER_JS)


def wait_step(page, step: int) -> None:
    page.wait_for_function(f"() => document.querySelector('#tokens').dataset.step === '{step}'")


def press_key(page, key: str) -> None:
    """A key pressed with the focus on no text field (the page's body)."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press(key)


def show_step(page, step: int) -> None:
    """Move the player to `step` with its range input (values are indices into the run's steps)."""
    index = page.evaluate(f"() => document.querySelector('#tokens').explorerPlayer.steps.indexOf({step})")
    assert index >= 0, step
    page.locator("#tokens .pl-range").fill(str(index))
    wait_step(page, step)


def store_line(services, run_id: int, step: int) -> list[str]:
    """The token line after `step` as the store has it: each position's text, ▒ where masked."""
    arrays = services.store.read_arrays(run_id)
    column = arrays.steps.tolist().index(step)
    mask, text = int(arrays.run["mask_id"]), services.models[arrays.run["model"]].token_text
    return ["▒" if t == mask else text(t) for t in arrays.tokens[:, column].tolist()]


def run_id_of(status: str) -> int:
    return int(re.search(r"run (\d+) · completed", status).group(1))


def test_decode_live_scrub_and_tooltip(page, artifacts, server):
    services = server[0]
    set_number(page, "#gen-length input", 64)
    set_number(page, "#steps input", 64)
    set_number(page, "#pace input[type=number]", 40)
    assert page.input_value("#pace input[type=range]") == "40"
    page.click("#run-btn")

    # Mid-run: the status says Decoding…, the token view is partly decoded, the player follows.
    wait_mid_run(page, committed=4)
    assert "decoding…" in player(page)["label"]
    done = wait_completed(page)
    assert done["committed"] == 64 and done["masked"] == 0, done
    assert re.search(r"run \d+ · completed · 64 steps · 64/64 tokens committed", done["status"]), done
    run_id = run_id_of(done["status"])
    page.wait_for_function(f"() => ({PLAYER_JS})().label === 'after step 63 (steps 0–63)'")
    assert player(page) == {"step": 63, "label": "after step 63 (steps 0–63)", "max": 63, "range": 63}
    assert page.locator("#step-slider").is_hidden()  # the old slider is for the API only
    for figure in ("#heatmap", "#order", "#bars", "#changes"):
        plot_drawn(page, figure)
    page.wait_for_function(f"() => ({MARKER_TAGS_JS})()['order'] === 'step 63'")
    # The speed panel, once the run has ended.
    speed = page.inner_text("#speed")
    cells = ("wall time", "ms per step", "tokens per second", "forward passes per token", "forward passes", "device")
    for cell in cells:
        assert cell in speed, (cell, speed)
    assert page.locator("#speed .speed-panel").count() == 1
    page.screenshot(path=artifacts / "decode_after_run.png", full_page=True)

    # The keyboard: ArrowLeft, Home, End (the focus in no text field).
    press_key(page, "ArrowLeft")
    wait_step(page, 62)
    press_key(page, "Home")
    wait_step(page, 0)
    assert player(page)["label"] == "after step 0 (steps 0–63)"
    press_key(page, "End")
    wait_step(page, 63)
    press_key(page, "ArrowRight")  # at the end: stays
    assert player(page)["step"] == 63

    # The buttons: first, next x5, last, prev.
    page.click("#tokens .pl-first")
    wait_step(page, 0)
    for _ in range(5):
        page.click("#tokens .pl-next")
    wait_step(page, 5)
    page.click("#tokens .pl-last")
    wait_step(page, 63)
    page.click("#tokens .pl-prev")
    wait_step(page, 62)

    # At step 5 the line is exactly the stored state after step 5, and every figure marks step 5.
    show_step(page, 5)
    assert page.evaluate(LINE_JS) == store_line(services, run_id, 5)
    assert player(page) == {"step": 5, "label": "after step 5 (steps 0–63)", "max": 63, "range": 5}
    assert page.locator("#tokens .tokens-line .tok.just").count() == 1  # the one committed at step 5
    assert "committed at step 5" in page.inner_text("#tokens .pl-key")
    tags = page.evaluate(MARKER_TAGS_JS)
    for figure in ("heatmap", "order", "bars", "changes"):
        assert tags.get(figure) == "step 5", tags
    # Each marker stands inside its figure's plot area.
    for figure in ("#heatmap", "#order", "#bars", "#changes"):
        marker = page.locator(f"{figure} .step-marker").bounding_box()
        plot = page.locator(f"{figure} .nsewdrag").first.bounding_box()
        assert plot["x"] - 2 <= marker["x"] <= plot["x"] + plot["width"] + 2, (figure, marker, plot)
        assert abs(marker["y"] - plot["y"]) <= 2 and abs(marker["height"] - plot["height"]) <= 2, (figure, marker, plot)
    # Resting on it: the bar's link names it and the server draws the per-step figures for it.
    link = page.locator("#tokens .pl-link").get_attribute("href")
    assert re.search(rf"\?run={run_id}&step=5$", link), link
    page.wait_for_function("""() => ['#pairwise-s', '#pairwise-a', '#candidates'].every(id =>
        document.querySelector(`${id} .gtitle`)?.textContent.startsWith('Step 5'))""")

    # A later step on the range: the line is that step's state again.
    show_step(page, 40)
    assert page.evaluate(LINE_JS) == store_line(services, run_id, 40)
    assert page.evaluate(TOKEN_STATE_JS)["masked"] == 23

    # Hover a committed token: its tooltip names the step that committed it.
    token = page.locator("#tokens .tokens-line .tok:not(.masked)").first
    tip = tooltip_of(page, token)
    assert "position 0" in tip and "committed at step" in tip and "p = " in tip, tip
    assert tip == token.get_attribute("data-tip")
    page.screenshot(path=artifacts / "decode_scrubbed.png", full_page=True)
    # ... and that tooltip is not clipped by a box around the line (it opens above the first line).
    # (read here, asserted at the end: the rest of the test runs whatever these say)
    box = token.evaluate(TOOLTIP_BOX_JS)
    # The figures drawn before the address changed (?run=&step=) still find their colour bar's
    # gradient (Plotly fills it by url(<page address>#id)).
    fills = page.evaluate("""() => Array.from(document.querySelectorAll('#heatmap .cbfills rect, #order .cbfills rect'))
        .map(r => (r.style.fill.match(/url\\("?([^"#]*)#/) || [])[1])""")
    address = page.url.split("#")[0]
    masked_tip = tooltip_of(page, page.locator("#tokens .tokens-line .tok.masked").first)
    assert "still masked" in masked_tip, masked_tip

    # Play from the first step: the step advances by itself; pause stops it.
    page.mouse.move(0, 0)
    page.click("#tokens .pl-first")
    wait_step(page, 0)
    page.click("#tokens .pl-play")
    assert page.inner_text("#tokens .pl-play") == "❚❚ Pause"
    page.wait_for_function("() => Number(document.querySelector('#tokens').dataset.step) >= 3")
    press_key(page, " ")  # space pauses
    page.wait_for_function("() => document.querySelector('#tokens .pl-play').textContent === '▶ Play'")
    paused = player(page)["step"]
    page.wait_for_timeout(600)
    assert player(page)["step"] == paused
    assert page.evaluate(LINE_JS) == store_line(services, run_id, paused)

    # Mid-run, from a second run (plotly.js is loaded by now): slower, the live heatmap grows.
    set_number(page, "#pace input[type=number]", 120)
    page.click("#run-btn")
    wait_mid_run(page, committed=6)
    try:
        page.wait_for_function(f"() => ({LIVE_Z_JS})() >= 2", timeout=15_000)
    except sync_api.TimeoutError:
        shown = page.evaluate("""() => { const t = document.querySelector('#heatmap .js-plotly-plot')?.data?.[0];
            const status = document.querySelector('#status').innerText;
            return {meta: t?.meta ?? null, z: t?.z?.length ?? null, status: status}; }""")
        pytest.fail(f"the live heatmap did not grow: {shown}")
    first = page.evaluate(LIVE_Z_JS)
    page.wait_for_function(f"() => ({LIVE_Z_JS})() > {first}")
    wait_mid_run(page, committed=8)
    for figure in ("#order", "#bars", "#changes"):
        assert "Drawn when the run ends." in page.inner_text(figure), figure
    page.screenshot(path=artifacts / "decode_mid_run.png", full_page=True)
    assert wait_completed(page)["committed"] == 64

    problems = []
    if box["blockers"]:
        problems.append(f"the tooltip is clipped to (or placed against) {box['blockers']}")
    if not fills or any(f not in (None, "", address) for f in fills):
        problems.append(f"colour bars filled from {fills}, the page is at {address}")
    assert not problems, problems


COLOUR_KEYS = {
    "step": "commit step",
    "prob": "probability",
    "entropy": "entropy",
    "violation": "violation score",
    "checker": "story checker",
}
BACKGROUNDS_JS = """() => Array.from(document.querySelectorAll('#tokens .tokens-line .tok:not(.masked)'))
    .map(t => ({bg: getComputedStyle(t).backgroundColor, colour: t.style.background, k: t.dataset.k ?? null,
               kc: t.dataset.kc ?? null, v: t.dataset.v ?? null, none: t.classList.contains('no-value')}))"""


def open_permalink(page, url: str, query: str) -> None:
    page.goto(f"{url}?{query}")
    page.wait_for_selector("#run-btn")


def test_colour_tokens_by_each_metric(page, server, two_runs):
    open_permalink(page, server[1], f"run={two_runs[0]}")
    page.wait_for_function("() => document.querySelector('#tokens').dataset.step === '15'")
    seen = {}
    for option, words in COLOUR_KEYS.items():
        page.select_option("#tokens .pl-colour", option)
        page.wait_for_function(f"() => document.querySelector('#tokens .pl-key').innerText.includes({words!r})")
        seen[option] = page.evaluate(BACKGROUNDS_JS)
        assert page.input_value("#tokens .pl-colour") == option
    n = len(seen["step"])
    assert n == 32
    step_bg = [t["bg"] for t in seen["step"]]
    assert len(set(step_bg)) > 4  # a ramp over the steps
    for option in ("prob", "entropy"):
        assert [t["bg"] for t in seen[option]] != step_bg, option
    # violation: white to red where a score was measured, dashed 'no value' elsewhere
    for t in seen["violation"]:
        if t["v"] is None:
            assert t["none"], t
        else:
            r, g, b = map(int, re.findall(r"\d+", t["bg"])[:3])
            assert r == 255 or (r > g and r > b), t
    # checker: green fine, red blamed, orange involved
    expected = {None: "rgb(47, 158, 68)", "1": "rgb(224, 49, 49)", "0": "rgb(240, 140, 0)"}
    for t in seen["checker"]:
        assert t["bg"] == expected[t["kc"] if t["k"] is not None else None], t
    # back to step: the first colouring again
    page.select_option("#tokens .pl-colour", "step")
    assert [t["bg"] for t in page.evaluate(BACKGROUNDS_JS)] == step_bg


A_AN_PRESET = "a/an violation at 8 tokens per step"  # 'an girl' at positions 0-1, committed at step 0


def test_checker_marks_match_the_verdict(page, server):
    from explorer.views.verdict import verdict_of

    services = server[0]
    choose_preset(page, A_AN_PRESET)
    status = run_and_wait(page)
    run_id = run_id_of(status)
    assert "a_an" in status, status
    arrays = services.store.read_arrays(run_id)
    text = services.models[arrays.run["model"]].token_text
    prompt = [text(int(t)) for t in arrays.run["prompt_ids"]]
    marks = verdict_of(prompt, [text(int(t)) for t in arrays.tokens[:, -1].tolist()]).marks()
    assert marks, "the preset's run has no checker violation"
    flagged = page.evaluate("""() => Array.from(document.querySelectorAll('#tokens .tokens-line .tok'))
        .flatMap((t, i) => t.classList.contains('checker-flag') ? [i] : [])""")
    assert flagged == sorted(marks), (flagged, marks)
    assert "wavy underline" in page.inner_text("#tokens .pl-key")
    tokens = page.locator("#tokens .tokens-line .tok")
    for position, found in marks.items():
        token = tokens.nth(position)
        assert token.evaluate("el => getComputedStyle(el).textDecorationStyle") == "wavy"
        tip = tooltip_of(page, token)
        assert "✗ checker: " in tip, tip
        for mark in found:
            assert f"{mark.kind}: {mark.message}" in tip, (tip, mark)
        assert token.get_attribute("data-kc") == str(int(any(m.culprit for m in found)))
    # Coloured by the checker: red where blamed, orange where involved, green elsewhere.
    page.select_option("#tokens .pl-colour", "checker")
    colours = page.evaluate(BACKGROUNDS_JS)
    assert [i for i, t in enumerate(colours) if t["bg"] != "rgb(47, 158, 68)"] == sorted(marks)


def test_permalinks_open_a_run_at_a_step_and_compare(page, server, two_runs):
    services, url = server
    a, b = two_runs
    open_permalink(page, url, f"run={a}&step=5")
    wait_step(page, 5)
    assert player(page)["label"] == "after step 5 (steps 0–15)"
    assert f"run {a} · completed" in page.inner_text("#status")
    assert page.evaluate(LINE_JS) == store_line(services, a, 5)
    page.wait_for_function(f"() => ({MARKER_TAGS_JS})()['heatmap'] === 'step 5'")

    open_permalink(page, url, f"tab=compare&a={a}&b={b}")
    page.wait_for_function("() => document.querySelectorAll('#compare-runs .token').length === 2")
    assert page.get_by_role("tab", name="Compare").get_attribute("aria-selected") == "true"
    assert picked_runs(page) == [a, b]


def pick_runs(page, *run_ids: int) -> None:
    """Pick runs in the Compare tab's searchable list (after clearing it), by typing their ids."""
    clear = page.locator("#compare-runs .remove-all")
    if clear.count():
        clear.click()
    for run_id in run_ids:
        page.locator("#compare-runs input").fill(f"#{run_id} ")
        page.get_by_role("option", name=re.compile(rf"^#{run_id} ·")).click()
    page.keyboard.press("Escape")


def picked_runs(page) -> list[int]:
    """The run ids picked in the Compare tab's list, in order."""
    chips = page.locator("#compare-runs .token span").all_inner_texts()
    return [int(re.match(r"#(\d+)", chip).group(1)) for chip in chips]


def test_runs_tab_and_compare(page, artifacts, two_runs):
    a, b = two_runs
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    table = page.locator("#runs-table")
    for run_id in (a, b):
        wait_for_table_row(page, run_id)
    assert "margin" in table.inner_text() and "low_confidence" in table.inner_text()
    # Clicking a row selects its run.
    # (the cell in the run column: other columns, e.g. steps or parent, may hold the same number)
    rows = [r for r in page.evaluate(TABLE_ROWS_JS, "#runs-table")]
    at = next(i for i, row in enumerate(rows) if row and row[0] == str(b))
    table.locator("[role=row]").nth(at).locator("[role=gridcell]").first.click()
    page.wait_for_function(f"document.querySelector('#selected-run input').value === '{b}'")
    page.screenshot(path=artifacts / "runs_tab.png", full_page=True)

    open_tab(page, "Compare")
    pick_runs(page, a, b)
    assert picked_runs(page) == [a, b]
    page.click("#compare-btn")
    page.wait_for_function("document.querySelector('#compare-note').innerText.includes('differ')")
    summary = page.inner_text("#compare-summary")
    assert str(a) in summary and str(b) in summary and "margin" in summary, summary
    page.wait_for_function("document.querySelectorAll('.tokens-view').length >= 2")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
    page.screenshot(path=artifacts / "compare_tab.png", full_page=True)


SWEEP_SPEC = {
    "name": "browser sweep",
    "gen_length": 16,
    "seeds": 3,
    "metrics": ["checker", "ar_nll"],
    "cells": [
        {"strategy": "low_confidence", "tokens_per_step": [1, 2, 4]},
        {"strategy": "margin", "tokens_per_step": [2, 4], "label": 'margin <img src=x onerror="window.__xss=8">'},
    ],
}


def click_row(page, table: str, column: int, value) -> None:
    """Click the first cell of the row of `table` whose `column` holds `value`."""
    rows = page.evaluate(TABLE_ROWS_JS, table)
    at = next(i for i, row in enumerate(rows) if len(row) > column and row[column] == str(value))
    page.locator(f"{table} [role=row]").nth(at).locator("[role=gridcell]").first.click()


def test_sweeps_tab_figure_cells_and_compare(page, server, artifacts):
    """A sweep (5 cells x 3 seeds, run here in-process on the server's store): its row in the list,
    then its figure, cells and a cell's runs; two of them go to Compare. A label with markup stays text."""
    services = server[0]
    sweep_id = run_sweep(services.store, parse_spec(SWEEP_SPEC), progress_bar=False).sweep_id
    open_tab(page, "Sweeps")  # opening the tab reads the list
    wait_text(page, "#sweeps-list", "browser sweep")
    click_row(page, "#sweeps-list", 0, sweep_id)
    page.wait_for_selector("#sweep-figure .main-svg")
    svg_texts = "els => els.map(e => e.textContent)"  # SVG text: no innerText
    legend = page.eval_on_selector_all("#sweep-figure .legend .legendtext", svg_texts)
    assert legend == ["low_confidence", 'margin <img src=x onerror="window.__xss=8">'], legend
    title = page.eval_on_selector_all("#sweep-figure .gtitle", svg_texts)
    assert any(f"Sweep {sweep_id} (browser sweep): quality vs cost" in t for t in title), title
    axes = page.eval_on_selector_all("#sweep-figure .xtitle, #sweep-figure .ytitle", svg_texts)
    assert "sequential model calls per token" in axes and any("valid %" in t for t in axes), axes
    wait_text(page, "#sweep-cells", "margin <img")  # the label as text in the cell table
    # the first cell is picked: its runs are listed, run A is its first run and run B offered
    wait_text(page, "#sweep-runs-note", "3 runs")
    page.wait_for_function("document.querySelector('#sweep-run-a input').value !== ''")
    page.wait_for_function("document.querySelector('#sweep-run-b input').value.includes('same seed 0')")
    page.screenshot(path=artifacts / "sweeps_tab.png", full_page=True)
    # another cell from the table: its runs
    click_row(page, "#sweep-cells", 1, "low_confidence (tokens_per_step = 4)")
    wait_text(page, "#sweep-runs-note", "low_confidence (tokens_per_step = 4) on embedded")
    cell = next(c["id"] for c in sweep_cells(services.store, sweep_id) if c["label"].endswith("= 4)"))
    a, b = (r["run_id"] for r in sweep_rows(services.store, sweep_id, cell)[:2])
    page.wait_for_function(f"document.querySelector('#sweep-run-a input').value === '{a}'")
    click_row(page, "#sweep-runs", 1, b)  # the cell's second run is run A now
    page.wait_for_function(f"document.querySelector('#sweep-run-a input').value === '{b}'")
    page.wait_for_function("document.querySelector('#sweep-run-b input').value.includes('same seed 1')")
    assert_not_injected(page)
    page.click("#sweep-compare")
    page.wait_for_function("document.querySelector('#compare-note')?.innerText.includes('differ')")
    assert picked_runs(page)[0] == b and len(picked_runs(page)) == 2
    page.screenshot(path=artifacts / "sweeps_compare.png", full_page=True)


def test_prompt_with_markup_is_refused_and_shown_as_text(page):
    page.fill("#prompt textarea", '<img src=x onerror="window.__xss=1">')
    page.click("#run-btn")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "not in the embedded vocabulary" in text, text
    # the words, as plain text (the first five named: the rest counted)
    assert "'<'" in text and "'img'" in text and "and 7 more" in text, text
    assert "Decoding" not in page.inner_text("#status")
    assert_not_injected(page)


def test_stored_token_and_prompt_markup_are_shown_as_text(page, server, two_runs):
    services = server[0]
    bundle = copy.deepcopy(export_run(services.store, two_runs[0]))
    bundle["run"]["model"] = "foreign-model"  # not offered here: token texts come from the stored events
    bundle["run"]["prompt"] = PROMPT_PAYLOAD
    target = bundle["events"][0]["token_id"]
    for event in bundle["events"]:
        if event["token_id"] == target:
            event["token_text"] = TOKEN_PAYLOAD
    bundle["run"]["final_text"] = f"{TOKEN_PAYLOAD} and more"
    run_id = import_run(services.store, bundle)

    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()  # the table shows prompt and text too
    wait_for_table_row(page, run_id)
    assert TOKEN_PAYLOAD in page.inner_text("#runs-table")
    assert_not_injected(page)

    set_number(page, "#selected-run input", run_id)
    page.get_by_role("button", name="Open in Decode").click()
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('run {run_id} ·')")
    assert page.get_by_role("tab", name="Decode").get_attribute("aria-selected") == "true"

    tokens = page.locator("#tokens .tokens-line .tok", has_text=TOKEN_PAYLOAD)
    assert tokens.count() >= 1
    for i in range(tokens.count()):
        assert tokens.nth(i).inner_text() == TOKEN_PAYLOAD
        tip = tooltip_of(page, tokens.nth(i))
        assert "committed at step" in tip, tip
    assert page.locator("#tokens .prompt").inner_text() == PROMPT_PAYLOAD
    # A token whose top-3 alternatives include the payload shows it as text in the tooltip.
    with_alt = page.locator(f"#tokens .tokens-line .tok[data-tip*='{TOKEN_PAYLOAD[:8]}']")
    if with_alt.count():
        assert TOKEN_PAYLOAD in tooltip_of(page, with_alt.first)
    assert_not_injected(page)


# ---- energies, dependency violations, re-masking ------------------------------------------------------


def run_and_wait(page) -> str:
    """Press Run and wait until the status names a newly completed run; its status line. (The
    status keeps the last run's line under Gradio's progress overlay while the next one starts.)"""
    before = re.search(r"run (\d+) · ", page.inner_text("#status"))
    previous = before.group(1) if before else ""
    page.click("#run-btn")
    page.wait_for_function(
        f"""() => {{ const m = document.querySelector('#status').innerText
                                                .match(/run (\\d+) · completed/);
        return m !== null && m[1] !== '{previous}'; }}""",
        timeout=120_000,
    )
    return page.inner_text("#status")


def choose_preset(page, name: str) -> None:
    page.get_by_label("Teaching presets").click()
    page.get_by_role("option", name=name).click()
    page.wait_for_function(f"() => document.querySelector('.preset-note').innerText.includes({name!r})")


def plot_drawn(page, selector: str) -> None:
    page.wait_for_function(f"() => document.querySelector('{selector} .main-svg') !== null")


def screenshot_between(page, path: Path, top: str, bottom: str) -> None:
    """A full-width screenshot from the top of one element to the bottom of another."""
    first, last = page.locator(top).bounding_box(), page.locator(bottom).bounding_box()
    scroll = page.evaluate("window.scrollY")
    clip = {
        "x": 0,
        "y": first["y"] + scroll - 8,
        "width": VIEWPORT["width"],
        "height": last["y"] + last["height"] - first["y"] + 16,
    }
    page.screenshot(path=path, full_page=True, clip=clip)


def test_energies_and_violations(page, artifacts):
    # Before any run: violations on for the embedded model, and what they cost in principle.
    assert page.is_checked("#violations input[type=checkbox]")
    assert "≈ n× a plain step on a CPU" in page.inner_text("#violation-cost")
    # The energy preset by hand: Uni-E, 8 candidates, over the whole trajectory, 2 tokens per step.
    page.locator("#energies").get_by_text("Energies", exact=True).first.click()
    page.wait_for_function(
        "() => document.querySelector('#energies').innerText.includes('whose full text we do not have')"
    )
    page.get_by_label("uni (Uni-E)").check()
    set_number(page, "#energy-candidates input", 8)
    set_number(page, "#window-start input", 0)
    set_number(page, "#steps input", 16)
    page.fill("#prompt textarea", "once upon a time")
    for label, value in (("Temperature", "0.7"), ("Seed", "3")):
        page.get_by_label(label, exact=True).fill(value)
        page.get_by_label(label, exact=True).press("Enter")
    status = run_and_wait(page)
    assert "32/32 tokens committed" in status and "checker: valid" in status, status

    for figure in ("#violation-heatmap", "#energy-heatmap", "#pairwise-s", "#pairwise-a", "#candidates"):
        plot_drawn(page, figure)
    assert page.locator("#energy-heatmap .heatmaplayer image").count() >= 1  # data, not the empty state
    assert page.locator("#candidates .barlayer .point").count() == 8  # one bar per candidate
    assert page.locator("#pairwise-s .xtick").count() >= 2  # the committed tokens label the matrix
    assert re.search(r"Cost on run \d+: the extra pass took ≈ [\d.]+× a plain step", page.inner_text("#violation-cost"))
    page.screenshot(path=artifacts / "energies_violations.png", full_page=True)
    screenshot_between(page, artifacts / "energies.png", "#analysis-note", "#candidates")

    # The violation preset: step 6 commits '.' '.' together, S about -9 nats.
    choose_preset(page, "Two full stops in one step: a dependency violation")
    page.wait_for_function("() => document.querySelector('#steps input').value === '16'")
    assert not page.get_by_label("uni (Uni-E)").is_checked()  # the preset turned the energy off again
    status = run_and_wait(page)
    assert "checker: 1 violation(s)" in status, status
    page.wait_for_function("""() => Array.from(document.querySelectorAll('#pairwise-s .gtitle'))
                                          .some(t => t.textContent.startsWith('Step 6'))""")
    ticks = [t.strip() for t in page.locator("#pairwise-s .ytick text").all_text_contents()]
    assert ticks == ["22 .", "23 ."], ticks
    screenshot_between(page, artifacts / "violations.png", "#analysis-note", "#candidates")
    page.screenshot(path=artifacts / "violations_full.png", full_page=True)


def test_remasking_preset(page, artifacts):
    # Picking a strategy with a knob explains it and opens the knobs.
    assert not page.locator("#factor input").is_visible()
    page.get_by_label("Unmasking strategy").click()
    page.get_by_role("option", name="factor", exact=True).click()
    page.wait_for_function("() => document.querySelector('.strategy-note').innerText.includes('factor rule')")
    page.locator("#factor input").wait_for(state="visible")
    choose_preset(page, "Re-masking (RCR): tokens taken back")
    assert page.input_value("#strategy input") == "rcr"
    run_and_wait(page)
    remasked = page.locator("#tokens .tokens-line .tok.remasked")
    assert remasked.count() >= 1
    badge = remasked.first.evaluate("el => getComputedStyle(el, '::before').content")
    assert "↺" in badge, badge
    tip = tooltip_of(page, remasked.first)
    assert re.search(r"↺ re-masked \d+× \(step \d+ took away '[^']+'", tip), tip
    page.screenshot(path=artifacts / "remasking.png", full_page=True)
    screenshot_between(page, artifacts / "remasking_tokens.png", "#status", "#bars")
    # Scrub to the step of that re-mask: the token is a mask again, with its badge.
    step = int(re.search(r"step (\d+) took away", tip).group(1))
    show_step(page, step)
    page.wait_for_function("() => document.querySelectorAll('#tokens .tokens-line .tok.masked.remasked').length > 0")
    assert f"step {step} took away" in tooltip_of(page, page.locator("#tokens .tok.masked.remasked").first)


# ---- branching ------------------------------------------------------------------------------------

MOBILE = {"width": 390, "height": 844}


def open_branch_panel(page, position: int) -> None:
    """Click (tap) the token at `position` and wait for the branch panel to describe it."""
    token = page.locator("#tokens .tokens-line .tok").nth(position)
    if page.viewport_size["width"] < 500:
        token.tap()  # a phone: no hover, no click
    else:
        token.click()
    page.locator("#branch-panel").wait_for(state="visible")
    page.wait_for_function(
        f"() => document.querySelector('#branch-head')?.innerText.includes('at position {position}')"
    )


def test_branch_from_a_token_and_compare_with_the_parent(page, artifacts):
    choose_preset(page, A_AN_PRESET)
    status = run_and_wait(page)
    parent = int(re.search(r"run (\d+) · completed", status).group(1))
    assert "a_an" in status, status  # the checker flags 'an girl'
    assert "Click (tap) any token to branch" in page.inner_text("#tokens .tokens-legend")

    # Click 'an': the panel opens at the step that committed it (the slider is on the last step,
    # where nothing is left to decode) and offers the model's other choices.
    first = page.locator("#tokens .tokens-line .tok").first
    assert first.inner_text() == "an"
    open_branch_panel(page, 0)
    head = page.inner_text("#branch-head")
    assert f"Branch run {parent} after step 0, at position 0" in head and "now 'an'" in head, head
    assert "so it starts after step 0" in head, head
    page.locator("#branch-where").get_by_text("Run, step and position").click()  # the editable fields
    page.locator("#branch-step input").wait_for()
    assert page.input_value("#branch-step input") == "0" and page.input_value("#branch-position input") == "0"
    # The panel follows the slider: after step 1 masks remain, so the branch starts there.
    show_step(page, 1)
    page.wait_for_function("() => document.querySelector('#branch-head').innerText.includes('after step 1, at')")
    page.wait_for_function("() => document.querySelector('#branch-step input').value === '1'")
    # the clicked token stays outlined when the player moves (asserted at the end)
    kept = "picked" in (page.locator("#tokens .tokens-line .tok").first.get_attribute("class") or "")
    press_key(page, "End")  # step 3
    page.wait_for_function("() => document.querySelector('#branch-step input').value === '0'")
    kept = kept and "picked" in (first.get_attribute("class") or "")
    choice = page.locator("#branch-alt-0")
    assert re.fullmatch(r"a\s+\(p = 0\.\d\d\)", choice.inner_text()), choice.inner_text()
    assert page.locator("#branch-remask").is_enabled()
    page.mouse.move(0, 0)
    screenshot_between(page, artifacts / "branch_panel.png", "#status", "#branch-panel")

    # Which decision mattered? The top 3 tokens here, each re-decoded as a stored branch.
    page.locator("#alternatives").get_by_text("Which decision mattered?").first.click()
    set_number(page, "#alt-top input", 3)
    page.click("#alt-run")
    page.wait_for_function("() => document.querySelector('#alt-status')?.innerText.includes('Done:')", timeout=60_000)
    table = page.inner_text("#alt-table")
    assert "an (as decoded)" in table and "violation(s)" in table, table
    plot_drawn(page, "#alt-plot")
    assert page.locator("#alt-plot .barlayer .point").count() >= 3
    screenshot_between(page, artifacts / "branch_alternatives.png", "#alternatives", "#alt-compare")

    # One click on 'a': the branch decodes live in the Decode view, the copied steps shown too.
    choice.click()
    page.wait_for_function(
        f"() => document.querySelector('#status').innerText.includes('Decoding the branch of run {parent}')"
    )
    assert page.locator("#tokens .tokens-line .tok:not(.masked)").count() >= 8  # step 0 (copied) and the edit
    page.wait_for_function(
        f"""() => {{ const m = document.querySelector('#status').innerText.match(/run (\\d+) · completed/);
                    return m !== null && m[1] !== '{parent}'; }}""",
        timeout=60_000,
    )
    child = int(re.search(r"run (\d+) · completed", page.inner_text("#status")).group(1))
    assert f"Run {child} is a branch of run {parent} after step 0 (position 0 forced to 'a')" in page.inner_text(
        "#lineage"
    )
    assert page.locator("#branch-panel").is_hidden()  # the choice belonged to the parent
    forced = page.locator("#tokens .tokens-line .tok.forced")
    assert forced.count() == 1 and forced.inner_text() == "a"
    assert forced.evaluate("el => getComputedStyle(el, '::before').content") == '"✎"'
    assert "forced by an edit after step 0" in tooltip_of(page, forced)
    page.mouse.move(0, 0)
    page.screenshot(path=artifacts / "branch_child.png", full_page=True)

    # Compare with the parent: A = parent, B = the branch, one slider over both.
    page.click("#compare-parent-btn")
    page.wait_for_function("() => document.querySelector('#compare-note')?.innerText.includes('differ')")
    assert page.get_by_role("tab", name="Compare").get_attribute("aria-selected") == "true"
    assert picked_runs(page) == [parent, child]
    assert page.input_value("#compare-step input[type=number]") == "3"
    summary = page.inner_text("#compare-summary")
    for row in ("checker", "violations", "AR-ness", "forward passes", "steps", "tokens / step"):
        assert row in summary, row
    assert f"run {parent} after step 0" in summary
    assert page.locator("#compare-tokens-a .tokens-line .tok.diff").count() >= 1
    assert page.locator("#compare-tokens-b .tokens-line .tok.diff").count() >= 1
    assert page.locator("#compare-tokens-b .tokens-line .tok.forced").inner_text() == "a"

    # The shared slider at the branch step: both texts after step 0, only the edit differs.
    set_number(page, "#compare-step input[type=number]", 0)
    page.wait_for_function(
        "() => document.querySelector('#compare-note').innerText.includes('1 position(s) differ after step 0')"
    )
    masked = [page.locator(f"{v} .tokens-line .tok.masked").count() for v in ("#compare-tokens-a", "#compare-tokens-b")]
    assert masked[0] == masked[1] == 24, masked  # 8 tokens per step: the state after step 0 in both
    diff_b = page.locator("#compare-tokens-b .tokens-line .tok.diff")
    assert diff_b.count() == 1 and diff_b.inner_text() == "a"
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
    page.screenshot(path=artifacts / "branch_compare.png", full_page=True)

    # The Runs tab: the branches (the analysis' and this one) listed under their parent.
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    wait_for_table_row(page, child)
    rows = [r for r in page.evaluate(TABLE_ROWS_JS, "#runs-table") if r]
    at = next(i for i, row in enumerate(rows) if row[0] == str(parent))
    assert [row[1] for row in rows[at + 1 : at + 5]] == [str(parent)] * 4, rows  # 3 analysis runs, this branch
    assert all(row[9].startswith("↳ ") for row in rows[at + 1 : at + 5]), rows
    assert rows[at + 4][:3] == [str(child), str(parent), "0"], rows[at + 4]
    page.screenshot(path=artifacts / "branch_runs_tree.png", full_page=True)
    assert kept, "the clicked token lost its outline ('picked') when the player moved to another step"


def test_branch_panel_on_a_phone(browser, server, artifacts):
    with phone_page(browser, server) as page:
        choose_preset(page, A_AN_PRESET)
        run_and_wait(page)
        open_branch_panel(page, 1)  # tap 'girl'
        panel = page.locator("#branch-panel")
        box = panel.bounding_box()
        assert box["width"] <= MOBILE["width"], box  # fits the screen: nothing to scroll sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= MOBILE["width"] + 1
        for button in ("#branch-alt-0", "#branch-force", "#branch-remask", "#branch-settings"):
            target = page.locator(button).bounding_box()
            assert target["height"] >= 32 and target["x"] + target["width"] <= MOBILE["width"], (button, target)
        # the screen a user sees: the last line of tokens (the tapped one), then the panel
        page.evaluate("window.scrollBy(0, document.querySelector('#branch-panel').getBoundingClientRect().top - 230)")
        page.screenshot(path=artifacts / "branch_panel_mobile.png")
        # the panel works by tap: branch with the typed word
        page.locator("#branch-word textarea, #branch-word input").first.fill("boy")
        page.locator("#branch-force").tap()
        page.wait_for_function(
            "() => document.querySelector('#lineage')?.innerText.includes(\"position 1 forced to 'boy'\")",
            timeout=60_000,
        )


# ---- XDLM: revisions ------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the dropdown labelled `label`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_xdlm_revisions_badge_history_and_changes_map(page, artifacts):
    # The model list offers the embedded XDLM, and says what it is.
    choose(page, "Model", "embedded-xdlm")
    page.wait_for_function("() => document.querySelector('.model-note')?.innerText.includes('XDLM')")
    # Its strategies' knobs come from the registry: xdlm_ancestral has k and top-p, xdlm_revise only k.
    assert not page.locator("#xdlm-k input").first.is_visible()
    choose(page, "Unmasking strategy", "xdlm_revise")
    page.locator("#xdlm-k input").first.wait_for(state="visible")
    assert not page.locator("#xdlm-top-p input").first.is_visible()
    choose(page, "Unmasking strategy", "xdlm_ancestral")
    page.locator("#xdlm-top-p input").first.wait_for(state="visible")
    assert page.locator("#xdlm-k input").first.is_visible()
    page.get_by_label("Temperature", exact=True).fill("1")
    page.get_by_label("Temperature", exact=True).press("Enter")

    # The first seed from 3 on whose run revises a token (the weights may be retrained).
    for seed in range(3, 13):
        page.get_by_label("Seed", exact=True).fill(str(seed))
        page.get_by_label("Seed", exact=True).press("Enter")
        status = run_and_wait(page)
        if re.search(r"· \d+ revisions? ·", status):
            break
    else:
        pytest.fail("no seed in 3..12 revised a token")
    n_revised = int(re.search(r"· (\d+) revisions? ·", status).group(1))

    # The ⇄ badge on every revised token, its history on hover.
    revised = page.locator("#tokens .tokens-line .tok.revised")
    assert revised.count() >= 1
    assert "⇄" in revised.first.evaluate("el => getComputedStyle(el, '::before').content")
    tip = tooltip_of(page, revised.first)
    change = r"step \d+: '[^']+' \(p [\d.]+ when committed\) → '[^']+' \(p [\d.]+\)"
    assert re.search(r"⇄ revised \d+×:\s*" + change, tip), tip
    assert "⇄ = revised" in page.inner_text("#tokens .tokens-legend")

    # The changes map: titled, labelled, a legend with the revisions counted.
    plot_drawn(page, "#changes")
    assert "What changed where" in page.locator("#changes .gtitle").text_content()
    legend = [t.strip() for t in page.locator("#changes .legendtext").all_text_contents()]
    assert f"revise ({n_revised})" in legend and any(t.startswith("unmask (") for t in legend), legend
    assert page.locator("#changes .xtitle").text_content() == "decoding step"
    assert page.locator("#changes .ytitle").text_content() == "position in generated text"

    # The screenshot: the tokens with a revised token's history up, and the changes map.
    DOCS.mkdir(exist_ok=True)
    page.locator("#changes").scroll_into_view_if_needed()
    revised.last.hover()  # the last one: its history opens over the tokens above it, not the status line
    screenshot_between(page, DOCS / "screenshot_xdlm.png", "#status", "#changes")
    page.mouse.move(0, 0)
    page.screenshot(path=artifacts / "xdlm_full.png", full_page=True)

    # Compare: the run is A; decode its prompt and seed on the MDLM (low_confidence) as B.
    open_tab(page, "Compare")
    run_a = re.search(r"run (\d+) · completed", status).group(1)
    chip = "document.querySelector('#compare-runs .token span')"  # run A, picked from the Decode tab
    page.wait_for_function(f"() => {chip}?.innerText.startsWith('#{run_a} ·')")
    page.wait_for_function("() => document.querySelector('#compare-other-model input').value === 'embedded'")
    page.locator("#compare-metric").get_by_text("changes", exact=True).click()
    choose(page, "Strategy for B", "low_confidence")
    page.click("#compare-other-btn")
    page.wait_for_function(
        "() => /Run \\d+: run \\d+'s prompt and seed on embedded/.test("
        "document.querySelector('#compare-other-status').innerText)",
        timeout=60_000,
    )
    summary = page.inner_text("#compare-summary")
    assert "embedded-xdlm" in summary and "revisions" in summary, summary
    assert page.locator("#compare-tokens-a .tokens-line .tok.revised").count() >= 1
    assert page.locator("#compare-tokens-b .tokens-line .tok.revised").count() == 0
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .legendtext').length >= 6")
    page.screenshot(path=artifacts / "xdlm_compare.png", full_page=True)


# ---- a phone, and re-running a stored run ---------------------------------------------------------

STATUS_TOP_JS = "() => document.querySelector('#status').getBoundingClientRect().top"


def test_phone_run_scrolls_to_the_results_and_tooltips_fit(browser, server, artifacts):
    with phone_page(browser, server) as page:
        choose_preset(page, A_AN_PRESET)
        page.evaluate("window.scrollTo(0, 0)")
        # Tap Run: the page scrolls down to the status line above the results.
        page.locator("#run-btn").tap()
        page.wait_for_function(
            "() => document.querySelector('#status').innerText.includes('completed')", timeout=60_000
        )
        page.wait_for_function(f"() => ({STATUS_TOP_JS})() < 400")
        page.wait_for_timeout(800)  # the smooth scroll has ended
        top = page.evaluate(STATUS_TOP_JS)
        assert page.evaluate("window.scrollY") > 500
        assert 0 <= top <= 200, f"#status is at {top} px from the top of the screen"
        assert page.evaluate("document.documentElement.scrollWidth") <= MOBILE["width"] + 1
        # The player's buttons are big enough to tap, and work by tap.
        for button in (".pl-first", ".pl-prev", ".pl-play", ".pl-next", ".pl-last"):
            box = page.locator(f"#tokens {button}").bounding_box()
            assert box["height"] >= 28 and box["x"] + box["width"] <= MOBILE["width"], (button, box)
        page.locator("#tokens .pl-prev").tap()
        wait_step(page, 2)
        page.locator("#tokens .pl-last").tap()
        wait_step(page, 3)
        page.screenshot(path=artifacts / "phone_after_run.png")

        # Tap a token: its tooltip is pinned, fixed at the top of the screen, all of it inside.
        token = page.locator("#tokens .tokens-line .tok").nth(1)
        token.tap()
        page.wait_for_function("() => document.querySelector('#tokens .tokens-line .tok.pinned') !== null")
        assert "checker" in tooltip_of(page, token)
        box = token.evaluate(TOOLTIP_BOX_JS)
        page.screenshot(path=artifacts / "phone_tooltip.png")
        assert box["position"] == "fixed", box
        assert not box["blockers"], f"the fixed tooltip is placed against {box['blockers']}, not the screen"
        assert box["left"] >= 0 and box["left"] + box["width"] <= box["vw"], box
        assert box["top"] >= 0 and box["top"] + box["height"] <= box["vh"], box
        assert box["top"] <= 40, box  # fixed to the top of the screen (static/tokens.css), clear of the finger


def test_rerun_a_stored_run(page, server, two_runs):
    store = server[0].store
    old = two_runs[1]
    config = store.get_run(old)["config"]
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    wait_for_table_row(page, old)
    set_number(page, "#selected-run input", old)
    page.get_by_role("button", name="Open in Decode").click()
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('run {old} ·')")
    assert page.get_by_role("tab", name="Decode").get_attribute("aria-selected") == "true"
    # The form holds the run's settings.
    assert page.input_value("#steps input") == str(config["steps"]) == "16"
    assert page.input_value("#gen-length input") == str(config["gen_length"]) == "32"
    assert page.input_value("#strategy input") == "margin"
    seed = page.get_by_label("Seed", exact=True)
    assert seed.input_value() == str(store.get_run(old)["seed"])
    wait_text(page, "#changed-since", f"The settings of run {old}")
    # A change is named; undone, the line says the settings are the run's again.
    original = seed.input_value()
    seed.fill("7")
    seed.press("Enter")
    wait_text(page, "#changed-since", f"Changed since run {old}: seed")
    seed.fill(original)
    seed.press("Enter")
    wait_text(page, "#changed-since", f"The settings of run {old}")
    page.locator("#rerun-btn").click()
    page.wait_for_function(
        f"""() => {{ const m = document.querySelector('#status').innerText.match(/run (\\d+) · completed/);
                    return m !== null && m[1] !== '{old}'; }}""",
        timeout=60_000,
    )
    new = run_id_of(page.inner_text("#status"))
    assert new > old
    assert store.get_run(new)["config"] == config
    assert store.get_run(new)["seed"] == store.get_run(old)["seed"]


def test_dark_mode_figures_and_the_figures_download(page, artifacts):
    """In dark mode every figure is drawn on the dark background; 'SVG (zip)' downloads every
    figure of the Decode tab, drawn in the page, named after the run and the step shown."""
    page.goto(page.url.split("?")[0] + "?__theme=dark")
    page.wait_for_selector("#run-btn")
    status = run_and_wait(page)
    run_id = int(re.search(r"run (\d+) · completed", status).group(1))
    page.wait_for_function("""() => { const plots = document.querySelectorAll('.js-plotly-plot');
        const dark = (g) => g.layout && g.layout.paper_bgcolor === '#0b0f19';
        return plots.length >= 6 && Array.from(plots).every(dark); }""")
    page.screenshot(path=artifacts / "decode_dark.png")
    step = page.evaluate("document.querySelector('#tokens').dataset.step")
    with page.expect_download() as download:
        page.click("#download-svg")
    path = artifacts / "figures.zip"
    download.value.save_as(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        svg = archive.read(f"run-{run_id}-step-{step}-heatmap.svg").decode()
    assert {f"run-{run_id}-step-{step}-{name}.svg" for name in ("heatmap", "changes", "order", "bars")} <= set(names)
    assert svg.startswith("<svg") and "Confidence of each still-masked position" in svg
    assert f"step {step}" in svg  # the step marker, drawn into the exported figure


LOOKAHEAD_PRESET = "Lookahead: parallel and still grammatical"


def test_a_gated_run_says_what_each_step_kept(page, artifacts):
    """The lookahead preset: the gate line under the tokens names the step's proposal and what it
    rejected, follows the player, and the speed panel gives calls per token below one. (The
    line sits inside the token view: placed after it, the page never showed the stored run
    that ends a live one.)"""
    choose_preset(page, LOOKAHEAD_PRESET)
    status = run_and_wait(page)
    assert "completed" in status, status
    page.wait_for_function("() => document.querySelector('#tokens').explorerPlayer.key.startsWith('run-')")
    line = page.locator("#tokens .gate-line")
    text = line.inner_text()
    assert text.startswith("lookahead gate · step 6: proposed") and "kept" in text, text
    press_key(page, "Home")
    wait_step(page, 0)
    page.wait_for_function("() => document.querySelector('#tokens .gate-line').innerText.includes('step 0:')")
    assert "rejected position" in line.inner_text()
    speed = page.inner_text("#speed")
    assert "model calls per token" in speed, speed
    page.screenshot(path=artifacts / "lookahead_gate.png", full_page=True)


# ---- a uniform-noise canvas model (DiffusionGemma) -----------------------------------------------

CANVAS_LINE_JS = """() => { const line = document.querySelector('#tokens .tokens-line');
  const count = (s) => line ? line.querySelectorAll(s).length : 0;
  return {noise: count('.tok.noise'), kept: count('.tok.kept'), accepted: count('.tok.accepted'),
          unstarted: count('.tok.unstarted')}; }"""
# The analysis plots' labels (Gradio's block labels, which the page's player sets for a canvas run).
PLOT_LABELS_JS = """() => ['violation-heatmap', 'energy-heatmap', 'pairwise-s', 'pairwise-a', 'candidates'].map(
  id => document.querySelector(`#${id} [data-testid="block-label"]`).textContent.trim())"""


def stacked_screenshot(page, path: Path, *regions: tuple[str, str]) -> None:
    """One picture of several full-width regions of the page (each from the top of one element to
    the bottom of another), stacked top to bottom with a grey rule where the page was cut."""
    shots = []
    for top, bottom in regions:
        first, last = page.locator(top).bounding_box(), page.locator(bottom).bounding_box()
        scroll = page.evaluate("window.scrollY")
        height = last["y"] + last["height"] - first["y"] + 16
        clip = {"x": 0, "y": first["y"] + scroll - 8, "width": VIEWPORT["width"], "height": height}
        shots.append(base64.b64encode(page.screenshot(full_page=True, clip=clip)).decode())
    sheet = page.context.new_page()
    try:
        rule = '<hr style="margin: 0; border: 0; border-top: 6px double #adb5bd">'
        images = [f'<img style="display: block" src="data:image/png;base64,{shot}">' for shot in shots]
        sheet.set_content(f'<body style="margin: 0; background: white">{rule.join(images)}</body>')
        sheet.wait_for_function("() => Array.from(document.images).every(image => image.complete)")
        sheet.screenshot(path=path, full_page=True)
    finally:
        sheet.close()


def test_a_canvas_model_shows_noise_accepted_tokens_and_its_draft(browser, tmp_path, artifacts):
    """story-gemma (the tiny DiffusionGemma trained on the story grammar, committed in
    models/embedded/gemma) offered by examples/models/story-gemma.toml: picking it sets the form to
    its own settings, a run decodes, and a middle step shows noise chips, accepted tokens, the
    draft line and the canvas heatmaps (docs/screenshot_gemma.png)."""
    from explorer.adapters.registry import load_registry
    from explorer.views.canvas import canvas_record

    registry = load_registry(DOCS.parent / "examples" / "models" / "story-gemma.toml")
    with running_app(tmp_path, registry=registry) as (services, url):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(url)
            page.wait_for_selector("#run-btn")
            # Picking the model fills the form with its own settings.
            choose(page, "Model", "story-gemma")
            page.wait_for_function("() => document.querySelector('#gen-length input').value === '24'")
            assert page.get_by_label("Block length (0 = one block)", exact=True).input_value() == "8"
            assert page.input_value("#steps input") == "24"
            assert page.input_value("#strategy input") == "eb"
            assert not page.locator("#violations input").is_checked()

            status = run_and_wait(page)
            assert "completed" in status, status
            run_id = run_id_of(status)
            page.wait_for_function("() => document.querySelector('#tokens').explorerPlayer.key.startsWith('run-')")
            for figure in ("#heatmap", "#order", "#bars", "#changes"):
                plot_drawn(page, figure)

            # A step of the second canvas with both noise and accepted tokens (the first canvas kept
            # before it, the third not started).
            arrays = services.store.read_arrays(run_id)
            records = [(column, canvas_record(arrays, column)) for column in range(arrays.n_steps)]
            mixed = [
                column
                for column, record in records
                if record is not None and record.accepted.any() and not record.accepted.all()
            ]
            assert mixed, "no step both accepted and re-noised tokens"
            second = [column for column in mixed if records[column][1].canvas == 1]
            step = int(arrays.steps[(second or mixed)[len(second or mixed) // 2]])
            show_step(page, step)
            shown = page.evaluate(CANVAS_LINE_JS)
            assert shown["noise"] > 0 and shown["accepted"] > 0, shown
            assert "draft (argmax) at step" in page.inner_text("#tokens .canvas-draft")
            legend = page.inner_text("#tokens .canvas-legend")
            assert "noise" in legend and "accepted at this step" in legend, legend
            assert shown["unstarted"] > 0, shown  # the third canvas: empty dashed boxes, not noise
            noise_tip = tooltip_of(page, page.locator("#tokens .tokens-line .tok.noise").first)
            assert "noise" in noise_tip, noise_tip
            page.mouse.move(0, 0)
            # The player's key and the analysis section speak of the canvas, not of a masked run.
            key = page.inner_text("#tokens .pl-key")
            assert "kept at" in key and "✓" in key and "outlined" not in key, key
            assert not page.locator("#tokens .pl-colour-label").is_visible()
            canvas_labels = [
                "Accepted tokens",
                "Argmax flips",
                "Entropy of the canvas",
                "Stop criteria",
                "Noise going in",
            ]
            assert page.evaluate(PLOT_LABELS_JS) == canvas_labels
            assert "What each step did to its canvas" in page.inner_text("#analysis-note")
            assert not page.locator("#reading-guide").is_visible()

            # The screenshot: the tokens at that step, then the canvas maps (the analysis slots).
            DOCS.mkdir(exist_ok=True)
            # (the maps' step markers are the page's; the per-step figures are drawn again by the server)
            page.wait_for_function(f"() => ({MARKER_TAGS_JS})()['energy-heatmap'] === 'step {step}'")
            page.wait_for_function(f"""() => ['#pairwise-s', '#pairwise-a', '#candidates'].every(id =>
                Array.from(document.querySelectorAll(`${{id}} .annotation-text`))
                     .some(t => t.textContent === 'step {step}'))""")
            stacked_screenshot(
                page, DOCS / "screenshot_gemma.png", ("#status", "#tokens"), ("#analysis-note", "#candidates")
            )
            page.screenshot(path=artifacts / "gemma_full.png", full_page=True)

            # A masked run shown next puts the masked run's labels, note and guide back.
            masked = run_id_of(
                Client(url, verbose=False).predict(*decode_args(gen_length=16, steps=4), api_name="/decode")[0]
            )
            open_tab(page, "Runs")
            page.get_by_role("button", name="Refresh").click()
            wait_for_table_row(page, masked)
            set_number(page, "#selected-run input", masked)
            page.get_by_role("button", name="Open in Decode").click()
            page.wait_for_function(f"document.querySelector('#status').innerText.includes('run {masked} ·')")
            page.wait_for_function(f"() => document.querySelector('#tokens').explorerPlayer.run === {masked}")
            assert page.evaluate(PLOT_LABELS_JS)[0] == "Dependency violations"
            assert "Dependency violations and energies" in page.inner_text("#analysis-note")
            assert page.locator("#reading-guide").is_visible()
            assert page.locator("#tokens .pl-colour-label").is_visible()
        finally:
            context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
