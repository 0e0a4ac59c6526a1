"""Compose the extension-index screenshot from the pictures ``surgreg demo`` writes.

The picture is labelled for what it is: the modules' result pictures from the demo (not a
capture of the Slicer application window, which cannot be run where it was made).

Usage::

    surgreg demo --quick --out /tmp/demo
    python Resources/Screenshots/make_screenshot.py /tmp/demo Resources/Screenshots/SurgicalReg2D3D_demo.png
"""

from __future__ import annotations

import sys
from pathlib import Path

PANELS = (
    ("fluoro/fluoro_overlay.png",
     "FluoroReg: CT to X-ray. The X-ray is simulated from the bundled real CT (synthetic); "
     "DRR overlays at the start and after registration"),
    ("laparo/laparo_p2ilf_overlay.png",
     "LiverLaparoReg: liver model to laparoscopic frame, real P2ILF annotations "
     "(projected 3D contours over the 2D ones)"),
    ("us/us_overlays.png",
     "USSliceReg: 2D ultrasound frame to 3D volume, real PLUS spine phantom sweep "
     "(held-out frame, volume slice before and after)"),
)
FOOTER = ("SlicerSurgicalReg2D3D: result pictures written by `surgreg demo --quick` "
          "(composed; not a screen capture of the Slicer application)")


def compose(demo_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [plt.imread(demo_dir / name) for name, _ in PANELS]
    heights = [im.shape[0] / im.shape[1] for im in images]
    fig = plt.figure(figsize=(12, 12 * sum(heights) * 0.68 + 0.6), dpi=100)
    grid = fig.add_gridspec(len(images), 1, height_ratios=heights, hspace=0.18)
    for k, (im, (_, title)) in enumerate(zip(images, PANELS)):
        ax = fig.add_subplot(grid[k])
        ax.imshow(im)
        ax.set_title(title, fontsize=10, loc="left")
        ax.axis("off")
    fig.suptitle(FOOTER, fontsize=11, y=0.93)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compose(Path(sys.argv[1]), Path(sys.argv[2])))
