"""Checks of a dataset's masks and image files that would otherwise fail (or silently corrupt
training) only when a DataLoader worker reaches them.

* :func:`rle_counts_problem` validates an RLE ``segmentation`` without handing it to pycocotools'
  C decoder, which does not bound-check: counts that sum to less than ``height · width`` leave
  part of the mask uninitialised (a random target, different on every call), more write past it.
  A list of counts (uncompressed RLE) must hold non-negative integers summing to exactly
  ``height · width``; a string (compressed RLE, COCO's ``rleFrString`` encoding) must decode to
  such counts.
* :func:`image_file_problem` reads one image file's header with PIL, as Detectron2's
  ``read_image`` does: the file exists and is an image; its size after the EXIF orientation
  (which ``read_image`` applies) is the json's; its mode is one that ``read_image``'s
  ``convert("RGB")`` reads correctly (16-bit and float modes are clipped to 255, i.e. read as
  nearly white); a JPEG / PNG file is not cut short (its end marker is among its last bytes,
  else the file is decoded once to tell a cut file from one with data appended).
* :func:`check_image_files` runs the image check over many files in worker processes.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["rle_counts_problem", "decode_rle_string", "invalid_rle_strings", "image_file_problem",
           "check_image_files", "READABLE_MODES"]

# PIL modes whose convert("RGB") (what Detectron2's read_image does for BGR / RGB input formats)
# gives the image's real colours
READABLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 / 270 degrees
_TAIL_BYTES = 256  # the end marker of a JPEG / PNG is looked for in the file's last bytes
_PNG_END = b"IEND"
_JPEG_END = b"\xff\xd9"
_SERIAL_BELOW = 256  # fewer image files than this are checked in the calling process
_CHUNK = 512  # image files per task of a worker process


def decode_rle_string(counts: str) -> np.ndarray:
    """The run lengths of a compressed RLE string (pycocotools' ``rleFrString``), int64 (m,).

    Each count is written in 5-bit groups (characters ``48 + group``, bit 0x20: more groups
    follow, bit 0x10 of the last group: negative) and, from the third count on, as the
    difference to the count two places before. Raises ValueError for characters outside the
    encoding, an unterminated last count, or a count too large for 64 bits.
    """
    try:
        raw = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise ValueError("non-ASCII characters") from None
    if raw.size == 0:
        return raw
    if raw.min() < 0 or raw.max() > 63:
        raise ValueError("characters outside the RLE encoding ('0' .. 'o')")
    more = (raw & 0x20) != 0
    if more[-1]:
        raise ValueError("the last count is not terminated")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 12 groups = 60 bits
        raise ValueError("a count has more than 60 bits")
    token = np.repeat(np.arange(ends.size), lengths)
    shift = 5 * (np.arange(raw.size) - starts[token])
    values = np.add.reduceat((raw & 0x1F) << shift, starts)
    negative = (raw[ends] & 0x10) != 0
    values = values - negative * (np.int64(1) << (5 * lengths))
    out = values.copy()
    out[1::2] = np.cumsum(values[1::2])  # x_m += cnts_{m-2} for m > 2
    out[2::2] = np.cumsum(values[2::2])
    return out


def _segmented_cumsum(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Cumulative sums of `values` restarting wherever the (non-decreasing) `segment` changes."""
    total = np.cumsum(values)
    first = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    before = np.r_[0, total[first[1:] - 1]]
    return total - np.repeat(before, np.diff(np.r_[first, values.size]))


def invalid_rle_strings(strings: Sequence[str], areas: Sequence[int]) -> np.ndarray:
    """Indices of the compressed RLE strings that do not decode (:func:`decode_rle_string`) to
    non-negative run lengths summing to their ``areas`` (``height · width``), all strings in one
    vectorised pass."""
    n = len(strings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    try:
        text = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:  # rare: find the culprits one by one
        return np.array([k for k in range(n) if rle_counts_problem(strings[k], areas[k], 1)],
                        dtype=np.int64)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)  # one past each string's last character
    bad = np.zeros(n, dtype=bool)
    wrong_char = np.flatnonzero((text < 48) | (text > 111))
    bad[np.searchsorted(ends, wrong_char, side="right")] = True
    group = text - np.uint8(48)  # 0..63 where valid
    more = (group & 0x20) != 0
    nonempty = lengths > 0
    bad[nonempty] |= more[ends[nonempty] - 1]  # the last count of a string is not terminated
    if bad.any():  # decode the well-formed strings only
        keep = ~np.repeat(bad, lengths)
        group, more = group[keep], more[keep]
    if group.size == 0:
        sums = np.zeros(n)
    else:
        good_ends = np.cumsum(np.where(bad, 0, lengths))
        index = np.arange(group.size, dtype=np.int64)
        starts_tok = np.r_[True, ~more[:-1]]  # a count starts after one that ended
        tok_start = np.flatnonzero(starts_tok)
        first = np.maximum.accumulate(np.where(starts_tok, index, 0))
        shift = 5 * (index - first)
        tok_len = np.diff(np.r_[tok_start, group.size])
        tok_owner = np.searchsorted(good_ends, tok_start, side="right")
        bad[np.unique(tok_owner[tok_len > 12])] = True  # more than 60 bits
        values = np.add.reduceat((group & 0x1F).astype(np.int64) << np.minimum(shift, 60),
                                 tok_start)
        negative = (group[tok_start + tok_len - 1] & 0x10) != 0
        values -= negative * (np.int64(1) << np.minimum(5 * tok_len, 62))
        # position of each count within its string; from the third on, x_m += cnts_{m-2}
        new_owner = np.r_[True, tok_owner[1:] != tok_owner[:-1]]
        tok_index = np.arange(tok_owner.size)
        pos = tok_index - np.maximum.accumulate(np.where(new_owner, tok_index, 0))
        counts = values.copy()
        for parity in ((pos % 2) == 1, ((pos % 2) == 0) & (pos >= 2)):
            counts[parity] = _segmented_cumsum(values[parity], tok_owner[parity])
        bad[np.unique(tok_owner[counts < 0])] = True
        sums = np.bincount(tok_owner, weights=counts.astype(np.float64), minlength=n)
    bad |= sums != areas.astype(np.float64)
    return np.flatnonzero(bad)


def rle_counts_problem(counts, height: int, width: int) -> Optional[str]:
    """None if ``counts`` (a list or a compressed string) is a valid RLE of a
    ``height × width`` mask, else what is wrong with it."""
    area = int(height) * int(width)
    if isinstance(counts, str):
        try:
            runs = decode_rle_string(counts)
        except ValueError as e:
            return f"compressed RLE 'counts' cannot be decoded ({e})"
        if runs.size and runs.min() < 0:
            return "compressed RLE 'counts' decodes to a negative run length"
        total = int(runs.sum())
        if total != area:
            return (f"compressed RLE 'counts' decodes to runs summing to {total}, not "
                    f"height * width = {area}")
        return None
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            bad = next(c for c in counts
                       if not (isinstance(c, int) and not isinstance(c, bool) and c >= 0))
            return f"uncompressed RLE 'counts' must be non-negative integers, got {bad!r}"
        total = sum(counts)
        if total != area:
            return (f"uncompressed RLE 'counts' sum to {total}, not height * width = {area} "
                    "(pycocotools would decode uninitialised memory or write past the mask)")
        return None
    return (f"RLE 'counts' must be a list of run lengths or a compressed string, got "
            f"{type(counts).__name__} {str(counts)[:40]}")


def _cut_short(f, fmt: str) -> bool:
    """True if a JPEG / PNG file has no end marker among its last bytes (cut short, or data
    appended after the image)."""
    end = {"JPEG": _JPEG_END, "MPO": _JPEG_END, "PNG": _PNG_END}.get(fmt)
    if end is None:
        return False
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - _TAIL_BYTES))
    tail = f.read().rstrip(b"\x00")  # some writers pad with zeros
    return end not in tail


