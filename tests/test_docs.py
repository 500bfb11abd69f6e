"""docs/render_curves.py draws the README's TensorBoard picture from a real run's events."""
import importlib.util
import json

import pytest
from PIL import Image

import train
from tests.conftest import ROOT, run_folders, small_config


@pytest.mark.slow
def test_render_curves_draws_the_loss_and_accuracy_cards(tmp_path):
    config = small_config(tmp_path / "saved", epochs=2, tensorboard=True)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    spec = importlib.util.spec_from_file_location("render_curves", ROOT / "docs" / "render_curves.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    render.main(str(tmp_path / "saved" / "log" / "Digits_CNN" / run.name), str(tmp_path / "tb.png"))
    image = Image.open(tmp_path / "tb.png").convert("RGB")
    assert image.size == (2 * render.CARD_W + 30, render.CARD_H + 20)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert {render.COLOURS["train"], render.COLOURS["valid"]} <= colours  # both curves drawn
