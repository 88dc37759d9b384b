"""The app in a real browser (Chromium through Playwright): live decoding, scrubbing, tooltips,
the Runs and Compare tabs, energies and dependency violations, re-masking, and HTML injection
through a prompt, a stored token and a stored prompt.

One server (one model worker, a SQLite file in a temporary directory) and one browser serve
the module; each test opens its own page. Screenshots go to $EXPLORER_ARTIFACTS (default
tests/artifacts/): decode_mid_run.png, decode_after_run.png, decode_scrubbed.png,
runs_tab.png, compare_tab.png, energies_violations.png and energies.png (a run with Uni-E),
violations.png (the violations and energies section of the two-full-stops preset),
violations_full.png, remasking.png and remasking_tokens.png (the RCR preset).
Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from app_server import decode_args, running_app
from gradio_client import Client

from explorer.store.bundle import export_run, import_run

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
VIEWPORT = {"width": 1400, "height": 900}
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
    return re.sub(r"\\(.)", r"\1", content[1:-1])  # undo CSS string escapes (\" and \\)


def wait_mid_run(page, committed: int) -> dict:
    """Wait until the run is streaming with at least `committed` tokens shown and some masked."""
    page.wait_for_function(f"""() => {{ const s = ({TOKEN_STATE_JS})();
        return s.status.includes('Decoding') && s.committed >= {committed} && s.masked >= 8; }}""")
    state = page.evaluate(TOKEN_STATE_JS)
    assert "Decoding…" in state["status"], state
    assert state["committed"] + state["masked"] == 64 and 0 < state["committed"] < 64, state
    return state


def wait_completed(page) -> dict:
    page.wait_for_function("document.querySelector('#status').innerText.includes('completed')", timeout=60_000)
    return page.evaluate(TOKEN_STATE_JS)


# ---- tests ---------------------------------------------------------------------------------------


def test_decode_live_scrub_and_tooltip(page, artifacts):
    set_number(page, "#gen-length input", 64)
    set_number(page, "#steps input", 64)
    set_number(page, "#pace input[type=number]", 40)
    assert page.input_value("#pace input[type=range]") == "40"
    page.click("#run-btn")

    # Mid-run: the status says Decoding… and the token view is partly decoded.
    wait_mid_run(page, committed=4)
    done = wait_completed(page)
    assert done["committed"] == 64 and done["masked"] == 0, done
    assert re.search(r"run \d+ · completed · 64 steps · 64/64 tokens committed", done["status"]), done
    assert page.input_value("#step-slider input[type=number]") == "63"
    assert page.get_attribute("#step-slider input[type=range]", "max") == "63"
    for figure in ("#heatmap", "#order", "#bars"):
        assert page.locator(f"{figure} .main-svg").count() > 0, figure
    page.screenshot(path=artifacts / "decode_after_run.png", full_page=True)

    # Scrub by typing a step into the slider's number box (and Enter): step 5 -> 6 tokens.
    set_number(page, "#step-slider input[type=number]", 5)
    page.wait_for_function(f"() => ({TOKEN_STATE_JS})().masked == 58")
    assert page.locator("#tokens .tokens-line .tok.just").count() == 1  # the one committed at step 5
    page.wait_for_function("""() => Array.from(document.querySelectorAll('#heatmap .annotation-text'))
                                          .some(a => a.textContent === 'step 5')""")
    assert page.locator("#heatmap .shapelayer path").count() >= 1  # the dotted step line
    assert "committed at step 5" in page.inner_text("#tokens .tokens-legend")

    # Scrub by clicking the range (Gradio's `release`): a later step, fewer masked tokens.
    box = page.locator("#step-slider input[type=range]").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.wait_for_function(f"() => {{ const m = ({TOKEN_STATE_JS})().masked; return m > 0 && m < 58; }}")
    step = int(page.input_value("#step-slider input[type=number]"))
    assert 5 < step < 63
    assert page.evaluate(TOKEN_STATE_JS)["masked"] == 63 - step
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('#heatmap .annotation-text'))
                                          .some(a => a.textContent === 'step {step}')""")

    # Hover a committed token: its tooltip names the step that committed it.
    token = page.locator("#tokens .tokens-line .tok:not(.masked)").first
    tip = tooltip_of(page, token)
    assert "position 0" in tip and "committed at step" in tip and "p = " in tip, tip
    assert tip == token.get_attribute("data-tip")
    page.screenshot(path=artifacts / "decode_scrubbed.png", full_page=True)
    masked_tip = tooltip_of(page, page.locator("#tokens .tokens-line .tok.masked").first)
    assert f"still masked after step {step}" in masked_tip, masked_tip

    # The mid-run screenshot comes from a second run: on the first, the browser is still
    # loading plotly.js while the early steps stream in, so the figures are not drawn yet.
    page.mouse.move(0, 0)
    page.click("#run-btn")
    wait_mid_run(page, committed=8)
    page.screenshot(path=artifacts / "decode_mid_run.png", full_page=True)
    assert wait_completed(page)["committed"] == 64


def test_runs_tab_and_compare(page, artifacts, two_runs):
    a, b = two_runs
    open_tab(page, "Runs")
    page.get_by_role("button", name="Refresh").click()
    table = page.locator("#runs-table")
    for run_id in (a, b):
        wait_for_table_row(page, run_id)
    assert "margin" in table.inner_text() and "low_confidence" in table.inner_text()
    # Clicking a row selects its run.
    table.locator("[role=gridcell]", has_text=re.compile(rf"^\s*{b}\s*$")).first.click()
    page.wait_for_function(f"document.querySelector('#selected-run input').value === '{b}'")
    page.screenshot(path=artifacts / "runs_tab.png", full_page=True)

    open_tab(page, "Compare")
    set_number(page, "#compare-a input", a)
    set_number(page, "#compare-b input", b)
    page.click("#compare-btn")
    page.wait_for_function("document.querySelector('#compare-summary').innerText.includes('differ')")
    summary = page.inner_text("#compare-summary")
    assert str(a) in summary and str(b) in summary and "margin" in summary, summary
    page.wait_for_function("document.querySelectorAll('.tokens-view').length >= 2")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
    page.screenshot(path=artifacts / "compare_tab.png", full_page=True)


def test_prompt_with_markup_is_refused_and_shown_as_text(page):
    page.fill("#prompt textarea", '<img src=x onerror="window.__xss=1">')
    page.click("#run-btn")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "not in the embedded vocabulary" in text, text
    assert "'<'" in text and "'img'" in text and "'>'" in text, text  # the words, as plain text
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
    set_number(page, "#step-slider input[type=number]", step)
    page.wait_for_function("() => document.querySelectorAll('#tokens .tokens-line .tok.masked.remasked').length > 0")
    assert f"still masked after step {step}" in tooltip_of(page, page.locator("#tokens .tok.masked.remasked").first)
