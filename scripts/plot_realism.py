"""Figure of the real-detector effects (docs/realism.png): one frame with and without each effect.

A faceted particle (an icosahedral shell of 4000 carbon atoms, 30 nm) on the PR772-like pnCCD
(simulate.geometry.pnccd_geometry, 128x128); every panel shares the log colour scale.
Row 1, expected intensity: clean, SASE bandwidth 1 %, partial coherence (blur 1 px), the Poisson
frame binned 2x2. Row 2, photons: Poisson frame, + background (gas 0.3, streak 2, halo 1 photon/pixel: stronger than typical, to be visible), + detector round
trip (dark noise 0.15 photon, per-row common mode 0.3 photon left uncorrected, 1 % dead pixels),
+ random layout (gaps, beam stop with arm, missing panels). Row 3: instrument presets' masks.

    PYTHONPATH=. python scripts/plot_realism.py --seed 0 --out docs/realism.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from simulate.engine import PatternEngine  # noqa: E402
from simulate.geometry import pnccd_geometry  # noqa: E402
from simulate.rotations import random_quaternions  # noqa: E402
from simulate.structure import Structure  # noqa: E402
from speckle_embed.realism import (BackgroundConfig, DetectorResponseConfig, LayoutConfig,  # noqa: E402
                                   add_background, bandwidth_smear, bin_pixels, coherence_blur,
                                   detector_round_trip, get_preset, random_layout)


def particle(seed: int) -> Structure:
    """Atoms on the faces of an icosahedron (a capsid-like shell), 150 angstrom radius."""
    rng = np.random.default_rng(seed)
    phi = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, phi, 0], [1, phi, 0], [-1, -phi, 0], [1, -phi, 0], [0, -1, phi], [0, 1, phi],
                  [0, -1, -phi], [0, 1, -phi], [phi, 0, -1], [phi, 0, 1], [-phi, 0, -1], [-phi, 0, 1]], float)
    v /= np.linalg.norm(v[0])
    faces = [f for f in __import__("itertools").combinations(range(12), 3)
             if all(abs(np.linalg.norm(v[a] - v[b]) - np.linalg.norm(v[0] - v[1])) < 1e-6
                    for a, b in ((f[0], f[1]), (f[1], f[2]), (f[0], f[2])))]
    pts = []
    for _ in range(4000):
        a, b, c = v[list(faces[rng.integers(len(faces))])]
        r1, r2 = rng.random(2)
        if r1 + r2 > 1:
            r1, r2 = 1 - r1, 1 - r2
        pts.append(a + r1 * (b - a) + r2 * (c - a))
    pos = np.array(pts) * 150.0 * (1 + 0.03 * rng.normal(size=(4000, 1)))
    return Structure.from_atoms(pos, ["C"] * 4000, name="icosahedral-shell")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/realism.png")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    geo = pnccd_geometry(binning=8)
    engine = PatternEngine(particle(args.seed), geo)
    quat = random_quaternions(1, np.random.default_rng(args.seed))
    expected = engine.intensity(quat).float()
    expected = expected * (3000.0 / float(expected.sum()))  # ~3000 photons per frame
    n = geo.n_pixels
    nobad = torch.zeros(1, n, n, dtype=torch.bool)

    photons = torch.poisson(expected, generator=g)
    bg = BackgroundConfig(gas_photons=[0.3, 0.3], amplitude_spread=0.0, gas_r0_px=[10.0, 10.0], gas_alpha=[2.5, 2.5],
                          streak_p=1.0, streak_photons=[2.0, 2.0], streak_length_px=[40.0, 40.0],
                          streak_width_px=[1.0, 1.0], halo_p=1.0, halo_photons=[1.0, 1.0],
                          halo_radius_px=[8.0, 8.0], stray_photons=[0.01, 0.01])
    with_bg = add_background(photons, bg, generator=g)
    det = DetectorResponseConfig(dark_noise_photons=[0.15, 0.15], common_mode_photons=[0.3, 0.3],
                                 common_mode="row", correct_common_mode_p=0.0, dead_fraction=[0.01, 0.01],
                                 flag_bad_p=0.0, hot_fraction=[0.001, 0.001], saturation_p=0.0,
                                 threshold=[0.5, 0.5])
    with_det, _ = detector_round_trip(with_bg, nobad, det, generator=g)
    lay = LayoutConfig(gap_p=1.0, gap_width_px=[3.0, 3.0], cross_p=1.0, beamstop_p=1.0, beamstop_half_px=[5.0, 5.0],
                       arm_p=1.0, panel_p=1.0, missing_panels=[1, 1])
    layout = random_layout(with_det.shape, lay, generator=g)
    binned, _ = bin_pixels(photons, None, 2)

    panels = [
        ("expected (clean)", expected[0], None),
        ("bandwidth 1 % (smear r x 1 % < 0.7 px here)", bandwidth_smear(expected, 0.01)[0], None),
        ("partial coherence, blur 1 px", coherence_blur(expected, 1.0)[0], None),
        ("Poisson frame binned 2x2", binned[0], None),
        ("Poisson photons (ideal)", photons[0], None),
        ("+ background: gas, streak, halo", with_bg[0], None),
        ("+ detector: dark noise, common mode,\ndead/hot pixels, 0.5-photon threshold", with_det[0], None),
        ("+ random layout (gaps, stop, arm, panel)", with_det[0], layout[0]),
    ]
    masks = [(name, get_preset(name)) for name in
             ("amo_pnccd_front_bin8", "spb_agipd1m_bin4", "jungfrau4m_bin8", "pr772_pnccd")]
    fig, axes = plt.subplots(3, 4, figsize=(13, 10.2))
    vmax = float(torch.log1p(photons.max()))
    for ax, (title, img, bad) in zip(axes[:2].ravel(), panels):
        x = np.log1p(np.clip(img.numpy(), 0, None))
        if bad is not None:
            x = np.ma.masked_array(x, bad.numpy())
        ax.imshow(x, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
    for ax, (name, preset) in zip(axes[2], masks):
        ax.imshow(preset.mask(), cmap="gray_r")
        ax.set_title(f"preset {name}\n{preset.n_pixels} px x {preset.binning * preset.pixel_m * 1e6:.0f} um, "
                     f"{preset.distance_m} m", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("speckle_embed.realism: one frame with and without each effect (log(1 + photons), shared "
                 f"scale; seed {args.seed})\nrows 1-2: masked pixels white; row 3: preset masks, bad = black",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
