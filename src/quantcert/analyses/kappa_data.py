"""Images for the kappa analysis: an ``.npz`` with ``images`` (and optionally ``labels``), one
``.vnnlib`` file (its input box centre is one image), or a folder of ``.vnnlib`` files.

uint8 images are scaled to [0, 1]; every image is reshaped to the network's input shape (so
28x28 MNIST images feed a (784, 1) input). Bad input raises ``InputError`` (one line).
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from quantcert.errors import InputError
from quantcert.network import Network
from quantcert.ops.base import DTYPE

_BOUND = re.compile(r"\(\s*assert\s*\(\s*(<=|>=)\s+X_(\d+)\s+([-+0-9.eE]+)\s*\)\s*\)")
_LABEL = re.compile(r"label\s*:?\s*(\d+)", re.IGNORECASE)
_OUTPUT = re.compile(r"\(\s*>=\s+Y_(\d+)\s+Y_(\d+)\s*\)")


@dataclass(frozen=True)
class ImageSet:
    """``images`` (N, *input_shape) float64; ``labels`` (N,) or None; where they came from."""

    images: Tensor
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _fit(images: np.ndarray, input_shape: tuple[int, ...], source: str) -> Tensor:
    """(N, ...) -> (N, *input_shape) float64, uint8 scaled to [0, 1]."""
    if images.ndim < 1 or images.shape[0] == 0:
        raise InputError(f"{source}: no images")
    size = int(np.prod(input_shape))
    per_image = int(np.prod(images.shape[1:]))
    if per_image != size:
        raise InputError(
            f"{source}: images of shape {tuple(images.shape[1:])} do not fit the model input "
            f"{tuple(input_shape)}"
        )
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    data = images.astype(np.float64) / scale
    if not np.isfinite(data).all():
        raise InputError(f"{source}: images hold NaN or Inf values")
    return torch.from_numpy(data.reshape(images.shape[0], *input_shape)).to(DTYPE)


def _load_npz(path: Path, input_shape: tuple[int, ...], limit: int | None) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable .npz file ({type(exc).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is not a readable .npz file (a single array)")
    with archive:
        if "images" not in archive.files:
            raise InputError(f"{path}: no 'images' array (found: {', '.join(archive.files)})")
        images = _array(archive, "images", path)[:limit]
        labels = _array(archive, "labels", path)[:limit] if "labels" in archive.files else None
    if images.dtype.kind not in "buif":
        raise InputError(f"{path}: 'images' holds {_kind(images)}, not numbers")
    if images.ndim == 0:
        raise InputError(f"{path}: 'images' is a single number, not an array of images")
    if labels is not None:
        if labels.dtype.kind not in "bui" and not _integral(labels):
            raise InputError(f"{path}: 'labels' holds {_kind(labels)}, not class indices")
        if labels.ndim == 0 or len(labels) != len(images):
            n = 1 if labels.ndim == 0 else len(labels)
            raise InputError(f"{path}: {n} labels for {len(images)} images")
    out_labels = None if labels is None else np.asarray(labels).astype(np.int64).ravel()
    return ImageSet(_fit(images, input_shape, str(path)), out_labels, str(path))


def _array(archive: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    """One array of an ``.npz``; unreadable ones (Python objects, corrupt members) refused."""
    try:
        return np.asarray(archive[name])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        why = "Python objects" if "allow_pickle" in str(exc) else type(exc).__name__
        raise InputError(f"{path}: array {name!r} cannot be read ({why})") from None


def _kind(a: np.ndarray) -> str:
    kinds = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers"}
    return kinds.get(a.dtype.kind, f"values of type {a.dtype}")


def _integral(a: np.ndarray) -> bool:
    """Float labels that are whole numbers (e.g. labels saved as float) are accepted."""
    return a.dtype.kind == "f" and bool(np.isfinite(a).all()) and bool((a == np.round(a)).all())


def vnnlib_box(path: Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The input box ``(lower, upper)`` of a VNN-LIB file and its label when stated (a
    ``label: N`` comment, or the ``Y_j >= Y_k`` disjuncts all naming the same ``k``).

    Uses ``quantcert.intake.vnnlib`` when that parser is installed, else reads the
    ``(assert (<= X_i v))`` / ``(assert (>= X_i v))`` lines itself."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable VNN-LIB file ({type(exc).__name__})") from None
    box = _parsed_box(path)
    lower, upper = box if box is not None else _regex_box(text, path)
    return lower, upper, _label(text)


def _parsed_box(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The box from the project's VNN-LIB parser, when it exists and understands the file."""
    try:
        from quantcert.intake import vnnlib as parser
    except ImportError:
        return None
    spec_type = getattr(parser, "VnnlibSpec", None)
    for name in ("load_vnnlib", "parse_vnnlib", "read_vnnlib", "load", "parse", "read"):
        fn = getattr(parser, name, None)
        if spec_type is None or not callable(fn):
            continue
        try:
            spec = fn(path)
        except Exception:  # the parser's own errors: fall back to the line reader
            return None
        if isinstance(spec, spec_type):
            lo = np.asarray(spec.lower, dtype=np.float64).ravel()
            hi = np.asarray(spec.upper, dtype=np.float64).ravel()
            return lo, hi
    return None


