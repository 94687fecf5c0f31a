"""Where a model comes from: a local file, an ``https://`` URL or a Hugging Face hub id, fetched once into a cache.

``--checkpoint`` (and `medml.load`) accept:

* a local ``model.ckpt`` or an exported ``.safetensors`` file;
* ``https://host/path/model.safetensors[#sha256=HEX]``: downloaded once into ``$XDG_CACHE_HOME/medml/models/``;
  the checksum is the ``#sha256=`` suffix or, without one, the sidecar ``URL.sha256`` that ``medml export`` writes;
* ``hf://org/repo[@revision][/file]``: ``huggingface_hub.hf_hub_download`` (its own cache, ``HF_HOME``; default file
  ``model.safetensors``), with an optional ``#sha256=`` suffix checked the same way.

Nothing here runs at import; a download that cannot happen (offline, no such file) is one line naming the
local-file alternative. Only the standard library is imported at module level so ``medml --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from medml.errors import CheckpointError
from medml.utils.files import atomic_path, cache_root

log = logging.getLogger(__name__)

DEFAULT_HUB_FILE = "model.safetensors"
_SHA = re.compile(r"^[0-9a-fA-F]{64}$")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_remote(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("https://", "http://", "hf://"))


def resolve_source(source: str | Path) -> Path:
    """The local file for a ``--checkpoint`` value, downloading (once) what is remote."""
    if isinstance(source, Path) or not is_remote(source):
        return Path(source)
    if source.startswith("hf://"):
        return fetch_hub(source)
    return fetch_url(source)


def _split_sha(source: str) -> tuple[str, str | None]:
    base, _, fragment = source.partition("#")
    if not fragment:
        return base, None
    key, _, value = fragment.partition("=")
    if key != "sha256" or not _SHA.match(value):
        raise CheckpointError("the URL suffix must be #sha256=<64 hex digits>", source)
    return base, value.lower()


def _check_sha(path: Path, expected: str | None, source: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"sha256 {actual} is not the expected {expected}; the file was changed or corrupted", source
        )


def _sidecar_sha(url: str) -> str | None:
    """The checksum published beside the file (``URL.sha256``, as ``medml export`` writes), if any."""
    try:
        with urllib.request.urlopen(url + ".sha256", timeout=30) as response:  # noqa: S310 - http(s) only, checked
            text = response.read(4096).decode("ascii", "replace").split()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return text[0].lower() if text and _SHA.match(text[0]) else None


def fetch_url(source: str) -> Path:
    """Download ``source`` (https, or http from localhost) into medml's cache once; later calls read the cached copy."""
    url, expected = _split_sha(source)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:  # weights run code paths: no cleartext transit
        raise CheckpointError("plain http is accepted only from this machine (localhost); use https://", url)
    name = Path(parsed.path).name
    if not re.fullmatch(r"\w[\w.+-]*", name):  # the file is recognised by its bytes, not its name
        name = "model"
    folder = cache_root() / "models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    target = folder / name
    if target.is_file() and (expected is None or sha256_file(target) == expected):
        log.debug("using the cached %s for %s", target, url)
        return target
    if expected is None:
        expected = _sidecar_sha(url)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as tmp:  # noqa: S310
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh, 1 << 20)
            _check_sha(tmp, expected, source)
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"download failed (HTTP {exc.code}); pass a local file to --checkpoint", url) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"cannot download ({reason}); download it yourself and pass the local file to --checkpoint", url
        ) from None
    if expected is None:
        log.warning("%s: no #sha256= suffix and no .sha256 sidecar, so the download was not verified", url)
    return target


def parse_hub_id(source: str) -> tuple[str, str, str | None, str | None]:
    """``hf://org/repo[@rev][/path/file][#sha256=..]`` -> (repo_id, filename, revision, sha256)."""
    spec, expected = _split_sha(source)
    parts = spec.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise CheckpointError("a hub id is hf://org/repo[@revision][/file]", source)
    repo, _, revision = parts[1].partition("@")
    filename = "/".join(parts[2:]) or DEFAULT_HUB_FILE
    return f"{parts[0]}/{repo}", filename, revision or None, expected


def fetch_hub(source: str) -> Path:
    """``huggingface_hub.hf_hub_download`` into its cache (``HF_HOME``); honours ``HF_HUB_OFFLINE``."""
    repo_id, filename, revision, expected = parse_hub_id(source)
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise CheckpointError("hub ids need the huggingface_hub package (pip install huggingface_hub)") from None
    try:
        path = Path(huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except hf_errors.LocalEntryNotFoundError:
        raise CheckpointError(
            "not in the local hub cache and the hub cannot be reached (offline?); "
            "download it yourself and pass the local file to --checkpoint",
            source,
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError) as exc:
        raise CheckpointError(f"not on the hub ({type(exc).__name__})", source) from None
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"hub download failed ({str(exc).splitlines()[0] if str(exc) else exc!r})", source
        ) from None
    _check_sha(path, expected, source)
    return path
