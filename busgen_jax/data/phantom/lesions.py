"""Lesions of the ultrasound phantom, drawn from BI-RADS ultrasound descriptors.

Descriptors follow the ACR BI-RADS Atlas, 5th edition, ultrasound lexicon (shape, orientation,
margin, echo pattern, posterior features, calcifications). Each pathology draws them from its own
distribution; the distributions overlap on purpose (some benign masses are lobulated and shadow,
some cancers are fairly circumscribed), so classifying the phantom is not trivial. The lesion is
then rendered into the tissue maps of `phantom_tissue`: its echogenicity replaces the tissue's, its
attenuation makes the posterior enhancement or shadowing through the physics of image formation.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from busgen_jax.data.phantom.tissue import FAT_ECHO, smooth_fields

SHAPES = ("oval", "round", "irregular", "non-mass")
ORIENTATIONS = ("parallel", "not parallel")
MARGINS = ("circumscribed", "indistinct", "angular", "microlobulated", "spiculated")
ECHO_PATTERNS = (
    "anechoic",
    "hyperechoic",
    "complex cystic and solid",
    "hypoechoic",
    "isoechoic",
    "heterogeneous",
)
POSTERIOR = ("no posterior features", "enhancement", "shadowing", "combined pattern")
CALCIFICATIONS = ("none", "in a mass", "outside of a mass", "intraductal")
DESCRIPTORS = {
    "shape": SHAPES,
    "orientation": ORIENTATIONS,
    "margin": MARGINS,
    "echo_pattern": ECHO_PATTERNS,
    "posterior_features": POSTERIOR,
    "calcifications": CALCIFICATIONS,
}

# P(descriptor value | pathology), rows in the order of schema.PATHOLOGIES; the normal row is never
# used but keeps the draws vectorized. Frequencies loosely follow Stavros et al., Radiology 1995,
# and Hong et al., AJR 2005 (benign and invasive masses); for DCIS, Yang & Tse, AJR 2004, Park et
# al., AJR 2010 and Wang et al., Radiology 2013: most DCIS seen on ultrasound is a hypoechoic,
# parallel mass (oval or irregular) with microlobulated or indistinct margins and no posterior
# features; about a third is a non-mass hypoechoic area or ductal change; echogenic foci
# (calcifications) in about half. Benign lesions are mostly fibroadenoma-like solid oval
# circumscribed masses, then cysts (anechoic, enhancement), and some fibrocystic non-mass areas.
_PROBS = {
    "shape": [
        [0.6, 0.2, 0.2, 0],
        [0.66, 0.22, 0.06, 0.06],
        [0.12, 0.1, 0.78, 0],
        [0.26, 0.04, 0.5, 0.2],
    ],
    "orientation": [[0.85, 0.15], [0.88, 0.12], [0.45, 0.55], [0.72, 0.28]],
    "margin": [
        [0.6, 0.15, 0.07, 0.15, 0.03],
        [0.8, 0.1, 0.02, 0.06, 0.02],
        [0.1, 0.22, 0.25, 0.15, 0.28],
        [0.04, 0.33, 0.1, 0.46, 0.07],
    ],
    "echo_pattern": [
        [0.25, 0.03, 0.1, 0.45, 0.1, 0.07],
        [0.3, 0.02, 0.08, 0.48, 0.08, 0.04],
        [0, 0.02, 0.1, 0.5, 0.08, 0.3],
        [0, 0.01, 0.1, 0.58, 0.05, 0.26],
    ],
    "posterior_features": [
        [0.35, 0.45, 0.1, 0.1],
        [0.4, 0.46, 0.07, 0.07],
        [0.32, 0.1, 0.45, 0.13],
        [0.58, 0.12, 0.22, 0.08],
    ],
    "calcifications": [
        [0.92, 0.08, 0, 0],
        [0.9, 0.1, 0, 0],
        [0.6, 0.32, 0.08, 0],
        [0.35, 0.45, 0.05, 0.15],
    ],
}
# How a non-mass lesion presents, per pathology: a geographic hypoechoic area or ductal change
# (a dilated duct with intraductal echoes, or a chain of small ducts).
PRESENTATIONS = ("mass", "non-mass area", "ductal")
_DUCTAL_PROBABILITY = np.array([0.0, 0.2, 0.0, 0.4])
# Chance that a hypoechoic lesion is markedly hypoechoic (darker than fat by far), a suspicious
# finding (Stavros 1995); fibroadenomas are mostly mildly hypoechoic.
_MARKED_PROBABILITY = np.array([0.0, 0.2, 0.75, 0.7])
# Median longest diameter (mm) and log-normal spread per pathology (Stavros 1995: benign masses
# median ~1.2 cm, invasive cancers ~1.7 cm; DCIS masses ~1.2 cm, non-mass extents longer).
_SIZE_MEDIAN_MM = np.array([12.0, 12.0, 17.0, 12.0])
_SIZE_SPREAD = 0.42
# Suspicion points of each descriptor value for the latent malignancy score (log-odds scale);
# the signs follow the positive and negative predictive descriptors of Stavros 1995.
_POINTS = {
    "shape": [-0.6, -0.3, 0.9, 0.6],
    "orientation": [0.0, 0.9],
    "margin": [-0.9, 0.5, 0.9, 0.6, 1.3],
    "echo_pattern": [-1.8, -0.8, 0.4, 0.1, 0.0, 0.4],
    "posterior_features": [0.0, -0.4, 0.7, 0.3],
    "calcifications": [0.0, 0.7, 0.3, 0.9],
    "presentation": [0.0, 0.0, 0.5],
    "marked": [0.0, 0.6],
}
_ANGLES = 360  # resolution of the tabulated margin r(theta)
MAX_CALCIFICATIONS = 16
SATELLITE_PROBABILITY = 0.05


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of `probs` [n, k] (rows sum to 1)."""
    u = rng.random(probs.shape[0])[:, None]
    return np.minimum((u > np.cumsum(probs, axis=1)).sum(1), probs.shape[1] - 1)


