"""The job page in a real browser against the real stack: a rerun from refine
with a new text, two versions side by side with the change highlighted and
the reused stages marked, downloads that carry their recipe, share links
opened with no key, API errors beside their field, another tenant's job as
the not-found page, the before/after slider and zoom from the keyboard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from stageflow.client.recipe import read_recipe
from tests.browser.conftest import NARROW, TIMEOUT_MS, Shoot, sign_in
from tests.gateway_stack import Gateway

WAIT_S = TIMEOUT_MS / 1000
FIRST_TEXT, NEW_TEXT = "HELLO", "WORLD"


def finished_job(stack: Gateway, tenant: str = "acme", **bundle: str) -> str:
    """A job submitted over the JSON API, once its events stream says finished."""
    body = {
        "bundle": {"base": "a red circle on a blue background", "style": "flat", **bundle},
        "seed": 11,
    }
    reply = httpx.post(f"{stack.url}/v1/jobs", json=body, headers=stack.auth(tenant))
    assert reply.status_code == 201, reply.text
    job_id = str(reply.json()["job"]["job_id"])
    url = f"{stack.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=stack.auth(tenant), timeout=WAIT_S) as events:
        assert any(line == "event: finished" for line in events.iter_lines())
    state = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.auth(tenant)).json()
    assert state["job"]["state"] == "JOB_STATE_SUCCEEDED", state["job"].get("error")
    return job_id


@pytest.fixture(scope="module")
def job_id(stack: Gateway) -> str:
    return finished_job(stack, overlay_text=FIRST_TEXT)


def versions(stack: Gateway, job_id: str) -> list[dict[str, object]]:
    reply = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.auth("acme"))
    found: list[dict[str, object]] = reply.json()["versions"]
    return found


def cell(page: Page, param: str, version: int) -> Locator:
    return page.locator(f'tr[data-param="{param}"] td[data-version="{version}"]')


def test_rerun_from_refine_with_a_new_text_puts_two_versions_side_by_side(
    page: Page, stack: Gateway, job_id: str, shoot: Shoot, tmp_path: Path
) -> None:
    sign_in(page, stack.keys["acme"])
    page.goto(f"/jobs/{job_id}")
    expect(page.get_by_role("heading", name=re.compile("^Job"))).to_contain_text(job_id)
    expect(page.locator("th.version")).to_have_count(1)
    # Prefilled from v1; the typography check of v1's refine is on the page.
    expect(page.get_by_label("Overlay text")).to_have_value(FIRST_TEXT)
    refine_v1 = page.locator('tr[data-stage="refine"] td[data-version="1"]')
    expect(refine_v1.get_by_label("Typography check")).to_contain_text(FIRST_TEXT)
    expect(refine_v1.get_by_label("Typography check")).to_contain_text("CER")

    page.get_by_label("Rerun from stage").select_option("refine")
    page.get_by_label("Overlay text").fill(NEW_TEXT)
    page.get_by_role("button", name="Rerun", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}\?v=2#v2$"))
    # The page reloads itself when v2 finishes (workspace.js's long poll).
    expect(page.locator("th#v2")).to_contain_text("succeeded", timeout=TIMEOUT_MS)
    expect(page.locator("th.version")).to_have_count(2)

    changed = cell(page, "bundle.overlay_text", 2)
    expect(changed).to_have_class(re.compile(r"\bchanged\b"))
    expect(changed).to_contain_text(NEW_TEXT)
    expect(changed).to_contain_text("changed")  # the marker a screen reader reads
    expect(cell(page, "bundle.overlay_text", 1)).to_contain_text(FIRST_TEXT)
    expect(cell(page, "bundle.overlay_text", 1)).not_to_have_class(re.compile(r"\bchanged\b"))
    expect(cell(page, "refine.text", 2)).to_have_class(re.compile(r"\bchanged\b"))
    # Nothing of the base stage changed, so it is no row of the changes.
    expect(page.locator('tr[data-param^="base."]')).to_have_count(0)
    base_v2 = page.locator('tr[data-stage="base"] td[data-version="2"]')
    expect(base_v2).to_contain_text("reused from v1")
    expect(page.locator('tr[data-stage="refine"] td[data-version="2"]')).not_to_contain_text(
        "reused"
    )
    refine_v2 = page.locator('tr[data-stage="refine"] td[data-version="2"]')
    expect(refine_v2.get_by_label("Typography check")).to_contain_text(NEW_TEXT)
    # Every stage image of both columns is served (with the cookie) and decoded.
    images = page.locator("td.stage-cell img")
    expect(images).to_have_count(6)
    for i in range(6):
        images.nth(i).scroll_into_view_if_needed()
        expect(images.nth(i)).to_have_js_property("complete", True)
        assert images.nth(i).evaluate("img => img.naturalWidth") > 0

    # Download v2's PNG from the page: it carries the new text in its recipe.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download v2 as PNG").click()
    assert download.value.suggested_filename == f"{job_id}-v2.png"
    png = Path(download.value.path()).read_bytes()
    parameters, recipe = read_recipe(png)
    assert f"Overlay text: {NEW_TEXT}" in parameters and "Job version: 2" in parameters
    assert recipe["version"] == 2 and recipe["bundle"]["overlay_text"] == NEW_TEXT
    assert {s["stage"]: s["reused"] for s in recipe["stages"]}["base"] is True
    with page.expect_download() as webp:
        page.get_by_role("link", name="Download v1 as WebP").click()
    parameters, recipe = read_recipe(Path(webp.value.path()).read_bytes())
    assert f"Overlay text: {FIRST_TEXT}" in parameters and recipe["version"] == 1

    shoot(page, "job-page")


def test_the_before_after_slider_and_zoom_work_from_the_keyboard(
    page: Page, stack: Gateway, job_id: str
) -> None:
    if len(versions(stack, job_id)) < 2:
        httpx.post(
            f"{stack.url}/v1/jobs/{job_id}/rerun",
            json={"from_stage": "refine", "bundle": {"overlay_text": NEW_TEXT}},
            headers=stack.auth("acme"),
        ).raise_for_status()
    sign_in(page, stack.keys["acme"])
    page.goto(f"/jobs/{job_id}?a=1&b=2")
    expect(page.locator("th#v2")).to_contain_text("succeeded", timeout=TIMEOUT_MS)
    slider = page.get_by_label(re.compile("^Slide between v1"))
    figure = page.locator("[data-compare]")
    expect(figure.get_by_role("img", name="v1 final (before)")).to_be_visible()
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    expect(slider).to_have_value("55")
    assert figure.evaluate("f => f.style.getPropertyValue('--pos')") == "55%"
    page.keyboard.press("Home")
    expect(slider).to_have_value("0")
    clip = figure.locator("img.before").evaluate("i => getComputedStyle(i).clipPath")
    assert clip == "inset(0px 100% 0px 0px)", clip

    # Zoom: Enter on a stage image's link opens it full size; Escape closes it.
    link = page.locator('tr[data-stage="refine"] td[data-version="2"] a[data-zoom]')
    link.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("dialog#zoom")
    expect(dialog).to_be_visible()
    expect(dialog.locator("img")).to_have_attribute("src", re.compile(r"/v/2/stages/refine\.png$"))
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # At 390 px the page itself does not scroll sideways: the versions table
    # scrolls in its own region (focusable, so arrow keys scroll it).
    page.set_viewport_size(NARROW)
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    region = page.get_by_role("region", name="Versions table, scrolls sideways")
    assert region.evaluate("r => r.scrollWidth > r.clientWidth")
    region.focus()
    page.keyboard.press("ArrowRight")
    expect(region).not_to_have_js_property("scrollLeft", 0)


def test_an_api_error_is_shown_beside_the_field_it_names_and_nothing_is_stored(
    page: Page, stack: Gateway, job_id: str
) -> None:
    before = len(versions(stack, job_id))
    sign_in(page, stack.keys["acme"])
    page.goto(f"/jobs/{job_id}")
    page.get_by_label("Rerun from stage").select_option("refine")
    page.get_by_label("Strength").fill("7")  # the refine model's range is 0..1
    page.get_by_role("button", name="Rerun", exact=True).click()
    error = page.locator("#refine-strength-error")
    expect(error).to_contain_text("refine.strength")
    expect(page.get_by_label("Strength")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Strength")).to_have_value("7")  # kept as typed

    # A value that is no number never reaches the orchestrator.
    page.get_by_label("Strength").fill("")
    seed = page.get_by_label("Seed").input_value()
    page.get_by_label("Seed").fill("twelve")
    page.get_by_role("button", name="Rerun", exact=True).click()
    expect(page.locator("#refine-seed-error")).to_contain_text("must be a whole number")

    # A change to a stage before the one rerun from: the orchestrator's refusal,
    # beside that stage's fields.
    page.get_by_label("Seed").fill(seed)
    page.get_by_label("Rerun from stage").select_option("refine")
    page.locator("#base-steps").fill("3")
    page.get_by_role("button", name="Rerun", exact=True).click()
    expect(page.locator("#base-error")).to_contain_text("comes before refine")
    assert len(versions(stack, job_id)) == before


def test_a_share_link_opens_in_a_fresh_context_without_a_key(
    page: Page, browser: Browser, stack: Gateway, job_id: str, shoot: Shoot
) -> None:
    sign_in(page, stack.keys["acme"])
    page.goto(f"/jobs/{job_id}")
    page.get_by_role("button", name="Create a share link of v1").click()
    field = page.get_by_label("Share link of v1", exact=True)
    expect(field).to_have_value(re.compile(rf"/share/{job_id}/1/\d+/"))
    expect(field).to_have_attribute("readonly", "")
    url = field.input_value()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = page.get_by_role("button", name="Copy")
    copy.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == url

    stranger = browser.new_context(viewport=NARROW)  # no cookie, no key
    try:
        other = stranger.new_page()
        reply = other.goto(url)
        assert reply is not None and reply.status == 200
        expect(other.get_by_role("heading", name="Shared image")).to_be_visible()
        image = other.get_by_role("img", name=re.compile("^The shared image"))
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0
        expect(other.locator("pre.recipe")).to_contain_text(f"Overlay text: {FIRST_TEXT}")
        expect(other.get_by_role("button", name="Sign out")).to_have_count(0)
        shoot(other, "shared-page")
        # One changed byte of the signature: refused.
        head, signature = url.rsplit("/", 1)
        forged = f"{head}/{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
        refused = other.goto(forged)
        assert refused is not None and refused.status == 403
        expect(other.get_by_role("alert")).to_contain_text("invalid share link")
    finally:
        stranger.close()


@pytest.fixture
def globex_page(browser: Browser, stack: Gateway) -> Iterator[Page]:
    context = browser.new_context(base_url=stack.url, viewport=NARROW)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def test_another_tenants_job_is_the_not_found_page(
    globex_page: Page, stack: Gateway, job_id: str
) -> None:
    sign_in(globex_page, stack.keys["globex"])
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/v/1/image.png", "/jobs/no-such-job"):
        reply = globex_page.goto(path)
        assert reply is not None and reply.status == 404, path
        expect(globex_page.get_by_role("heading", name="Not found")).to_be_visible()
    assert job_id not in globex_page.content()
