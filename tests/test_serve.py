"""`busgen serve`: the JSON API, the job queue, and the page in a real (headless) Chromium."""

from __future__ import annotations

import http.client
import io
import json
import os
import pathlib
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from generator_fixtures import tiny_generator
from PIL import Image

from busgen_jax import cli, serve
from busgen_jax.core import config_files, errors
from busgen_jax.data import box_priors, phantom
from busgen_jax.diffusion import foundation, generator
from busgen_jax.models import lora
from busgen_jax.reporting import visualize
from busgen_jax.serve import jobs, server, studio

DEVICE = "Phantom-L12-5"
GOOD = {
    "class": "benign",
    "device": DEVICE,
    "box": [0.2, 0.25, 0.6, 0.55],
    "sampler": "dpm_solver_3s",
    "steps": 4,
    "guidance": 1.8,
    "seed": 3,
    "num_images": 2,
}
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server on a free loopback port over a tiny random generator (config `tiny`)."""
    root = tmp_path_factory.mktemp("serve")
    config = config_files.load("configs/serve.py:tiny")
    config.generator = str(tiny_generator(root / "generator"))
    app = serve.build_app(config, str(root / "workdir"))
    httpd = server.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server.url(httpd), app, root
    httpd.shutdown()
    httpd.server_close()
    app.close()


def _call(base, path, body=None, *, raw=None, headers=None):
    """(status, headers, body) of one request; `raw` sends bytes as they are."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path.lstrip("/"),
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _wait(base, job_id, states=(jobs.DONE, jobs.CANCELLED, jobs.FAILED)):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = json.loads(_call(base, f"/api/jobs/{job_id}")[2])
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {status['state']} after {TIMEOUT_S} s")


def _generate(base, **overrides):
    code, _, body = _call(base, "/api/generate", {**GOOD, **overrides})
    assert code == 202, body
    return _wait(base, json.loads(body)["id"])


def _wait_ready(base):
    deadline = time.monotonic() + TIMEOUT_S
    while not json.loads(_call(base, "/api/info")[2])["ready"]:
        assert time.monotonic() < deadline, "the warm-up did not finish"
        time.sleep(0.2)


def test_info_lists_the_generators_vocabulary(served):
    base, app, _ = served
    code, headers, body = _call(base, "/api/info")
    info = json.loads(body)
    assert code == 200
    assert info["classes"] == list(app.studio.spec.class_names)
    assert info["devices"] == list(app.studio.spec.device_names)
    assert info["defaults"]["steps"] == 4 and info["limits"]["max_images"] == 4
    # "normal" phantom images have no lesion, so the prior offers no box for them.
    assert "normal" not in info["box_classes"] and "benign" in info["box_classes"]
    assert "Access-Control-Allow-Origin" not in headers


def test_generated_png_carries_provenance_and_repeats_by_seed(served):
    base, app, root = served
    status = _generate(base)
    assert status["state"] == jobs.DONE and status["progress"] == 1.0
    pngs = [_call(base, r["png"])[2] for r in status["results"]]
    image = Image.open(io.BytesIO(pngs[0]))
    assert image.format == "PNG" and image.mode == "L" and image.size == (32, 32)
    provenance = studio.read_png_provenance(pngs[0])
    sidecar = json.loads(_call(base, status["results"][0]["json"])[2])
    assert provenance == sidecar
    expected = {k: GOOD[k] for k in ("class", "device", "box", "sampler", "steps", "seed")}
    assert {k: provenance[k] for k in expected} == expected
    assert provenance["guidance"] == GOOD["guidance"] and provenance["index"] == 0
    assert provenance["generator"] == app.studio.provenance["generator"]
    assert image.text["device"] == DEVICE  # each field has its own text chunk as well
    assert pngs[0] != pngs[1]  # images of one request differ
    # The same request gives the same bytes; a new seed another image.
    again = _generate(base)
    assert [_call(base, r["png"])[2] for r in again["results"]] == pngs
    other = _generate(base, seed=4, num_images=1)
    assert _call(base, other["results"][0]["png"])[2] != pngs[0]
    saved = root / "workdir" / serve.IMAGES / f"{status['id']}-0.png"
    assert saved.read_bytes() == pngs[0]


