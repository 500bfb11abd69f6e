"""Draw the README's picture of the TensorBoard tab from a real run's event files.

    python docs/render_curves.py saved/log/Digits_CNN/<run_id> docs/tensorboard.png

Reads the events with TensorBoard's own reader and draws the cards the Scalars tab shows for
`loss/*` and `accuracy/*` (train and valid on one step axis, per-step train loss) with Pillow,
which torchvision installs. Only for the documentation: training never imports it.
"""
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"train": (66, 133, 244), "valid": (234, 67, 53), "train_step": (170, 200, 250)}
CARD_W, CARD_H, PAD = 420, 260, 36


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def draw_card(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str,
              curves: dict[str, list[tuple[int, float]]], font, small) -> None:
    """One chart: `curves` by split name, scaled to the card, with axes and a legend."""
    x0, y0 = origin
    draw.rectangle([x0, y0, x0 + CARD_W, y0 + CARD_H], fill="white", outline=(220, 220, 220))
    draw.text((x0 + 12, y0 + 8), title, fill=(60, 60, 60), font=font)
    points = [point for curve in curves.values() for point in curve]
    steps, values = [s for s, _ in points], [v for _, v in points]
    low, high = min(values), max(values)
    left, top, right, bottom = x0 + PAD + 10, y0 + PAD, x0 + CARD_W - 14, y0 + CARD_H - PAD

    def place(step: int, value: float) -> tuple[float, float]:  # steps from 0, as TensorBoard
        x = left + step / max(max(steps), 1) * (right - left)
        y = bottom - (value - low) / max(high - low, 1e-12) * (bottom - top)
        return x, y

    for fraction in (0, 0.5, 1):  # grid lines with their values
        value = low + fraction * (high - low)
        y = place(0, value)[1]
        draw.line([left, y, right, y], fill=(235, 235, 235))
        draw.text((x0 + 6, y - 7), f"{value:.2f}", fill=(120, 120, 120), font=small)
    draw.text((left, bottom + 6), "step 0", fill=(120, 120, 120), font=small)
    draw.text((right - 60, bottom + 6), f"step {max(steps)}", fill=(120, 120, 120), font=small)
    for legend, (split, curve) in enumerate(curves.items()):
        draw.line([place(s, v) for s, v in curve], fill=COLOURS[split], width=2)
        legend_x, legend_y = x0 + CARD_W - 120, y0 + 14 + 14 * legend
        draw.line([legend_x, legend_y, legend_x + 14, legend_y], fill=COLOURS[split], width=2)
        draw.text((legend_x + 18, legend_y - 7), f"{title}/{split}", fill=COLOURS[split],
                  font=small)


def main(log_dir: str, out: str) -> None:
    scalars = read_scalars(Path(log_dir))
    cards = [("loss", {"train_step": scalars["loss/train_step"], "train": scalars["loss/train"],
                       "valid": scalars["loss/valid"]}),
             ("accuracy", {"train": scalars["accuracy/train"],
                           "valid": scalars["accuracy/valid"]})]
    image = Image.new("RGB", (2 * CARD_W + 30, CARD_H + 20), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=11)
    for index, (name, curves) in enumerate(cards):
        draw_card(draw, (10 + index * (CARD_W + 10), 10), name, curves, font, small)
    image.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
