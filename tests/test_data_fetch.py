"""fastlayers.data.fetch: pinned downloads (file:// and a local HTTP server, never the network), resume, checksum
errors, the restricted IsoNet++ pickle converter, and the missing-data messages of the examples."""

import functools
import gzip
import hashlib
import http.server
import json
import os
import pathlib
import pickle
import sys
import threading
import types

import pytest
from fastlayers.data import fetch as F
from fastlayers.data import load_subgraph_split
from fastlayers.data.root import require

from .conftest import importorskip

SHARED = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "README.md").exists(), reason="../shared/data absent")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _only_dataset(monkeypatch, *files, name="toy"):
    monkeypatch.setattr(F, "DATASETS", {name: F.Dataset("test data", tuple(files))})


def _pinned(relpath, data, url):
    return F.DataFile(relpath, len(data), _sha(data), (F.Source(url),))


def _leftovers(folder):
    return sorted(p.name for p in pathlib.Path(folder).rglob("*") if p.name.endswith((".part", ".tmp")))


# --- the table ------------------------------------------------------------------------------------------------

@needs_shared
def test_pinned_table_and_sources_agree_with_the_shared_readme():
    rows = {}
    for line in (SHARED / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = (cells[1], int(cells[2].replace(",", "")), cells[-1].strip("`"))
    files = {f.relpath: f for ds in F.DATASETS.values() for f in ds.files}
    # cora.npz was built from pickled scipy matrices (not reproducible byte for byte): the one file not fetched.
    assert set(rows) - set(files) == {"nodeclf/cora/cora.npz"}
    for rel, f in files.items():
        source, size, sha = rows[rel]
        assert (f.size, f.sha256) == (size, sha), rel
        repo, commit, path = (source.split(" @ ")[0], source.split("`")[1], source.split("`")[3])
        url = f.sources[0].url
        assert f"/{repo}/{commit}" in url and url.endswith("/" + path), (rel, url)


# --- fetching -------------------------------------------------------------------------------------------------

def test_fetch_from_file_urls_converts_and_keeps_present_files(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    plain = b"1,2,3\n4,5,6\n"
    (src / "plain.csv").write_bytes(plain)
    events = b"1 2 100\n2 3 200\n"
    (src / "events.txt.gz").write_bytes(gzip.compress(b"src dst time\n" + events))
    _only_dataset(monkeypatch,
                  F.DataFile("a/plain.csv", len(plain), _sha(plain), (F.Source((src / "plain.csv").as_uri()),)),
                  F.DataFile("b/events.txt", len(events), _sha(events),
                             (F.Source((src / "events.txt.gz").as_uri(), (F.gunzip, F.drop_header)),)))
    root = tmp_path / "root"
    assert F.main(["toy", "--root", str(root), "--quiet"]) == 0
    assert (root / "a" / "plain.csv").read_bytes() == plain
    assert (root / "b" / "events.txt").read_bytes() == events
    assert _leftovers(root) == []
    # Present with the pinned hash: kept without touching the sources.
    (src / "plain.csv").unlink()
    (src / "events.txt.gz").unlink()
    paths = F.fetch("toy", str(root), progress=False)
    assert paths == [str(root / "a" / "plain.csv"), str(root / "b" / "events.txt")]


def test_second_source_used_when_the_first_is_unreachable(tmp_path, monkeypatch):
    data = b"payload\n"
    (tmp_path / "good.txt").write_bytes(data)
    _only_dataset(monkeypatch, F.DataFile("x.txt", len(data), _sha(data),
                                          (F.Source((tmp_path / "missing.txt").as_uri()),
                                           F.Source((tmp_path / "good.txt").as_uri()))))
    F.fetch("toy", str(tmp_path / "root"), progress=False)
    assert (tmp_path / "root" / "x.txt").read_bytes() == data


@needs_shared
def test_real_pins_verify_against_shared_copies(tmp_path, monkeypatch):
    # The Texas files as published (copied unchanged), and CollegeMsg in its published form (gzipped as at SNAP,
    # with the header line of the GitHub copy): both must land with the pinned hashes.
    texas = [dataclass_with_source(f, (SHARED / f.relpath).as_uri()) for f in F.DATASETS["texas"].files]
    original = b"src dst time\n" + (SHARED / "temporal" / "collegemsg.txt").read_bytes()
    (tmp_path / "CollegeMsg.txt.gz").write_bytes(gzip.compress(original))
    college = F.DATASETS["collegemsg"].files[0]
    college = dataclass_with_source(college, (tmp_path / "CollegeMsg.txt.gz").as_uri(), (F.gunzip, F.drop_header))
    _only_dataset(monkeypatch, *texas, college)
    root = tmp_path / "root"
    F.fetch("toy", str(root), progress=False)
    for f in texas + [college]:
        assert _sha((root / f.relpath).read_bytes()) == f.sha256
    assert _leftovers(root) == []


def dataclass_with_source(f, url, convert=()):
    return F.DataFile(f.relpath, f.size, f.sha256, (F.Source(url, convert),))


def test_checksum_mismatch_names_file_and_hashes_and_leaves_nothing(tmp_path, monkeypatch):
    good, bad = b"expected content\n", b"tampered content\n"
    (tmp_path / "f.txt").write_bytes(bad)
    _only_dataset(monkeypatch, _pinned("d/f.txt", good, (tmp_path / "f.txt").as_uri()))
    root = tmp_path / "root"
    with pytest.raises(F.ChecksumError) as e:
        F.fetch("toy", str(root), progress=False)
    msg = str(e.value)
    assert "d/f.txt" in msg and _sha(good) in msg and _sha(bad) in msg
    assert list((root / "d").iterdir()) == []  # no destination, no .part, no temporary file


def test_oversized_download_is_cut_and_deleted(tmp_path, monkeypatch):
    good = b"short\n"
    (tmp_path / "big.bin").write_bytes(os.urandom(300_000))
    _only_dataset(monkeypatch, _pinned("big.bin", good, (tmp_path / "big.bin").as_uri()))
    with pytest.raises(F.ChecksumError, match="more than the pinned 6 bytes"):
        F.fetch("toy", str(tmp_path / "root"), progress=False)
    assert list((tmp_path / "root").iterdir()) == []


def test_existing_file_with_wrong_hash_is_reported_then_replaced_with_force(tmp_path, monkeypatch):
    data = b"right\n"
    (tmp_path / "r.txt").write_bytes(data)
    _only_dataset(monkeypatch, F.DataFile("r.txt", len(data), _sha(data), (F.Source((tmp_path / "r.txt").as_uri()),)))
    root = tmp_path / "root"
    root.mkdir()
    (root / "r.txt").write_bytes(b"wrong\n")
    with pytest.raises(F.ChecksumError, match=r"r\.txt exists but its sha256 .* --force"):
        F.fetch("toy", str(root), progress=False)
    F.fetch("toy", str(root), force=True, progress=False)
    assert (root / "r.txt").read_bytes() == data


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*collegemsg"):
        F.fetch("nope", "/tmp", progress=False)
    with pytest.raises(SystemExit):
        F.main(["nope", "--quiet"])


class _Server:
    """A local HTTP server for one file that honours Range (or not) and can drop a response part-way."""

    def __init__(self, data, honour_range=True):
        self.data, self.honour_range, self.cut_after, self.requests = data, honour_range, None, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng[len("bytes="):-1]) if rng and outer.honour_range else 0
                body = outer.data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.data) - 1}/{len(outer.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    body, outer.cut_after = body[:outer.cut_after], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes_from_its_part_file(tmp_path, monkeypatch, honour_range):
    data = os.urandom(200_000)
    server = _Server(data, honour_range)
    try:
        _only_dataset(monkeypatch, F.DataFile("d/file.bin", len(data), _sha(data), (F.Source(server.url),)))
        root = tmp_path / "root"
        server.cut_after = 70_000  # the first response stops short of its Content-Length
        with pytest.raises(F.DownloadError, match=r"closed after 70000 of 200000 bytes.*run the command again"):
            F.fetch("toy", str(root), progress=False)
        part = root / "d" / "file.bin.part"
        assert part.stat().st_size == 70_000 and not (root / "d" / "file.bin").exists()
        F.fetch("toy", str(root), progress=False)
        assert server.requests == [None, "bytes=70000-"]
        assert (root / "d" / "file.bin").read_bytes() == data  # appended after the kept bytes, or sent anew
        assert _leftovers(root) == []
    finally:
        server.close()


def test_part_file_already_complete_is_checked_not_redownloaded(tmp_path, monkeypatch):
    data = os.urandom(5000)

    class Full(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(416)  # what a server answers a Range starting at the end of the file
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Full)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
        _only_dataset(monkeypatch, F.DataFile("file.bin", len(data), _sha(data), (F.Source(url),)))
        (tmp_path / "file.bin.part").write_bytes(data)
        F.fetch("toy", str(tmp_path), progress=False)
        assert (tmp_path / "file.bin").read_bytes() == data and not (tmp_path / "file.bin.part").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- the IsoNet++ converter -----------------------------------------------------------------------------------

class _FakeGraph:
    """Pickles exactly like networkx.Graph (same module and name, a __dict__ with graph/_node/_adj), without
    networkx: it stands for the objects in the upstream files."""

    def __init__(self, n, edges):
        self.graph, self._node, self._adj = {}, {u: {} for u in range(n)}, {u: {} for u in range(n)}
        for u, v in edges:
            self._adj[u][v] = {}
            self._adj[v][u] = {}


def _fake_module(monkeypatch, module, cls):
    # pickle imports the module a class names: fake the whole package chain, so a real networkx is neither
    # needed nor touched (importing it here would bind its Graph to the fake).
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls.__module__ = module
    setattr(sys.modules[module], cls.__qualname__, cls)


@pytest.fixture
def fake_networkx(monkeypatch):
    _FakeGraph.__qualname__ = "Graph"
    _fake_module(monkeypatch, "networkx.classes.graph", _FakeGraph)
    yield _FakeGraph


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_converter_reads_graph_pickles_into_loader_json(fake_networkx, protocol):
    graphs = [fake_networkx(3, [(0, 2), (0, 1)]), fake_networkx(4, [(1, 2), (3, 0), (2, 3)])]
    out = F.isonet_pickle_to_json(pickle.dumps(graphs, protocol=protocol), "train_aids240k_query_subgraphs.pkl")
    doc = json.loads(out)
    assert doc == {"dataset": "aids240k", "split": "train", "kind": "query",
                   "source_file": "large_dataset/splits/train/train_aids240k_query_subgraphs.pkl", "num_graphs": 2,
                   "graphs": [{"num_nodes": 3, "edges": [[0, 2], [0, 1]]},
                              {"num_nodes": 4, "edges": [[0, 3], [1, 2], [2, 3]]}]}
    assert b" " not in out and not out.endswith(b"\n")  # the compact form the pinned hashes are of


def test_convert_isonet_command_builds_a_loadable_split(fake_networkx, tmp_path):
    src = tmp_path / "large_dataset" / "splits"
    (src / "train").mkdir(parents=True)
    corpus = [fake_networkx(3, [(0, 1), (1, 2)]), fake_networkx(2, [(0, 1)]), fake_networkx(3, [(0, 1), (0, 2)])]
    (src / "aids240k_corpus_subgraphs.pkl").write_bytes(pickle.dumps(corpus))
    (src / "train" / "train_aids240k_query_subgraphs.pkl").write_bytes(pickle.dumps([fake_networkx(2, [(0, 1)])]))
    (src / "train" / "train_aids240k_rel_nx_is_subgraph_iso.pkl").write_bytes(
        pickle.dumps({0: {"pos": [0, 2, 1], "neg": []}}))
    (src / "notes.pkl").write_bytes(pickle.dumps([1]))  # not a split file name: skipped, never unpickled
    root = tmp_path / "root"
    # The names are pinned (aids): these toy graphs are not the published ones, so verification must refuse them.
    with pytest.raises(F.ChecksumError, match="aids240k_corpus_subgraphs.pkl: converts to JSON with sha256"):
        F.main(["convert-isonet", str(tmp_path / "large_dataset"), "--root", str(root), "--quiet"])
    assert not (root / "subgraph" / "splits" / "aids240k_corpus_subgraphs.json").exists()
    assert F.main(["convert-isonet", str(tmp_path / "large_dataset"), "--root", str(root), "--quiet",
                   "--no-verify"]) == 0
    split = load_subgraph_split(str(root / "subgraph"), "aids", "train")
    assert [n for n, _ in split.corpus] == [3, 2, 3] and split.corpus[2][1].tolist() == [[0, 1], [0, 2]]
    assert split.pos == [[0, 2, 1]] and split.neg == [[]] and split.queries[0][1].tolist() == [[0, 1]]
    rel = json.loads((root / "subgraph/splits/train/train_aids240k_rel_nx_is_subgraph_iso.json").read_text())
    assert rel["num_queries"] == 1 and rel["num_corpus_graphs"] == 3
    assert _leftovers(root) == []


def test_convert_isonet_missing_source():
    with pytest.raises(FileNotFoundError, match="convert-isonet: /nonexistent/isonet does not exist"):
        F.convert_isonet("/nonexistent/isonet", "/tmp", progress=False)


@needs_shared
def test_real_networkx_pickles_convert_to_the_pinned_json():
    # Rebuild every published split as networkx objects (views cached, as after use), pickle them, convert back:
    # the JSON must be byte-identical to the pinned files, for old and new pickle protocols.
    nx = importorskip("networkx")
    for i, f in enumerate(F.DATASETS["isonet"].files):
        doc = json.loads((SHARED / f.relpath).read_text())
        if doc["kind"] == "relation":
            obj = {r["query"]: {"pos": r["pos"], "neg": r["neg"]} for r in doc["relations"]}
        else:
            obj = []
            for g in doc["graphs"]:
                G = nx.Graph()
                G.add_nodes_from(range(g["num_nodes"]))
                G.add_edges_from(map(tuple, g["edges"]))
                G.nodes, G.edges, G.adj, G.degree  # noqa: B018 (cached in G.__dict__, so pickled too)
                obj.append(G)
        name = os.path.basename(f.relpath)[: -len(".json")] + ".pkl"
        out = F.isonet_pickle_to_json(pickle.dumps(obj, protocol=(0, 2, 4, 5)[i % 4]), name)
        assert _sha(out) == f.sha256, f.relpath


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_forbidden_callable_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps([_RunsCode(marker)])
    with pytest.raises(F.ForbiddenPickleError, match=r"evil\.pkl: the pickle references (os|posix)\.system"):
        F.isonet_pickle_to_json(data, "test_aids240k_query_subgraphs.pkl", where="evil.pkl")
    assert not marker.exists()


def test_pickle_with_other_classes_is_refused(monkeypatch):
    class DiGraph(_FakeGraph):
        pass

    DiGraph.__qualname__ = "DiGraph"
    _fake_module(monkeypatch, "networkx.classes.digraph", DiGraph)
    data = pickle.dumps([DiGraph(2, [(0, 1)])])
    with pytest.raises(F.ForbiddenPickleError, match=r"x\.pkl: .*networkx\.classes\.digraph\.DiGraph"):
        F.isonet_pickle_to_json(data, "aids240k_corpus_subgraphs.pkl", where="x.pkl")
    # copyreg._reconstructor is admitted only to rebuild a stand-in on base object.
    crafted = b"ccopy_reg\n_reconstructor\n(cbuiltins\nobject\ncbuiltins\nobject\nNtR."
    with pytest.raises(F.ForbiddenPickleError, match="_reconstructor"):
        F.load_restricted(crafted, "crafted.pkl")
    with pytest.raises(ValueError, match="garbage.pkl: not a readable pickle"):
        F.load_restricted(b"not a pickle at all", "garbage.pkl")


def test_fetch_isonet_through_file_urls(fake_networkx, tmp_path, monkeypatch):
    # The fetch path of a converted file: pickle downloaded to .part, converted, checked, .part removed.
    pkl = pickle.dumps([fake_networkx(2, [(0, 1)])])
    (tmp_path / "test_aids240k_query_subgraphs.pkl").write_bytes(pkl)
    want = F.isonet_pickle_to_json(pkl, "test_aids240k_query_subgraphs.pkl")
    conv = F.DATASETS["isonet"].files[0].sources[0].convert  # the real table's converter (corpus name)
    assert conv[0].keywords == {"name": "aids240k_corpus_subgraphs.pkl"}
    rel = "subgraph/splits/test/test_aids240k_query_subgraphs.json"
    step = functools.partial(F.isonet_pickle_to_json, name="test_aids240k_query_subgraphs.pkl")
    _only_dataset(monkeypatch, F.DataFile(rel, len(want), _sha(want), (
        F.Source((tmp_path / "test_aids240k_query_subgraphs.pkl").as_uri(), (step,)),)))
    F.fetch("toy", str(tmp_path / "root"), progress=False)
    assert (tmp_path / "root" / rel).read_bytes() == want
    assert _leftovers(tmp_path / "root") == []


# --- missing data -----------------------------------------------------------------------------------------------

def test_require_names_the_path_and_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"collegemsg: .*temporal/collegemsg\.txt does not exist\. Get it "
                                                r"with `python -m fastlayers\.data\.fetch collegemsg --root "):
        require(str(tmp_path), "temporal/collegemsg.txt", "collegemsg")


def test_examples_without_their_files_say_how_to_fetch_them(tmp_path, monkeypatch):
    from fastlayers.examples import isonet, nat

    with pytest.raises(FileNotFoundError, match=r"fetch collegemsg --root"):
        nat.main(["--root", str(tmp_path), "--quiet"])
    with pytest.raises(FileNotFoundError, match=r"--data .*nothing\.txt: no such file"):
        nat.main(["--data", str(tmp_path / "nothing.txt"), "--quiet"])
    with pytest.raises(FileNotFoundError, match=r"subgraph/splits/mutag240k_corpus_subgraphs\.json does not exist.*"
                                                r"fetch isonet --root"):
        isonet.main(["--root", str(tmp_path), "--dataset", "mutag"])
    monkeypatch.setenv("FASTLAYERS_DATA", str(tmp_path / "env"))  # the default root follows $FASTLAYERS_DATA
    with pytest.raises(FileNotFoundError, match=r"env/subgraph/splits"):
        isonet.main([])


@needs_shared
def test_mirror_in_the_root_layout_is_tried_first(tmp_path, monkeypatch):
    # A copy of the stored files (here the shared data folder) serves every pinned file; the public sources are
    # never contacted because the mirror's copies already match the pins.
    monkeypatch.setattr(F, "download", _no_network(F.download, allowed=SHARED.as_uri()))
    root = tmp_path / "root"
    paths = F.fetch("collegemsg", str(root), progress=False, mirror=SHARED.as_uri())
    paths += F.fetch("texas", str(root), progress=False, mirror=SHARED.as_uri())
    assert len(paths) == 13
    for f in F.DATASETS["collegemsg"].files + F.DATASETS["texas"].files:
        assert _sha((root / f.relpath).read_bytes()) == f.sha256
    assert _leftovers(root) == []


def test_a_bad_mirror_copy_is_refused_by_the_pin(tmp_path, monkeypatch):
    f = F.DATASETS["bitcoin_otc"].files[0]
    (tmp_path / "mirror" / "signed").mkdir(parents=True)
    (tmp_path / "mirror" / f.relpath).write_bytes(b"1,2,10,1000\n")
    monkeypatch.setattr(F, "download", _no_network(F.download, allowed=(tmp_path / "mirror").as_uri()))
    monkeypatch.setenv("FASTLAYERS_MIRROR", (tmp_path / "mirror").as_uri())
    root = tmp_path / "root"
    with pytest.raises((F.ChecksumError, F.DownloadError)) as e:
        F.fetch("bitcoin_otc", str(root), progress=False)
    assert f"sha256 of the download from {(tmp_path / 'mirror').as_uri()}/{f.relpath}" in str(e.value)
    assert not (root / f.relpath).exists() and _leftovers(root) == []


def _no_network(download, allowed):
    def guarded(url, *args, **kwargs):
        if not url.startswith(allowed):
            raise F.DownloadError(f"{url}: no network in tests")
        return download(url, *args, **kwargs)

    return guarded
