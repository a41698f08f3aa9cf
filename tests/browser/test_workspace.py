"""The workspace in a real browser: sign-in, New image, live progress, cancel,
form errors, uploads, the gallery; screenshots at 1280 and 390 px."""

from __future__ import annotations

import io
import json
import re

import httpx
from PIL import Image
from playwright.sync_api import FilePayload, Page, expect

from tests.browser.conftest import Shoot, sign_in
from tests.gateway_stack import Gateway

PROMPT = "a red circle on a blue background"
# The longest base run a request may ask for: seconds on the fixture, so the
# page is open (and watching) while it runs.
SLOW_STEPS = "200"
JOB_URL = re.compile(r"/jobs/(job-[0-9a-f]+)$")


def _job_id(page: Page) -> str:
    match = JOB_URL.search(page.url)
    assert match, page.url
    return match[1]


def _submit_via_api(stack: Gateway, tenant: str, prompt: str, seed: int) -> str:
    """A finished job of `tenant`, through the JSON API (quicker than the form)."""
    body = {"bundle": {"base": prompt}, "seed": seed, "width": 32, "height": 32}
    reply = httpx.post(f"{stack.url}/v1/jobs", json=body, headers=stack.auth(tenant))
    assert reply.status_code == 201, reply.text
    job_id = str(reply.json()["job"]["job_id"])
    url = f"{stack.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=stack.auth(tenant), timeout=300) as events:
        kinds = [line for line in events.iter_lines() if line.startswith("event: ")]
    assert kinds[-1] == "event: finished"
    return job_id


def test_sign_in_with_a_key_lands_on_the_workspace(
    page: Page, stack: Gateway, shoot: Shoot
) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))
    shoot(page, "signin")
    # By keyboard: the key field has the focus, Enter sends the form.
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(stack.keys["acme"])
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{stack.url}/")
    expect(page.get_by_role("heading", name="New image")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "stageflow_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert stack.keys["acme"] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # no script sees it
    stored = page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert stack.keys["acme"] not in stored and "stageflow_session" not in stored
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/gallery")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fgallery$"))


