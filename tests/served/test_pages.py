"""The pages people open, in a real browser: headless Chromium (Debian's package) driven by
Playwright, against `loss-service serve` on loopback, with every request that leaves loopback
refused and recorded. Screenshots go to tests/artifacts/ (and to docs/images/ with
LOSS_SERVICE_SCREENSHOTS=docs/images, which is how the docs' pictures are made)."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import HANG, served
from tests.tolerance import FLOAT32_MEAN_ULPS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "tests" / "artifacts"
# The seeds' example: Keras sparse categorical cross-entropy of these rows, float32.
EXAMPLE_MEAN = 1.1769392490386963

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed: pip install playwright"
)
if CHROMIUM is None:
    pytest.skip("Chromium is not installed: apt-get install chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with served() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start. Anything not
            # on loopback goes to a proxy that does not exist: there is no route out.
            # (Chromium bypasses a proxy for loopback addresses by itself.)
            args=["--no-sandbox", "--proxy-server=127.0.0.1:9"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    opened = context.new_page()
    outside: list[str] = []

    def only_loopback(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlsplit(url).hostname in ("127.0.0.1", "localhost") or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    opened.route("**/*", only_loopback)
    opened.outside = outside
    yield opened
    context.close()
    assert outside == [], f"the page asked for resources off this host: {outside[:5]}"


def screenshot(page: object, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)  # type: ignore[attr-defined]
    if target := os.environ.get("LOSS_SERVICE_SCREENSHOTS"):
        shutil.copy(ARTIFACTS / f"{name}.png", ROOT / target / f"{name}.png")


def test_swagger_ui_lists_every_operation_and_try_it_out_computes(service_url: str, page: object) -> None:
    schema = httpx.get(f"{service_url}/openapi.json", timeout=HANG).json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    page.goto(f"{service_url}/docs")  # type: ignore[attr-defined]
    page.wait_for_selector(".opblock", timeout=20_000)  # type: ignore[attr-defined]
    assert page.locator(".opblock").count() == operations  # type: ignore[attr-defined]
    screenshot(page, "swagger-ui")
    loss = page.locator("#operations-losses-loss_v1_loss_post")  # type: ignore[attr-defined]
    loss.locator(".opblock-summary").click()
    loss.get_by_role("button", name="Try it out").click()
    loss.get_by_role("button", name="Execute").click()
    status = loss.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    assert status.inner_text().strip() == "200"
    assert '"per_sample"' in loss.locator(".live-responses-table .microlight").first.inner_text()


def test_redoc_renders_the_operations(service_url: str, page: object) -> None:
    page.goto(f"{service_url}/redoc")  # type: ignore[attr-defined]
    page.wait_for_selector("h1", timeout=30_000)  # type: ignore[attr-defined]
    assert "loss-service" in page.locator("h1").first.inner_text()  # type: ignore[attr-defined]
    heading = page.locator("h2").filter(has_text="Per-sample losses and their mean for one batch")  # type: ignore[attr-defined]
    heading.first.wait_for(timeout=10_000)
    screenshot(page, "redoc")


def test_the_landing_page_computes_the_example(service_url: str, page: object) -> None:
    page.goto(f"{service_url}/")  # type: ignore[attr-defined]
    # A selector, not `wait_for_function`: Playwright polls a string predicate with `new Function`,
    # which the page's Content-Security-Policy (no 'unsafe-eval') refuses.
    page.locator("#loss option").nth(30).wait_for(state="attached", timeout=60_000)  # type: ignore[attr-defined]
    assert page.locator("#loss").input_value() == "sparse_categorical_crossentropy"  # type: ignore[attr-defined]
    page.get_by_role("button", name="Compute").click()  # type: ignore[attr-defined]
    result = page.locator("#result")  # type: ignore[attr-defined]
    result.filter(has_text="mean").wait_for(timeout=10_000)
    text = result.inner_text()
    mean = float(next(line.split()[1] for line in text.splitlines() if line.startswith("mean")))
    # float32 on another CPU's SIMD code may land an ulp or two away (docs: conventions).
    assert math.isclose(mean, EXAMPLE_MEAN, rel_tol=FLOAT32_MEAN_ULPS * 2.0**-23), text
    assert "(keras, float32)" in text
    screenshot(page, "landing-page", full_page=True)
    for link in ("API reference (Swagger UI)", "Loss catalogue", "Prometheus metrics", "Liveness"):
        assert page.get_by_role("link", name=link).count() == 1  # type: ignore[attr-defined]


def test_the_landing_page_shows_a_problem_precisely(service_url: str, page: object) -> None:
    page.goto(f"{service_url}/")  # type: ignore[attr-defined]
    # A selector, not `wait_for_function`: Playwright polls a string predicate with `new Function`,
    # which the page's Content-Security-Policy (no 'unsafe-eval') refuses.
    page.locator("#loss option").nth(30).wait_for(state="attached", timeout=60_000)  # type: ignore[attr-defined]
    page.fill("#labels", "[1, 3]")  # type: ignore[attr-defined]
    page.get_by_role("button", name="Compute").click()  # type: ignore[attr-defined]
    result = page.locator("#result.error")  # type: ignore[attr-defined]
    result.wait_for(timeout=10_000)
    assert "422" in result.inner_text()
    assert "labels.1: class label 3 is outside [0, 2]" in result.inner_text()
