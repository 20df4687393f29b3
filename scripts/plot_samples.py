"""Figure of the sample variety (docs/samples.png): frames with and without each effect.

PR772-like pnCCD (simulate.geometry.pnccd_geometry, 128x128, 1.7 keV), Poisson photons at the
nominal fluence, log(1 + photons) on one colour scale per row. Rows:

1. size polydispersity: a 45 nm faceted capsid (icosahedral shell + genome core) as built, then
   scaled by 0.9 and 1.1 (speckles scale as 1/s, photons as s^6), and their radial profiles;
2. aggregates: two touching copies of the same size (the original multi hit), then 2-3 members of
   mixed sizes (sigma_rel 0.08) with gaps of 0-5 % of the radius sum;
3. non-spherical virions (continuum objects): the icosahedral capsid, a prolate spheroid (aspect
   1.5), a spherocylinder (aspect 1.6) and an oblate spheroid (aspect 0.7), each at one orientation;
4. non-sample hits: the original droplet, a droplet with a streak, a debris clump, a capsid fragment.

    PYTHONPATH=. python scripts/plot_samples.py --seed 0 --out docs/samples.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from simulate.aggregates import contact_positions  # noqa: E402
from simulate.continuum import ellipsoidal_capsid, icosahedral_capsid, spherocylinder_capsid  # noqa: E402
from simulate.engine import PatternEngine  # noqa: E402
from simulate.geometry import detector_mask, pnccd_geometry  # noqa: E402
from simulate.parasitic import parasitic_intensity  # noqa: E402
from simulate.rotations import quaternion_to_matrix, random_quaternions  # noqa: E402
from simulate.sample_variety import NonSample, Polydispersity  # noqa: E402

#: Grid oversampling for the figure (the trilinear error, ~2 % here, is invisible at this scale).
OVERSAMPLING = 4.0


def engine(structure, geo, max_scale=1.0):
    return PatternEngine(structure, geo, oversampling=OVERSAMPLING, max_size_scale=max_scale)


def expected(eng, quats, positions=None, scales=None):
    """Expected photons (H, W) of one shot: quaternions (m, 4), positions (m, 3) A, sizes (m,)."""
    rots = torch.as_tensor(quaternion_to_matrix(np.asarray(quats)))
    pos = None if positions is None else torch.as_tensor(np.asarray(positions, dtype=np.float64))
    sc = None if scales is None else torch.as_tensor(np.asarray(scales, dtype=np.float64))
    field = eng.shot_field(rots, pos, scales=sc)
    return (field.abs().double() ** 2 * eng.scale).float()


def radial_profile(img, geo):
    n = geo.n_pixels
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    r = np.hypot(yy, xx).astype(int)
    good = detector_mask(geo) == 0
    return np.bincount(r[good], weights=img[good]) / np.maximum(np.bincount(r[good]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/samples.png")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    geo = pnccd_geometry(binning=8)
    bad = detector_mask(geo) != 0

    capsid = icosahedral_capsid(450.0, 35.0, voxel_angstrom=10.0, seed=1)
    e_cap = engine(capsid, geo, max_scale=1.25)
    q1 = random_quaternions(1, rng)
    rows = []
    # 1. polydispersity
    sizes = [1.0, 0.9, 1.1]
    poly = [expected(e_cap, q1, scales=[s]) for s in sizes]
    rows.append(("size polydispersity", [("capsid 45 nm as built (s = 1)", poly[0]),
                                         ("s = 0.9: speckles x1.11, photons x0.53", poly[1]),
                                         ("s = 1.1: speckles x0.91, photons x1.77", poly[2])],
                 [(f"s = {s}", radial_profile(p.numpy(), geo)) for s, p in zip(sizes, poly)]))
    # 2. aggregates
    pd = Polydispersity(sigma_rel=0.08)
    agg = []
    qt = random_quaternions(2, rng)
    agg.append(("2 touching copies, same size (original)",
                expected(e_cap, qt, contact_positions(2, capsid.radius, rng))))
    for m in (2, 3):
        s = np.clip(pd.draw(m, rng), None, 1.24)
        pos = contact_positions(m, capsid.radius * s, rng, gap_rel=(0.0, 0.05))
        agg.append((f"{m} members, sizes {', '.join(f'{x:.2f}' for x in s)}, gaps <= 5 %",
                    expected(e_cap, random_quaternions(m, rng), pos, s)))
    rows.append(("aggregates", agg, None))
    # 3. non-spherical virions
    shapes = [("icosahedral capsid 45 nm", None),
              ("prolate spheroid 45 nm x1.5", ellipsoidal_capsid(450.0, 1.5, 35.0, voxel_angstrom=10.0, seed=2)),
              ("spherocylinder 40 nm x1.6", spherocylinder_capsid(400.0, 1.6, 35.0, voxel_angstrom=10.0, seed=3)),
              ("oblate spheroid 55 nm x0.7", ellipsoidal_capsid(550.0, 0.7, 35.0, voxel_angstrom=10.0, seed=4))]
    side = np.array([[np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0]])   # long axis z -> detector x
    virions = [(shapes[0][0], poly[0])]
    for title, structure in shapes[1:]:
        virions.append((title, expected(engine(structure, geo), side)))
    rows.append(("non-spherical virions", virions, None))
    # 4. non-sample hits
    q = e_cap.q
    scale = e_cap.scale
    kinds = [("droplet (original)", NonSample(streak_p=0.0, debris_p=0.0, fragment_p=0.0)),
             ("droplet + streak", NonSample(streak_p=1.0, debris_p=0.0, fragment_p=0.0)),
             ("debris clump", NonSample(debris_p=1.0, fragment_p=0.0)),
             ("capsid fragment", NonSample(debris_p=0.0, fragment_p=1.0))]
    non = []
    for title, cfg in kinds:
        intensity, kind = parasitic_intensity(q, capsid.radius, cfg, rng)
        non.append((f"{title} [{kind}]", (intensity * scale).float()))
    rows.append(("non-sample hits", non, None))

    fig, axes = plt.subplots(4, 4, figsize=(14, 14.5))
    for r, (label, panels, profiles) in enumerate(rows):
        photons = [torch.poisson(img, generator=gen).numpy() for _, img in panels]
        vmax = max(np.log1p(p[~bad]).max() for p in photons)
        for c, ((title, _), p) in enumerate(zip(panels, photons)):
            ax = axes[r, c]
            ax.imshow(np.ma.masked_array(np.log1p(p), bad), cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{title}\n{p[~bad].sum():.3g} photons", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=11)
        if profiles is not None:
            ax = axes[r, 3]
            for name, prof in profiles:
                ax.semilogy(np.arange(len(prof)), np.clip(prof, 1e-4, None), label=name)
            ax.set_xlim(0, 40)
            ax.set_xlabel("radius (pixels)")
            ax.set_ylabel("expected photons / pixel")
            ax.set_title("radial profiles: first minimum at 1/s", fontsize=8)
            ax.legend(fontsize=8)
        else:
            for c in range(len(panels), 4):
                axes[r, c].set_axis_off()
    fig.suptitle("simulate.sample_variety (dataset.sample): frames with and without each effect\n"
                 f"PR772-like pnCCD 128x128, Poisson photons at the nominal fluence, log(1 + photons), "
                 f"one scale per row; seed {args.seed}", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