def _exif_orientation(im) -> Optional[int]:
    """The EXIF orientation tag of an opened image (None if absent or unreadable). PNG: from an
    eXIf chunk before the pixels (PIL's getexif() would decode the whole image to look for
    one after them, which writers do not produce)."""
    try:
        if im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return None
            exif = Image.Exif()
            exif.load(raw)
            return exif.get(_EXIF_ORIENTATION)
        return im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # Detectron2 ignores an unreadable EXIF block too
        return None


def image_file_problem(path: str, height: int, width: int) -> Optional[str]:
    """None if Detectron2's ``read_image`` reads `path` correctly as a ``height × width``
    image, else what is wrong (header only: PIL does not decode the pixels)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be opened ({e.strerror or e})"
    with f:
        try:
            with Image.open(f) as im:
                fmt, mode, (w, h) = im.format, im.mode, im.size
                orientation = _exif_orientation(im)
        except UnidentifiedImageError:
            return "is not an image file that PIL (Detectron2's read_image) can read"
        except Exception as e:  # a header PIL cannot parse
            return f"cannot be read as an image ({type(e).__name__}: {e})"
        if orientation in _SWAPS_SIDES:
            w, h = h, w
        if (w, h) != (width, height):
            if orientation in _SWAPS_SIDES:
                return (f"is stored as {h}x{w} (width x height) with EXIF orientation "
                        f"{orientation}, so Detectron2's read_image (which applies the EXIF "
                        f"rotation) reads it as {w}x{h}, but the json says {width}x{height}: "
                        "give the rotated size in the json (and annotations in rotated "
                        "coordinates), or save the file rotated without the EXIF tag")
            return (f"is {w}x{h} (width x height, after EXIF orientation) but the json says "
                    f"{width}x{height}")
        if mode not in READABLE_MODES:
            return (f"has PIL mode '{mode}' (e.g. 16-bit or float pixels), which Detectron2's "
                    "read_image converts with convert('RGB') clipping values above 255 (a 16-bit "
                    "image reads as nearly white): convert the file to 8 bits per channel")
        try:
            if _cut_short(f, fmt):  # or data after the end (e.g. a motion photo's video)
                f.seek(0)
                with Image.open(f) as im:
                    im.load()  # decodes: the slow path, for these files only
        except Exception as e:
            return f"is a truncated or corrupt {fmt} file ({type(e).__name__}: {e})"
    return None


def _check_chunk(entries: Sequence[Tuple[int, str, int, int]]) -> List[Tuple[int, str]]:
    out = []
    for index, path, height, width in entries:
        problem = image_file_problem(path, height, width)
        if problem is not None:
            out.append((index, problem))
    return out


def default_num_workers() -> int:
    """Processes for the image checks: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_image_files(entries: Sequence[Tuple[int, str, int, int]],
                      num_workers: Optional[int] = None) -> List[Tuple[int, str]]:
    """:func:`image_file_problem` of every ``(index, path, height, width)``.

    Returns ``[(index, problem), ...]`` sorted by index (empty if every file is fine). Many
    files are checked by `num_workers` forked processes (default: the usable CPUs) in chunks.
    """
    entries = list(entries)
    num_workers = num_workers or default_num_workers()
    if num_workers == 1 or len(entries) < _SERIAL_BELOW or os.name != "posix":
        return _check_chunk(entries)
    chunks = [entries[i:i + _CHUNK] for i in range(0, len(entries), _CHUNK)]
    # fork: the workers need no imports of their own and start in milliseconds
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork")) as ex:
        found = [p for part in ex.map(_check_chunk, chunks) for p in part]
    return sorted(found)
