"""The feature-map explorer (`/` of the HTTP port) in a real browser, and the HTTP API extensions it uses.

The browser is Debian's headless Chromium driven by Selenium through Debian's chromedriver (the
README's test command installs both). Screenshots and the measured timings go to `test-artifacts/`
(git-ignored), to be looked at by eye.
"""
from __future__ import annotations

import base64
import json
import shutil
import statistics
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from client.spawn import SpawnedServer
from server.images import decode_encoded

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
EXAMPLE = ROOT / "examples" / "9-ankle-boot.png"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TIMING_RUNS = 3


@pytest.fixture(scope="module")
def server(committed_repository, tmp_path_factory):
    """lenet_bn and densenet for the pictures; googlenet for the size limit: its feature maps as float32
    (1.2 MB) are over this server's 1 MiB message limit, as float16 (0.6 MB) within it; for the model list,
    `untrained` (lenet_bn's files, its metadata saying untrained: the page marks what the server reports)
    and `broken` (a model file altered after export: not serving)."""
    repository = tmp_path_factory.mktemp("explorer_repository")
    for name in ("lenet_bn", "densenet", "googlenet"):
        (repository / name).symlink_to(committed_repository / name)
    for name in ("untrained", "broken"):
        shutil.copytree(committed_repository / "lenet_bn", repository / name)
    metadata_path = repository / "untrained" / "1" / "metadata.json"
    metadata_path.write_text(json.dumps({**json.loads(metadata_path.read_text()), "trained": False, "test_acc": None}))
    with open(repository / "broken" / "1" / "model.onnx", "ab") as model_file:
        model_file.write(b"tampered")
    process = SpawnedServer(repository, ["--max-message-mb", "1"], with_http=True,
                            log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


# ---- the HTTP API extensions the page relies on ----

def infer(server, model: str, header: dict, binary: bytes) -> tuple[int, dict, bytes]:
    """(status, JSON header, binary part) of a KServe v2 HTTP infer call with binary data."""
    text = json.dumps(header).encode()
    request = urllib.request.Request(f"http://{server.http_target}/v2/models/{model}/infer", data=text + binary,
                                     headers={"Inference-Header-Content-Length": str(len(text)),
                                              "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body, length = response.read(), response.headers.get("Inference-Header-Content-Length")
            length = int(length) if length else len(body)
            return response.status, json.loads(body[:length]), body[length:]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), b""


def encoded_input(*files: bytes) -> tuple[dict, bytes]:
    binary = b"".join(struct.pack("<I", len(f)) + f for f in files)
    return {"name": "image_encoded", "datatype": "BYTES", "shape": [len(files)],
            "parameters": {"binary_data_size": len(binary)}}, binary


def test_an_encoded_image_is_fitted_by_the_server_and_comes_back_as_the_model_saw_it(server):
    photo = (ROOT / "examples" / "photo-ankle-boot.jpg").read_bytes()
    tensor, binary = encoded_input(photo)
    status, header, raw = infer(server, "lenet_bn", {"inputs": [tensor], "outputs": [
        {"name": "logits", "parameters": {"classification": 10}},
        {"name": "image", "parameters": {"binary_data": True}},
        {"name": "conv1", "parameters": {"binary_data": True, "datatype": "FP16"}}]}, binary)
    assert status == 200, header
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["image"]["datatype"] == "UINT8" and outputs["image"]["shape"] == [1, 1, 28, 28]
    assert outputs["conv1"]["datatype"] == "FP16" and outputs["conv1"]["parameters"]["binary_data_size"] == 6 * 24 * 24 * 2
    fitted = np.frombuffer(raw[:784], np.uint8).reshape(28, 28)
    assert (fitted == decode_encoded(photo, "photo")).all()          # the same fitting as cnnserve.v1
    assert set(header["parameters"]) == {"decode_ms", "queue_ms", "compute_ms", "batch_size"}
    assert header["parameters"]["batch_size"] >= 1

    # the same pixels sent raw give the same feature map, within float16's rounding
    status, raw_header, raw_conv1 = infer(server, "lenet_bn", {
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "parameters": {"binary_data_size": 784}}],
        "outputs": [{"name": "conv1", "parameters": {"binary_data": True}}]}, fitted.tobytes())
    assert status == 200 and raw_header["outputs"][0]["datatype"] == "FP32"
    np.testing.assert_allclose(np.frombuffer(raw[784:], "<f2"), np.frombuffer(raw_conv1, "<f4"), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("tensor, binary, fragment", [
    (encoded_input(b"not an image")[0], encoded_input(b"not an image")[1], "not a PNG or JPEG"),
    ({"name": "image_encoded", "datatype": "BYTES", "shape": [1], "data": ["abc"]}, b"", "must be sent as binary data"),
    ({**encoded_input(b"abc")[0], "shape": [2]}, encoded_input(b"abc")[1], "does not hold 2 length-prefixed files"),
    ({**encoded_input(b"abc")[0], "datatype": "UINT8"}, encoded_input(b"abc")[1], "must be datatype BYTES"),
])
def test_bad_encoded_inputs_are_refused_with_a_reason(server, tensor, binary, fragment):
    status, header, _ = infer(server, "lenet_bn", {"inputs": [tensor]}, binary)
    assert status == 400 and fragment in header["error"]


def test_float32_maps_over_the_limit_are_refused_and_float16_ones_fit(server):
    """What the page's size check mirrors: googlenet's maps are 1.2 MB as float32, 0.6 MB as float16."""
    tensor, binary = encoded_input(EXAMPLE.read_bytes())
    taps = [o["name"] for o in get_json(server, "/v2/models/googlenet")["outputs"][1:]]
    for datatype, expected in (("FP32", 429), ("FP16", 200)):
        status, header, _ = infer(server, "googlenet", {"inputs": [tensor], "outputs": [
            {"name": name, "parameters": {"binary_data": True, "datatype": datatype}} for name in taps]}, binary)
        assert status == expected, header


def get_json(server, path: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_target}{path}", timeout=10) as response:
        return json.loads(response.read())


def test_model_metadata_says_where_it_runs_whether_trained_and_the_size_limit(server):
    parameters = get_json(server, "/v2/models/lenet_bn")["parameters"]
    assert parameters["provider"] == "CPUExecutionProvider" and parameters["trained"] is True
    assert 0.9 < parameters["test_acc"] < 1 and parameters["max_response_bytes"] == 2**20


def test_the_page_and_only_image_examples_are_served(server):
    with urllib.request.urlopen(f"http://{server.http_target}/", timeout=10) as response:
        assert b"<script type=\"module\" src=\"/explorer/main.js\">" in response.read()
    assert "9-ankle-boot.png" in get_json(server, "/examples/")["examples"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{server.http_target}/examples/make_examples.py", timeout=10)
    assert refused.value.code == 404


# ---- the page in headless Chromium ----

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium at 1280×800. Without Chromium the browser tests skip, saying so; CI installs it and
    fails on any skip (CNNSERVE_NO_SKIPS, tests/conftest.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"no {CHROMIUM} and {CHROMEDRIVER}: install Debian's chromium and chromium-driver "
                    f"(the README's test command does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def screenshot(driver, name: str, full_page: bool = False) -> Path:
    """The viewport, or the whole page however long (a window that tall, so the sticky sidebar shows whole),
    as test-artifacts/<name>."""
    if full_page:
        width, height = driver.execute_script("return [innerWidth, innerHeight]")
        viewport(driver, width, min(driver.execute_script("return document.documentElement.scrollHeight"), 16000))
        driver.execute_script("window.scrollTo(0, 0); document.querySelector('.sidebar').scrollTop = 0")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    if full_page:
        viewport(driver, width, height)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def open_page(driver, server) -> dict[str, float]:
    """Load the page and wait until it has listed the models. Its load times in ms: the browser's load event,
    and the page ready to use (the models listed and described), both since the navigation started."""
    from selenium.webdriver.support.ui import WebDriverWait
    viewport(driver, 1280, 800)
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})        # a first visit's load, every time
    driver.get(f"http://{server.http_target}/")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready"))
    assert not driver.find_element("id", "error").is_displayed(), driver.find_element("id", "error").text
    return {"load_event_ms": driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd"),
            "ready_ms": float(driver.execute_script("return document.body.dataset.loadMs"))}


def click_and_wait(driver, element) -> float:
    """Click, wait for the results to be drawn again; the click-to-rendered time in ms, as the page measured it."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, 60).until(lambda d: not d.execute_script("return document.body.dataset.busy"))
    before = driver.execute_script("return document.querySelector('#results').dataset.renders ?? '0'")
    element.click()
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.querySelector('#results').dataset.renders ?? '0'") != before
        or d.find_element("id", "error").is_displayed())
    assert not driver.find_element("id", "error").is_displayed(), driver.find_element("id", "error").text
    return float(driver.execute_script("return document.querySelector('#results').dataset.renderMs"))


def example_button(driver, name: str):
    return driver.find_element("css selector", f"[data-example='{name}']")


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select
    Select(driver.find_element("id", select_id)).select_by_value(value)


# Per tap drawn in a panel: its name, its canvas's size and whether any pixel was painted.
TAPS_DRAWN = """
return [...document.querySelectorAll(`.panel[data-model="${arguments[0]}"] .tap`)].map((tap) => {
  const canvas = tap.querySelector("canvas");
  if (!canvas) return [tap.querySelector(".tap-name").textContent, 0, 0, false];
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = false;
  for (let i = 3; i < pixels.length && !painted; i += 4) painted = pixels[i] > 0;
  return [tap.dataset.tap, canvas.width, canvas.height, painted];
});"""

# The 28×28 grey levels shown as "what the model received", sampled at the centre of each enlarged pixel.
FITTED_PIXELS = """
const canvas = document.querySelector(`.panel[data-model="${arguments[0]}"] canvas.fitted`);
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
const step = canvas.width / 28, levels = [];
for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++)
  levels.push(data[(Math.floor((y + 0.5) * step) * canvas.width + Math.floor((x + 0.5) * step)) * 4]);
