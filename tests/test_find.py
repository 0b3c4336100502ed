"""The find stage: a small bird in a big scene is found (box), looked at closer, and named.

The model here is a real ONNX export (birdclf's own export path, onnxruntime) of a small torch module whose
behaviour is known, so the find stage's geometry and choices can be checked exactly: like the real gate, it sees
"a bird" (a red patch) only when the patch fills enough of its view, and tells its two species (red, magenta) only
on a close view. The real gate on real photos is measured by bench.find.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from birdclf.config import ModelConfig
from birdclf.data.scenes import paste_into_scenes, read_scene_index
from birdclf.serving.locate import FindParams, Found, crop_around, find_bird, tiles
from birdclf.serving.predictor import Predictor
from birdclf.settings import Settings

torch = pytest.importorskip("torch")

LABELS = ("RED", "MAGENTA", "OTHER")
RED, MAGENTA = (220, 30, 30), (220, 30, 200)


class PatchModel(torch.nn.Module):
    """(species logits, P(bird), bird map) from colour statistics: red-ness is 'bird', blue tells the species."""

    def forward(self, x):
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        birdness = r - g  # 0.75 on the patches, 0 on grey
        cells = torch.nn.functional.avg_pool2d(birdness[:, None], 32)[:, 0]  # (N, 7, 7) at 224 px
        where = torch.sigmoid(12 * (cells - 0.3))
        bird = torch.sigmoid(12 * (birdness.mean(dim=(1, 2)) - 0.3))
        red = 12 * (r.mean(dim=(1, 2)) - b.mean(dim=(1, 2))) - 1
        magenta = 12 * (b.mean(dim=(1, 2)) - g.mean(dim=(1, 2))) - 1
        return torch.stack([red, magenta, torch.zeros_like(red)], dim=1), bird, where


class NoMapModel(PatchModel):
    """The same model as exported before the find stage: no bird map."""

    def forward(self, x):
        logits, bird, _ = super().forward(x)
        return logits, bird


def _config(name: str) -> ModelConfig:
    return ModelConfig(model_name=name, labels=LABELS, input_size=224, resize_size=256, mean=(0, 0, 0),
                       std=(1, 1, 1), interpolation="bilinear", bird_threshold=0.5, species_threshold=0.8)


@pytest.fixture(scope="module")
def patch_onnx(tmp_path_factory):
    from birdclf.training.export import export_onnx

    folder = tmp_path_factory.mktemp("find")
    export_onnx(PatchModel(), folder / "patch.onnx", _config("patch"))
    export_onnx(NoMapModel(), folder / "nomap.onnx", _config("nomap"))
    return folder


def scene(patches: list[tuple[tuple[int, int, int], tuple[int, int, int, int]]], size=(1024, 768), seed=0) -> bytes:
    """A grey, noisy scene with coloured patches at (x, y, w, h); JPEG bytes."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(128, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    for colour, (x, y, w, h) in patches:
        pixels[y:y + h, x:x + w] = colour
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


@pytest.mark.parametrize(("colour", "label", "where"), [(RED, "RED", (40, 60, 200, 150)),  # top-left corner
                                                         (MAGENTA, "MAGENTA", (760, 560, 220, 180))])  # bottom right
def test_a_small_bird_in_a_corner_gets_its_box_and_species(patch_onnx, colour, label, where):
    photo = scene([(colour, where)])
    whole = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=False)).predict(photo)
    assert whole.verdict == "not_a_bird" and whole.box is None  # the whole photo alone misses it
    found = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=True)).predict(photo)
    assert (found.verdict, found.label, found.is_bird, found.birds) == ("species", label, True, 1)
    assert iou(found.box, where) >= 0.5, (found.box, where)


def test_a_close_up_keeps_the_whole_photo_answer(patch_onnx):
    photo = scene([(RED, (0, 0, 1024, 768))])
    whole = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=False)).predict(photo)
    found = Predictor(patch_onnx / "patch.onnx").predict(photo)
    assert whole.verdict == "species" and found.top_k == whole.top_k and found.label == "RED"
    assert found.box is not None and found.box[2] * found.box[3] >= 0.5 * 1024 * 768  # the bird fills the frame