@pytest.mark.slow
def test_served_image_is_the_batch_samplers_image(served):
    """Image k of seed s is what `make_sample_fn` draws with key fold_in(key(s), k)."""
    base, app, _ = served
    status = _generate(base, num_images=2)
    served_image = np.asarray(Image.open(io.BytesIO(_call(base, status["results"][1]["png"])[2])))
    model, spec = generator.load_generator(app.studio.provenance["generator"])
    how = app.studio.sampling
    sample_fn = generator.make_sample_fn(
        spec,
        sampler=GOOD["sampler"],
        steps=GOOD["steps"],
        guidance_weight=GOOD["guidance"],
        skip=how["skip"],
        drop_box_mask=how["drop_box_mask"],
        time_input=how["time_input"],
        clip_x0=how["clip_x0"],
    )
    mask = box_priors.box_mask([GOOD["box"]], 32, 32, raster=how["box_raster"])[None]
    classes = generator.ids_for([GOOD["class"]], spec.class_names, "classes")
    devices = generator.ids_for([DEVICE], spec.device_names, "devices")
    key = jax.random.fold_in(jax.random.key(GOOD["seed"]), 1)
    reference = visualize.to_uint8(np.asarray(sample_fn(model, key, classes, devices, mask)))
    # The step count is traced in the server's program and constant here: float round-off only.
    assert np.abs(served_image.astype(int) - reference[0, ..., 0]).max() <= 1


BAD_REQUESTS = [
    ({"box": [0.2, 0.2, 1.3, 0.5]}, "outside the image"),
    ({"box": [-0.1, 0.2, 0.5, 0.5]}, "outside the image"),
    ({"box": [0.6, 0.2, 0.4, 0.5]}, "x1 < x2"),
    ({"box": [0.2, 0.5, 0.4, 0.5]}, "y1 < y2"),
    ({"box": [0.2, 0.5, 0.4]}, "'box' must be null or [x1, y1, x2, y2]"),
    ({"class": "cyst"}, 'unknown class "cyst"'),
    ({"device": "Phantom-X1"}, 'unknown device "Phantom-X1"'),
    ({"sampler": "euler"}, 'unknown sampler "euler"'),
    ({"steps": 0}, "'steps' must be between 1 and 50"),
    ({"steps": 51}, "'steps' must be between 1 and 50"),
    ({"steps": 4.5}, "'steps' must be an integer"),
    ({"steps": "4"}, "'steps' must be an integer"),
    ({"guidance": -0.5}, "'guidance' must be between 0 and 10"),
    ({"guidance": 11}, "'guidance' must be between 0 and 10"),
    ({"num_images": 5}, "'num_images' must be between 1 and 4"),
    ({"seed": -1}, "'seed' must be between 0"),
    ({"path": "/etc/passwd"}, "unknown fields ['path']"),
]


@pytest.mark.parametrize("change, message", BAD_REQUESTS)
def test_bad_request_is_a_400_with_its_reason(served, change, message):
    base = served[0]
    code, _, body = _call(base, "/api/generate", {**GOOD, **change})
    assert (code, message in json.loads(body)["error"]) == (400, True), body
    assert _call(base, "/api/info")[0] == 200  # still serving


@pytest.mark.parametrize(
    "raw, content_type, code, message",
    [
        (b'{"class": "benign",', "application/json", 400, "malformed JSON"),
        (b"\xff\xfe", "application/json", 400, "malformed JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b"class=benign", "application/x-www-form-urlencoded", 415, "application/json"),
        (b" " * (server.MAX_BODY_BYTES + 1), "application/json", 413, "over"),
    ],
)
def test_malformed_body_is_refused(served, raw, content_type, code, message):
    base = served[0]
    got, _, body = _call(base, "/api/generate", raw=raw, headers={"Content-Type": content_type})
    assert got == code and message in json.loads(body)["error"]
    assert _call(base, "/api/info")[0] == 200


def test_random_box_comes_from_the_prior_and_its_seed(served):
    base, app, _ = served
    boxes = [
        json.loads(_call(base, "/api/box", {"class": "malignant", "seed": s})[2])["box"]
        for s in range(40)
    ]
    for box in boxes:
        assert studio.parse_box(box) is not None  # inside [0, 1], x1 < x2, y1 < y2
    assert len({tuple(b) for b in boxes}) == 40
    again = json.loads(_call(base, "/api/box", {"class": "malignant", "seed": 7})[2])["box"]
    assert again == boxes[7]
    # Centres near those of the phantom's malignant lesions, not uniform over the image.
    centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes])
    training = app.studio.prior.points["malignant"][:, :2]
    assert np.abs(centres.mean(0) - training.mean(0)).max() < 0.1
    assert json.loads(_call(base, "/api/box", {"class": "normal", "seed": 0})[2]) == {"box": None}
    code, _, body = _call(base, "/api/box", {"class": "cyst", "seed": 0})
    assert code == 400 and "unknown class" in json.loads(body)["error"]


