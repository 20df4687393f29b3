"""Download PDB/mmCIF entries from the RCSB archive into a local cache (needs internet).

``python -m simulate.fetch 1BXN 2FHA`` (or ``speckle-fetch``) saves ``1BXN.cif.gz`` and
``2FHA.cif.gz`` in the cache folder, the file names that :mod:`simulate.pdb_io` and the ``pdb``
source kind of :mod:`simulate.sources` read, so that
``python -m simulate source=pdb_shared source.directory=<cache>`` simulates them
(``docs/fetch.md``).
The transfer is pooch's (:class:`pooch.HTTPDownloader`, over ``requests``); this module adds
what pooch does not do for a cache of PDB entries (below); ``tqdm`` draws the bar.

The cache
---------
``<cache>/<ID>.cif.gz`` (``fmt="cif"``, the default) or ``<ID>.pdb.gz`` (``fmt="pdb"``; the
largest entries exist only as mmCIF), exactly as served at ``{base_url}/<ID>.cif.gz``, plus
``<cache>/MANIFEST.json``: per file its ``sha256``, ``size`` (bytes), source ``url`` and the UTC
time it was recorded. The default folder is ``$SPECKLE_EMBED_CACHE``, else
``~/.cache/speckle_embed/pdb``.

* A download is complete before it is kept: the gzip stream must decompress to its end and
  start like mmCIF (``data_``) or PDB (a PDB record name). It is written to a temporary
  sibling ``<name>.<pid>-<hex>.tmp``, fsync'ed and renamed with :func:`os.replace`; the manifest
  is replaced the same way. Killing the process (Ctrl-C included) leaves either the previous
  file or the new one, never half a file. (Own atomic writer, not pooch's: pooch's temporaries
  are ``tmpXXXX`` names that the project's clean-up cannot tell from a user's file, and it does
  not fsync.)
* A cached file whose sha256 matches its manifest entry is not downloaded again; one that does
  not (corrupt cache) is downloaded again. A valid file found in the cache without a manifest
  entry (copied in by hand, or downloaded by a process killed before it saved the manifest) is
  adopted: recorded with ``url: null``.
* ``expected_sha256`` (ID -> hex digest, of the ``.gz`` file) pins the content: a cached file
  with another digest is downloaded again, and a download with another digest is an error that
  keeps nothing (a previously cached file is left as it was).

Errors
------
Network failures (no connection, timeouts, HTTP 5xx/429, a connection dropped mid-transfer) are
retried ``retries`` times with exponential backoff (``backoff_s``, ``2 * backoff_s``, ...; a
``Retry-After`` header of up to a minute is honoured). HTTP 404 is not retried: "entry not found
on the server". (Own retry loop, not ``pooch.Pooch(retry_if_failed=)``: pooch retries every error,
404 included, after fixed waits, and cannot tell "offline" from a dropped transfer.) When an entry cannot be reached at all after every retry the machine is taken to
be offline: the remaining entries are served from the cache only, and the error says so and
suggests copying the files into the cache. :func:`fetch_entries` raises :class:`FetchError`
naming every failed ID (its ``report`` holds the entries that did arrive); :func:`fetch_all`
returns a :class:`FetchReport` instead.

Examples
--------
>>> from simulate.fetch import fetch_entries                       # doctest: +SKIP
>>> paths = fetch_entries(["1BXN", "2fha"], "data/pdb_cache")     # doctest: +SKIP
>>> paths["2FHA"]                                                  # doctest: +SKIP
PosixPath('data/pdb_cache/2FHA.cif.gz')
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import pooch
import requests

from speckle_embed.atomic import replace_atomically, write_bytes_atomically

from .errors import SimulationError

__all__ = ["DEFAULT_BASE_URL", "CACHE_ENV", "MANIFEST_NAME", "FORMATS", "FetchError",
           "EntryOutcome", "FetchReport", "default_cache_dir", "normalise_ids", "read_ids_file",
           "read_manifest", "fetch_all", "fetch_entries", "main"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://files.rcsb.org/download"
"""RCSB download service: ``{DEFAULT_BASE_URL}/1BXN.cif.gz``."""
CACHE_ENV = "SPECKLE_EMBED_CACHE"
"""Environment variable naming the default cache folder."""
MANIFEST_NAME = "MANIFEST.json"
"""Name of the manifest file inside the cache folder."""
MANIFEST_FORMAT = "speckle_embed-pdb-cache-1"
"""Value of the manifest's ``format`` field."""
FORMATS = {"cif": ".cif.gz", "pdb": ".pdb.gz"}
"""``fmt`` -> file-name ending, in the cache and on the server."""
ID_PATTERN = re.compile(r"^[0-9][A-Za-z0-9]{3}$")
"""A four-character PDB ID (extended ``pdb_0000xxxx`` IDs are not accepted)."""

