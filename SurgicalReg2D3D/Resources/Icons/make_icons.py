"""Draw the extension's icons (128x128 PNG) with matplotlib.

Writes, relative to the repository root:

- ``<Module>/Resources/Icons/<Module>.png`` for the four modules: simple vector glyphs;
- ``SurgicalReg2D3D/Resources/Icons/<sample name>.png``: thumbnails of the bundled sample
  data for Slicer's SampleData module, rendered from the real files in
  ``Resources/SampleData`` (a CT slice, the laparoscopic frame, an ultrasound slice).

Run from anywhere:  ``python SurgicalReg2D3D/Resources/Icons/make_icons.py``
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
SIZE_PX = 128
DPI = 100


def _canvas():
    """A 128x128 px figure with one axes covering it, data coordinates [0, 1] x [0, 1]."""
    fig = plt.figure(figsize=(SIZE_PX / DPI, SIZE_PX / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _background(ax, color):
    ax.add_patch(mpatches.FancyBboxPatch((0.04, 0.04), 0.92, 0.92,
                                         boxstyle="round,pad=0,rounding_size=0.14",
                                         facecolor=color, edgecolor="none"))


def _save(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, transparent=True)
    plt.close(fig)
    print("wrote", path.relative_to(ROOT))


def _cube(ax, x, y, s, color, lw=2.5):
    """Wire-frame cube, front face lower-left corner (x, y), edge s (oblique projection)."""
    d = 0.45 * s
    front = np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]])
    back = front + [d, d]
    ax.plot(front[:, 0], front[:, 1], color=color, lw=lw, solid_capstyle="round")
    ax.plot(back[:, 0], back[:, 1], color=color, lw=lw, alpha=0.7)
    for (fx, fy), (bx, by) in zip(front[:4], back[:4]):
        ax.plot([fx, bx], [fy, by], color=color, lw=lw, alpha=0.7)


def icon_hub(path: Path):
    """SurgicalReg2D3D: a 2D image (plane) and a 3D cube joined by an arrow."""
    fig, ax = _canvas()
    _background(ax, "#24425f")
    ax.add_patch(mpatches.Polygon([[0.12, 0.16], [0.46, 0.16], [0.46, 0.50], [0.12, 0.50]],
                                  facecolor="#8fd3ff", edgecolor="white", lw=2))
    ax.plot([0.17, 0.41], [0.23, 0.43], color="#24425f", lw=3)
    _cube(ax, 0.54, 0.46, 0.24, "#ffb347")
    ax.annotate("", xy=(0.56, 0.40), xytext=(0.40, 0.56),
                arrowprops=dict(arrowstyle="<->", color="white", lw=2.5))
    ax.text(0.50, 0.83, "2D/3D", color="white", ha="center", va="center",
            fontsize=15, fontweight="bold")
    _save(fig, path)


def icon_fluoro(path: Path):
    """FluoroReg: an X-ray cone from a point source onto a detector, with a vertebra."""
    fig, ax = _canvas()
    _background(ax, "#2b2b3a")
    src = (0.50, 0.86)
    ax.add_patch(mpatches.Polygon([src, (0.14, 0.16), (0.86, 0.16)], facecolor="#fff6b0",
                                  alpha=0.35, edgecolor="#fff6b0", lw=1.5))
    ax.add_patch(mpatches.Circle(src, 0.045, color="#ffd700"))
    ax.add_patch(mpatches.Rectangle((0.10, 0.10), 0.80, 0.07, color="#d0d0d0"))
    ax.add_patch(mpatches.Ellipse((0.50, 0.45), 0.26, 0.17, facecolor="white", edgecolor="none"))
    ax.add_patch(mpatches.Rectangle((0.46, 0.30), 0.08, 0.08, color="white"))
    ax.text(0.17, 0.78, "X", color="#ffd700", fontsize=20, fontweight="bold",
            ha="center", va="center")
    _save(fig, path)


def icon_liver(path: Path):
    """LiverLaparoReg: a liver silhouette seen by a laparoscope (camera frustum)."""
    fig, ax = _canvas()
    _background(ax, "#3a2222")
    t = np.linspace(0, 2 * np.pi, 200)
    # A wedge-like closed curve (large right lobe, thin left lobe), drawn, not measured.
    r = 0.26 + 0.07 * np.cos(t) + 0.05 * np.sin(2 * t) - 0.04 * np.cos(3 * t)
    xs = 0.44 + 1.15 * r * np.cos(t)
    ys = 0.40 + 0.70 * r * np.sin(t)
    ax.fill(xs, ys, color="#b5473a", ec="#f0a090", lw=2)
    ax.plot([0.95, 0.70], [0.95, 0.72], color="#c8c8c8", lw=6, solid_capstyle="round")
    ax.add_patch(mpatches.Polygon([(0.70, 0.72), (0.30, 0.62), (0.62, 0.34)],
                                  facecolor="#9fe2ff", alpha=0.35, edgecolor="#9fe2ff", lw=1.5))
    ax.add_patch(mpatches.Circle((0.70, 0.72), 0.04, color="#9fe2ff"))
    _save(fig, path)


def icon_us(path: Path):
    """USSliceReg: an ultrasound fan (2D frame) cutting through a volume (cube)."""
    fig, ax = _canvas()
    _background(ax, "#14362e")
    _cube(ax, 0.16, 0.14, 0.50, "#7fd6b5", lw=2)
    wedge = mpatches.Wedge((0.50, 0.90), 0.62, 245, 295, facecolor="#e8e8e8",
                           edgecolor="white", lw=1.5, alpha=0.9)
    ax.add_patch(wedge)
    rng = np.random.default_rng(0)  # speckle dots, purely decorative
    ang = np.deg2rad(rng.uniform(248, 292, 60))
    rad = rng.uniform(0.15, 0.58, 60)
    ax.scatter(0.50 + rad * np.cos(ang), 0.90 + rad * np.sin(ang), s=2, color="#555555")
    ax.add_patch(mpatches.Rectangle((0.40, 0.86), 0.20, 0.09, color="#4a90d9"))
    _save(fig, path)


def _thumbnail(image: np.ndarray, path: Path, cmap="gray"):
    fig, ax = _canvas()
    ax.imshow(image, cmap=cmap, extent=(0, 1, 0, 1), aspect="auto", interpolation="bilinear")
    _save(fig, path)


def sample_thumbnails(icons_dir: Path):
    """Thumbnails for the SampleData module, from the real bundled files."""
    import SimpleITK as sitk  # noqa: PLC0415

    data = ROOT / "Resources" / "SampleData"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "ct" / "thorax_aorta_ct_cropped.nii.gz")))
    axial = np.clip((ct[ct.shape[0] // 2].astype(float) + 200.0) / 700.0, 0, 1)  # W 700, L 150
    _thumbnail(axial[::-1], icons_dir / "SurgRegThoraxCT.png")

    frame = plt.imread(data / "liver_sksurgery" / "images" / "image0232.jpg")
    h, w = frame.shape[:2]
    side = min(h, w)
    square = frame[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    _thumbnail(square, icons_dir / "SurgRegLiverModel.png", cmap=None)

    us = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "ultrasound" /
                                                   "SpinePhantomFreehandReconstructed.mha")))
    _thumbnail(us[:, us.shape[1] // 2, :][::-1] / 255.0, icons_dir / "SurgRegSpineUSVolume.png")


def main():
    icon_hub(ROOT / "SurgicalReg2D3D" / "Resources" / "Icons" / "SurgicalReg2D3D.png")
    icon_fluoro(ROOT / "FluoroReg" / "Resources" / "Icons" / "FluoroReg.png")
    icon_liver(ROOT / "LiverLaparoReg" / "Resources" / "Icons" / "LiverLaparoReg.png")
    icon_us(ROOT / "USSliceReg" / "Resources" / "Icons" / "USSliceReg.png")
    sample_thumbnails(ROOT / "SurgicalReg2D3D" / "Resources" / "Icons")


if __name__ == "__main__":
    main()
