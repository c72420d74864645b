"""Where datasets live: the data root (``--data-dir``, else ``$SBMOE_DATA_DIR``, else ``~/.cache/sbmoe/beir``),
a dataset by name under it or by its own folder, and the download of an official BEIR dataset by name into the
data root (written under a temporary name, renamed when whole: the data root is never left half-written).
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from sbmoe_ray.errors import DataError

DATA_DIR_ENV = "SBMOE_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "sbmoe" / "beir"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")      # a dataset by name; anything else is a folder path
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$SBMOE_DATA_DIR``, else ``~/.cache/sbmoe/beir``; one that is
    set but empty, or names a file, is refused (never a silent fall back to a download)."""
    if data_dir is not None:
        where, root = "data_dir", str(data_dir)
    elif DATA_DIR_ENV in os.environ:
        where, root = f"${DATA_DIR_ENV}", os.environ[DATA_DIR_ENV]
    else:
        return DEFAULT_DATA_DIR
    if not root.strip():
        raise DataError(f"{where}={root!r}: empty; name the folder that holds your BEIR datasets, or unset it "
                        f"(then {DEFAULT_DATA_DIR})")
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{where}={root!r}: a file, not a folder; name the folder that holds <dataset>/corpus.jsonl")
    return path


def dataset_name(name_or_path: str) -> str:
    """How results name a dataset given by name or by folder: the folder's name."""
    return Path(name_or_path.rstrip("/")).name


def locate_dataset(name_or_path: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the folder of a dataset given by path, or by name under the data root (downloaded if absent)."""
    as_path = Path(name_or_path).expanduser()
    try:
        if (as_path / "corpus.jsonl").is_file():
            return as_path
        (as_path / "corpus.jsonl").resolve(strict=False)
    except (RuntimeError, OSError) as exc:            # a symlink loop: resolve() says so, is_file() only False
        raise DataError(f"dataset path {name_or_path!r}: {exc}; a symbolic link that leads back to itself? "
                        "point it at a BEIR folder") from None
    if os.sep in name_or_path or name_or_path.startswith("."):
        raise DataError(f"dataset path {name_or_path!r} has no corpus.jsonl: expected a BEIR folder "
                        "with corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    if not NAME.fullmatch(name_or_path):
        raise DataError(f"dataset {name_or_path!r}: neither a dataset name (letters, digits, '.', '_', '-') nor a "
                        "folder path (with a '/'); check for spaces or quotes")
    root = data_root(data_dir)
    folder = root / name_or_path
    if (folder / "corpus.jsonl").is_file():
        return folder
    if not download:
        raise DataError(_not_found_message(name_or_path, folder, None))
    return _download(name_or_path, root)


def _not_found_message(name: str, folder: Path, download_error: str | None) -> str:
    message = (f"dataset {name!r} not found: looked for {folder}/corpus.jsonl (data root from --data-dir, "
               f"else ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR})")
    if download_error:
        message += f", and could not download {BEIR_URL.format(name=name)}: {download_error}"
    return message + (f". Point --data-dir or ${DATA_DIR_ENV} at a folder that holds {name}/corpus.jsonl, "
                      "or pass the dataset's folder as its path.")


def _download(name: str, root: Path) -> Path:
    """Download ``name`` into ``root``: the URL is opened first, so a name the mirror does not have (or no
    network) leaves the data root untouched; the archive is unpacked under a temporary name and renamed."""
    url = BEIR_URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-download-") as tmp:
                archive = Path(tmp) / f"{name}.zip"
                with open(archive, "wb") as out, tqdm(total=int(response.headers.get("Content-Length") or 0) or None,
                                                      unit="B", unit_scale=True, desc=f"download {name}") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
                extracted = Path(tmp) / name
                if not (extracted / "corpus.jsonl").is_file():
                    raise DataError(f"{url} did not contain {name}/corpus.jsonl")
                extracted.rename(root / name)
    except (urllib.error.URLError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(_not_found_message(name, root / name, str(getattr(exc, "reason", exc)))) from exc
    return root / name