_CHUNK = 1 << 16
_MANIFEST_SAVE_EVERY_S = 5.0
_RETRY_AFTER_MAX_S = 60.0
_HEADERS = {"User-Agent": "speckle_embed-fetch/2 (pooch)",
            "Accept-Encoding": "identity"}  # keep the .gz bytes as served (no transparent decoding)
_PDB_RECORDS = frozenset(
    "HEADER OBSLTE TITLE SPLIT CAVEAT COMPND SOURCE KEYWDS EXPDTA NUMMDL MDLTYP AUTHOR REVDAT "
    "SPRSDE JRNL REMARK DBREF DBREF1 SEQADV SEQRES MODRES HET HETNAM HETSYN FORMUL HELIX SHEET "
    "SSBOND LINK CISPEP SITE CRYST1 ORIGX1 SCALE1 MTRIX1 MODEL ATOM HETATM".split())


class FetchError(SimulationError, RuntimeError):
    """Some entries could not be fetched (offline, not found, corrupt, checksum mismatch).

    Attributes
    ----------
    report : FetchReport or None
        Every entry's outcome, the fetched ones included (``report.paths``).
    """

    def __init__(self, message: str, report: "FetchReport | None" = None):
        super().__init__(message)
        self.report = report


class _Unusable(Exception):
    """The bytes received are not a usable entry (not retried)."""


