"""simulate.fetch: downloads from a local HTTP server in a thread (no internet needed).

The server serves gzipped mini mmCIF files made here; it counts requests and can fail the
first requests of a path with 503, answer 404, send a truncated gzip or cut the connection.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from simulate import fetch as fetch_mod
from simulate.fetch import (
    MANIFEST_NAME, FetchError, default_cache_dir, fetch_all, fetch_entries, main, normalise_ids,
    read_ids_file, read_manifest,
)

FAST = {"retries": 3, "backoff_s": 0.001, "timeout_s": 5, "progress": False}


def mini_cif(pdb_id: str) -> bytes:
    """A minimal mmCIF entry: two alanines' backbone, 6 atoms."""
    atoms = [("N", "N", 1, 0.0, 0.0, 0.0), ("C", "CA", 1, 1.46, 0.0, 0.0),
             ("C", "C", 1, 2.0, 1.42, 0.0), ("N", "N", 2, 3.3, 1.5, 0.0),
             ("C", "CA", 2, 4.0, 2.8, 0.0), ("O", "O", 2, 6.1, 1.6, 0.3)]
    head = [f"data_{pdb_id}", "#", "loop_"] + [f"_atom_site.{k}" for k in (
        "group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
        "label_asym_id", "label_entity_id", "label_seq_id", "Cartn_x", "Cartn_y", "Cartn_z",
        "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_asym_id", "pdbx_PDB_model_num")]
    rows = [f"ATOM {i + 1} {el} {name} . ALA A 1 {res} {x:.3f} {y:.3f} {z:.3f} 1.00 20.00 {res} A 1"
            for i, (el, name, res, x, y, z) in enumerate(atoms)]
    return ("\n".join(head + rows + ["#", ""])).encode()