return levels;"""


def check_panel(driver, server, model: str, top_class: str) -> None:
    taps = [o["name"] for o in get_json(server, f"/v2/models/{model}")["outputs"][1:]]
    drawn = driver.execute_script(TAPS_DRAWN, model)
    assert [name for name, *_ in drawn] == taps                     # every tap, in network order
    assert all(width > 0 and height > 0 and painted for _, width, height, painted in drawn), drawn
    top = driver.find_element("css selector", f".panel[data-model='{model}'] .bars li.top .label").text
    assert top == top_class


def browser_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_lenet_bn_sees_an_ankle_boot_then_a_drawing(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    load = open_page(browser, server)
    assert browser.find_element("id", "model-a").get_attribute("value") == "lenet_bn"
    options = {o.get_attribute("value"): (o.text, o.is_enabled())
               for o in browser.find_elements("css selector", "#model-a option")}
    assert options["lenet_bn"] == ("lenet_bn — trained, test accuracy 91.4%", True)
    assert options["untrained"] == ("untrained — UNTRAINED (random weights)", True)
    assert options["broken"][0].startswith("broken — not serving: ") and not options["broken"][1]
    render_ms = [click_and_wait(browser, example_button(browser, EXAMPLE.name)) for _ in range(TIMING_RUNS)]
    check_panel(browser, server, "lenet_bn", "Ankle boot")
    fitted = np.array(browser.execute_script(FITTED_PIXELS, "lenet_bn"), np.uint8).reshape(28, 28)
    assert (fitted == decode_encoded(EXAMPLE.read_bytes(), "example")).all()
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280   # no sideways scrolling
    timings = browser.find_element("css selector", ".panel .timings").text
    assert all(word in timings for word in ("decode", "queue", "compute", "CPUExecutionProvider"))
    screenshot(browser, "explorer-lenet_bn-ankle-boot-1280x800.png")
    screenshot(browser, "explorer-lenet_bn-ankle-boot-full.png", full_page=True)

    # a channel, large, by keyboard: focus the first map, move right, open it
    browser.execute_script("document.querySelector('.tap-canvas').focus()")
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ENTER).perform()
    assert browser.find_element("id", "channel-dialog").is_displayed()
    assert "conv1 · channel 1" in browser.find_element("id", "channel-title").text
    screenshot(browser, "explorer-channel-large.png")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert not browser.find_element("id", "channel-dialog").is_displayed()

    # two strokes on the drawing pad (a trouser, roughly), then classify the drawing
    pad = browser.find_element("id", "pad")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    for x in (-25, 25):
        ActionChains(browser).move_to_element_with_offset(pad, x, -60).click_and_hold() \
            .move_by_offset(-x // 5, 40).move_by_offset(-x // 5, 40).move_by_offset(0, 30).release().perform()
    click_and_wait(browser, browser.find_element("id", "pad-classify"))
    check_panel(browser, server, "lenet_bn", browser.find_element("css selector", ".bars li.top .label").text)
    drawn = browser.execute_script("""
        const data = document.getElementById("pad").getContext("2d").getImageData(0, 0, 28, 28).data;
        return Array.from({length: 784}, (_, i) => data[i * 4]);""")
    fitted = browser.execute_script(FITTED_PIXELS, "lenet_bn")
    assert fitted == drawn and sum(v > 128 for v in drawn) > 20   # the model got the drawing, pixel for pixel
    assert "drawing" in browser.find_element("css selector", ".panel img.original").get_attribute("alt")
    screenshot(browser, "explorer-lenet_bn-drawing-full.png", full_page=True)

    viewport(browser, 390, 844, mobile=True)     # the page redraws the maps for the narrower window
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.documentElement.scrollWidth") <= 390)
    browser.execute_script("window.scrollTo(0, document.querySelector('#results').offsetTop - 200)")
    check_panel(browser, server, "lenet_bn", browser.find_element("css selector", ".bars li.top .label").text)
    screenshot(browser, "explorer-phone-390x844.png")
    assert not browser_errors(browser)
    record_timings("lenet_bn", load, render_ms)


@pytest.mark.slow     # end to end, several seconds: in the full run (docs/development.md)
def test_two_models_side_by_side_and_a_model_over_the_size_limit(browser, server):
    load = open_page(browser, server)
    choose(browser, "model-a", "densenet")
    render_ms = [click_and_wait(browser, example_button(browser, EXAMPLE.name)) for _ in range(TIMING_RUNS)]
    check_panel(browser, server, "densenet", "Ankle boot")
    record_timings("densenet", load, render_ms)

    choose(browser, "model-a", "lenet_bn")
    choose(browser, "model-b", "densenet")
    click_and_wait(browser, example_button(browser, EXAMPLE.name))
    panels = browser.find_elements("css selector", "#results .panel")
    assert [p.get_attribute("data-model") for p in panels] == ["lenet_bn", "densenet"]
    assert panels[0].location["y"] == panels[1].location["y"] and panels[0].location["x"] < panels[1].location["x"]
    for model in ("lenet_bn", "densenet"):
        check_panel(browser, server, model, "Ankle boot")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280
    screenshot(browser, "explorer-side-by-side-1280x800.png")
    screenshot(browser, "explorer-side-by-side-full.png", full_page=True)

    # googlenet as float32 is over the 1 MiB limit: the page asks first, then fetches in parts
    from selenium.webdriver.support.ui import WebDriverWait
    choose(browser, "model-b", "googlenet")
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return document.querySelector('#results .panel[data-model=googlenet]') !== null && !document.body.dataset.busy"))
    assert "over the limit" not in browser.find_element("id", "model-info").text        # float16: 0.6 MB fits
    choose(browser, "precision", "FP32")
    WebDriverWait(browser, 10).until(lambda d: d.find_element("id", "size-dialog").is_displayed())
    assert "over the server's message limit" in browser.find_element("id", "size-text").text
    screenshot(browser, "explorer-size-limit-dialog.png")
    click_and_wait(browser, browser.find_element("css selector", "#size-dialog button[value=parts]"))
    check_panel(browser, server, "googlenet", "Ankle boot")
    assert "2 requests" in browser.find_element("css selector", ".panel[data-model=googlenet] .timings").text
    assert not browser_errors(browser)


def record_timings(model: str, load: dict[str, float], render_ms: list[float]) -> None:
    """test-artifacts/explorer-timings.json: the page's load times and click-to-rendered times per model."""
    path = ARTIFACTS / "explorer-timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[model] = {**{name: round(ms) for name, ms in load.items()},
                      "click_to_rendered_ms": [round(ms) for ms in render_ms],
                      "click_to_rendered_median_ms": round(statistics.median(render_ms))}
    path.write_text(json.dumps(timings, indent=2) + "\n")
    print(f"{model}: load event at {load['load_event_ms']:.0f} ms, page ready at {load['ready_ms']:.0f} ms; click to "
          f"rendered feature maps, median of {len(render_ms)}: {statistics.median(render_ms):.0f} ms "
          f"({', '.join(f'{ms:.0f}' for ms in render_ms)})")