def test_a_small_photo_whose_bird_the_model_sees_is_answered_whole(patch_onnx):
    """A closer look at a bird the whole photo already sees is taken only when its crop holds at least the
    model's input side of photo pixels: a small photo (like Kaggle's 224 px crops) is answered whole, since
    upsampling adds no detail (on real ones closer looks turned more right answers wrong than back:
    bench/README.md, Finding the bird). The same scene as a large photo gets its closer look."""
    small = scene([((220, 30, 90), (77, 39, 146, 146))], size=(300, 225))
    whole = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=False)).predict(small)
    found = Predictor(patch_onnx / "patch.onnx").predict(small)
    assert whole.verdict == "unsure" and found.top_k == whole.top_k and found.verdict == "unsure"
    assert found.box is not None and iou(found.box, (77, 39, 146, 146)) >= 0.5
    large = scene([((220, 30, 90), (262, 134, 500, 500))])  # 1024 x 768: the crop holds 480 px of the photo
    whole = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=False)).predict(large)
    found = Predictor(patch_onnx / "patch.onnx").predict(large)
    assert whole.verdict == "unsure" and found.verdict == "species" and found.label == "RED"


def test_two_birds_are_counted_and_the_answer_is_for_one_of_them(patch_onnx):
    photo = scene([(RED, (150, 150, 180, 160)), (RED, (700, 450, 180, 160))])
    found = Predictor(patch_onnx / "patch.onnx").predict(photo)
    assert found.birds == 2 and found.label == "RED" and found.verdict == "species"
    assert max(iou(found.box, b) for b in ((150, 150, 180, 160), (700, 450, 180, 160))) >= 0.4


def test_no_bird_no_box(patch_onnx):
    found = Predictor(patch_onnx / "patch.onnx").predict(scene([]))
    assert (found.verdict, found.box, found.birds) == ("not_a_bird", None, 0)


def test_the_box_is_in_the_original_upright_photo_pixels(patch_onnx):
    """A phone photo stored sideways (EXIF orientation 6) and a large one decoded at reduced size."""
    where = (100, 1600, 500, 400)  # in the upright 2048x3072 photo
    upright = Image.open(io.BytesIO(scene([(RED, where)], size=(2048, 3072))))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", exif=exif, quality=95)
    found = Predictor(patch_onnx / "patch.onnx").predict(buf.getvalue())
    assert found.label == "RED" and iou(found.box, where) >= 0.5, found.box


def test_models_without_a_bird_map_answer_as_before(patch_onnx):
    photo = scene([(RED, (40, 60, 200, 150))])
    old = Predictor(patch_onnx / "nomap.onnx")
    assert not old.finds and old.info()["finds_bird"] is False
    answer = old.predict(photo)
    assert (answer.box, answer.birds, answer.verdict) == (None, None, "not_a_bird")
    assert answer.to_dict()["box"] is None


def test_find_stage_helpers():
    where = np.zeros((7, 7))
    where[1:3, 5:7] = 0.9
    where[5, 0] = 0.6
    found = find_bird(where, (0, 0, 700, 700), FindParams())
    assert found.box == (500, 100, 200, 200) and found.birds == 2 and found.peak == 0.9
    assert find_bird(np.full((7, 7), 0.01), (0, 0, 70, 70), FindParams()) is None  # nothing bird-like
    crop = crop_around(Found((650, 10, 100, 50), 0.1, 0.9, 1), (700, 500), FindParams(margin=2.0))
    assert crop == (500, 0, 200, 200)  # moved inside the photo, not shrunk


def test_the_api_answers_with_the_box(patch_onnx):
    from fastapi.testclient import TestClient

    from birdclf.serving.service import create_app

    app = create_app(Settings(model=str(patch_onnx / "patch.onnx")))
    with TestClient(app) as client:
        response = client.post("/api/predict", content=scene([(MAGENTA, (760, 560, 220, 180))]),
                               headers={"Content-Type": "image/jpeg"})
        schema = client.get("/api/openapi.json").json()
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]
    assert answer["top_k"][0]["label"] == "MAGENTA" and answer["birds"] == 1
    assert len(answer["box"]) == 4 and iou(answer["box"], (760, 560, 220, 180)) >= 0.5
    assert "box" in json.dumps(schema["components"]["schemas"]["PredictionOut"])