def _regex_box(text: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    found = [(op, int(i), float(v)) for op, i, v in _BOUND.findall(text)]
    if not found:
        raise InputError(f"{path}: no input bounds (assert (<= X_i v)) found")
    n = max(i for _, i, _ in found) + 1
    lower, upper = np.full(n, np.nan), np.full(n, np.nan)
    for op, i, v in found:
        (upper if op == "<=" else lower)[i] = v
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise InputError(f"{path}: some inputs X_i lack a lower or an upper bound")
    empty = np.flatnonzero(lower > upper)
    if empty.size:
        i = int(empty[0])
        raise InputError(f"{path}: X_{i} has lower {float(lower[i])} > upper {float(upper[i])}")
    return lower, upper


def _label(text: str) -> int | None:
    pairs = _OUTPUT.findall(text)
    targets = {int(k) for _, k in pairs}
    if len(targets) == 1 and len(pairs) > 1:
        return targets.pop()
    match = _LABEL.search(text)
    return int(match.group(1)) if match else None


def _load_vnnlib(paths: list[Path], input_shape: tuple[int, ...], source: str) -> ImageSet:
    centres, labels = [], []
    for p in paths:
        lo, hi, label = vnnlib_box(p)
        centres.append((lo + hi) / 2)
        labels.append(-1 if label is None else label)
    sizes = {c.size for c in centres}
    if len(sizes) != 1:
        raise InputError(f"{source}: VNN-LIB files with different input sizes {sorted(sizes)}")
    known = np.array(labels, dtype=np.int64)
    return ImageSet(
        _fit(np.stack(centres), input_shape, source), None if (known < 0).any() else known, source
    )


def check_labels(images: ImageSet, net: Network) -> None:
    """Refuse labels that name no class of ``net`` (one logit: a binary score, classes 0 and
    1), which would make the accuracy a silent wrong number."""
    lab = images.labels
    if lab is None:
        return
    n_logits = math.prod(net.shapes()[net.logits_node])
    classes = 2 if n_logits == 1 else n_logits
    if lab.size and (lab.min() < 0 or lab.max() >= classes):
        raise InputError(
            f"{images.source}: labels must lie in [0, {classes - 1}] for this model, found "
            f"{lab.min()}..{lab.max()}"
        )


def load_images(
    path: str | Path, input_shape: tuple[int, ...], limit: int | None = None
) -> ImageSet:
    """Images for a network with ``input_shape``: ``.npz``, ``.vnnlib``, or a folder of
    ``.vnnlib`` files (sorted by name); at most ``limit`` of them."""
    p = Path(path)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if p.is_dir():
        files = sorted(p.glob("*.vnnlib"))
        if not files:
            raise InputError(f"data folder {p} holds no .vnnlib files")
        return _load_vnnlib(files[:limit], input_shape, str(p))
    if not p.is_file():
        raise InputError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p, input_shape, limit)
    if suffix == ".vnnlib":
        return _load_vnnlib([p], input_shape, str(p))
    raise InputError(f"unknown data format {suffix or '(no extension)'!r}: use .npz or .vnnlib")