class Server:
    """State shared with the handler: ``files`` (URL path -> bytes), ``hits`` (paths requested),
    ``fail_first`` (path -> number of 503 answers before success), ``truncate`` (paths sent
    half, with a matching Content-Length), ``cut`` (paths whose connection drops mid-body)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.fail_first: dict[str, int] = {}
        self.truncate: set[str] = set()
        self.cut: set[str] = set()
        self.lock = threading.Lock()
        self.base_url = ""

    def add(self, pdb_id: str, text: bytes | None = None) -> bytes:
        gz = gzip.compress(text if text is not None else mini_cif(pdb_id))
        self.files[f"/download/{pdb_id}.cif.gz"] = gz
        return gz

    def count(self, pdb_id: str) -> int:
        return self.hits.count(f"/download/{pdb_id}.cif.gz")


def make_handler(state: Server):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            with state.lock:
                state.hits.append(self.path)
                if state.fail_first.get(self.path, 0) > 0:
                    state.fail_first[self.path] -= 1
                    self.send_error(503, "Service Unavailable")
                    return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            if self.path in state.truncate:
                body = body[: len(body) // 2]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in state.cut:                 # promise the whole body, send half
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/download"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def no_tmp(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ============================================================================ tests
def test_download_manifest_and_checksum(server, tmp_path):
    gz1, gz2 = server.add("1ABC"), server.add("2XYZ")
    paths = fetch_entries(["1abc", "2XYZ", "1ABC"], tmp_path / "cache", base_url=server.base_url,
                          **FAST)
    assert list(paths) == ["1ABC", "2XYZ"]
    assert paths["1ABC"] == tmp_path / "cache" / "1ABC.cif.gz"
    assert paths["1ABC"].read_bytes() == gz1 and paths["2XYZ"].read_bytes() == gz2
    assert gzip.decompress(paths["1ABC"].read_bytes()).startswith(b"data_1ABC")
    manifest = read_manifest(tmp_path / "cache")
    entry = manifest["1ABC.cif.gz"]
    assert entry["sha256"] == hashlib.sha256(gz1).hexdigest() and entry["size"] == len(gz1)
    assert entry["url"] == f"{server.base_url}/1ABC.cif.gz"
    assert entry["recorded_utc"].endswith("Z") and entry["id"] == "1ABC"
    raw = json.loads((tmp_path / "cache" / MANIFEST_NAME).read_text())
    assert raw["format"] == fetch_mod.MANIFEST_FORMAT
    assert server.count("1ABC") == 1 and no_tmp(tmp_path / "cache")


def test_cached_entry_not_downloaded_again(server, tmp_path):
    server.add("1ABC")
    fetch_entries("1ABC", tmp_path, base_url=server.base_url, **FAST)
    report = fetch_all(["1ABC"], tmp_path, base_url=server.base_url, **FAST)
    assert report.ok and report.outcomes[0].status == "cached"
    assert report.outcomes[0].attempts == 0
    assert len(server.hits) == 1


def test_corrupt_cached_file_is_fetched_again(server, tmp_path):
    gz = server.add("1ABC")
    path = fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **FAST)["1ABC"]
    path.write_bytes(gz[:-10] + b"0123456789")            # same size, other bytes
    report = fetch_all(["1ABC"], tmp_path, base_url=server.base_url, **FAST)
    assert report.outcomes[0].status == "downloaded" and server.count("1ABC") == 2
    assert path.read_bytes() == gz


def test_valid_file_copied_into_cache_is_adopted(server, tmp_path):
    gz = gzip.compress(mini_cif("1ABC"))
    (tmp_path / "1ABC.cif.gz").write_bytes(gz)             # copied in by hand, no manifest
    report = fetch_all(["1ABC"], tmp_path, base_url=server.base_url, **FAST)
    assert report.outcomes[0].status == "cached" and server.hits == []
    entry = read_manifest(tmp_path)["1ABC.cif.gz"]
    assert entry["url"] is None and entry["sha256"] == hashlib.sha256(gz).hexdigest()
    (tmp_path / "2XYZ.cif.gz").write_bytes(gz[:20])        # a broken copy is replaced
    server.add("2XYZ")
    assert fetch_all(["2XYZ"], tmp_path, base_url=server.base_url, **FAST).ok
    assert server.count("2XYZ") == 1


def test_retries_after_503(server, tmp_path, capsys):
    server.add("1ABC")
    server.fail_first["/download/1ABC.cif.gz"] = 2
    report = fetch_all(["1ABC"], tmp_path, base_url=server.base_url,
                       **{**FAST, "progress": True})
    assert report.ok and report.outcomes[0].attempts == 3 and server.count("1ABC") == 3
    err = capsys.readouterr().err
    assert "1ABC: HTTP 503" in err and "retry 2/3" in err

    server.add("2XYZ")
    server.fail_first["/download/2XYZ.cif.gz"] = 10
    with pytest.raises(FetchError, match="HTTP 503") as info:
        fetch_entries(["2XYZ"], tmp_path, base_url=server.base_url, **{**FAST, "retries": 2})
    assert server.count("2XYZ") == 3 and "offline" not in str(info.value)
    assert not (tmp_path / "2XYZ.cif.gz").exists()


def test_404_is_not_retried_and_partial_success(server, tmp_path):
    server.add("1ABC")
    with pytest.raises(FetchError) as info:
        fetch_entries(["9ZZZ", "1ABC"], tmp_path, base_url=server.base_url, **FAST)
    message = str(info.value)
    assert "9ZZZ" in message and "entry not found on the server" in message
    assert "1 of 2 entries failed" in message
    assert server.count("9ZZZ") == 1
    assert info.value.report.paths == {"1ABC": tmp_path / "1ABC.cif.gz"}
    assert set(info.value.report.failed) == {"9ZZZ"}
    assert not (tmp_path / "9ZZZ.cif.gz").exists() and no_tmp(tmp_path)


def test_truncated_gzip_is_an_error_and_nothing_is_kept(server, tmp_path):
    server.add("1ABC")
    server.truncate.add("/download/1ABC.cif.gz")
    with pytest.raises(FetchError, match="truncated gzip"):
        fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **FAST)
    assert server.count("1ABC") == 1                        # bad content: not retried
    assert not (tmp_path / "1ABC.cif.gz").exists() and no_tmp(tmp_path)
    assert "1ABC.cif.gz" not in read_manifest(tmp_path)


def test_dropped_connection_is_retried_and_nothing_is_kept(server, tmp_path):
    server.add("1ABC")
    server.cut.add("/download/1ABC.cif.gz")
    with pytest.raises(FetchError, match="IncompleteRead"):
        fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **{**FAST, "retries": 1})
    assert server.count("1ABC") == 2
    assert not (tmp_path / "1ABC.cif.gz").exists() and no_tmp(tmp_path)


def test_not_mmcif_is_rejected(server, tmp_path):
    server.add("1ABC", b"<html><body>maintenance</body></html>")
    with pytest.raises(FetchError, match="not an mmCIF file"):
        fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **FAST)
    assert not (tmp_path / "1ABC.cif.gz").exists()


def test_expected_sha256(server, tmp_path):
    gz = server.add("1ABC")
    good = hashlib.sha256(gz).hexdigest()
    with pytest.raises(FetchError, match="sha256 mismatch") as info:
        fetch_entries(["1ABC"], tmp_path, base_url=server.base_url,
                      expected_sha256={"1abc": "0" * 64}, **FAST)
    assert good in str(info.value)
    assert list(tmp_path.iterdir()) == []                   # nothing in the cache
    paths = fetch_entries(["1ABC"], tmp_path, base_url=server.base_url,
                          expected_sha256={"1ABC": good.upper()}, **FAST)
    assert paths["1ABC"].read_bytes() == gz
    with pytest.raises(ValueError, match="not a sha256"):
        fetch_entries(["1ABC"], tmp_path, expected_sha256={"1ABC": "abc"}, **FAST)


def test_offline(tmp_path):
    with socket.socket() as s:                              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/download"
    (tmp_path / "3DEF.cif.gz").write_bytes(gzip.compress(mini_cif("3DEF")))
    with pytest.raises(FetchError) as info:
        fetch_entries(["1ABC", "2XYZ", "3DEF"], tmp_path, base_url=base, **FAST)
    message = str(info.value)
    assert "offline" in message and f"{base}/1ABC.cif.gz" in message and "--cache" in message
    report = info.value.report
    assert report.paths == {"3DEF": tmp_path / "3DEF.cif.gz"}      # the cache still serves
    assert report.outcomes[0].attempts == 4
    assert report.outcomes[1].attempts == 0 and "not attempted" in report.outcomes[1].error
    assert "2 of 3 entries failed" in message


def test_interrupt_leaves_no_partial_file(server, tmp_path, monkeypatch):
    server.add("1ABC")
    server.add("2XYZ")
    fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **FAST)

    def interrupted(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod._ContentCheck, "feed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_entries(["1ABC", "2XYZ"], tmp_path, base_url=server.base_url, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1ABC.cif.gz", MANIFEST_NAME]
    assert set(read_manifest(tmp_path)) == {"1ABC.cif.gz"}


def test_bad_ids():
    with pytest.raises(ValueError, match=r"'ABCD'.*'1AB'.*4 characters"):
        normalise_ids(["1BXN", "ABCD", "1AB"])
    with pytest.raises(ValueError, match="no PDB IDs"):
        normalise_ids([])
    assert normalise_ids("1bxn, 2FHA 1BXN") == ["1BXN", "2FHA"]
    with pytest.raises(ValueError, match="fmt"):
        fetch_all(["1BXN"], fmt="xml", progress=False)
    with pytest.raises(ValueError, match="base_url"):
        fetch_all(["1BXN"], base_url="files.rcsb.org/download", progress=False)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECKLE_EMBED_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPECKLE_EMBED_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "speckle_embed", "pdb")


def test_cli_ids_file(server, tmp_path, capsys):
    server.add("1ABC")
    server.add("2XYZ")
    ids = tmp_path / "ids.txt"
    ids.write_text("# entries for the test\n1ABC\n\n2xyz   # lower case is fine\n")
    assert read_ids_file(ids) == ["1ABC", "2xyz"]
    cache = tmp_path / "cache"
    args = ["--ids-file", str(ids), "--cache", str(cache), "--base-url", server.base_url,
            "--backoff", "0.001", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"cache {cache}" in out and "downloaded: 2, cached: 0, failed: 0" in out
    assert "1ABC.cif.gz" in out
    assert main(args + ["9ZZZ"]) == 1
    captured = capsys.readouterr()
    assert "downloaded: 0, cached: 2, failed: 1" in captured.out
    assert "entry not found on the server" in captured.err
    assert main(["1BX", "--cache", str(cache), "--no-progress"]) == 1
    assert "invalid PDB ID" in capsys.readouterr().err


def test_fetched_file_reads_as_a_structure(server, tmp_path):
    pytest.importorskip("gemmi")
    from simulate.pdb_io import list_structure_files, read_structure
    from simulate.sources import resolve_sources

    server.add("1ABC")
    path = fetch_entries(["1ABC"], tmp_path, base_url=server.base_url, **FAST)["1ABC"]
    structure = read_structure(path)
    assert structure.n_atoms == 6 and structure.name == "1ABC"
    assert list_structure_files(tmp_path) == [path]          # MANIFEST.json is not a structure
    specs = resolve_sources({"kind": "pdb", "directory": str(tmp_path)})
    assert [s.name for s in specs] == ["1ABC"] and specs[0].load().n_atoms == 6