def test_other_origins_and_host_names_are_refused(served):
    base = served[0]
    port = base.rstrip("/").rsplit(":", 1)[1]
    cases = [
        {"Origin": "http://attacker.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": f"attacker.example:{port}"},  # DNS rebinding
    ]
    for headers in cases:
        code, response_headers, body = _call(base, "/api/generate", GOOD, headers=headers)
        assert code == 403 and "refused" in json.loads(body)["error"], headers
        assert "Access-Control-Allow-Origin" not in response_headers
    same = {"Origin": base.rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert _call(base, "/api/box", {"class": "benign", "seed": 0}, headers=same)[0] == 200


@pytest.mark.parametrize(
    "path",
    [
        "/../setup.cfg",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../setup.cfg",
        "/api/jobs/../../README.md",
        "/busgen_jax/serve/server.py",
        "/index.html?file=/etc/passwd",
    ],
)
def test_no_file_is_read_from_a_client_path(served, path):
    host, port = served[0].rstrip("/").removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)  # sent as written, not normalized
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 404
    assert b"[metadata]" not in body and b"root:" not in body and b"import" not in body


def test_unknown_methods_and_jobs_are_4xx(served):
    base = served[0]
    request = urllib.request.Request(base + "api/info", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 405
    assert _call(base, "/api/jobs/0000abcd-1")[0] == 404
    assert _call(base, "/api/jobs/0000abcd-1/cancel", {})[0] == 404


def test_queue_positions_and_cancellation_through_the_api(served):
    base, app, _ = served
    _wait_ready(base)
    ids = []
    with app.studio.lock:  # a generation in progress: the worker waits on it
        for n in range(3):
            code, _, body = _call(base, "/api/generate", {**GOOD, "num_images": 2, "seed": 10 + n})
            assert code == 202
            ids.append(json.loads(body)["id"])
            if n == 0:
                _wait(base, ids[0], states=(jobs.RUNNING,))
        positions = [json.loads(_call(base, f"/api/jobs/{i}")[2])["position"] for i in ids]
        assert positions == [0, 1, 2]
        assert json.loads(_call(base, f"/api/jobs/{ids[2]}/cancel", {})[2])["state"] == "cancelled"
        assert json.loads(_call(base, f"/api/jobs/{ids[0]}/cancel", {})[2])["state"] == "running"
    first, second, third = (_wait(base, i) for i in ids)
    # The running job stops after the image it was on; the queued one never runs.
    assert (first["state"], first["images"]) == ("cancelled", 1)
    assert (second["state"], second["images"]) == ("done", 2)
    assert (third["state"], third["images"]) == ("cancelled", 0)


def test_queue_keeps_working_after_a_failed_job():
    def process(job):
        if job.request == "boom":
            raise RuntimeError("device lost")
        job.images.append((b"png", {}))

    queue = jobs.JobQueue(process, max_queued=2, keep=8)
    try:
        failed = queue.submit("boom", 1, 1)
        done = queue.submit("fine", 1, 1)
        deadline = time.monotonic() + 30
        while done.state != jobs.DONE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failed.state == jobs.FAILED and "device lost" in failed.error
        assert done.state == jobs.DONE
    finally:
        queue.close()


def test_full_queue_is_a_429(served):
    base, app, _ = served
    _wait_ready(base)
    responses = []
    with app.studio.lock:
        for n in range(6):
            responses.append(_call(base, "/api/generate", {**GOOD, "num_images": 1}))
            if n == 0:  # running, waiting on the lock
                _wait(base, json.loads(responses[0][2])["id"], states=(jobs.RUNNING,))
        for code, _, body in responses:
            if code == 202:
                _call(base, f"/api/jobs/{json.loads(body)['id']}/cancel", {})
    # One runs, four wait (the tiny preset's max_queued), the sixth is refused.
    assert [code for code, _, _ in responses] == [202] * 5 + [429]
    assert "try again" in json.loads(responses[5][2])["error"]


@pytest.mark.parametrize(
    "host, warns", [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True)]
)
def test_binding_beyond_loopback_warns(host, warns):
    warning = server.bind_warning(host)
    assert (warning is not None) == warns
    if warns:
        assert "no authentication" in warning and host in warning


