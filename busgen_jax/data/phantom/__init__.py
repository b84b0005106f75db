"""A B-mode breast ultrasound phantom: the default data of busgen_jax.

Images are formed as a scanner forms them (Jensen, "Linear description of ultrasound imaging
systems", 1999; Szabo, "Diagnostic Ultrasound Imaging", ch. 8-10):

  1. tissue maps of echogenicity, scatterer density and attenuation (`phantom_tissue`) with one
     lesion drawn from BI-RADS descriptors (`phantom_lesions`);
  2. random scatterers, attenuated on the way down and back (two-way, frequency dependent);
  3. RF echo = scatterers convolved with the pulse-echo point-spread function, a Gaussian-windowed
     cosine axially times a Gaussian beam laterally, plus electronic noise;
  4. time-gain compensation, envelope detection (Hilbert transform), log compression to the
     scanner's dynamic range, speckle reduction, and scan conversion for a convex probe.

Fully developed speckle therefore has a Rayleigh envelope (mean/std = 1.91 before compression),
and the scanners of `PHANTOM_DEVICES` differ in speckle size, dynamic range, gain and field of view.

Presentations (`phantom_lesions`) follow the ultrasound literature, so benign lesions and DCIS
overlap as in clinic: benign lesions are mostly fibroadenoma-like solid oval circumscribed masses
(some gently macrolobulated, with a thin capsule), then cysts with posterior enhancement and a few
non-mass areas; DCIS is mostly a hypoechoic mass with microlobulated or indistinct margins, also a
non-mass hypoechoic area or ductal change, with echogenic foci (calcifications) in about half.
Artifacts of any class (`phantom_tissue`): reverberation of the skin line, refraction shadows
below Cooper's ligaments, edge shadows beside smooth masses; posterior enhancement and shadowing
come from the lesion's attenuation through the imaging physics. The latent malignancy score
comes from the same descriptors that shape the image, plus reader noise.

Difficulty, measured (BENCHMARKS.md, "Phantom difficulty"): the classifier job (default ResNet,
32 px, 1,200 steps) trained on the 4,174 training images of `configs/phantom.py:benign_dcis`
separates benign from DCIS at test AUC 0.706 (DeLong 95% CI 0.677-0.735, 1,197 cases) with the
simulator of commit 10dea58, and this version at test AUC 0.787 (0.761-0.812): just below the
0.80-0.90 range the simulator aims at.

Samples are drawn in fixed chunks of `CHUNK`, each from `np.random.default_rng([seed, chunk])`, so
sample i is the same however many samples are generated. Default class mix (DEFAULT_CLASS_PROBS):
normal 0.2, benign 0.4, malignant 0.25, DCIS 0.15. About one patient in eight has two images
(two views of the same lesion: same pathology, device and descriptors), so splits must be drawn
per patient.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from scipy import ndimage, signal

from busgen_jax.data import schema
from busgen_jax.data.phantom import lesions as phantom_lesions
from busgen_jax.data.phantom.tissue import DEVICE_BY_NAME, DEVICES, Device, breast_tissue

PHANTOM_DEVICES: tuple[str, ...] = tuple(device.name for device in DEVICES)
DEFAULT_CLASS_PROBS = {"normal": 0.2, "benign": 0.4, "malignant": 0.25, "dcis": 0.15}
CHUNK = 8
PAIR_PROBABILITY = 0.15  # chance that an image opens a two-image patient
GENERATOR = "busgen_jax.phantom/1"
# The display maps 0 dB to this far above the image's mean echo, so glands sit near mid-grey.
DISPLAY_HEADROOM_DB = 28.0
# Clinical frames (~500 px) are resized to the output size, which averages speckle; a Gaussian
# of this width (output pixels) stands in for that anti-aliasing.
RESIZE_BLUR_PX = 0.6


def psf_kernel(device: Device, dz_mm: float, dx_mm: float) -> np.ndarray:
    """Pulse-echo point-spread function [rows, cols], unit energy, on a dz x dx grid.

    Axially a Gaussian-windowed cosine, h(z) = exp(-z^2 / 2 s_z^2) cos(2 pi z / p), laterally a
    Gaussian beam. For a Gaussian pulse of fractional bandwidth B the envelope width and carrier
    period obey s_z = 0.375 p / B (round-trip wavelength p); s_z is kept wide enough that the
    carrier has >= 3.5 samples per period, so the Hilbert transform sees no aliasing.
    """
    sigma_z = max(device.axial_sigma_mm / dz_mm, 3.5 * 0.375 / device.bandwidth)
    sigma_x = max(device.lateral_sigma_mm / dx_mm, 0.6)
    period = sigma_z * device.bandwidth / 0.375
    z = np.arange(-np.ceil(3 * sigma_z), np.ceil(3 * sigma_z) + 1)
    x = np.arange(-np.ceil(3 * sigma_x), np.ceil(3 * sigma_x) + 1)
    axial = np.exp(-0.5 * (z / sigma_z) ** 2) * np.cos(2 * np.pi * z / period)
    kernel = np.outer(axial, np.exp(-0.5 * (x / sigma_x) ** 2))
    return (kernel / np.sqrt((kernel**2).sum())).astype(np.float32)


def rf_echo(scatterers: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """RF echo lines [n, rows, cols]: scatterers convolved with the PSF (linear imaging model)."""
    return signal.fftconvolve(scatterers, kernel[None], mode="same", axes=(1, 2))


def envelope(rf: np.ndarray) -> np.ndarray:
    """Envelope |rf + i H[rf]| by the Hilbert transform along depth (axis 1)."""
    return np.abs(signal.hilbert(rf, axis=1)).astype(np.float32)


def log_compress(
    envelope: np.ndarray, dynamic_range_db: float, offset_db: np.ndarray
) -> np.ndarray:
    """Maps the envelope to [0, 1]: 0 dB at `offset_db` above the image's mean echo, floor at -DR."""
    db = 20 * np.log10(envelope + 1e-12)
    top = 20 * np.log10(envelope.mean(axis=(1, 2), keepdims=True) + 1e-12) + offset_db
    return np.clip((db - top) / dynamic_range_db + 1, 0, 1)