@dataclass(frozen=True)
class EntryOutcome:
    """What happened to one entry.

    Attributes
    ----------
    id : str
        Upper-case PDB ID.
    status : {"downloaded", "cached", "failed"}
        ``cached``: a verified file was already in the cache (nothing downloaded).
    path : Path or None
        The cached file (``None`` when failed).
    url : str
        Download URL.
    sha256, size : str, int
        Digest and size in bytes of the ``.gz`` file (``""``/0 when failed).
    attempts : int
        HTTP requests made for it (0 when served from the cache).
    seconds : float
        Wall time spent on it.
    error : str
        Why it failed (``""`` otherwise).
    """

    id: str
    status: str
    path: Path | None
    url: str
    sha256: str = ""
    size: int = 0
    attempts: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class FetchReport:
    """The outcome of :func:`fetch_all`: one :class:`EntryOutcome` per requested ID."""

    cache_dir: Path
    outcomes: list[EntryOutcome] = field(default_factory=list)
    offline_url: str | None = None
    """First URL that could not be reached at all (the machine seems offline), else ``None``."""
    offline_reason: str = ""

    @property
    def paths(self) -> dict[str, Path]:
        """ID -> cached file, for the entries that are available."""
        return {o.id: o.path for o in self.outcomes if o.status != "failed"}

    @property
    def failed(self) -> dict[str, str]:
        """ID -> reason, for the entries that are not available."""
        return {o.id: o.error for o in self.outcomes if o.status == "failed"}

    @property
    def ok(self) -> bool:
        """True when every requested entry is in the cache."""
        return not self.failed

    def error_message(self) -> str:
        """One paragraph explaining the failures (``""`` when :attr:`ok`)."""
        failed = self.failed
        if not failed:
            return ""
        n, n_ok = len(self.outcomes), len(self.outcomes) - len(failed)
        lines = []
        if self.offline_url is not None:
            host = urllib.parse.urlsplit(self.offline_url).netloc or self.offline_url
            lines.append(
                f"cannot reach {self.offline_url} ({self.offline_reason}): this machine seems "
                f"to be offline (or {host} is unreachable). Fetch the entries on a machine with "
                f"internet and copy the <ID>.cif.gz / <ID>.pdb.gz files into {self.cache_dir}, "
                "or point --cache (cache_dir=) at a folder that already holds them.")
        shown = [f"{i}: {reason}" for i, reason in list(failed.items())[:10]]
        more = f"; and {len(failed) - 10} more" if len(failed) > 10 else ""
        lines.append(f"{len(failed)} of {n} entries failed ({n_ok} available in "
                     f"{self.cache_dir}): {'; '.join(shown)}{more}")
        return "\n".join(lines)

    def table(self) -> str:
        """A plain-text summary: one line per entry, then the counts."""
        rows = [(o.id, o.status, _human_size(o.size) if o.size else "-",
                 o.sha256[:12] or "-", f"{o.seconds:.1f}",
                 o.path.name if o.path is not None else o.error) for o in self.outcomes]
        head = ("id", "status", "size", "sha256", "time_s", "file / reason")
        widths = [max([len(head[k])] + [len(r[k]) for r in rows]) for k in range(5)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
        lines = [f"cache {self.cache_dir}", fmt.format(*head).rstrip(),
                 fmt.format(*("-" * w for w in widths), "").rstrip()]
        lines += [fmt.format(*r).rstrip() for r in rows]
        counts = {s: sum(o.status == s for o in self.outcomes)
                  for s in ("downloaded", "cached", "failed")}
        lines.append(", ".join(f"{k}: {v}" for k, v in counts.items()))
        return "\n".join(lines)


# ---------------------------------------------------------------------------- IDs and paths
def default_cache_dir() -> Path:
    """``$SPECKLE_EMBED_CACHE`` if set, else ``~/.cache/speckle_embed/pdb``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(os.path.expanduser(env))
    return Path.home() / ".cache" / "speckle_embed" / "pdb"


def normalise_ids(ids) -> list[str]:
    """Upper-case, validated, de-duplicated PDB IDs, in their first order.

    Parameters
    ----------
    ids : str or iterable of str
        IDs; a single string may hold several separated by spaces or commas.

    Raises
    ------
    ValueError
        No IDs, or IDs that are not 4 characters starting with a digit (all of them listed).

    Examples
    --------
    >>> normalise_ids(["1bxn", " 2FHA ", "1BXN"])
    ['1BXN', '2FHA']
    """
    if isinstance(ids, (str, bytes)):
        ids = (ids.decode() if isinstance(ids, bytes) else ids).replace(",", " ").split()
    out, bad = [], []
    for raw in ids:
        text = str(raw).strip()
        if not ID_PATTERN.match(text):
            bad.append(repr(raw))
        elif text.upper() not in out:
            out.append(text.upper())
    if bad:
        raise ValueError(f"invalid PDB ID(s) {', '.join(bad)}: a PDB ID is 4 characters, a digit "
                         "then 3 letters or digits (e.g. 1BXN)")
    if not out:
        raise ValueError("no PDB IDs given")
    return out


def read_ids_file(path) -> list[str]:
    """The IDs of a text file: one per line (several per line split on spaces/commas), ``#``
    starts a comment, blank lines are skipped. Not validated (see :func:`normalise_ids`)."""
    ids = []
    for line in Path(path).read_text().splitlines():
        ids += line.split("#", 1)[0].replace(",", " ").split()
    return ids


def _entry_url(base_url: str, pdb_id: str, fmt: str) -> str:
    return f"{base_url.rstrip('/')}/{pdb_id}{FORMATS[fmt]}"


def _human_size(n: int) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- manifest
def read_manifest(cache_dir) -> dict[str, dict]:
    """The entries of ``<cache_dir>/MANIFEST.json``: file name -> ``{id, sha256, size, url,
    recorded_utc}``. A missing manifest is empty; an unreadable one is ignored with a warning
    (its files are then verified and adopted again)."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        warnings.warn(f"{path}: not valid JSON ({exc}); ignoring it", stacklevel=2)
        return {}
    if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT \
            or not isinstance(meta.get("entries"), dict):
        warnings.warn(f"{path}: not a {MANIFEST_FORMAT} manifest; ignoring it", stacklevel=2)
        return {}
    return {k: v for k, v in meta["entries"].items() if isinstance(v, dict)}


class _Manifest:
    """The manifest in memory, saved atomically at most every few seconds and at the end.

    Saving merges with the file on disk, so entries written meanwhile by another process on the
    same cache are kept (the last writer wins for the same file name).
    """

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / MANIFEST_NAME
        self.entries = read_manifest(cache_dir)
        self._pending: dict[str, dict] = {}
        self._saved_at = time.monotonic()

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def record(self, name: str, entry: dict) -> None:
        self.entries[name] = self._pending[name] = entry
        if time.monotonic() - self._saved_at > _MANIFEST_SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        if not self._pending:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = read_manifest(self.path.parent)
        merged.update(self._pending)
        text = json.dumps({"format": MANIFEST_FORMAT, "entries": dict(sorted(merged.items()))},
                          indent=1)
        write_bytes_atomically((text + "\n").encode(), self.path)
        self.entries.update(merged)
        self._pending.clear()
        self._saved_at = time.monotonic()


# ---------------------------------------------------------------------------- content checks
class _ContentCheck:
    """Streaming check of a gzipped PDB/mmCIF file: every gzip member decompresses to its end
    and the text starts like the format. Fed the compressed bytes chunk by chunk."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._head = b""
        self._n_in = 0

    def feed(self, data: bytes) -> None:
        self._n_in += len(data)
        while data:
            if self._d.eof:                       # a further gzip member (or zero padding)
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out = self._d.decompress(data)
            except zlib.error as exc:
                raise _Unusable(f"not a valid gzip stream ({exc}; starts with "
                                f"{self._first_bytes!r})") from exc
            if len(self._head) < 512:
                self._head += out[:512 - len(self._head)]
            data = self._d.unused_data if self._d.eof else b""

    @property
    def _first_bytes(self) -> bytes:
        return self._head[:40]

    def finish(self) -> None:
        if self._n_in == 0:
            raise _Unusable("empty file")
        if not self._d.eof:
            raise _Unusable("truncated gzip stream (it ends before the end of the compressed "
                            "data)")
        text = self._head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if self.fmt == "cif":
            if not text.startswith(b"data_"):
                raise _Unusable(f"not an mmCIF file (no 'data_' header; starts with {text[:40]!r})")
        else:
            first = text.split(b"\n", 1)[0][:6].decode("ascii", "replace").strip()
            if first not in _PDB_RECORDS:
                raise _Unusable(f"not a PDB file (starts with {text[:40]!r})")


def _sha256_file(path: Path) -> tuple[str, int]:
    return pooch.file_hash(str(path), alg="sha256"), path.stat().st_size


def _check_file(path: Path, fmt: str) -> None:
    """Raise :class:`_Unusable` unless ``path`` is a complete gzipped file of format ``fmt``."""
    check = _ContentCheck(fmt)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            check.feed(chunk)
    check.finish()


# ---------------------------------------------------------------------------- download
class _StreamingChecks:
    """A binary file wrapper that hashes, counts and content-checks the bytes written to it
    (what pooch's downloader writes chunk by chunk)."""

    def __init__(self, fh, fmt: str):
        self.fh, self.digest, self.size, self.check = fh, hashlib.sha256(), 0, _ContentCheck(fmt)

    def write(self, chunk: bytes) -> int:
        self.fh.write(chunk)
        self.digest.update(chunk)
        self.check.feed(chunk)
        self.size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        self.fh.flush()


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason of a ``requests`` error ("[Errno 111] Connection refused")."""
    match = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    return match.group(0).strip() if match else f"{type(exc).__name__}: {exc}"


class _Fetcher:
    """Per-call state: downloader, manifest, offline flag."""

    def __init__(self, cache_dir: Path, fmt: str, base_url: str, retries: int, backoff_s: float,
                 timeout_s: float, expected: dict[str, str], say):
        self.cache_dir, self.fmt, self.base_url = cache_dir, fmt, base_url
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.expected, self.say = expected, say
        self.download = pooch.HTTPDownloader(progressbar=False, chunk_size=_CHUNK, timeout=timeout_s,
                                             headers=_HEADERS)
        self.manifest = _Manifest(cache_dir)
        self.offline_url: str | None = None
        self.offline_reason = ""

    # ------------------------------------------------------------------ one entry
    def fetch(self, pdb_id: str) -> EntryOutcome:
        t0 = time.perf_counter()
        final = self.cache_dir / f"{pdb_id}{FORMATS[self.fmt]}"
        url = _entry_url(self.base_url, pdb_id, self.fmt)
        expected = self.expected.get(pdb_id)
        cached = self._cached(pdb_id, final, expected)
        if cached is not None:
            sha, size = cached
            return EntryOutcome(pdb_id, "cached", final, url, sha, size,
                                seconds=time.perf_counter() - t0)
        if self.offline_url is not None:
            return EntryOutcome(pdb_id, "failed", None, url, error="not attempted: offline",
                                seconds=time.perf_counter() - t0)
        attempts, error = 0, ""
        for attempt in range(self.retries + 1):
            attempts += 1
            try:
                sha, size = self._download(url, final, expected)
            except requests.HTTPError as exc:
                code, response = exc.response.status_code, exc.response
                response.close()
                if code == 404:
                    hint = (" (the largest entries exist only as mmCIF: try --format cif)"
                            if self.fmt == "pdb" else "")
                    error = f"entry not found on the server (HTTP 404 for {url}){hint}"
                    break
                error = f"HTTP {code} {response.reason} from {url}"
                if not (code >= 500 or code in (408, 429)):
                    break
                delay = self._delay(attempt, response.headers.get("Retry-After"))
            except requests.ConnectionError as exc:  # no connection at all (refused, DNS, connect timeout)
                reason = _reason(exc)
                error = f"cannot reach {url} ({reason})"
                delay = self._delay(attempt)
                if attempt == self.retries:
                    self.offline_url, self.offline_reason = url, reason
            except (requests.RequestException, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                # Connected, but the transfer stalled or was cut (IncompleteRead...).
                error = f"transfer from {url} failed ({type(exc).__name__}: {exc})"
                delay = self._delay(attempt)
            except _Unusable as exc:
                error = f"download from {url} is unusable: {exc}; nothing kept"
                break
            else:
                self.manifest.record(final.name, {
                    "id": pdb_id, "sha256": sha, "size": size, "url": url,
                    "recorded_utc": _utc_now()})
                return EntryOutcome(pdb_id, "downloaded", final, url, sha, size, attempts,
                                    time.perf_counter() - t0)
            if attempt < self.retries:
                self.say(f"{pdb_id}: {error}; retry {attempt + 1}/{self.retries} in {delay:.3g} s")
                time.sleep(delay)
        return EntryOutcome(pdb_id, "failed", None, url, attempts=attempts,
                            seconds=time.perf_counter() - t0, error=error)

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        delay = self.backoff_s * 2 ** attempt
        try:
            if retry_after is not None:
                delay = max(delay, min(float(retry_after), _RETRY_AFTER_MAX_S))
        except ValueError:                          # an HTTP date: keep the backoff
            pass
        return delay

    def _cached(self, pdb_id: str, final: Path, expected: str | None) -> tuple[str, int] | None:
        """(sha256, size) of a verified cached file that can be used as it is, else None."""
        if not final.is_file():
            return None
        sha, size = _sha256_file(final)
        if expected is not None and sha != expected:
            self.say(f"{pdb_id}: cached {final.name} has sha256 {sha[:12]}..., expected "
                     f"{expected[:12]}...; downloading again")
            return None
        entry = self.manifest.get(final.name)
        if entry is not None and entry.get("sha256") == sha:
            return sha, size
        if entry is not None and expected is None:
            self.say(f"{pdb_id}: cached {final.name} does not match its manifest entry "
                     "(corrupt cache); downloading again")
            return None
        try:                                        # not in the manifest: adopt if valid
            _check_file(final, self.fmt)
        except (_Unusable, OSError) as exc:
            self.say(f"{pdb_id}: cached {final.name} is unusable ({exc}); downloading again")
            return None
        self.manifest.record(final.name, {"id": pdb_id, "sha256": sha, "size": size, "url": None,
                                          "recorded_utc": _utc_now()})
        return sha, size

    def _download(self, url: str, final: Path, expected: str | None) -> tuple[str, int]:
        """Stream ``url`` (pooch's downloader) into a temporary sibling of ``final``, check it,
        rename it."""
        result = {}

        def write(fh):
            out = _StreamingChecks(fh, self.fmt)
            self.download(url, out, None)   # a short body raises (requests' IncompleteRead check)
            out.check.finish()
            sha = out.digest.hexdigest()
            if expected is not None and sha != expected:
                raise _Unusable(f"sha256 mismatch: expected {expected}, got {sha}")
            result.update(sha=sha, size=out.size)

        replace_atomically(write, final)
        return result["sha"], result["size"]


# ---------------------------------------------------------------------------- public API
def _expected_map(expected_sha256: Mapping[str, str] | None) -> dict[str, str]:
    if not expected_sha256:
        return {}
    normalise_ids(list(expected_sha256))            # every bad key listed at once
    out = {}
    for raw in expected_sha256:
        pdb_id = str(raw).strip().upper()
        value = str(expected_sha256[raw]).strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f"expected_sha256[{raw!r}] = {expected_sha256[raw]!r}: not a "
                             "sha256 hex digest (64 hex digits)")
        out[pdb_id] = value
    return out


def fetch_all(ids, cache_dir=None, *, fmt: str = "cif", base_url: str = DEFAULT_BASE_URL,
              retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 30,
              expected_sha256: Mapping[str, str] | None = None,
              progress: bool = True) -> FetchReport:
    """Bring entries into the cache and report on each; failures do not raise.

    Same parameters as :func:`fetch_entries`.

    Returns
    -------
    FetchReport
        One outcome per ID (in the order given, duplicates removed); ``report.paths`` maps the
        available IDs to their files, ``report.failed`` the others to a reason.

    Raises
    ------
    ValueError
        Invalid IDs, ``fmt``, ``base_url``, ``retries``, ``backoff_s``, ``timeout_s`` or
        ``expected_sha256``.
    OSError
        The cache folder cannot be created or written.
    """
    pdb_ids = normalise_ids(ids)
    if fmt not in FORMATS:
        raise ValueError(f"fmt = {fmt!r}: choose one of {', '.join(FORMATS)}")
    if isinstance(retries, bool) or int(retries) != retries or retries < 0:
        raise ValueError(f"retries = {retries!r}: must be an integer >= 0")
    if backoff_s < 0 or timeout_s <= 0:
        raise ValueError(f"backoff_s = {backoff_s!r} must be >= 0 and "
                         f"timeout_s = {timeout_s!r} > 0")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise ValueError(f"base_url = {base_url!r}: must start with http:// or https://")
    expected = _expected_map(expected_sha256)
    cache_dir = Path(os.path.expanduser(os.fspath(cache_dir))) if cache_dir is not None \
        else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    def say(message: str) -> None:
        if progress:
            tqdm.write(message, file=sys.stderr)
        else:
            logger.info("%s", message)

    fetcher = _Fetcher(cache_dir, fmt, base_url, int(retries), float(backoff_s), float(timeout_s),
                       expected, say)
    report = FetchReport(cache_dir)
    try:
        with tqdm(pdb_ids, desc="fetch", unit="entry", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for pdb_id in bar:
                bar.set_postfix_str(pdb_id, refresh=False)
                outcome = fetcher.fetch(pdb_id)
                report.outcomes.append(outcome)
                if outcome.status == "failed" and fetcher.offline_url is None:
                    say(f"{pdb_id}: {outcome.error}")
    finally:
        fetcher.manifest.save()
    report.offline_url, report.offline_reason = fetcher.offline_url, fetcher.offline_reason
    _warn_both_formats(cache_dir, [o.id for o in report.outcomes if o.status != "failed"], fmt)
    return report


def fetch_entries(ids, cache_dir=None, *, fmt: str = "cif", base_url: str = DEFAULT_BASE_URL,
                  retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 30,
                  expected_sha256: Mapping[str, str] | None = None,
                  progress: bool = True) -> dict[str, Path]:
    """Download PDB entries into the cache (or find them there) and return their files.

    Parameters
    ----------
    ids : str or iterable of str
        PDB IDs, any case (``"1bxn"``); duplicates are fetched once.
    cache_dir : str or Path, optional
        Cache folder, created if needed; default :func:`default_cache_dir`.
    fmt : {"cif", "pdb"}
        ``<ID>.cif.gz`` (mmCIF, exists for every entry) or ``<ID>.pdb.gz`` (legacy PDB format).
    base_url : str
        Served files are ``{base_url}/<ID>.cif.gz``; default the RCSB archive.
    retries : int
        Further attempts after a network failure (timeouts, refused connections, HTTP 5xx/429,
        dropped transfers), waiting ``backoff_s * 2**k`` seconds before retry ``k + 1``.
    backoff_s, timeout_s : float
        First retry delay, and socket timeout of each request, in seconds.
    expected_sha256 : mapping, optional
        ID -> sha256 hex digest of the ``.gz`` file. A mismatching download is an error and
        nothing is kept.
    progress : bool
        Draw a tqdm bar and retry notes on stderr (else notes go to the module logger).

    Returns
    -------
    dict
        Upper-case ID -> path of the cached ``.gz`` file, in the order given.

    Raises
    ------
    FetchError
        At least one entry is not available; the message names every failed ID with its reason
        (and says when the machine seems offline); ``exc.report.paths`` holds those that are.
    ValueError
        Invalid IDs (all listed) or arguments.
    """
    report = fetch_all(ids, cache_dir, fmt=fmt, base_url=base_url, retries=retries,
                       backoff_s=backoff_s, timeout_s=timeout_s, expected_sha256=expected_sha256,
                       progress=progress)
    if not report.ok:
        raise FetchError(report.error_message(), report)
    return report.paths


def _warn_both_formats(cache_dir: Path, ids: list[str], fmt: str) -> None:
    other = FORMATS["pdb" if fmt == "cif" else "cif"]
    both = [i for i in ids if (cache_dir / f"{i}{other}").is_file()]
    if both:
        warnings.warn(
            f"{cache_dir} holds both {FORMATS[fmt]} and {other} files for {', '.join(both[:10])}"
            f"{' ...' if len(both) > 10 else ''}: the simulator reads every structure file of the "
            "folder and rejects duplicate names; keep one format per cache folder", stacklevel=3)


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speckle-fetch",
        description="Download PDB/mmCIF entries from the RCSB archive into a local cache "
                    "(<cache>/<ID>.cif.gz + MANIFEST.json with sha256 checksums). Entries "
                    "already cached and verified are not downloaded again.",
        epilog="Then simulate them: python -m simulate source=pdb_shared "
               "source.directory=<cache> (see docs/fetch.md).")
    p.add_argument("ids", nargs="*", metavar="ID", help="PDB IDs, e.g. 1BXN 2FHA")
    p.add_argument("--ids-file", action="append", default=[], metavar="FILE",
                   help="text file of IDs, one per line, '#' comments (repeatable)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help=f"cache folder (default ${CACHE_ENV} or ~/.cache/speckle_embed/pdb)")
    p.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="cif",
                   help="cif: <ID>.cif.gz (default, every entry); pdb: <ID>.pdb.gz")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help="download URL prefix (default %(default)s)")
    p.add_argument("--retries", type=int, default=3, help="retries per entry (default 3)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first retry delay in seconds, doubled each retry (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="socket timeout per request in seconds (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    """``python -m simulate.fetch`` / ``speckle-fetch``: fetch, print the summary table.

    Returns 0 when every entry is in the cache, 1 otherwise (the reasons on stderr), 130 on
    Ctrl-C (completed downloads kept, the partial one removed).
    """
    args = _parser().parse_args(argv)
    try:
        ids = list(args.ids)
        for path in args.ids_file:
            ids += read_ids_file(path)
        report = fetch_all(ids, args.cache, fmt=args.fmt, base_url=args.base_url,
                           retries=args.retries, backoff_s=args.backoff, timeout_s=args.timeout,
                           progress=not args.no_progress)
    except (ValueError, OSError) as exc:
        print(f"speckle-fetch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("speckle-fetch: interrupted; completed downloads are kept and listed in the "
              "manifest, a partial one is removed", file=sys.stderr)
        return 130
    print(report.table(), flush=True)
    if not report.ok:
        print(f"speckle-fetch: error: {report.error_message()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
