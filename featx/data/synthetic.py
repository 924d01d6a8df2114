"""A generated phantom chest-radiograph dataset for the offline demo and the tests.

Each synthetic patient gets an anatomy (body outline, two dark lung fields, ribs,
clavicles, a bright mediastinum and heart); "opacity" patients (the positive class,
Kermany-like share) add patchy opacities of varied size, place and density inside
the lungs. Every patient has several images that differ by pose (shift, rotation,
scale), exposure (gain, gamma) and noise. The train/test split is by patient and
stratified by class. Everything is drawn from one seed, so the same arguments give
the same bytes.

A second "site" (`site="B"`) is the demo's external test set: the same disease drawn on other
patients (ids `siteb-0007`), acquired differently - lower contrast (a lifted black level and a
flatter gamma), more detector noise, and a burned-in corner marker (a bright "R" block, as
X-ray technologists place one) - so a model trained on site A shows an external drop. Site A's
output is unchanged by the site option (its images, hashes and phantoms.json are those of
version 2); site B's extra draws come after site A's in each image's stream.

The manifest also carries metadata for the subgroup analysis: sex (per patient),
view (PA or AP, per image) and age (per patient), drawn from their own random
stream so the images and the split do not depend on them. The built-in subgroup
difference: the opacity patients whose opacities are the faintest half (by total
haze) are aged 65 and over, the others under 65, so a model's AUC is lower in the
65+ band. Normal patients' ages spread over 20-89.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from featx.data.manifest import read_manifest, write_manifest
from featx.errors import FeatxError, ManifestError

CLASSES = ("normal", "opacity")
PARAMS_FILE = "phantoms.json"
MANIFEST_FILE = "manifest.csv"
# Bumped whenever the output changes, so a stale generated folder is regenerated (2: metadata columns;
# the images and the split are those of version 1).
GENERATOR_VERSION = 2
META_COLUMNS = ("sex", "age", "view")
OLD_AGE = 65  # positives with the fainter opacities are this old or older
SITES = ("A", "B")  # A: the demo's own data; B: a shifted acquisition, the demo's external set


@dataclass(frozen=True)
class PhantomParams:
    n_patients: int
    images_per_patient: tuple[int, int]
    image_size: int
    positive_fraction: float
    test_fraction: float
    seed: int
    generator_version: int = GENERATOR_VERSION
    site: str = "A"

    def to_json(self) -> dict:
        """The parameters as JSON-ready values (tuples as lists); `site` only when it is not A (so site A's
        phantoms.json is what it was before sites existed)."""
        data = asdict(self)
        data["images_per_patient"] = list(self.images_per_patient)
        if self.site == "A":
            data.pop("site")
        return data


# ---------------------------------------------------------------- drawing


def _soft_inside(r: np.ndarray, edge: float) -> np.ndarray:
    """1 inside r < 1, 0 outside, with a logistic edge of width `edge` (in r units)."""
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -40.0, 40.0)))


def _ellipse(u, v, cu, cv, au, av) -> np.ndarray:
    return np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled cells x cells Gaussian noise: blotchy texture, roughly unit variance."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, size, endpoint=False) + cells / (2.0 * size)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


@dataclass(frozen=True)
class _Anatomy:
    body_width: float
    lung_width: float
    lung_height: float
    lung_drop: float
    heart_size: float
    heart_shift: float
    rib_spacing: float
    rib_curve: float
    rib_offset: float
    tissue: float
    lung_level: float


@dataclass(frozen=True)
class _Opacity:
    cu: float
    cv: float
    su: float
    sv: float
    density: float
    texture_cells: int


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    return _Anatomy(
        body_width=rng.uniform(0.84, 0.95),
        lung_width=rng.uniform(0.22, 0.27),
        lung_height=rng.uniform(0.48, 0.56),
        lung_drop=rng.uniform(-0.12, -0.04),
        heart_size=rng.uniform(0.9, 1.12),
        heart_shift=rng.uniform(0.08, 0.16),
        rib_spacing=rng.uniform(0.13, 0.16),
        rib_curve=rng.uniform(0.55, 0.85),
        rib_offset=rng.uniform(0.0, 1.0),
        tissue=rng.uniform(0.40, 0.48),
        lung_level=rng.uniform(0.11, 0.15),
    )


def _draw_opacities(rng: np.random.Generator, anatomy: _Anatomy) -> list[_Opacity]:
    """1-4 patches inside the lungs: small dense nodules up to broad faint lobar haze."""
    patches = []
    for _ in range(int(rng.integers(1, 5))):
        side = rng.choice((-1.0, 1.0))
        # a point inside the lung ellipse, away from its rim
        angle = rng.uniform(0, 2 * np.pi)
        radius = 0.7 * np.sqrt(rng.uniform(0, 1))
        cu = side * 0.36 + radius * np.cos(angle) * anatomy.lung_width
        cv = anatomy.lung_drop + radius * np.sin(angle) * anatomy.lung_height
        scale = rng.uniform(0.05, 0.2)
        patches.append(
            _Opacity(
                cu=float(cu),
                cv=float(cv),
                su=float(scale * rng.uniform(0.7, 1.3)),
                sv=float(scale * rng.uniform(0.8, 1.6)),
                density=float(rng.uniform(0.16, 0.42) * (0.35 / (0.15 + scale)) ** 0.5),
                texture_cells=int(rng.integers(6, 14)),
            )
        )
    return patches


def haze_mass(opacities: list[_Opacity]) -> float:
    """How much opacity a patient's patches add up to (density x area): small means hard to see."""
    return float(sum(patch.density * patch.su * patch.sv for patch in opacities))


