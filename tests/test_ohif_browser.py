"""The radiologist's workflow end to end: Orthanc, the MONAI Label server on it, OHIF in headless Chromium.

Two phantom studies (one inlier, one with an unseen lesion type) are put into a real Orthanc by STOW-RS; the
MONAI Label app serves the shipped model with Orthanc as its DICOMweb datastore; OHIF (the build MONAI Label ships)
runs in Debian's Chromium, driven by Playwright. Screenshots go to ``MAXQUERY_SCREENSHOTS`` when set (the README's
pictures come from there), else into the test's folder. Every server listens on 127.0.0.1 only and is stopped by its
process id at the end, also when the test fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from pacs import running_orthanc
from PIL import Image
from test_monailabel_server import running_server, wait_for, wait_for_task

from bundle.data.phantom import generate_dataset
from bundle.scripts.dicomweb_upload import upload_volumes

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MAXQUERY_CHROMIUM", "/usr/bin/chromium")
#: software WebGL: OHIF's viewports need WebGL 2, and CI has no GPU
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
PHANTOM_SEED = 15
#: OOD studies in the PACS: the UI is shown on the one the model marks most, so that which phantom lesions a given
#: model flags does not decide whether the viewer is tested (how often OOD is flagged is the benchmark's business)
NUM_OOD_STUDIES = 3
#: collects what a page throws, including rejected promises that Playwright's pageerror does not see
CAPTURE_ERRORS = """
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection',
    e => window.__errors.push(String(e.reason && e.reason.stack || e.reason)));