def draw_descriptors(rng: np.random.Generator, pathology: np.ndarray) -> dict[str, np.ndarray]:
    """Draws descriptor indices [n] and `size_mm`, `halo` per sample of pathology index [n]."""
    desc = {key: _categorical(rng, np.asarray(_PROBS[key])[pathology]) for key in DESCRIPTORS}
    non_mass = desc["shape"] == 3
    # Fluid collects in round or oval cavities: a non-mass area is hypoechoic tissue, not a cyst.
    desc["echo_pattern"] = np.where(non_mass & (desc["echo_pattern"] == 0), 3, desc["echo_pattern"])
    cyst = desc["echo_pattern"] == 0
    # A simple cyst is circumscribed with enhancement; non-mass lesions are parallel, indistinct.
    desc["margin"] = np.where(cyst, 0, desc["margin"])
    desc["posterior_features"] = np.where(cyst, 1, desc["posterior_features"])
    desc["orientation"] = np.where(non_mass, 0, desc["orientation"])
    desc["margin"] = np.where(non_mass, 1, desc["margin"])
    hypoechoic = desc["echo_pattern"] == 3
    desc["marked"] = (
        hypoechoic & (rng.random(pathology.shape) < _MARKED_PROBABILITY[pathology])
    ).astype(int)
    ductal = non_mass & (rng.random(pathology.shape) < _DUCTAL_PROBABILITY[pathology])
    desc["presentation"] = np.where(ductal, 2, np.where(non_mass, 1, 0))
    calcified = desc["calcifications"] > 0
    desc["calcifications"] = np.where(
        ductal & calcified,
        3,
        np.where(~ductal & (desc["calcifications"] == 3), 1, desc["calcifications"]),
    )
    median = _SIZE_MEDIAN_MM[pathology] * np.where(non_mass, 1.8, 1.0)
    desc["size_mm"] = median * np.exp(_SIZE_SPREAD * rng.standard_normal(pathology.shape))
    halo_prob = np.where(pathology >= 2, 0.35, 0.04) * (desc["margin"] != 0) * ~non_mass
    desc["halo"] = rng.random(pathology.shape) < halo_prob
    # A few benign masses come with a smaller satellite (BUSI: ~3% of lesion images, two boxes).
    second = (pathology == 1) & ~non_mass & (rng.random(pathology.shape) < SATELLITE_PROBABILITY)
    desc["lesion_count"] = 1 + second
    return desc


