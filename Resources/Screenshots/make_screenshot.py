"""Compose the extension-index screenshot from the 3D scene pictures ``surgreg demo`` writes.

The picture is labelled for what it is: off-screen VTK renderings of each module's 3D scene,
built by the same Qt-free code the modules use in Slicer (not a capture of the Slicer
application window, which cannot be run where it was made).

Usage::

    surgreg demo --quick --out /tmp/demo
    python Resources/Screenshots/make_screenshot.py /tmp/demo Resources/Screenshots/SurgicalReg2D3D_demo.png
"""

from __future__ import annotations

import sys
from pathlib import Path

PANELS = (
    ("fluoro/fluoro_3d.png",
     "FluoroReg: the bundled real CT (bone surface), the X-ray (simulated from it, synthetic) "
     "on its detector plane and the source frustum at the registered pose"),
    ("laparo/laparo_3d.png",
     "LiverLaparoReg: AR view through the laparoscope (synthetic frame of the real "
     "SciKit-Surgery liver) and the camera frustum beside the model"),
    ("us/us_3d.png",
     "USSliceReg: a held-out frame of the real PLUS spine sweep at its registered pose in the "
     "volume, and the slice view resliced along it"),
)
FOOTER = ("SlicerSurgicalReg2D3D: renderings of the modules' 3D scenes written by "
          "`surgreg demo --quick` (off-screen VTK; not a screen capture of Slicer)")


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