def test_scene_builder_writes_the_truth_it_pasted(tmp_path):
    birds_dir, scenes_dir = tmp_path / "birds", tmp_path / "scenes"
    birds_dir.mkdir()
    scenes_dir.mkdir()
    Image.new("RGB", (227, 200), RED).save(birds_dir / "a.jpg")
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(scenes_dir / "s.jpg")
    rows = paste_into_scenes([(birds_dir / "a.jpg", "RED")] * 3, [scenes_dir / "s.jpg"], tmp_path / "out", 0.3,
                             seed=3)
    assert read_scene_index(tmp_path / "out") == rows and len(rows) == 3
    for row in rows:
        img = np.asarray(Image.open(tmp_path / "out" / row.file))
        assert img.shape[1] == 1024 and row.width == round(0.3 * 1024)
        patch = img[row.y + 5:row.y + row.height - 5, row.x + 5:row.x + row.width - 5]
        assert abs(patch[..., 0].mean() - 220) < 8 and abs(patch[..., 2].mean() - 30) < 8
    assert len({(r.x, r.y) for r in rows}) == 3  # seeded, random places


def test_a_faint_bird_like_patch_in_a_scene_is_no_false_alarm(patch_onnx):
    """A closer look may name a bird the whole photo did not see only when it is quite sure (zoom_bird): a dull
    patch whose close view scores over the bird threshold but under zoom_bird stays not_a_bird."""
    dull = (200, 85, 85)  # r - g = 0.45: P(bird) of a close view 0.5-0.86, under zoom_bird
    predictor = Predictor(patch_onnx / "patch.onnx")
    predictor.find_params = FindParams(zoom_bird=0.95, zoom_sure_bird=0.95)
    answer = predictor.predict(scene([(dull, (100, 100, 300, 300))]))
    assert answer.verdict == "not_a_bird" and answer.box is None
    predictor.find_params = FindParams(zoom_bird=0.0, zoom_confidence=0.0)
    assert predictor.predict(scene([(dull, (100, 100, 300, 300))])).is_bird  # the rule is what holds it back


def test_a_sure_bird_of_an_unsure_species_is_unsure_not_no_bird(patch_onnx):
    """A closer look whose P(bird) reaches zoom_sure_bird finds a bird the whole photo missed even when it cannot
    name the species: the answer is `unsure` with the bird's box, not `not_a_bird`."""
    between = (220, 30, 125)  # as red as a bird; blue halfway between the two species (top-1 about 0.49)
    where = (40, 60, 200, 150)
    predictor = Predictor(patch_onnx / "patch.onnx")
    answer = predictor.predict(scene([(between, where)]))
    assert (answer.verdict, answer.is_bird, answer.birds) == ("unsure", True, 1)
    assert answer.top_k[0]["probability"] < predictor.find_params.zoom_confidence
    assert iou(answer.box, where) >= 0.5, (answer.box, where)
    predictor.find_params = FindParams(zoom_sure_bird=1.01)  # the species rule alone holds it back
    assert predictor.predict(scene([(between, where)])).verdict == "not_a_bird"


def test_tiles_cover_the_photo_and_stay_few_on_panoramas():
    params = FindParams()
    for size in ((1024, 768), (768, 1024), (4000, 1000), (30000, 300), (300, 300)):
        grid = tiles(size, params)
        assert 1 <= len(grid) <= params.max_tiles
        assert all(x >= 0 and y >= 0 and x + w <= size[0] + 1e-6 and y + h <= size[1] + 1e-6 for x, y, w, h in grid)
        assert min(x for x, *_ in grid) == 0 and max(x + w for x, _, w, _ in grid) >= size[0] - 1e-6
        assert min(y for _, y, *_ in grid) == 0 and max(y + h for _, y, _, h in grid) >= size[1] - 1e-6