def descriptor_dict(desc: dict[str, np.ndarray], i: int) -> dict:
    """The BI-RADS descriptors of sample `i` as plain strings and numbers."""
    out = {key: values[int(desc[key][i])] for key, values in DESCRIPTORS.items()}
    out["marked_hypoechogenicity"] = bool(desc["marked"][i])
    out["presentation"] = PRESENTATIONS[int(desc["presentation"][i])]
    out["size_mm"] = round(float(desc["size_mm"][i]), 1)
    out["echogenic_halo"] = bool(desc["halo"][i])
    out["lesion_count"] = int(desc["lesion_count"][i])
    return out


def malignancy_score(
    rng: np.random.Generator, desc: dict[str, np.ndarray], has_lesion: np.ndarray
) -> np.ndarray:
    """Latent malignancy score in [0, 1]: logistic of descriptor points, size and noise.

    The noise term stands for what a reader sees that the descriptors do not capture, so the
    score is informative about pathology without identifying it; its size keeps the score's
    benign-vs-DCIS AUC near 0.9 (0.935 with the former 1.1), a little above the images' CNN AUC.
    """
    points = sum(np.asarray(_POINTS[key])[desc[key]] for key in _POINTS)
    points = points + 0.04 * (desc["size_mm"] - 12.0) + 0.7 * desc["halo"] - 0.4
    logit = np.where(has_lesion, points, -4.0) + 1.6 * rng.standard_normal(has_lesion.shape)
    return special.expit(logit).astype(np.float32)


def _margin_table(rng: np.random.Generator, desc: dict[str, np.ndarray]) -> np.ndarray:
    """Relative boundary radius r(theta) [n, _ANGLES] of each mass, in units of its ellipse.

    Low harmonics make the shape (oval, round, irregular, the geographic outline of a non-mass
    area) and the gentle macrolobulation of some fibroadenomas; high harmonics make
    microlobulations; triangular peaks make angular corners (wide) or spicules (narrow).
    """
    n = desc["shape"].shape[0]
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    lobulated = (desc["margin"] == 0) & (rng.random(n) < 0.35)
    low_amp = np.choose(
        desc["shape"],
        [
            np.where(lobulated, rng.uniform(0.05, 0.09, n), 0.035),
            np.where(lobulated, rng.uniform(0.05, 0.09, n), 0.035),
            rng.uniform(0.08, 0.17, n),
            rng.uniform(0.12, 0.22, n),
        ],
    )
    k = np.arange(2, 6)[None, :, None]
    low = rng.uniform(0.3, 1.0, (n, 4, 1)) * np.cos(k * theta + rng.uniform(0, 7, (n, 4, 1)))
    micro_amp = np.where(desc["margin"] == 3, rng.uniform(0.08, 0.15, n), 0.0)
    k_micro = rng.integers(5, 11, (n, 2, 1))
    micro = np.cos(k_micro * theta + rng.uniform(0, 7, (n, 2, 1))).sum(1)
    angular, spiculated = desc["margin"] == 2, desc["margin"] == 4
    peaks = rng.integers(3, 7, n) * angular + rng.integers(6, 15, n) * spiculated
    height = np.where(angular, 0.25, 0.6)[:, None] * rng.uniform(0.5, 1.5, (n, 14))
    height *= np.arange(14)[None] < peaks[:, None]
    width = np.where(angular, 0.3, 0.05)[:, None] * rng.uniform(0.7, 1.3, (n, 14))
    gap = np.angle(np.exp(1j * (theta[None, None] - rng.uniform(-np.pi, np.pi, (n, 14, 1)))))
    tents = (height[..., None] * np.maximum(0, 1 - np.abs(gap) / width[..., None])).max(1)
    r = 1 + low_amp[:, None] * low.sum(1) + micro_amp[:, None] * micro + tents
    return np.maximum(r, 0.35).astype(np.float32)