def test_without_authentication_the_workspace_opens_straight_in(
    page: Page, open_stack: str, shoot: Shoot
) -> None:
    page.goto(f"{open_stack}/")
    expect(page).to_have_url(f"{open_stack}/")
    expect(page.get_by_role("heading", name="New image")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.get_by_role("link", name="Gallery", exact=True).click()
    expect(page.get_by_role("heading", name="Gallery")).to_be_visible()
    # Keyboard only: the skip link first, then the navigation.
    page.goto(f"{open_stack}/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="stageflow")).to_be_focused()


def test_a_queued_job_shows_its_place_in_the_queue_and_moves_up(
    page: Page, open_stack: str
) -> None:
    """open_stack runs one job at a time: the third of three slow jobs waits
    second in the queue, first once the running one is cancelled."""
    body = {"bundle": {"base": PROMPT}, "width": 32, "height": 32, "base": {"steps": 200}}
    ids = []
    for seed in (21, 22, 23):
        reply = httpx.post(f"{open_stack}/v1/jobs", json={**body, "seed": seed})
        assert reply.status_code == 201, reply.text
        ids.append(str(reply.json()["job"]["job_id"]))
    try:
        page.goto(f"{open_stack}/jobs/{ids[2]}")
        place = page.locator("#progress .queue-position")
        expect(place).to_have_text("Queued: position 2")
        httpx.post(f"{open_stack}/v1/jobs/{ids[0]}/cancel", timeout=60)
        expect(place).to_have_text("Queued: position 1")  # a `queued` event moved it
    finally:
        for job_id in ids:
            httpx.post(f"{open_stack}/v1/jobs/{job_id}/cancel", timeout=60)


def test_a_wrong_key_is_refused_with_a_message(page: Page, stack: Gateway, shoot: Shoot) -> None:
    sign_in(page, "sf_not-a-real-key")
    expect(page).to_have_url(re.compile(r"/signin$"))
    error = page.locator("#key-error")
    expect(error).to_contain_text("this key was refused")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    assert [c["name"] for c in page.context.cookies()] == []
    shoot(page, "signin-refused")


def test_submit_a_bundle_and_watch_each_stage_reach_done(
    page: Page, stack: Gateway, shoot: Shoot
) -> None:
    sign_in(page, stack.keys["acme"])
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Style").fill("flat")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_role("button", name="Random seed").click()
    assert page.get_by_label("Seed", exact=True).input_value() != "7"  # the dice drew another
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Width (px)").fill("32")
    page.get_by_label("Height (px)").fill("32")
    page.get_by_text("Stage options").click()
    page.locator("#f-base-steps").fill(SLOW_STEPS)
    shoot(page, "new-image")
    page.get_by_role("button", name="Generate").click()
    expect(page).to_have_url(JOB_URL)
    job_id = _job_id(page)
    panel = page.locator("#progress")
    # Live: the base stage's steps come in from the event stream while it runs.
    expect(page.locator('.stage[data-stage="base"] .stage-step')).to_contain_text(
        re.compile(r"step \d+ of 200")
    )
    shoot(page, "job-running")
    expect(panel).to_have_attribute("data-state", "succeeded")
    for stage in ("base", "refine", "upscale"):
        row = page.locator(f'.stage[data-stage="{stage}"]')
        expect(row).to_have_attribute("data-state", "succeeded")
        expect(row.locator("img.thumb")).to_be_visible()
    expect(page.locator('.stage[data-stage="base"] .stage-step')).to_have_text("step 200 of 200")
    assert int(page.evaluate("document.body.dataset.liveEvents || 0")) > 3  # SSE, not a reload
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    shoot(page, "job-done")
    job = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=stack.auth("acme")).json()["job"]
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["seed"] == "7"
    assert job["bundle"] == {"base": PROMPT, "style": "flat"}
    assert job["request"]["base"] == {"steps": 200}


def test_cancel_a_running_job_from_its_page(page: Page, stack: Gateway) -> None:
    sign_in(page, stack.keys["acme"])
    page.get_by_label("Prompt", exact=True).fill("a job to cancel")
    page.get_by_label("Seed", exact=True).fill("11")
    page.get_by_text("Stage options").click()
    page.locator("#f-base-steps").fill(SLOW_STEPS)
    page.get_by_role("button", name="Generate").click()
    expect(page).to_have_url(JOB_URL)
    expect(page.locator('.stage[data-stage="base"] .stage-step')).to_contain_text("of 200")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#progress")).to_have_attribute("data-state", "cancelled")
    expect(page.locator('.stage[data-stage="base"]')).to_have_attribute("data-state", "cancelled")
    expect(page.locator('.stage[data-stage="upscale"]')).to_have_attribute("data-state", "pending")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    job = httpx.get(f"{stack.url}/v1/jobs/{_job_id(page)}", headers=stack.auth("acme")).json()
    assert job["job"]["state"] == "JOB_STATE_CANCELLED"


def test_a_form_error_is_shown_next_to_the_field_it_names(
    page: Page, stack: Gateway, shoot: Shoot
) -> None:
    sign_in(page, stack.keys["acme"])
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Width (px)").fill("99999")
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#f-width-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile(r"\d"))  # the allowed range
    width = page.get_by_label("Width (px)")
    expect(width).to_have_attribute("aria-invalid", "true")
    expect(width).to_have_attribute("aria-describedby", "f-width-error")
    # The next element after the input is its error: beside the field, not atop the form.
    assert (
        page.evaluate("document.getElementById('f-width').nextElementSibling.id") == "f-width-error"
    )
    expect(width).to_have_value("99999")  # the values are kept
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
    expect(page.locator(".field-error")).to_have_count(1)
    shoot(page, "form-error")
    # A value the form itself cannot read is named the same way; a stage option too.
    width.fill("32")
    page.get_by_text("Stage options").click()
    page.locator("#f-base-steps").fill("many")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#f-base-steps-error")).to_contain_text("whole number")
    expect(page.locator("details.fold").first).to_have_attribute("open", "")


def test_an_uploaded_png_is_upscaled(page: Page, stack: Gateway) -> None:
    image = Image.new("RGB", (24, 16), (30, 120, 200))
    data = io.BytesIO()
    image.save(data, "PNG")
    sign_in(page, stack.keys["acme"])
    page.get_by_text("Start from your own image").click()
    page.get_by_label("Image (PNG, JPEG or WebP)").set_input_files(
        files=FilePayload(name="mine.png", mimeType="image/png", buffer=data.getvalue())
    )
    page.get_by_label("upscale", exact=True).check()
    page.get_by_role("button", name="Generate").click()
    expect(page).to_have_url(JOB_URL)
    expect(page.locator("#progress")).to_have_attribute("data-state", "succeeded")
    expect(page.locator(".stage")).to_have_count(1)
    job = httpx.get(f"{stack.url}/v1/jobs/{_job_id(page)}", headers=stack.auth("acme")).json()
    assert [s["stage"] for s in job["job"]["stages"]] == ["upscale"]
    final = httpx.get(
        f"{stack.url}/v1/jobs/{_job_id(page)}/versions/1/image", headers=stack.auth("acme")
    )
    assert Image.open(io.BytesIO(final.content)).size == (96, 64)  # the fixture's x4
    # Not an image: refused beside the upload field, nothing submitted.
    page.goto("/")
    page.get_by_text("Start from your own image").click()
    page.get_by_label("Image (PNG, JPEG or WebP)").set_input_files(
        files=FilePayload(name="notes.png", mimeType="image/png", buffer=b"not a png")
    )
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#f-input_image-error")).to_be_visible()


def test_the_gallery_pages_and_filters_newest_first(
    page: Page, stack: Gateway, shoot: Shoot
) -> None:
    prompts = ["a red circle on a blue background", "a zebra circle", "a red circle again"]
    ids = [_submit_via_api(stack, "globex", p, seed=20 + i) for i, p in enumerate(prompts)]
    sign_in(page, stack.keys["globex"])
    page.goto("/gallery")
    cards = page.locator("#gallery-jobs .job-card")
    expect(cards).to_have_count(3)
    assert [cards.nth(i).get_attribute("data-job") for i in range(3)] == ids[::-1]
    thumb = cards.first.locator("img.thumb")
    expect(thumb).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery-jobs img.thumb')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    shoot(page, "gallery")
    src = thumb.get_attribute("src")
    assert src is not None
    thumb_reply = page.request.get(src)
    assert thumb_reply.status == 200 and thumb_reply.headers["content-type"] == "image/webp"
    etag = thumb_reply.headers["etag"]
    again = page.request.get(src, headers={"If-None-Match": etag})
    assert again.status == 304

    # Text filter, ignoring case.
    page.get_by_label("Prompt contains").fill("ZEBRA")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"q=ZEBRA"))
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-job", ids[1])
    # State filter: none of globex's jobs failed.
    page.get_by_label("Prompt contains").fill("")
    page.get_by_label("State").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    page.get_by_label("State").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(cards).to_have_count(3)

    # Pages of two: newest two, then the oldest; nothing repeats.
    page.goto("/gallery?n=2")
    expect(cards).to_have_count(2)
    first = [cards.nth(i).get_attribute("data-job") for i in range(2)]
    page.get_by_role("link", name="Older jobs").click()
    expect(cards).to_have_count(1)
    assert [*first, cards.first.get_attribute("data-job")] == ids[::-1]
    expect(page.get_by_role("link", name="Older jobs")).to_have_count(0)
    page.get_by_role("link", name="Newest").click()
    expect(cards).to_have_count(2)

    # Another tenant's gallery has none of these; its job page is "not found".
    api = httpx.get(f"{stack.url}/v1/jobs?q=zebra", headers=stack.auth("acme")).json()
    assert api["jobs"] == [] and api["next_page_token"] == ""
    paged = httpx.get(f"{stack.url}/v1/jobs?page_size=2", headers=stack.auth("globex")).json()
    assert [j["job_id"] for j in paged["jobs"]] == ids[:0:-1] and paged["next_page_token"]


def test_another_tenants_job_is_the_not_found_page(page: Page, stack: Gateway) -> None:
    job_id = _submit_via_api(stack, "globex", "a tenant's own circle", seed=31)
    sign_in(page, stack.keys["acme"])
    reply = page.goto(f"/jobs/{job_id}")
    assert reply is not None and reply.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    for path in (f"/jobs/{job_id}/progress", f"/thumbs/{job_id}/1/final.webp"):
        assert page.request.get(path).status == 404
    events = page.request.get(f"/jobs/{job_id}/events")
    assert events.status == 404
    assert job_id not in json.dumps(page.context.cookies())