def test_cli_gives_the_box_in_json_csv_and_a_heat_map(patch_onnx, tmp_path):
    import csv
    import subprocess
    import sys

    photo = tmp_path / "garden.jpg"
    photo.write_bytes(scene([(RED, (40, 60, 200, 150))]))
    base = [sys.executable, "-m", "birdclf", "predict", str(photo), "--model", str(patch_onnx / "patch.onnx")]
    out = subprocess.run([*base, "--json", "--explain", str(tmp_path / "why")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)[0]
    assert answer["top_k"][0]["label"] == "RED" and iou(answer["box"], (40, 60, 200, 150)) >= 0.5
    heat = Image.open(tmp_path / "why" / "garden.jpg.explain.png").convert("RGB")
    pixels = np.asarray(heat, dtype=float)
    assert heat.size == (1024, 768)
    far = pixels[600:700, 600:900]  # grey scene, no bird: no heat
    assert abs(far[..., 0].mean() - far[..., 2].mean()) < 10
    rows = list(csv.DictReader(subprocess.run([*base, "--csv"], capture_output=True, text=True).stdout.splitlines()))
    assert [int(rows[0][k]) for k in ("box_x", "box_y", "box_width", "box_height")] == answer["box"]
    assert rows[0]["birds"] == "1"


def test_the_page_draws_the_box_on_the_photo():
    from birdclf.webapp.photos import boxed_thumbnail, prepare_photo

    photo = prepare_photo("garden.jpg", scene([(RED, (40, 60, 200, 150))]))
    assert boxed_thumbnail(photo, None) == photo.thumbnail_uri
    import base64

    marked = Image.open(io.BytesIO(base64.b64decode(boxed_thumbnail(photo, [600, 400, 200, 150]).split(",")[1])))
    s = marked.width / photo.sent_size[0]
    edge = np.asarray(marked.convert("RGB"))[int(400 * s) + 1, int(650 * s)]  # on the box's top edge
    assert edge[0] > 200 and edge[1] > 150 and edge[2] < 120  # the amber line


def test_the_search_runs_the_model_a_batch_at_a_time_and_skips_tiny_photos(patch_onnx):
    """The tiled search's inputs go to the model `batch_size` at a time (the API's memory bound); a photo too small
    for its tiles to hold half an input's pixels is not searched at all (nothing to zoom into)."""
    predictor = Predictor(patch_onnx / "patch.onnx", batch_size=2)
    forward, rows = predictor._forward, []
    predictor._forward = lambda batch: (rows.append(len(batch)), forward(batch))[1]
    small = scene([(RED, (40, 60, 140, 105))])  # 15% of the scene's width: only the search finds it
    answers = predictor.predict_batch([small, small, scene([])])
    assert [a.label for a in answers[:2]] == ["RED", "RED"] and answers[2].verdict == "not_a_bird"
    assert max(rows) == 2 and sum(rows) > 3 * (1 + FindParams().max_tiles) // 2, rows  # searched, in pairs
    rows.clear()
    tiny = Image.open(io.BytesIO(small)).resize((256, 192))
    assert predictor.predict(tiny).verdict == "not_a_bird" and sum(rows) <= 1 + FindParams().looks, rows


def test_phone_photos_keep_the_resolution_the_closest_look_needs(patch_onnx):
    """A 12 MP phone JPEG is decoded large enough for the closest crop (min_crop of its shorter side) to fill the
    model's input; without the find stage it is still DCT-reduced as before."""
    buf = io.BytesIO()
    Image.new("RGB", (4032, 3024), (128, 128, 128)).save(buf, "JPEG")
    big = buf.getvalue()
    view = Predictor(patch_onnx / "patch.onnx").prepare(big)
    assert min(view.image.size) >= 224 / FindParams().min_crop and view.original_size == (4032, 3024)
    old = Predictor(patch_onnx / "patch.onnx", settings=Settings(find=False)).prepare(big)
    assert min(old.image.size) < 1024  # without the find stage the photo is reduced as before


def test_a_finer_grid_adds_tiles_and_small_photos_drop_it():
    coarse = tiles((1024, 768), FindParams(tile=0.5))
    both = tiles((1024, 768), FindParams(tile=0.5, tile_fine=0.33))
    assert len(both) > len(coarse) and both[:len(coarse)] == coarse
    assert tiles((1024, 768), FindParams(tile=0.5, tile_fine=0.33), min_side=0.4 * 768) == coarse
    assert tiles((1024, 768), FindParams(tile=0.5), min_side=0.6 * 768) == []