def _ages(positive: np.ndarray, masses: list[float], rngs: list[np.random.Generator]) -> list[int]:
    """Per patient: positives with below-median haze mass are OLD_AGE..89, the other positives 20..OLD_AGE-1."""
    faint_below = float(np.median([masses[i] for i in np.flatnonzero(positive)]))
    ages = []
    for index, rng in enumerate(rngs):
        if not positive[index]:
            ages.append(int(rng.integers(20, 90)))
        elif masses[index] < faint_below:
            ages.append(int(rng.integers(OLD_AGE, 90)))
        else:
            ages.append(int(rng.integers(20, OLD_AGE)))
    return ages


def render_phantom(
    size: int,
    anatomy: _Anatomy,
    opacities: list[_Opacity],
    rng: np.random.Generator,
    site: str = "A",
) -> np.ndarray:
    """One (size, size) uint8 radiograph; pose, exposure and noise are drawn from rng (site B: then its shift)."""
    # pose: the patient's coordinates seen through a small rotation, shift and scale
    theta = np.deg2rad(rng.uniform(-4.0, 4.0))
    shift_u, shift_v = rng.uniform(-0.05, 0.05, size=2)
    scale = rng.uniform(0.95, 1.05)
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(axis, axis)
    x, y = x - shift_u, y - shift_v
    u = (np.cos(theta) * x + np.sin(theta) * y) / scale
    v = (-np.sin(theta) * x + np.cos(theta) * y) / scale

    edge = 0.03
    image = np.full((size, size), 0.04)

    body = _soft_inside(_ellipse(u, v, 0.0, 0.25, anatomy.body_width, 1.2), edge)
    neck = _soft_inside(np.maximum(np.abs(u) / 0.2, (-0.75 - v) / 0.5 + 1.0), edge)
    body = np.maximum(body, neck * (v < -0.6))
    image = image * (1 - body) + anatomy.tissue * body

    lungs = np.zeros_like(u)
    for side in (-1.0, 1.0):
        r = _ellipse(u, v, side * 0.36, anatomy.lung_drop, anatomy.lung_width, anatomy.lung_height)
        lungs = np.maximum(lungs, _soft_inside(r, 0.08))
    texture = _smooth_noise(rng, size, 16)
    lung_intensity = anatomy.lung_level + 0.025 * texture + 0.08 * (v - anatomy.lung_drop).clip(0, None)
    image = image * (1 - lungs) + lung_intensity * lungs

    # ribs: arcs convex upwards, periodic in v bent by |u|
    thorax = _soft_inside(_ellipse(u, v, 0.0, -0.15, anatomy.body_width * 0.92, 0.72), 0.06)
    phase = (v - anatomy.rib_curve * (np.abs(u) - 0.35) ** 2) / anatomy.rib_spacing + anatomy.rib_offset
    distance = np.abs(phase - np.round(phase)) * anatomy.rib_spacing
    ribs = np.exp(-((distance / 0.022) ** 2)) * thorax
    image = image + 0.075 * ribs

    clavicles = np.zeros_like(u)
    for side in (-1.0, 1.0):
        along = side * u
        line = v - (-0.66 - 0.12 * (along - 0.1))
        clavicles = np.maximum(clavicles, np.exp(-((line / 0.03) ** 2)) * ((along > 0.06) & (along < 0.62)))
    image = image + 0.16 * clavicles

    # the mediastinum widens from the neck down to the heart, which bulges to the patient's left
    width = 0.08 + 0.05 * np.clip((v + 0.7) / 0.9, 0.0, 1.0)
    mediastinum = _soft_inside(np.maximum(np.abs(u) / width, np.abs(v + 0.2) / 0.62), 0.08)
    heart = _soft_inside(
        _ellipse(u, v, anatomy.heart_shift, 0.22, 0.27 * anatomy.heart_size, 0.21 * anatomy.heart_size), 0.08
    )
    mediastinum = np.maximum(mediastinum, heart)
    image = image * (1 - mediastinum) + 0.58 * mediastinum
    spine = _soft_inside(np.abs(u) / 0.055, 0.15) * body
    image = image + 0.06 * spine

    if opacities:
        haze = np.zeros_like(u)
        for patch in opacities:
            blob = np.exp(-0.5 * (((u - patch.cu) / patch.su) ** 2 + ((v - patch.cv) / patch.sv) ** 2))
            patchy = (0.55 + 0.45 * _smooth_noise(rng, size, patch.texture_cells)).clip(0.0, 1.4)
            haze = haze + patch.density * rng.uniform(0.85, 1.15) * blob * patchy
        image = image + haze * lungs

    # exposure and detector noise
    gamma = rng.uniform(0.85, 1.18)
    gain = rng.uniform(0.92, 1.08)
    image = gain * np.clip(image, 0.0, 1.0) ** gamma
    image = image + rng.normal(0.0, rng.uniform(0.01, 0.03), size=image.shape)
    if site == "B":
        image = _site_b(image, rng)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _site_b(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site B's acquisition: lower contrast (black level lifted, flatter gamma), more noise, a burned-in marker."""
    size = image.shape[0]
    image = 0.16 + 0.72 * np.clip(image, 0.0, 1.0) ** rng.uniform(1.15, 1.3)
    image = image + rng.normal(0.0, rng.uniform(0.035, 0.05), size=image.shape)
    # an "R" marker block in the top right corner: a bright square with a dark letter-ish cut
    side = max(4, size // 10)
    top, left = max(1, size // 32), size - side - max(1, size // 32)
    block = np.ones((side, side))
    stroke = max(1, side // 6)
    low, high = side // 5, side - side // 5
    block[low:high, side // 4 : side // 4 + stroke] = 0.2  # the R's stem
    block[low : low + stroke, side // 4 : 3 * side // 4] = 0.2  # its top
    block[side // 2 - stroke // 2 : side // 2 - stroke // 2 + stroke, side // 4 : 3 * side // 4] = 0.2  # its middle
    for k in range(high - side // 2):  # its leg
        column = min(side - 1, side // 4 + stroke + k * (side // 2) // max(1, high - side // 2))
        block[side // 2 + k, column : column + stroke] = 0.2
    image[top : top + side, left : left + side] = 0.95 * block
    return image


# ---------------------------------------------------------------- dataset


def _check_params(params: PhantomParams) -> None:
    lo, hi = params.images_per_patient
    if params.n_patients < 8:
        raise FeatxError(
            f"The phantom dataset needs at least 8 patients (both classes in train and test); got {params.n_patients}."
        )
    if not 1 <= lo <= hi:
        raise FeatxError(
            f"images_per_patient must be (low, high) with 1 <= low <= high; got {params.images_per_patient}."
        )
    if params.site not in SITES:
        raise FeatxError(f"The phantom site must be one of {list(SITES)}; got {params.site!r}.")
    if params.image_size < 16:
        raise FeatxError(f"The phantom image size must be at least 16 pixels; got {params.image_size}.")
    if not 0.0 < params.positive_fraction < 1.0:
        raise FeatxError(f"positive_fraction must be strictly between 0 and 1; got {params.positive_fraction}.")
    if not 0.0 < params.test_fraction < 1.0:
        raise FeatxError(f"test_fraction must be strictly between 0 and 1; got {params.test_fraction}.")


def _assign_classes_and_splits(params: PhantomParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: class (1 = opacity) at the exact positive share, and a class-stratified test split."""
    n = params.n_patients
    n_pos = min(n - 2, max(2, int(round(params.positive_fraction * n))))
    positive = np.zeros(n, dtype=bool)
    positive[rng.permutation(n)[:n_pos]] = True
    test = np.zeros(n, dtype=bool)
    for members in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        n_test = min(len(members) - 1, max(1, int(round(params.test_fraction * len(members)))))
        test[rng.permutation(members)[:n_test]] = True
    return positive, test


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def existing_phantoms(dest: Path | str, params: PhantomParams) -> Path | None:
    """The manifest of a complete phantom dataset in dest generated with exactly these parameters, else None."""
    dest = Path(dest)
    manifest, recorded = dest / MANIFEST_FILE, dest / PARAMS_FILE
    if not (manifest.is_file() and recorded.is_file()):
        return None
    try:
        if json.loads(recorded.read_text()) != params.to_json():
            return None
        paths = read_manifest(manifest).paths
    except (OSError, ValueError, ManifestError):
        return None
    if not paths or not all((dest / path).is_file() for path in paths):
        return None
    return manifest


def _remove_previous_phantoms(dest: Path) -> None:
    """Delete the images an earlier generation listed (only when dest holds a phantom dataset)."""
    recorded, manifest = dest / PARAMS_FILE, dest / MANIFEST_FILE
    if not recorded.is_file():
        return
    if manifest.is_file():
        try:
            listed = read_manifest(manifest).paths
        except ManifestError:
            listed = ()
        for rel in listed:
            path = (dest / rel).resolve()
            if path.suffix == ".png" and dest.resolve() in path.parents:
                path.unlink(missing_ok=True)
    recorded.unlink()  # the folder counts as incomplete until the new generation ends


def generate_phantoms(
    dest,
    n_patients: int = 120,
    images_per_patient: tuple[int, int] = (2, 5),
    image_size: int = 128,
    positive_fraction: float = 0.74,
    test_fraction: float = 0.2,
    seed: int = 0,
    site: str = "A",
) -> Path:
    """Write the phantom images under dest/<split>/<label>/ and dest/manifest.csv; return the manifest path.

    Image paths in the manifest are relative to dest; patient ids look like
    ``phantom-0007`` (site B: ``siteb-0007``); the classes are "normal" and "opacity" (the positive class).
    Site B (the demo's external set) adds a `site` metadata column; site A's manifest has none.
    """
    params = PhantomParams(
        n_patients=int(n_patients),
        images_per_patient=(int(images_per_patient[0]), int(images_per_patient[1])),
        image_size=int(image_size),
        positive_fraction=float(positive_fraction),
        test_fraction=float(test_fraction),
        seed=int(seed),
        site=str(site),
    )
    _check_params(params)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _remove_previous_phantoms(dest)

    positive, test = _assign_classes_and_splits(params, np.random.default_rng([params.seed, 0]))
    rows = []
    masses: list[float] = []
    for index in range(params.n_patients):
        # one stream per patient: a patient's images do not depend on the others
        rng = np.random.default_rng([params.seed, 1, index])
        patient_id = f"{'phantom' if params.site == 'A' else 'site' + params.site.lower()}-{index:04d}"
        label = CLASSES[int(positive[index])]
        split = "test" if test[index] else "train"
        anatomy = _draw_anatomy(rng)
        opacities = _draw_opacities(rng, anatomy) if positive[index] else []
        masses.append(haze_mass(opacities))
        n_images = int(rng.integers(params.images_per_patient[0], params.images_per_patient[1] + 1))
        folder = dest / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_images):
            data = _png_bytes(render_phantom(params.image_size, anatomy, opacities, rng, params.site))
            rel = f"{split}/{label}/{patient_id}_{k:02d}.png"
            (dest / rel).write_bytes(data)
            rows.append(
                {
                    "path": rel,
                    "label": label,
                    "split": split,
                    "patient_id": patient_id,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )

    # metadata from a stream of its own (stream 2): the images and the split above do not depend on it
    meta_rngs = [np.random.default_rng([params.seed, 2, index]) for index in range(params.n_patients)]
    sexes = [("F", "M")[int(rng.integers(0, 2))] for rng in meta_rngs]
    ages = _ages(positive, masses, meta_rngs)
    for row in rows:
        index = int(row["patient_id"].split("-")[1])
        row.update(sex=sexes[index], age=str(ages[index]), view="PA" if meta_rngs[index].random() < 0.7 else "AP")
        if params.site != "A":
            row["site"] = params.site
    manifest = write_manifest(rows, dest / MANIFEST_FILE)
    (dest / PARAMS_FILE).write_text(json.dumps(params.to_json(), indent=2) + "\n")
    return manifest