def _mass(z, x, zc, xc, ax, az, tilt, table, soft):
    """Inside weight, normalized radius and boundary radius of tabulated-margin masses."""
    u = (x - xc) * np.cos(tilt) + (z - zc) * np.sin(tilt)
    v = (z - zc) * np.cos(tilt) - (x - xc) * np.sin(tilt)
    rho = np.hypot(u / ax, v / az)
    theta = np.arctan2(v / az, u / ax)
    index = ((theta + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.int32) % _ANGLES
    r = np.take_along_axis(table, index.reshape(len(table), -1), axis=1).reshape(rho.shape)
    return special.expit((r - rho) / soft), rho, r, np.cos(theta)


def _ducts(rng, z, x, zc, xc, size):
    """Non-mass lesions: a chain of small ellipses along a wandering duct (ductal extension)."""
    n, m = len(zc), 6
    heading = rng.uniform(-0.35, 0.35, (n, 1)) + np.pi * (rng.random((n, 1)) < 0.5)
    heading = heading + np.cumsum(rng.normal(0, 0.3, (n, m)), axis=1)
    step = (size / m)[:, None]
    path_x = np.cumsum(step * np.cos(heading), 1) - 0.5 * size[:, None] * np.cos(heading[:, :1])
    path_z = np.cumsum(step * np.sin(heading), 1) * 0.5
    path_x, path_z = path_x + xc[:, None], path_z + zc[:, None]
    along = step * rng.uniform(0.6, 0.9, (n, m))
    across = rng.uniform(0.8, 1.8, (n, m))
    weight = np.zeros(z.shape[:1] + (z.shape[1], x.shape[2]), np.float32)
    for j in range(m):
        c, s = np.cos(heading[:, j, None, None]), np.sin(heading[:, j, None, None])
        dx, dz = x - path_x[:, j, None, None], z - path_z[:, j, None, None]
        rho = np.hypot(
            (dx * c + dz * s) / along[:, j, None, None],
            (dz * c - dx * s) / across[:, j, None, None],
        )
        weight = np.maximum(weight, special.expit((1 - rho) / 0.15))
    return weight, path_z, path_x


def _echo_level(
    rng: np.random.Generator, echo: np.ndarray, marked: np.ndarray, field: np.ndarray
) -> np.ndarray:
    """Lesion reflectivity [n, rows, cols] for each echo pattern (hypoechoic: mild or marked)."""
    n = len(echo)
    pick = lambda lo, hi: rng.uniform(lo, hi, (n, 1, 1)).astype(np.float32)  # noqa: E731
    hypo = np.where(marked[:, None, None] > 0, pick(0.08, 0.22), pick(0.35, 0.8))
    cystic = field < pick(-0.4, 0.5)
    fluid = np.float32(0.03 * FAT_ECHO)
    # In units of subcutaneous fat, the reference of the BI-RADS echo pattern.
    levels = [
        np.full_like(field, fluid),
        FAT_ECHO * pick(9.0, 15.0) * np.exp(0.15 * field),
        np.where(cystic, fluid, FAT_ECHO * pick(0.3, 0.9)),
        FAT_ECHO * hypo * np.exp(0.15 * field),
        FAT_ECHO * pick(0.7, 1.4) * np.exp(0.15 * field),
        FAT_ECHO * pick(0.15, 0.5) * np.exp(0.9 * field),
    ]
    return np.choose(echo[:, None, None], levels)


def _alpha(rng: np.random.Generator, posterior: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Lesion attenuation (dB/cm/MHz) giving each posterior feature through the physics."""
    n = len(posterior)
    low, none, high = rng.uniform(0.0, 0.15, n), rng.uniform(0.6, 0.85, n), rng.uniform(1.2, 2.5, n)
    alpha = np.choose(posterior, [none, low, high, low])[:, None, None].astype(np.float32)
    # Combined pattern: shadowing behind one side of the mass, enhancement behind the other.
    high = high[:, None, None].astype(np.float32)
    return np.where((posterior[:, None, None] == 3) & right, high, alpha)


def _place(rng, desc, tissue, depth_mm, lateral_mm) -> dict[str, np.ndarray]:
    """Centre (mm), semi-axes (mm) and tilt of each lesion, from its size and orientation.

    Masses sit in the mammary zone, where cancers arise (terminal duct lobular units); parallel
    ones are wider than tall, not-parallel ones taller than wide.
    """
    n, cols = len(depth_mm), tissue["reflectivity"].shape[2]
    size = np.clip(desc["size_mm"], 4.0, 0.5 * np.minimum(depth_mm, lateral_mm))
    desc["size_mm"] = size
    parallel = desc["orientation"] == 0
    aspect = np.choose(
        desc["shape"],
        [
            rng.uniform(1.3, 2.1, n),
            rng.uniform(1.0, 1.15, n),
            rng.uniform(1.0, 1.7, n),
            rng.uniform(2.0, 3.2, n),
        ],
    )
    ax = np.where(parallel, size / 2, size / 2 / rng.uniform(1.05, 1.5, n))
    az = np.where(parallel, size / 2 / aspect, size / 2)
    fat, gland = tissue["fat_bottom"][:, 0, cols // 2], tissue["gland_bottom"][:, 0, cols // 2]
    zc = np.clip(fat + rng.uniform(0.3, 0.8, n) * (gland - fat), az + 5.0, 0.8 * depth_mm - az)
    xc = rng.uniform(-0.22, 0.22, n) * lateral_mm
    return {"zc": zc, "xc": xc, "ax": ax, "az": az, "tilt": rng.uniform(-0.25, 0.25, n)}


def _satellite(rng, z, x, place, index) -> np.ndarray:
    """Weight of a small oval beside the main mass (same echo pattern), for samples `index`."""
    m = len(index)
    side = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    a = rng.uniform(2.0, 4.0, m)
    xc = place["xc"][index] + side * (place["ax"][index] + a + rng.uniform(2.0, 6.0, m))
    zc = place["zc"][index] + rng.uniform(-3.0, 3.0, m)
    e = lambda v: v[:, None, None].astype(np.float32)  # noqa: E731
    table = np.ones((m, _ANGLES), np.float32)
    geometry = [e(zc), e(xc), e(a), e(a / rng.uniform(1.2, 1.8, m)), e(rng.uniform(-0.2, 0.2, m))]
    return _mass(z[index], x[index], *geometry, table, np.float32(0.03))[0]


def _foci(rng, desc, has_lesion, place) -> np.ndarray:
    """Echogenic foci [n, MAX_CALCIFICATIONS, 3] as (depth mm, lateral mm, amplitude).

    Inside a mass they are uniform over its inner ellipse; outside one, in a ring around it.
    Unused slots have amplitude 0.
    """
    n = len(has_lesion)
    u, v = rng.random((2, n, MAX_CALCIFICATIONS))
    amplitude = rng.uniform(8.0, 14.0, (n, MAX_CALCIFICATIONS))
    count = np.choose(
        desc["calcifications"],
        [0, rng.integers(1, 6, n), rng.integers(2, 6, n), rng.integers(3, 11, n)],
    )
    amplitude *= (np.arange(MAX_CALCIFICATIONS)[None] < count[:, None]) & has_lesion[:, None]
    radius = np.where(desc["calcifications"][:, None] == 2, 1.2 + 0.6 * u, 0.7 * np.sqrt(u))
    a = radius * np.cos(2 * np.pi * v) * place["ax"][:, None]
    b = radius * np.sin(2 * np.pi * v) * place["az"][:, None]
    cos, sin = np.cos(place["tilt"])[:, None], np.sin(place["tilt"])[:, None]
    z = place["zc"][:, None] + a * sin + b * cos
    x = place["xc"][:, None] + a * cos - b * sin
    return np.stack([z, x, amplitude], axis=-1).astype(np.float32)


def render_lesions(
    rng: np.random.Generator,
    desc: dict[str, np.ndarray],
    has_lesion: np.ndarray,
    tissue: dict[str, np.ndarray],
    x_mm: np.ndarray,
    depth_mm: np.ndarray,
    lateral_mm: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Places one lesion per flagged sample into the tissue maps (in place).

    Args:
      desc: descriptors from `draw_descriptors`; `size_mm` is clipped to fit the field of view.
      has_lesion: [n] bool; other samples are left untouched.
      tissue: maps from `phantom_tissue.breast_tissue`, updated in place.
      x_mm: [n, 1, cols] lateral beam positions; depth_mm, lateral_mm: [n] field of view.

    Returns:
      lesion weight [n, rows, cols] in [0, 1] (the mask is weight >= 0.5) and echogenic foci
      [n, MAX_CALCIFICATIONS, 3] as (depth mm, lateral mm, amplitude; 0 when unused).
    """
    z, (n, rows, cols) = tissue["z_mm"], tissue["reflectivity"].shape
    place = _place(rng, desc, tissue, depth_mm, lateral_mm)
    area = desc["presentation"] == 1
    soft = np.choose(desc["margin"], [0.03, rng.uniform(0.06, 0.12, n), 0.04, 0.04, 0.04])
    soft = np.where(area, rng.uniform(0.15, 0.25, n), soft)
    # A non-mass area is a zone of altered tissue, not a replacement of it: it only partly
    # takes the lesion's echogenicity.
    strength = np.where(area, rng.uniform(0.75, 0.95, n), 1.0)
    table = _margin_table(rng, desc)
    echo = _echo_level(
        rng, desc["echo_pattern"], desc["marked"], smooth_fields(rng, n, (rows, cols), (24, 12))
    )
    alpha = _alpha(rng, desc["posterior_features"], x_mm > place["xc"][:, None, None])
    capsule = (desc["margin"] == 0) & (rng.random(n) < 0.5)
    # Refraction at the steep lateral walls of smooth masses casts thin edge shadows: always
    # behind circumscribed oval or round masses, sometimes behind lobulated or indistinct ones.
    smooth_wall = (desc["margin"] == 0) | (
        ((desc["margin"] == 1) | (desc["margin"] == 3)) & (rng.random(n) < 0.4)
    )
    edge = smooth_wall * (desc["shape"] <= 1) * rng.uniform(1.5, 4.0, n)
    foci = _foci(rng, desc, has_lesion, place)

    weight = np.zeros((n, rows, cols), np.float32)
    mass = np.flatnonzero(has_lesion & (desc["presentation"] <= 1))
    duct = np.flatnonzero(has_lesion & (desc["presentation"] == 2))
    if len(mass):
        e = lambda a: a[mass][:, None, None].astype(np.float32)  # noqa: E731
        geometry = [e(place[k]) for k in ("zc", "xc", "ax", "az", "tilt")]
        w, rho, r, cos = _mass(z[mass], x_mm[mass], *geometry, table[mass], e(soft))
        weight[mass] = w
        satellite = np.flatnonzero(desc["lesion_count"] == 2)
        if len(satellite):
            weight[satellite] = np.maximum(
                weight[satellite], _satellite(rng, z, x_mm, place, satellite)
            )
        d = rho - r
        halo_width = 1.8 / np.sqrt(place["ax"] * place["az"])  # about 1.8 mm, in units of rho
        halo = e(desc["halo"]) * (d > 0) * np.exp(-0.5 * (d / e(halo_width)) ** 2)
        ring = np.exp(-0.5 * (d / 0.04) ** 2)
        tissue["reflectivity"][mass] += (1.3 * halo + 0.9 * e(capsule) * ring) * (1 - w)
        tissue["attenuation"][mass] += e(edge) * ring * cos**4
    if len(duct):
        w, path_z, path_x = _ducts(
            rng, z[duct], x_mm[duct], place["zc"][duct], place["xc"][duct], desc["size_mm"][duct]
        )
        weight[duct] = w
        # Intraductal calcifications lie along the duct.
        pick = (rng.random(path_z.shape[:1] + (MAX_CALCIFICATIONS,)) * path_z.shape[1]).astype(int)
        foci[duct, :, 0] = np.take_along_axis(path_z, pick, 1) + rng.normal(0, 0.4, pick.shape)
        foci[duct, :, 1] = np.take_along_axis(path_x, pick, 1) + rng.normal(0, 0.8, pick.shape)

    # Echogenicity blends geometrically (in dB, as the eye reads it), the rest linearly.
    blend = weight * strength[:, None, None].astype(np.float32)
    tissue["reflectivity"] = (tissue["reflectivity"] ** (1 - blend) * echo**blend).astype(
        np.float32
    )
    for key, lesion in (("attenuation", alpha), ("density", 1.0)):
        tissue[key] = (tissue[key] * (1 - blend) + lesion * blend).astype(np.float32)
    return weight, foci