"""
OHIF_TIMEOUT_MS = 240_000
#: moves the three views onto the segment: the voxel nearest the segment's centre on its largest axial slice
SHOW_SEGMENT = """
index => {
  const services = window.services;
  const volume = services.segmentationService.getLabelmapVolume('1');
  const data = volume.voxelManager.getCompleteScalarDataArray();
  const [nx, ny, nz] = volume.dimensions;
  const counts = new Array(nz).fill(0);
  for (let p = 0; p < data.length; p++) if (data[p] === index) counts[Math.floor(p / (nx * ny))]++;
  const k = counts.indexOf(Math.max(...counts));
  let si = 0, sj = 0, n = 0;
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++)
    if (data[k * nx * ny + j * nx + i] === index) { si += i; sj += j; n++; }
  let best = null, bestDistance = Infinity;
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) {
    const d = (i - si / n) ** 2 + (j - sj / n) ** 2;
    if (data[k * nx * ny + j * nx + i] === index && d < bestDistance) { best = [i, j, k]; bestDistance = d; }
  }
  const world = volume.imageData.indexToWorld(best);
  for (const id of ['mpr-axial', 'mpr-sagittal', 'mpr-coronal']) {
    const viewport = services.cornerstoneViewportService.getCornerstoneViewport(id);
    if (viewport) viewport.jumpToWorld(world);
  }
  return best;
}
"""


def _playwright():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium.")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One inlier test case and ``NUM_OOD_STUDIES`` cases with an OOD lesion, as NIfTI."""
    folder = generate_dataset(
        tmp_path_factory.mktemp("phantom") / "dataset",
        seed=PHANTOM_SEED,
        num_train=0,
        num_val=0,
        num_test=1,
        num_ood=NUM_OOD_STUDIES,
    )
    dataset = json.loads((folder / "dataset.json").read_text())
    ood = {f"ood_{i}": folder / case["image"] for i, case in enumerate(dataset["test_ood"])}
    return {"inlier": folder / dataset["test"][0]["image"], **ood}


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MAXQUERY_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def central_rgb(png: bytes) -> np.ndarray:
    """The middle of a viewport screenshot as RGB floats, without the text in its corners and its border."""
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(float)
    height, width = rgb.shape[:2]
    return rgb[height // 5 : height - height // 5, width // 10 : width - width // 10]


def coloured_pixels(png: bytes) -> np.ndarray:
    """Mask of the pixels that are not grey (the CT is grey; overlays are coloured)."""
    rgb = central_rgb(png)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40


def close_to(png: bytes, colour: tuple[int, int, int], tolerance: float = 60.0) -> np.ndarray:
    """Mask of the pixels whose colour is that of a segment drawn over grey CT (the overlay is blended)."""
    rgb = central_rgb(png)
    grey = rgb.mean(axis=-1, keepdims=True)
    # a blended overlay is grey + alpha * (colour - grey); compare the directions of the colour shifts
    shift = rgb - grey
    target = np.asarray(colour, float) - np.mean(colour)
    cosine = (shift @ target) / (np.linalg.norm(shift, axis=-1) * np.linalg.norm(target) + 1e-6)
    return (cosine > 0.95) & (np.linalg.norm(shift, axis=-1) > tolerance / 3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, studies: dict[str, Path]) -> Iterator[dict]:
    """Orthanc with the two studies and the MONAI Label server on it (shipped model); both stopped afterwards."""
    workdir = tmp_path_factory.mktemp("stack")
    with running_orthanc(workdir / "pacs") as dicomweb:
        uploads = {role: upload_volumes(dicomweb, [path])[0] for role, path in studies.items()}
        assert not any(result.error for result in uploads.values()), uploads
        env = {"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(workdir / "cache")}
        # OHIF's panel always asks for the strategy `random`; the app's config makes Next Sample use MaxQuery
        conf = {"device": "cpu", "activelearning_strategy": "maxquery_ood"}
        with running_server(
            workdir, dicomweb, REPO_ROOT / "models" / "model.pt", conf=conf, env=env, bundle_overrides=None
        ) as (client, _):
            yield {"client": client, "dicomweb": dicomweb, "uploads": uploads, "workdir": workdir}


def test_ohif_with_orthanc_segments_proposes_the_ood_study_and_stores_the_label(
    stack: dict, screenshots: Path, tmp_path: Path
) -> None:
    sync_api = _playwright()
    client: httpx.Client = stack["client"]
    uploads = stack["uploads"]
    server_url = str(client.base_url).rstrip("/") + "/"
    values = client.get("/info/").json()["models"]["maxquery"]["labels"]

    # the reference: the server's own label map of each OOD study (what OHIF's Run draws); the viewer is shown the
    # one with the most suspected-OOD voxels
    label_maps, marked = {}, {}
    for role in (r for r in uploads if r.startswith("ood_")):
        response = client.post("/infer/maxquery", params={"image": uploads[role].series_uid, "output": "image"})
        assert response.status_code == 200, response.text
        (tmp_path / f"{role}.nii.gz").write_bytes(response.content)
        label_maps[role] = np.asarray(nib.load(str(tmp_path / f"{role}.nii.gz")).dataobj)
        marked[role] = int((label_maps[role] == values["suspected_ood"]).sum())
    role = max(marked, key=marked.get)
    assert marked[role] > 0, f"none of the OOD studies has suspected-OOD voxels to show: {marked}"
    ood, reference, reference_path = uploads[role], label_maps[role], tmp_path / f"{role}.nii.gz"

    # scores for the active-learning strategy
    task = client.post("/scoring/maxquery_ood").json()
    assert wait_for_task(client, "scoring", task["id"])["status"] == "DONE"
    scores = {
        study: client.get("/datastore/image/info", params={"image": study.series_uid}).json()["maxquery_ood_score"]
        for study in uploads.values()
    }
    assert all(isinstance(score, float) for score in scores.values()), scores
    proposed = max(scores, key=scores.get)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(OHIF_TIMEOUT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.add_init_script(CAPTURE_ERRORS)

            # the study list shows the studies
            page.goto(server_url + "ohif/", wait_until="networkidle")
            for study in uploads.values():
                page.get_by_text(study.patient_id).first.wait_for()
            page.get_by_text("Confirm and Hide").click()
            page.screenshot(path=str(screenshots / "ohif_study_list.png"))

            # the OOD study in the MONAI Label mode; the panel connects and lists the model
            page.goto(f"{server_url}ohif/monai-label?StudyInstanceUIDs={ood.study_uid}", wait_until="networkidle")
            page.locator("#monailabelServerURL").fill(server_url)
            page.locator("#monailabelServerURL").locator("xpath=../../td[3]/button").click()
            page.get_by_text("Connected to MONAI Label - Successful").wait_for()
            page.get_by_text("Auto-Segmentation").wait_for()
            assert "maxquery" in page.locator("select.selectBox").first.inner_text()
            axial = page.locator("canvas").first
            before = axial.screenshot()

            # Run: the label map comes back and is drawn
            page.locator('button[title="Run Segmentation"]').click()
            page.get_by_text("Running Segmentation - Successful").wait_for()
            segments = page.evaluate(
                "() => Object.values(window.services.segmentationService.getSegmentation('1').segments)"
                ".map(s => [s.segmentIndex, s.label])"
            )
            index_of = {label: index for index, label in segments}
            assert "suspected_ood" in index_of, segments
            # what OHIF holds: as many suspected-OOD voxels as the server's label map
            held = page.evaluate(
                "index => { const v = window.services.segmentationService.getLabelmapVolume('1')"
                ".voxelManager.getCompleteScalarDataArray(); let n = 0;"
                " for (const x of v) n += x === index; return n; }",
                index_of["suspected_ood"],
            )
            assert held == int((reference == values["suspected_ood"]).sum())
            page.evaluate(SHOW_SEGMENT, index_of["suspected_ood"])
            page.wait_for_timeout(2000)
            after = axial.screenshot()
            page.screenshot(path=str(screenshots / "ohif_segmentation_suspected_ood.png"))
            assert coloured_pixels(before).sum() < 50
            assert coloured_pixels(after).sum() > 200
            suspected_rgb = page.evaluate(
                f"() => Array.from(window.services.segmentationService.getSegmentColor"
                f"(window.services.viewportGridService.getActiveViewportId(), '1', {index_of['suspected_ood']}))"
            )[:3]
            assert close_to(after, tuple(suspected_rgb)).sum() > 5

            # Next Sample with the MaxQuery OOD strategy proposes the study with the highest stored score (which one
            # that is depends on the model; the benchmark measures how often an OOD case ranks first)
            page.get_by_text("Active Learning").click()
            assert "maxquery_ood" in page.locator("select.actionInput").first.inner_text()
            page.get_by_text("Next Sample").click()
            page.get_by_text("Active Learning - Next Sample").wait_for()
            dialog = page.locator(".nextSampleForm").first
            assert proposed.patient_id in dialog.inner_text() and proposed.series_uid in dialog.inner_text()
            page.screenshot(path=str(screenshots / "ohif_next_sample.png"))
            page.keyboard.press("Escape")

            # Save: OHIF stores the segmentation as a DICOM SEG in Orthanc
            page.evaluate(
                "() => { window.__stored = window.commandsManager.runCommand('storeSegmentation', "
                "{segmentationId: '1', dataSource: window.extensionManager.getActiveDataSource()[0]}); }"
            )
            page.get_by_text("Enter the report name").locator("xpath=..").locator("input").fill("maxquery label")
            page.get_by_role("button", name="Save").click()
            page.evaluate("() => window.__stored")

            assert page_errors == [] and page.evaluate("() => window.__errors") == []
        finally:
            browser.close()

    # the stored SEG, read back through the app's DICOMweb datastore (full grid, original values), equals it
    def read_back() -> bytes | None:
        answer = client.get("/datastore/label", params={"label": ood.series_uid, "tag": "final"})
        return answer.content if answer.status_code == 200 else None

    (tmp_path / "saved.nii.gz").write_bytes(wait_for(read_back, 60, "the SEG read back from Orthanc", poll_s=2))
    saved = nib.load(str(tmp_path / "saved.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), reference)
    np.testing.assert_allclose(saved.affine, nib.load(str(reference_path)).affine, atol=1e-4)