@pytest.mark.slow
def test_adapter_brings_its_task_vocabulary(tmp_path):
    base_dir = tiny_generator(tmp_path / "generator")
    base, _ = generator.load_generator(base_dir)
    task = ["benign", "dcis"]
    info = {
        "lora": {"rank": 2, "alpha": 2.0, "target": lora.DEFAULT_TARGET, "new_row_init": "mean"},
        "class_names": task,
        "device_names": [DEVICE],
        "class_rows": lora.vocabulary_rows(task, list(phantom.schema.PATHOLOGIES)),
        "device_rows": lora.vocabulary_rows([DEVICE], list(phantom.PHANTOM_DEVICES)),
        "base_fingerprint": lora.params_fingerprint(base),
        "base_generator": str(base_dir),
    }
    lora.save_adapter(tmp_path / "adapter", lora.adapted_model(base, info), info)
    config = config_files.load("configs/serve.py:tiny")
    config.generator, config.adapter = str(base_dir), str(tmp_path / "adapter")
    app = serve.build_app(config, str(tmp_path / "workdir"))
    try:
        served_info = app.studio.info()
        assert (served_info["classes"], served_info["devices"]) == (task, [DEVICE])
        assert served_info["adapter"] == config.adapter
        assert app.studio.random_box({"class": "dcis", "seed": 1}) is not None
        with pytest.raises(studio.BadRequest, match="unknown class"):
            studio.parse_request({**GOOD, "class": "malignant"}, app.studio.spec, app.studio.limits)
    finally:
        app.close()
    # On another base generator the adapter is refused in one line.
    config.generator = str(tiny_generator(tmp_path / "other", seed=1))
    with pytest.raises(errors.JobError, match="weights differ"):
        serve.build_app(config, str(tmp_path / "workdir"))


def test_default_serves_the_shipped_foundation_with_its_corpus_boxes(tmp_path, monkeypatch):
    config = config_files.load("configs/serve.py:default")
    assert config.generator == str(foundation.SHIPPED)
    # The foundation corpus labels DCIS malignant: the prior offers the classes the model knows.
    prior = serve.load_box_prior(config)
    assert set(prior.class_names) == {"normal", "benign", "malignant"}
    assert not len(prior.points["normal"]) and len(prior.points["malignant"]) > 20
    monkeypatch.setattr(foundation, "SHIPPED", tmp_path / "phantom_foundation")
    config.generator = str(foundation.SHIPPED)
    with pytest.raises(FileNotFoundError, match="shipped foundation model is missing"):
        serve.build_app(config, str(tmp_path / "workdir"))


def test_serve_is_a_busgen_job(tmp_path, capsys):
    assert cli.JOBS["serve"][0] == "busgen_jax.serve"
    argv = ["serve", "--config=configs/serve.py:tiny", f"--workdir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--config.generator=", "--config.sampling.steps=20"])
    assert exit_info.value.code == 2
    assert "error: no generator to serve" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, f"--config.generator={tmp_path / 'missing'}"])
    assert "not an exported generator" in capsys.readouterr().err


@pytest.fixture(scope="session")
def chromium():
    from browser import chromium_path

    return chromium_path()


def _set(page, selector, value):
    page.fill(selector, str(value))


