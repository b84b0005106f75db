"""Breast tissue and scanner models of the ultrasound phantom.

Tissue is described on the *beam grid* of a scanner: rows are depth along the beam (axial),
columns are beam positions (lateral; beam angle for a convex probe). Every map is a batch
`[n, rows, cols]` of per-sample values:

  reflectivity  root-mean-square scatterer amplitude (echogenicity; FAT_ECHO, GLAND_ECHO)
  density       fraction of resolution cells holding a scatterer (< 1 gives non-Rayleigh speckle)
  attenuation   alpha in dB/cm/MHz (Szabo, "Diagnostic Ultrasound Imaging", table B.1)

The layers follow the sonographic anatomy of the breast from skin to chest wall: skin line,
subcutaneous fat lobules bounded by Cooper's ligaments, the fibroglandular (mammary) zone with fat
islands and ducts, retromammary fat, and the pectoralis muscle with its fascia and striations.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import special

# Attenuation in dB/cm/MHz of the tissue classes (Szabo 2014, table B.1; Goss et al. 1978).
ALPHA_FAT = 0.45
ALPHA_GLAND = 0.75
ALPHA_SKIN = 0.8
ALPHA_MUSCLE = 1.0
# Echogenicity of subcutaneous fat and of fibroglandular tissue (about 21 dB apart, so fat reads
# hypoechoic and glands hyperechoic); BI-RADS grades lesion echo patterns against fat.
FAT_ECHO = 0.13
GLAND_ECHO = 1.5


@dataclasses.dataclass(frozen=True)
class Device:
    """A simulated scanner and probe preset.

    The resolution cell (`axial_sigma_mm`, `lateral_sigma_mm`) is an *effective* one: a real
    7 MHz pulse is about 10x finer than a 128-pixel image can show, so the point-spread function
    is scaled to what survives resizing, keeping the ordering between probes.
    """

    name: str
    probe: str  # "linear" or "convex"
    center_mhz: float  # sets frequency-dependent attenuation
    bandwidth: float  # fractional -6 dB bandwidth; sets cycles per pulse
    axial_sigma_mm: float  # Gaussian envelope of the pulse-echo response along depth
    lateral_sigma_mm: float  # Gaussian beam profile across beams
    depth_mm: float
    width_mm: float  # aperture of a linear probe; unused for convex
    sector_deg: float = 0.0  # field of view of a convex probe
    radius_mm: float = 0.0  # radius of curvature of a convex probe
    dynamic_range_db: float = 60.0
    gain_db: float = 0.0  # brightness offset of the display map
    gamma: float = 1.0  # grey-level map exponent
    noise_db: float = -62.0  # electronic noise relative to unit reflectivity, before TGC
    smoothing_px: float = 0.0  # speckle reduction filter of the scanner, in output pixels
    tgc_alpha: float = 0.55  # attenuation the default time-gain compensation undoes

    @property
    def lateral_mm(self) -> float:
        """Lateral extent of the beam grid, measured at mid-depth for a convex probe."""
        if self.probe == "convex":
            return np.deg2rad(self.sector_deg) * (self.radius_mm + self.depth_mm / 2)
        return self.width_mm


DEVICES = (
    # High-frequency linear array: finest speckle, widest dynamic range, shallow field.
    Device(
        "Phantom-L18-4",
        probe="linear",
        center_mhz=11.0,
        bandwidth=0.8,
        axial_sigma_mm=0.2,
        lateral_sigma_mm=0.45,
        depth_mm=30.0,
        width_mm=34.0,
        dynamic_range_db=66.0,
        gain_db=0.5,
        gamma=1.0,
        noise_db=-68.0,
    ),
    # General-purpose breast linear array.
    Device(
        "Phantom-L12-5",
        probe="linear",
        center_mhz=8.0,
        bandwidth=0.7,
        axial_sigma_mm=0.3,
        lateral_sigma_mm=0.6,
        depth_mm=40.0,
        width_mm=38.0,
        gain_db=-0.5,
        gamma=1.12,
    ),
    # Older low-frequency linear array with speckle-reduction filtering and a bright, flat map.
    Device(
        "Phantom-L9-3",
        probe="linear",
        center_mhz=6.0,
        bandwidth=0.6,
        axial_sigma_mm=0.38,
        lateral_sigma_mm=0.75,
        depth_mm=45.0,
        width_mm=44.0,
        dynamic_range_db=52.0,
        gain_db=3.0,
        gamma=0.85,
        smoothing_px=0.8,
        tgc_alpha=0.5,
    ),
    # Abdominal convex probe used on a large breast: coarse speckle, deep sector field of view.
    Device(
        "Phantom-C5-2",
        probe="convex",
        center_mhz=3.5,
        bandwidth=0.6,
        axial_sigma_mm=0.55,
        lateral_sigma_mm=1.4,
        depth_mm=50.0,
        width_mm=0.0,
        sector_deg=50.0,
        radius_mm=40.0,
        dynamic_range_db=56.0,
        gain_db=1.5,
        gamma=1.15,
        noise_db=-58.0,
    ),
)
DEVICE_BY_NAME = {device.name: device for device in DEVICES}


@functools.lru_cache(maxsize=32)
def _gaussian_basis(size: int, cells: int) -> np.ndarray:
    """[size, cells + 4] Gaussian bumps one cell wide, centred on a grid covering 0..size."""
    spacing = size / cells
    centres = (np.arange(-2, cells + 2) + 0.5) * spacing
    grid = np.arange(size)[:, None] + 0.5
    return np.exp(-0.5 * ((grid - centres[None]) / spacing) ** 2).astype(np.float32)


def smooth_fields(
    rng: np.random.Generator, n: int, shape: tuple[int, int], cells: tuple[int, int]
) -> np.ndarray:
    """Unit-variance smooth Gaussian random fields [n, *shape] with `cells` correlation cells.

    Coarse white noise expanded in separable Gaussian bumps (two small matrix products, far
    cheaper than spline zooming); anisotropic `cells` give laterally elongated lobules.
    """
    rows, cols = _gaussian_basis(shape[0], cells[0]), _gaussian_basis(shape[1], cells[1])
    coarse = rng.standard_normal((n, rows.shape[1], cols.shape[1]), np.float32)
    # einsum's own loops: BLAS threads only add contention on these tiny products.
    field = np.einsum("ncd,wd->ncw", coarse, cols)
    field = np.einsum("rc,ncw->nrw", rows, field)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)


def boundary_curves(
    rng: np.random.Generator, base: np.ndarray, amplitude: np.ndarray, x01: np.ndarray
) -> np.ndarray:
    """Undulating layer boundaries [n, 1, cols] (mm): `base` plus three random harmonics."""
    n = base.shape[0]
    k = np.arange(1, 4)
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1))
    weight = rng.uniform(0.3, 1.0, (n, 3, 1)) / k[None, :, None]
    wave = (weight * np.sin(2 * np.pi * k[None, :, None] * x01[None, None] / 2 + phase)).sum(1)
    return (base[:, None] + amplitude[:, None] * wave)[:, None, :].astype(np.float32)


def _band(distance: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """A bright line profile exp(-d^2 / 2w^2) around a boundary at signed distance `distance`."""
    return np.exp(-0.5 * (distance / width) ** 2)


# Chance per image of each artifact; neither depends on the pathology, so both confound it.
REVERBERATION_PROBABILITY = 0.3
REFRACTION_SHADOW_PROBABILITY = 0.45


def _artifacts(rng, z, x01, skin_bottom, fat_bottom, reflectivity, attenuation):
    """Reverberation and refraction shadows, artifacts of every breast scan (Feldman et al.,
    "US artifacts", RadioGraphics 2009).

    Reverberation: echoes bouncing between the probe face and the bright dermis-fat interface
    come back as fainter copies of that line at 2x, 3x, 4x its depth. Refraction shadows: the
    oblique Cooper's ligaments in the fat bend the beam away, leaving a thin dark column below
    them that can mimic the shadow of a cancer.
    """
    n = z.shape[0]
    reverb = rng.random(n) < REVERBERATION_PROBABILITY
    gain = (reverb * rng.uniform(0.6, 1.6, n))[:, None, None]
    for k in (2, 3, 4):
        copy = _band(z - k * skin_bottom, 0.2) * 0.5 ** (k - 2)
        reflectivity = reflectivity + gain * copy
    count = (rng.random(n) < REFRACTION_SHADOW_PROBABILITY) * rng.integers(1, 4, n)
    centre = rng.uniform(0.05, 0.95, (n, 3))
    width = rng.uniform(0.008, 0.025, (n, 3))
    skin, fat = skin_bottom.mean(axis=(1, 2)), fat_bottom.mean(axis=(1, 2))
    top = skin[:, None] + rng.uniform(0.2, 0.8, (n, 3)) * (fat - skin)[:, None]
    extra = rng.uniform(2.0, 5.0, (n, 3))
    for j in range(3):
        column = np.exp(
            -0.5 * ((x01[None, None] - centre[:, j, None, None]) / width[:, j, None, None]) ** 2
        )
        rows = _band(z - top[:, j, None, None], 0.7)
        on = (j < count)[:, None, None]
        attenuation = attenuation + on * extra[:, j, None, None] * rows * column
    return reflectivity, attenuation


def breast_tissue(
    rng: np.random.Generator, depth_mm: np.ndarray, rows: int, cols: int
) -> dict[str, np.ndarray]:
    """Draws layered breast tissue maps for a batch on a beam grid of `rows` x `cols`.

    Args:
      rng: random generator (consumed in a fixed order, so the batch is reproducible).
      depth_mm: [n] imaging depth of each sample's scanner.
      rows, cols: beam-grid size.

    Returns:
      dict of float32 [n, rows, cols] maps `reflectivity`, `density`, `attenuation`, plus
      `z_mm` [n, rows, 1] and the per-sample layer depths `fat_bottom`, `gland_bottom` [n, 1, cols].
    """
    n = depth_mm.shape[0]
    z = (depth_mm[:, None, None] * (np.arange(rows) + 0.5)[None, :, None] / rows).astype(np.float32)
    x01 = (np.arange(cols) + 0.5) / cols

    skin_top = rng.uniform(0.2, 0.6, n)
    skin_bottom = boundary_curves(rng, skin_top + rng.uniform(1.4, 2.4, n), np.full(n, 0.15), x01)
    # Breast composition: thickness of fat above and of the mammary zone vary between patients.
    fat_bottom = boundary_curves(
        rng, skin_top + rng.uniform(4.0, 13.0, n), rng.uniform(0.8, 3.0, n), x01
    )
    gland_bottom = boundary_curves(
        rng, fat_bottom[:, 0, cols // 2] + rng.uniform(5.0, 18.0, n), rng.uniform(1.0, 4.0, n), x01
    )
    muscle_top = gland_bottom + rng.uniform(0.8, 3.0, (n, 1, 1))
    muscle_bottom = muscle_top + rng.uniform(6.0, 12.0, (n, 1, 1))
    # Level of the lobule field below which the mammary zone is fat: fatty vs dense breasts.
    fat_islands = rng.uniform(-0.6, 0.4, (n, 1, 1)).astype(np.float32)

    lobules, ducts, fibres = np.split(smooth_fields(rng, 3 * n, (rows, cols), (9, 4)), 3)
    fine = smooth_fields(rng, n, (rows, cols), (22, 10))

    in_skin = (z >= skin_top[:, None, None]) & (z < skin_bottom)
    in_fat = (z >= skin_bottom) & (z < fat_bottom)
    in_gland = (z >= fat_bottom) & (z < gland_bottom)
    in_retro = (z >= gland_bottom) & (z < muscle_top)
    in_muscle = (z >= muscle_top) & (z < muscle_bottom)
    in_deep = z >= muscle_bottom

    # Fat lobules with Cooper's ligaments along their borders (level lines of a smooth field),
    # which also thread into the mammary zone.
    ligament = _band(lobules - 0.2, 0.09)
    fat = FAT_ECHO * np.exp(0.2 * fine) + 2.2 * ligament
    island = special.expit((fat_islands - lobules - 0.3 * fine) / 0.08)
    gland = GLAND_ECHO * np.exp(0.3 * fine) * (1 - island) + (0.3 + 1.5 * ligament) * island
    gland = gland * (1 - 0.85 * _band(ducts, 0.05))  # anechoic ducts
    slope = rng.uniform(-0.15, 0.15, (n, 1, 1)).astype(np.float32)
    period = rng.uniform(1.4, 2.6, (n, 1, 1)).astype(np.float32)
    # Lateral position in depth units, so the striation slope is an angle.
    cols_mm = (depth_mm[:, None, None] * x01[None, None, :]).astype(np.float32)
    phase = 2 * np.pi * (z + slope * cols_mm + 0.8 * fibres) / period
    muscle = 0.35 * np.exp(0.15 * fine) + 0.9 * np.maximum(np.cos(phase), 0) ** 10
    deep = 0.25 * np.exp(0.3 * fine)

    reflectivity = (
        2.6 * in_skin
        + fat * (in_fat | in_retro)
        + gland * in_gland
        + muscle * in_muscle
        + deep * in_deep
    )
    # Specular interfaces: the dermis-fat line and the pectoral fascia are bright.
    reflectivity += 1.6 * _band(z - skin_bottom, 0.25) + 2.0 * _band(z - muscle_top, 0.3)
    reflectivity += 1.2 * _band(z - muscle_bottom, 0.3)
    density = np.where(in_fat | in_retro, 0.35, 1.0)
    attenuation = (
        ALPHA_SKIN * in_skin
        + ALPHA_FAT * (in_fat | in_retro | in_deep)
        + ALPHA_MUSCLE * in_muscle
        + (ALPHA_GLAND * (1 - island) + ALPHA_FAT * island) * in_gland
    )
    reflectivity, attenuation = _artifacts(
        rng, z, x01, skin_bottom, fat_bottom, reflectivity, attenuation
    )
    return {
        "reflectivity": reflectivity.astype(np.float32),
        "density": density.astype(np.float32),
        "attenuation": attenuation.astype(np.float32),
        "z_mm": z,
        "fat_bottom": fat_bottom.astype(np.float32),
        "gland_bottom": gland_bottom.astype(np.float32),
    }