def scan_convert(beam: np.ndarray, device: Device, order: int) -> np.ndarray:
    """Resamples beam-grid images [n, depth, angle] of a convex probe onto a Cartesian grid."""
    n, rows, cols = beam.shape
    half = np.deg2rad(device.sector_deg) / 2
    r0, r1 = device.radius_mm, device.radius_mm + device.depth_mm
    y = (
        np.linspace(r0 * np.cos(half), r1, rows, endpoint=False)
        + (r1 - r0 * np.cos(half)) / 2 / rows
    )
    x = (np.arange(cols) + 0.5) / cols * 2 * r1 * np.sin(half) - r1 * np.sin(half)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    row = (np.hypot(xx, yy) - r0) / device.depth_mm * rows - 0.5
    col = (np.arctan2(xx, yy) + half) / (2 * half) * cols - 0.5
    coords = np.broadcast_to(np.stack([row, col]), (n, 2, rows, cols))
    batch = np.broadcast_to(np.arange(n)[:, None, None], (n, rows, cols))
    coords = np.concatenate([batch[:, None], coords], axis=1).transpose(1, 0, 2, 3)
    return ndimage.map_coordinates(beam, coords, order=order, mode="constant", cval=0.0)


def lesion_boxes(mask: np.ndarray, min_pixels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Drops specks smaller than `min_pixels` (keeping the largest part) and boxes the rest.

    Returns the cleaned mask and float32 [k, 4] normalized xyxy boxes, one per 8-connected
    component, ordered by label (row-major first pixel).
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask, np.zeros((0, 4), np.float32)
    sizes = np.bincount(labels.ravel())[1:]
    keep = (sizes >= min_pixels) | (sizes == sizes.max())
    mask = keep[labels - 1] & (labels > 0)
    h, w = mask.shape
    boxes = [
        [s[1].start / w, s[0].start / h, s[1].stop / w, s[0].stop / h]
        for s, k in zip(ndimage.find_objects(labels), keep, strict=True)
        if k
    ]
    return mask, np.asarray(boxes, np.float32)


def _pair_sources(rng: np.random.Generator, n: int) -> np.ndarray:
    """source[i] = first image of sample i's patient: consecutive pairs share a patient."""
    pair = rng.random(n) < PAIR_PROBABILITY
    source, i = np.arange(n), 0
    while i < n - 1:
        if pair[i]:
            source[i + 1] = i
        i += 2 if pair[i] else 1
    return source


def _form_images(rng, tissue, foci, devices, image_size):
    """Scatterers -> attenuation -> PSF -> noise -> TGC -> envelope -> display, per sample.

    The RF is simulated at twice the axial sampling of the tissue grid so that the carrier of
    the pulse is resolved; the envelope is averaged back to the output grid.
    """
    up = 2
    maps = {k: np.repeat(tissue[k], up, axis=1) for k in ("reflectivity", "density", "attenuation")}
    n, rows, cols = maps["reflectivity"].shape
    depth = np.array([d.depth_mm for d in devices], np.float32)[:, None, None]
    lateral = np.array([d.lateral_mm for d in devices], np.float32)
    f0 = np.array([d.center_mhz for d in devices], np.float32)[:, None, None]
    z_cm = depth * ((np.arange(rows, dtype=np.float32) + 0.5) / rows)[None, :, None] / 10
    present = rng.random((n, rows, cols), np.float32) < maps["density"]
    scatterers = maps["reflectivity"] * rng.standard_normal((n, rows, cols), np.float32)
    scatterers *= present / np.sqrt(maps["density"])
    # Echogenic foci (calcifications) are strong point scatterers.
    row = np.clip(foci[..., 0] / depth[:, 0] * rows, 0, rows - 1).astype(int)
    col = np.clip((foci[..., 1] / lateral[:, None] + 0.5) * cols, 0, cols - 1).astype(int)
    np.add.at(scatterers, (np.arange(n)[:, None], row, col), foci[..., 2])
    # Two-way attenuation exp(-2 alpha f z), integrated along each beam (Szabo eq. 4.13).
    path_db = 2 * f0 * np.cumsum(maps["attenuation"], axis=1) * (depth / rows / 10)
    scatterers *= 10 ** (-path_db / 20)
    noise_db = np.array([d.noise_db for d in devices], np.float32)[:, None, None]
    noise = rng.standard_normal((n, rows, cols), np.float32) * 10 ** (noise_db / 20)
    tgc_alpha = np.array([d.tgc_alpha for d in devices])[:, None, None]
    tgc_alpha = (tgc_alpha + rng.normal(0, 0.04, (n, 1, 1))).astype(np.float32)
    offset = rng.normal(0, 1.5, n)[:, None, None]
    images = np.empty((n, image_size, image_size), np.uint8)
    for device in dict.fromkeys(devices):
        idx = np.array([d is device for d in devices])
        kernel = psf_kernel(device, device.depth_mm / rows, device.lateral_mm / cols)
        # Noise enters before the PSF: the receive filter band-limits it like the echoes.
        rf = rf_echo(scatterers[idx] + noise[idx], kernel)
        rf *= 10 ** (2 * device.center_mhz * tgc_alpha[idx] * z_cm[idx] / 20)  # time-gain comp.
        env = envelope(rf).reshape(len(rf), image_size, up, cols).mean(2)
        shade = log_compress(
            env, device.dynamic_range_db, DISPLAY_HEADROOM_DB - device.gain_db + offset[idx]
        )
        # Scanner speckle reduction plus the anti-aliasing of resizing a frame to the output.
        blur = np.hypot(device.smoothing_px, RESIZE_BLUR_PX)
        shade = ndimage.gaussian_filter(shade, (0, blur, blur))
        if device.probe == "convex":
            shade = scan_convert(shade, device, order=1)
        images[idx] = np.round(255 * np.clip(shade, 0, 1) ** device.gamma)
    return images


def _lesion_masks(weight, devices):
    """Binary lesion masks on the output grid (scan converted for convex probes)."""
    for i, device in enumerate(devices):
        if device.probe == "convex":
            weight[i] = scan_convert(weight[i : i + 1], device, order=0)[0]
    return weight >= 0.5


def _chunk(seed: int, chunk: int, image_size: int, probs: np.ndarray, names: tuple[str, ...]):
    """All fields of samples chunk * CHUNK .. (chunk + 1) * CHUNK - 1."""
    rng = np.random.default_rng([seed, chunk])
    n, rows, cols = CHUNK, image_size, image_size
    source = _pair_sources(rng, n)
    pathology = phantom_lesions._categorical(rng, np.tile(probs, (n, 1)))[source]
    device_index = rng.integers(0, len(names), n)[source]
    devices = [DEVICE_BY_NAME[names[k]] for k in device_index]
    desc = {k: v[source] for k, v in phantom_lesions.draw_descriptors(rng, pathology).items()}
    has_lesion = pathology > 0
    depth = np.array([d.depth_mm for d in devices])
    lateral = np.array([d.lateral_mm for d in devices])
    tissue = breast_tissue(rng, depth, rows, cols)
    x_mm = (lateral[:, None, None] * ((np.arange(cols) + 0.5) / cols - 0.5)[None, None]).astype(
        np.float32
    )
    weight, foci = phantom_lesions.render_lesions(
        rng, desc, has_lesion, tissue, x_mm, depth, lateral
    )
    images = _form_images(rng, tissue, foci, devices, image_size)
    masks = _lesion_masks(weight, devices)
    boxes = []
    for i in range(n):
        masks[i], box = lesion_boxes(masks[i] & has_lesion[i])
        boxes.append(box)
    return {
        "image": images,
        "mask": masks.astype(np.uint8) * 255,
        "boxes": boxes,
        "pathology": [schema.PATHOLOGIES[k] for k in pathology],
        "device": [d.name for d in devices],
        "birads": [
            phantom_lesions.descriptor_dict(desc, i) if has_lesion[i] else {} for i in range(n)
        ],
        "malignancy_score": phantom_lesions.malignancy_score(rng, desc, has_lesion),
        "patient_index": chunk * CHUNK + source,
    }


def _class_probs(class_probs: Mapping[str, float] | None) -> np.ndarray:
    """Validated class probabilities in the order of schema.PATHOLOGIES."""
    class_probs = dict(DEFAULT_CLASS_PROBS if class_probs is None else class_probs)
    unknown = set(class_probs) - set(schema.PATHOLOGIES)
    if unknown:
        raise ValueError(
            f"class_probs: unknown pathologies {sorted(unknown)}; choose from {schema.PATHOLOGIES}"
        )
    probs = np.array([float(class_probs.get(p, 0.0)) for p in schema.PATHOLOGIES])
    if (probs < 0).any() or not np.isfinite(probs).all() or probs.sum() <= 0:
        raise ValueError(
            f"class_probs: need non-negative weights with a positive sum, got {class_probs}"
        )
    return probs / probs.sum()


def generate(
    num: int,
    seed: int,
    image_size: int = 128,
    *,
    class_probs: Mapping[str, float] | None = None,
    devices: tuple[str, ...] | None = None,
    start_index: int = 0,
) -> dict:
    """Simulates samples start_index .. start_index + num - 1 of the phantom dataset `seed`.

    Args:
      num, seed, start_index: which samples; each depends only on (seed, its index, the options).
      image_size: side of the square images, at least 16.
      class_probs: pathology -> weight (normalized); default DEFAULT_CLASS_PROBS.
      devices: names from PHANTOM_DEVICES to draw from uniformly; default all.

    Returns:
      {'image': uint8 [n, H, W], 'mask': uint8 {0, 255} [n, H, W], 'boxes': list of float32
      [k, 4] normalized xyxy, 'pathology': list[str], 'device': list[str], 'birads': list[dict],
      'malignancy_score': float32 [n], 'patient_index': int [n]}.
    """
    probs = _class_probs(class_probs)
    names = tuple(PHANTOM_DEVICES if devices is None else devices)
    unknown = [name for name in names if name not in DEVICE_BY_NAME]
    if unknown or not names:
        raise ValueError(
            f"devices: unknown or empty {unknown or names}; choose from {PHANTOM_DEVICES}"
        )
    if image_size < 16:
        raise ValueError(f"image_size: must be at least 16, got {image_size}")
    if num < 0 or start_index < 0 or seed < 0:
        raise ValueError(
            f"num, start_index and seed must be >= 0, got {num}, {start_index}, {seed}"
        )
    # Always at least one chunk, so that num == 0 still returns correctly shaped empty arrays.
    first = start_index // CHUNK
    last = max(first, (start_index + num - 1) // CHUNK)
    parts = [_chunk(seed, c, image_size, probs, names) for c in range(first, last + 1)]
    lo = start_index - first * CHUNK
    out = {}
    for key in ("image", "mask", "malignancy_score", "patient_index"):
        out[key] = np.concatenate([p[key] for p in parts])[lo : lo + num]
    for key in ("boxes", "pathology", "device", "birads"):
        out[key] = [v for p in parts for v in p[key]][lo : lo + num]
    return out


def _label_map(label_map: Mapping[str, str] | None) -> dict[str, str]:
    """Validated pathology relabelling: keys and values from schema.PATHOLOGIES."""
    label_map = dict(label_map or {})
    bad = {k: v for k, v in label_map.items() if {k, v} - set(schema.PATHOLOGIES)}
    if bad:
        raise ValueError(
            f"label_map: {bad} is not a mapping between pathologies {schema.PATHOLOGIES}"
        )
    return label_map


def patient_split(seed: int, patient_index: int, fractions: tuple[float, ...]) -> str:
    """Split of a patient: a fixed uniform draw per (seed, patient) against the fractions."""
    u = np.random.default_rng([seed, patient_index, 1]).random()
    bounds = np.cumsum(fractions) / np.sum(fractions)
    return schema.SPLITS[min(int((u > bounds).sum()), len(schema.SPLITS) - 1)]


def phantom_records(
    num: int,
    seed: int,
    image_size: int = 128,
    *,
    class_probs: Mapping[str, float] | None = None,
    devices: tuple[str, ...] | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    label_map: Mapping[str, str] | None = None,
) -> Iterator[dict]:
    """Yields `num` schema records (see `schema.make_record`) of the phantom dataset `seed`.

    Case and patient ids are pseudonymous (`phantom<seed>-c<index>`, `phantom<seed>-p<index>`);
    the split is drawn per patient, so both images of a patient land in the same split.
    `label_map` relabels pathologies in the records ({"dcis": "malignant"} gives the coarse labels
    a foundation corpus carries); images, descriptors and scores are those of the true pathology.
    """
    relabel = _label_map(label_map)
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(
            f"split_fractions: need three non-negative fractions (train, val, "
            f"test), got {split_fractions}"
        )
    provenance = {"source": "phantom", "seed": seed, "generator": GENERATOR}
    block = 8 * CHUNK
    for start in range(0, num, block):
        batch = generate(
            min(block, num - start),
            seed,
            image_size,
            class_probs=class_probs,
            devices=devices,
            start_index=start,
        )
        for i, patient in enumerate(batch["patient_index"]):
            yield schema.make_record(
                batch["image"][i],
                pathology=relabel.get(batch["pathology"][i], batch["pathology"][i]),
                device=batch["device"][i],
                case_id=f"phantom{seed}-c{start + i:07d}",
                patient_id=f"phantom{seed}-p{int(patient):07d}",
                split=patient_split(seed, int(patient), split_fractions),
                provenance=provenance,
                mask=batch["mask"][i],
                boxes=batch["boxes"][i],
                birads=batch["birads"][i],
                malignancy_score=float(batch["malignancy_score"][i]),
            )