@pytest.mark.slow
def test_page_in_a_real_browser(served, chromium, tmp_path):
    """Draw a box, pick class and device, generate a grid, download it, then bad input, the
    queue and cancellation, all through the page in headless Chromium."""
    from playwright.sync_api import expect, sync_playwright

    base, app, _ = served
    requests = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 860}
        )
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base)
        expect(page.locator("#class option")).to_have_count(len(app.studio.spec.class_names))

        # The box, drawn by dragging from (0.2, 0.3) to (0.6, 0.7) of the canvas.
        canvas = page.locator("#box-canvas").bounding_box()
        at = lambda fx, fy: (
            canvas["x"] + fx * canvas["width"],
            canvas["y"] + fy * canvas["height"],
        )
        page.mouse.move(*at(0.2, 0.3))
        page.mouse.down()
        page.mouse.move(*at(0.45, 0.5), steps=4)
        page.mouse.move(*at(0.6, 0.7), steps=4)
        page.mouse.up()
        drawn = [float(page.input_value(f"#{k}")) for k in ("x1", "y1", "x2", "y2")]
        assert np.allclose(drawn, [0.2, 0.3, 0.6, 0.7], atol=0.01), drawn

        page.select_option("#class", "malignant")
        page.select_option("#device", "Phantom-L9-3")
        _set(page, "#seed", 7)
        _set(page, "#num-images", 3)
        page.click("#generate")
        expect(page.locator("#status-text")).to_have_text(
            "Done: 3 images.", timeout=TIMEOUT_S * 1000
        )
        expect(page.locator("figure canvas.outlined")).to_have_count(3)
        sizes = page.eval_on_selector_all(
            "figure img.sample",
            "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])",
        )
        assert sizes == [[True, 32, 32]] * 3

        with page.expect_download() as download_info:
            page.locator("figure[data-index='2'] a", has_text="Download").click()
        download = download_info.value
        assert download.suggested_filename == "busgen-malignant-Phantom-L9-3-seed7-2.png"
        png = pathlib.Path(download.path()).read_bytes()
        image = Image.open(io.BytesIO(png))
        assert image.size == (32, 32) and image.mode == "L"
        provenance = studio.read_png_provenance(png)
        assert (provenance["class"], provenance["device"]) == ("malignant", "Phantom-L9-3")
        assert (provenance["seed"], provenance["index"]) == (7, 2)
        assert np.allclose(provenance["box"], drawn)
        with page.expect_download() as download_info:
            page.locator("figure[data-index='2'] a", has_text="Provenance").click()
        sidecar = json.loads(pathlib.Path(download_info.value.path()).read_text())
        assert sidecar == provenance
        screenshot = os.environ.get("BUSGEN_SERVE_SCREENSHOT", str(tmp_path / "serve.png"))
        page.screenshot(path=screenshot, full_page=True)

        # Random box from the prior of the chosen class; none for normal tissue.
        page.click("#random-box")
        expect(page.locator("#x1")).not_to_have_value(f"{drawn[0]:.3f}")
        assert studio.parse_box(
            [float(page.input_value(f"#{k}")) for k in ("x1", "y1", "x2", "y2")]
        )
        page.select_option("#class", "normal")
        page.click("#random-box")
        expect(page.locator("#message")).to_contain_text("no lesion box")
        assert page.input_value("#x1") == ""
        page.select_option("#class", "malignant")

        # Bad input: a clear message on the page, and the page keeps working.
        for selector, value, message in [
            ("#x1", 0.9, "x1 < x2"),
            ("#x2", 1.5, "outside the image"),
            ("#steps", 0, "'steps' must be between 1 and 50"),
            ("#guidance", 99, "'guidance' must be between 0 and 10"),
            ("#num-images", 9, "'num_images' must be between 1 and 4"),
        ]:
            for k, v in zip(("x1", "y1", "x2", "y2"), drawn, strict=True):
                _set(page, f"#{k}", v)
            _set(page, "#steps", 4)
            _set(page, "#guidance", 1.8)
            _set(page, "#num-images", 1)
            _set(page, selector, value)
            page.click("#generate")
            expect(page.locator("#message")).to_contain_text(message)
            expect(page.locator("#message")).to_have_class("message error")
        _set(page, "#x1", drawn[0])
        _set(page, "#x2", drawn[2])
        _set(page, "#num-images", 1)
        page.click("#generate")
        expect(page.locator("#status-text")).to_have_text(
            "Done: 1 image.", timeout=TIMEOUT_S * 1000
        )
        expect(page.locator("#message")).to_have_text("")

        # While another generation holds the device, the page shows its place and can cancel.
        with app.studio.lock:
            code, _, body = _call(base, "/api/generate", {**GOOD, "num_images": 1})
            other = json.loads(body)["id"]
            _wait(base, other, states=(jobs.RUNNING,))
            page.click("#generate")
            expect(page.locator("#status-text")).to_have_text("Queued: position 1")
            expect(page.locator("#cancel")).to_be_enabled()
            page.click("#cancel")
            expect(page.locator("#status-text")).to_have_text("Cancelled after 0 images.")
            expect(page.locator("#generate")).to_be_enabled()
        assert _wait(base, other)["state"] == jobs.DONE
        browser.close()

    foreign = [url for url in requests if not url.startswith(base)]
    assert not foreign, f"the page requested {foreign}"
    assert any(url.endswith(".png") for url in requests)
