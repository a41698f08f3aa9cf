"""The workspace in a real browser: sign-in, New image, live progress, the gallery."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import Shoot, sign_in
from tests.gateway_stack import Gateway


def test_sign_in_with_a_key_lands_on_the_workspace(
    page: Page, stack: Gateway, shoot: Shoot
) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))
    shoot(page, "signin")
    sign_in(page, stack.keys["acme"])
    expect(page).to_have_url(f"{stack.url}/")
    expect(page.get_by_role("heading", name="New image")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))


def test_a_wrong_key_is_refused_with_a_message(page: Page, stack: Gateway) -> None:
    sign_in(page, "sf_not-a-real-key")
    expect(page).to_have_url(re.compile(r"/signin$"))
    error = page.locator("#key-error")
    expect(error).to_contain_text("this key was refused")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == []
