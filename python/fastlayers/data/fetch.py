"""Download the datasets the examples read, from their original public sources, with pinned checksums.

    python -m fastlayers.data.fetch NAME [NAME ...] [--root DIR] [--force] [--quiet]
    python -m fastlayers.data.fetch --list [--root DIR]
    python -m fastlayers.data.fetch convert-isonet SRC [--root DIR] [--no-verify]

NAME is one of :data:`DATASETS` (``all`` for every one). Files land under ``--root`` (default
:func:`fastlayers.data.root.default_root`: ``$FASTLAYERS_DATA`` or ``~/.cache/fastlayers/data``) in the layout the
loaders and examples expect: ``temporal/collegemsg.txt``, ``signed/bitcoin_otc.csv``, ``nodeclf/<name>/...``,
``subgraph/splits/...``.

Every file is pinned by the sha256 of the file as stored (for a converted file, of the conversion's output).
A download goes to ``<name>.part`` beside its destination and resumes from there (HTTP Range) when the command
is run again after an interruption; the destination appears, by an atomic rename, only once the checksum
matches. A mismatch deletes the ``.part`` and raises :class:`ChecksumError` naming the file, both hashes and the
URL. The IsoNet++ splits are published as pickles of networkx graphs: they are read by
:class:`RestrictedUnpickler`, which admits only the classes those files hold, as inert stand-ins (no networkx
import, no code from the file runs), and rewritten as the JSON :func:`fastlayers.data.load_subgraph_split` reads.
``convert-isonet`` does the same for pickles a user already has.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from .root import default_root

# Sources, each pinned to the commit the shared developer copy was taken from (../shared/data/README.md).
GEOM_GCN = "https://raw.githubusercontent.com/graphdml-uiuc-jlu/geom-gcn/f1fc0d14b3b019c562737240d06ec83b07d16a8f"
HETEROPHILOUS = ("https://raw.githubusercontent.com/yandex-research/heterophilous-graphs/"
                 "a431395582e929d88271309716bea4fe24ce6318")
SEMBA = "https://raw.githubusercontent.com/claws-lab/semba/ae75932dd93e7f7bde3f88b038a2ffc9f874d56a"
TEMPORAL_CLUSTERING = ("https://raw.githubusercontent.com/advaithhl/temporal_graph_clustering/"
                       "1c0aafaf5de167981649228e5953779afed6126b")
ISONETPP = "https://raw.githubusercontent.com/structlearning/isonetpp/b1f911c0db228708d26a1bee9cb7e81e64d76896"
SNAP = "https://snap.stanford.edu/data"

# relpath under the data root, bytes, sha256 of the stored file (for subgraph/*.json: of the JSON the converter
# writes). Copied from ../shared/data/README.md; tests/test_data_fetch.py checks the two agree.
_PINNED = """
signed/bitcoin_otc.csv 1011180 76bd9d8f1d3ff9a1813d9fc8e6902a0ee4d0a2f8c1003842dbc9ec79149ab60c
temporal/collegemsg.txt 1150439 e00ba2415373dee52c00616065bcceaa4750e78de60d1855c76470600f10740f
nodeclf/texas/out1_graph_edges.txt 2172 0fe85183243a78cbee9b85a684f8240963d04d1020d10e9cd2b8cfb25e33b476
nodeclf/texas/out1_node_feature_label.txt 624308 cf5a3ca346cdd1210b8342e22517fcbbdae658065b7a3145f59350e50e6236a3
nodeclf/texas/texas_split_0.6_0.2_0.npz 698 7ba77bf7a8856fcc0ab15623a611b8cdce994e820f577da914123fb4f45272b0
nodeclf/texas/texas_split_0.6_0.2_1.npz 701 21cc244a96e3c51ad7993afb4dd227f90e467d82b964bb42d7d9fc500a6ef87f
nodeclf/texas/texas_split_0.6_0.2_2.npz 756 b9e96a699ccf3a4c31ffbd03e52b25570889833425d20fa44e06c37b327cf61e
nodeclf/texas/texas_split_0.6_0.2_3.npz 759 1a7deeb1285009789d5e6045d7e39f7d019c9223d9a75a2b7ce5e26d33b51f63
nodeclf/texas/texas_split_0.6_0.2_4.npz 702 b5419ff3fe31adcae66fdb085d4f47d0b188e9436ab59f438632af969aafc674
nodeclf/texas/texas_split_0.6_0.2_5.npz 691 68405fd1b9ff6105d99717220ecbd198785e338bf4a73abee722bbc9703d2667
nodeclf/texas/texas_split_0.6_0.2_6.npz 756 8ad78b973164e70e5ac0d282e79adcbc6006e373909fbdfd72a13131e09040b8
nodeclf/texas/texas_split_0.6_0.2_7.npz 693 a84bcbf997365bddf5fdf72ed49dc7e435e475f8c6210f8cdee7c8581a2bd6df
nodeclf/texas/texas_split_0.6_0.2_8.npz 762 65ba65f296f91d40d2d7d3c9369b67415094a7e254c6eee48cd6d6531c586fdf
nodeclf/texas/texas_split_0.6_0.2_9.npz 693 4306981d654ad8835c000c1f73fb6c1e60dfe99e26c13a6073f3b0f4cc3ce6ee
nodeclf/wisconsin/out1_graph_edges.txt 3606 ebd213511c88fce1eda450c2f920600c4b8cbb38f02384856bcc47c6ec1807ae
nodeclf/wisconsin/out1_node_feature_label.txt 856324 a32b0aa38d42f0d36841e8a8cb646d197f0ff33a182ac75a2b4476aeed3c7e4b
nodeclf/wisconsin/wisconsin_split_0.6_0.2_0.npz 805 f66f641e191d35d491cd3b63d6c2cd93c4b436da398984b44c19a8d4d7e7b1a5
nodeclf/wisconsin/wisconsin_split_0.6_0.2_1.npz 739 534aeb97266bd5a85a8587adf8eebad3f2e001c1240610f24b62c0ad0c2466ee
nodeclf/wisconsin/wisconsin_split_0.6_0.2_2.npz 747 047a5b641778ec3a4c76055fd7f18ecb2424c0952f20dfff7e1b17749d8acbdd
nodeclf/wisconsin/wisconsin_split_0.6_0.2_3.npz 810 706c27b4c51d046c0316f1e915f093e4a1fff48b3436b3e7c421eab596a99e77
nodeclf/wisconsin/wisconsin_split_0.6_0.2_4.npz 812 7ee813605eec086457aaff022cf3837f2f893fcf8bd37e3a8d2ff0c80e4c4f87
nodeclf/wisconsin/wisconsin_split_0.6_0.2_5.npz 749 8094ac2bdaf2cbea8f7a48df66a0800c809b2fd5942740e6b0441b660d3a0dd5
nodeclf/wisconsin/wisconsin_split_0.6_0.2_6.npz 735 c423a8deea9b18f9ecb6cfd703578e2159df167de01fe7e6195b88995010252d
nodeclf/wisconsin/wisconsin_split_0.6_0.2_7.npz 733 57ad808c8d4dd94dc4404124370bbcebb3dcc597c2bea6457bf05f220adf1527
nodeclf/wisconsin/wisconsin_split_0.6_0.2_8.npz 741 27d4d62a2a6aea2cdc399302237512ab0d64fb0c84e648112f97c5896274e42f
nodeclf/wisconsin/wisconsin_split_0.6_0.2_9.npz 744 3c149cd124a19021031609e0d7743a7be59aae4f88c8d38410138e8f06f5daaf
subgraph/splits/aids240k_corpus_subgraphs.json 125011 63197ee8280d84797bf8c811bc75acfa96b584406084be0d65c74993ed7740ed
subgraph/splits/test/test_aids240k_query_subgraphs.json 7900 b81245988e6ad4f0673689f958d883a5f36f16fa703a3f18c020c4ca65a2d283
subgraph/splits/test/test_aids240k_rel_nx_is_subgraph_iso.json 234108 41789c13c72abcc42ca836527737cb3c20a0379219e7e411c152383e2061d73f
subgraph/splits/train/train_aids240k_query_subgraphs.json 17021 d67cf1e51419078586baf66ad0618627572e2ffd83075074f6f92199e78121a3
subgraph/splits/train/train_aids240k_rel_nx_is_subgraph_iso.json 561687 8261421850a1ca8afc02495cc168a18ebb008002db7b4072df08fe111d0c8941
subgraph/splits/val/val_aids240k_query_subgraphs.json 4672 e6e1d0fc09d1ce914e8923d69d5837eaec9189446a4dd0e1c25b91d3fac37ad7
subgraph/splits/val/val_aids240k_rel_nx_is_subgraph_iso.json 140535 4996cee3f7b37d1225449950c4b1d4441e53a9fdd5508d43be285db3c4b221b8
subgraph/splits/mutag240k_corpus_subgraphs.json 130743 bb768e5942229f8da0f10012b6399b428d3bd06108d63022fc9dcd89b2e23c33
subgraph/splits/test/test_mutag240k_query_subgraphs.json 8394 fb0df83625805129efdfe9c4433b212336537316341546c32c30df4ab534fa4f
subgraph/splits/test/test_mutag240k_rel_nx_is_subgraph_iso.json 234110 fa47473579b3ce88bb7ad12a2b7e1c0d2057b96e2a0fc06a1efe8edd5d8ef226
subgraph/splits/train/train_mutag240k_query_subgraphs.json 20259 e24cd2335b694d8376fcd9d3585bdb25a13ade1fc0a5159e6e4da74d14672f20
subgraph/splits/train/train_mutag240k_rel_nx_is_subgraph_iso.json 561689 b54673be5e221de96ed35e4e1ba26e484fbe12f52d9cfbbbb6c39403bb160ed8
subgraph/splits/val/val_mutag240k_query_subgraphs.json 5355 d5ec93e2d8a400793decfa5ff53050f959fb40ba131692fafbbe6f89f54e1d99
subgraph/splits/val/val_mutag240k_rel_nx_is_subgraph_iso.json 140537 fdc3399ac0f8bef26fbf1f4eef69ad5e465ab270084b147d59dc5a7859ab12b8
subgraph/splits/ptc_fm240k_corpus_subgraphs.json 125109 9d09b670a20ba563c9f7a19c53fbd4f0ae352df0eddfc0f056158f5ba432ae23
subgraph/splits/test/test_ptc_fm240k_query_subgraphs.json 7615 e7adeb4774a258becf1766c115ca7bd1d4c73cdaff43dfdc28d21033fd5eabac
subgraph/splits/test/test_ptc_fm240k_rel_nx_is_subgraph_iso.json 234112 f0d630bae42d7ffb28efe07f24564a2c12a64e53e011019ffdc880b000f35295
subgraph/splits/train/train_ptc_fm240k_query_subgraphs.json 17667 fb776023aaed4e63f163322cd55ce94bb73ff808bf7e783d65a3d3eeb5e6afd4
subgraph/splits/train/train_ptc_fm240k_rel_nx_is_subgraph_iso.json 561691 aebc959dda6f99871bd9a340dd894e3a57c0e4c327b5042bbf5f986251c9d98a
subgraph/splits/val/val_ptc_fm240k_query_subgraphs.json 4628 d80dae5de41926b4352f3dc43565ebc352ebe36ecc33ca5d8aee2b4a048038ba
subgraph/splits/val/val_ptc_fm240k_rel_nx_is_subgraph_iso.json 140539 9caee2ac0ea1acb47165d0ae2ef39b7597df85ebfad4e26b1a02d516a25cfd4f
subgraph/splits/ptc_fr240k_corpus_subgraphs.json 124915 6af0e0ec795b050d68a96ad7c8f5196a0592c76cc62b9cde822cbd3d03b50024
subgraph/splits/test/test_ptc_fr240k_query_subgraphs.json 7628 ef855367ce63d836d721335e46ad3ab8c6be4ad1906c8958a85c5c55dc938e73
subgraph/splits/test/test_ptc_fr240k_rel_nx_is_subgraph_iso.json 234112 e8298dd2a201debaaa2c845e87b69173882327ed82f5ce43a060caa35c2ee54e
subgraph/splits/train/train_ptc_fr240k_query_subgraphs.json 17715 7bee1a1340ada53be1d34abfafe5ff401ce2aa450ac68b248dadcca861157976
subgraph/splits/train/train_ptc_fr240k_rel_nx_is_subgraph_iso.json 561691 c547b771650a8468737401d1768e4b4cfa37c2023715501e196dc363ed1891fa
subgraph/splits/val/val_ptc_fr240k_query_subgraphs.json 4654 7679c959774f6d342fdecf1a46d5a49546c820f244e54c082e4f01adcf5a96d4
subgraph/splits/val/val_ptc_fr240k_rel_nx_is_subgraph_iso.json 140539 3a0e34e820bfe57da8b6bdac95d19df255b113bdb668c92170f221cafd9134a6
subgraph/splits/ptc_mm240k_corpus_subgraphs.json 125014 b8dc3453dce8cfb4b7b6b7db98567700403b90912755ec6e4b905f1c4266f6df
subgraph/splits/test/test_ptc_mm240k_query_subgraphs.json 7779 09334b9ef200f40d1062ad64d1d1459ed2a8de92e5577e02211d6fcfa490c082
subgraph/splits/test/test_ptc_mm240k_rel_nx_is_subgraph_iso.json 234112 90adbec50a3676d9437808458d044963b7b17dfa469bca13df31733be65727aa
subgraph/splits/train/train_ptc_mm240k_query_subgraphs.json 17594 bc06c3efaa3b3611ce395cd9cbcf374e62502118f3dcb6e94c05557cdfc65dbe
subgraph/splits/train/train_ptc_mm240k_rel_nx_is_subgraph_iso.json 561691 e169a7798a19bec13232affec495e1127c2594198348707496b7ff6ff33c83fd
subgraph/splits/val/val_ptc_mm240k_query_subgraphs.json 4627 e1e0a3edc31cee7d8fc23f63d3c091f97e641dd7d150d840e8dfa95e5933a914
subgraph/splits/val/val_ptc_mm240k_rel_nx_is_subgraph_iso.json 140539 3b4f40be66395b55ca61ffc8b6ff653ee509011a7b8da6ff724c71867cb50c9d
nodeclf/film/out1_graph_edges.txt 323820 997cdce67ea9c29257d3ffe796328391931901cf823830affa453178b60e2c3e
nodeclf/film/out1_node_feature_label.txt 207718 1d5cdd094f8b91e770f6decfca85b35cf42f75d1efb51055fd6af16e11820ff8
nodeclf/film/film_split_0.6_0.2_0.npz 4214 4505a41d4e90abd94d1ec22571ce528b09ad7cf20d87f764aebd4177590767f5
nodeclf/film/film_split_0.6_0.2_1.npz 4231 1871b0d24e3977c41e378fd24acc8025b63f86b77739be77a5b558d1287f207d
nodeclf/film/film_split_0.6_0.2_2.npz 4224 d26680e911ef3ecc9fc2a26d90c9d35028c63aadd7a5aea774649d1496c282cb
nodeclf/film/film_split_0.6_0.2_3.npz 4207 6755ad5f6a0be8594b344af3d2261eed935b83b73c4d70136e1a7beea7f78cb0
nodeclf/film/film_split_0.6_0.2_4.npz 4233 328fdca62b25074f21f2922518e042f24b3b8a1fc378f9dfb2cae36439aed902
nodeclf/film/film_split_0.6_0.2_5.npz 4224 5b3161a8dc8de4b2e651ebd56d68e768d1377044895b325566117fe26ab81cb7
nodeclf/film/film_split_0.6_0.2_6.npz 4221 e251b38abd4d7931b5e9ae5aba99dcdf87f0be283bdf6e65421274a1c9ef1df6
nodeclf/film/film_split_0.6_0.2_7.npz 4205 12164ef9f5620a2f12a387f4f2b8636859d42201101d6d32829ade62d5a98326
nodeclf/film/film_split_0.6_0.2_8.npz 4217 405cd1f7f631f678119f8bf2405809e86614d532985beb59566fcf95abd35b3f
nodeclf/film/film_split_0.6_0.2_9.npz 4208 505691c5d41bb37b20d085415dcdde2e8e68b5bc4e1feb2c0e361308002012bb
nodeclf/heterophilous/chameleon_filtered.npz 58924 bf46f07e1fb5249280447e5fe3100f3e82fc4b93ad1e13ffcfdec924b6ac0bb5
nodeclf/heterophilous/squirrel_filtered.npz 208215 f06370ffb3116c5de8b7a600005400b2293c025e0ce2f6916d8201a825505ac7
nodeclf/heterophilous/chameleon.npz 177840 4c640bd2877fc4f9f101531e2f977bc16445a54e09a5cb01178df608e552f3fd
nodeclf/heterophilous/squirrel.npz 704277 d436e3b42c0546b105241c0ab0766097074e68e55f67b133eeb9b0162e55cbd9
"""


def _parse_pinned(text):
    out = {}
    for line in text.split("\n"):
        if line.strip():
            rel, size, sha = line.split()
            out[rel] = (int(size), sha)
    return out


PINNED = _parse_pinned(_PINNED)


class ChecksumError(ValueError):
    """A downloaded or converted file whose sha256 is not the pinned one (nothing was written)."""


class DownloadError(OSError):
    """A download that could not complete (its ``.part`` is kept, so running the command again resumes it)."""


class ForbiddenPickleError(ValueError):
    """A pickle that references a class outside :class:`RestrictedUnpickler`'s allowed set (nothing in it ran)."""


# --- conversions (bytes -> bytes) -----------------------------------------------------------------------------

def gunzip(data: bytes) -> bytes:
    """The decompressed content of a .gz download."""
    return gzip.decompress(data)


def drop_header(data: bytes) -> bytes:
    """Drops a first line that is not data (CollegeMsg's ``src dst time``): its first field is not a number."""
    first, _, rest = data.partition(b"\n")
    fields = first.split()
    if fields and not fields[0].lstrip(b"-").isdigit():
        return rest
    return data


@dataclasses.dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from, and the conversions (in order) that turn it into the stored file."""

    url: str
    convert: tuple = ()

    def apply(self, data: bytes) -> bytes:
        for step in self.convert:
            data = step(data)
        return data


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A file under the data root: where it goes, its pinned size and sha256, and its sources (tried in order)."""

    relpath: str
    size: int
    sha256: str
    sources: tuple


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What ``python -m fastlayers.data.fetch NAME`` gets."""

    description: str
    files: tuple


# --- IsoNet++ pickles ------------------------------------------------------------------------------------------

class _StandIn:
    """Inert stand-in for an admitted class: keeps the constructor arguments and the state the pickle sets."""

    args = ()
    state = None

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class NxGraphStandIn(_StandIn):
    """What a pickled ``networkx.Graph`` becomes: its ``__dict__`` (``_node``, ``_adj``, ...) in ``state``."""


class _NxViewStandIn(_StandIn):
    """A pickled networkx view (``G.nodes``, ``G.edges``, ``G.adj``, ``G.degree``, cached in the graph's
    ``__dict__`` once used). It holds nothing the graph does not, so it is read and ignored."""


def _reconstructor(cls, base, state):
    # Protocols 0 and 1 pickle a plain object as copyreg._reconstructor(cls, object, None); admit only that form,
    # for the stand-ins.
    if not (isinstance(cls, type) and issubclass(cls, _StandIn)) or base is not object or state is not None:
        raise ForbiddenPickleError(f"copyreg._reconstructor called with ({cls!r}, {base!r}, {state!r})")
    return object.__new__(cls)


_VIEWS = {("networkx.classes.reportviews", n) for n in ("NodeView", "EdgeView", "DegreeView")}
_VIEWS |= {("networkx.classes.coreviews", n) for n in ("AdjacencyView", "AtlasView")}
_ALLOWED = {("networkx.classes.graph", "Graph"): NxGraphStandIn, **{v: _NxViewStandIn for v in _VIEWS},
            ("copyreg", "_reconstructor"): _reconstructor, ("copy_reg", "_reconstructor"): _reconstructor,
            ("builtins", "object"): object, ("__builtin__", "object"): object}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the IsoNet++ split files. They hold lists of ``networkx.Graph`` and dicts of int lists;
    the only classes admitted are ``networkx.classes.graph.Graph`` and the views networkx caches inside a graph,
    each replaced by an inert stand-in (networkx is not imported), plus ``copyreg._reconstructor`` with base
    ``object`` (how protocols 0/1 spell a plain object). Any other class or function raises
    :class:`ForbiddenPickleError` naming it and ``where``, before anything from the file is called."""

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenPickleError(
                f"{self.where}: the pickle references {module}.{name}, which an IsoNet++ split file does not "
                f"hold (allowed: networkx.classes.graph.Graph and its cached views); refused without running it"
            ) from None

    def persistent_load(self, pid):
        raise ForbiddenPickleError(f"{self.where}: the pickle uses a persistent id ({pid!r}); refused")


def load_restricted(data: bytes, where: str):
    """Unpickles ``data`` with :class:`RestrictedUnpickler`; a malformed pickle raises ValueError naming
    ``where``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), where).load()
    except ForbiddenPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError, ValueError) as e:
        raise ValueError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from e


_ISONET_NAME = re.compile(r"^(?:(?P<split>train|val|test)_(?P<qds>\w+?240k)_(?P<kind>query_subgraphs|"
                          r"rel_nx_is_subgraph_iso)|(?P<cds>\w+?240k)_corpus_subgraphs)\.pkl$")


def isonet_layout(name: str):
    """(dataset, split or None, kind, relpath of the JSON under the data root) for an IsoNet++ split file name
    (``aids240k_corpus_subgraphs.pkl``, ``train_aids240k_query_subgraphs.pkl``,
    ``train_aids240k_rel_nx_is_subgraph_iso.pkl``), or None for any other name."""
    m = _ISONET_NAME.match(name)
    if m is None:
        return None
    stem = name[:-len(".pkl")]
    if m.group("cds"):
        return m.group("cds"), None, "corpus", f"subgraph/splits/{stem}.json"
    kind = "query" if m.group("kind") == "query_subgraphs" else "relation"
    split = m.group("split")
    return m.group("qds"), split, kind, f"subgraph/splits/{split}/{stem}.json"


def _node_ids(g, where, index):
    state = g.state[0] if isinstance(g.state, tuple) else g.state
    state = state if isinstance(state, dict) else {}
    # networkx >= 2 keeps _node/_adj; 1.x kept node/adj.
    nodes = state.get("_node", state.get("node"))
    adj = state.get("_adj", state.get("adj"))
    if not isinstance(nodes, dict) or not isinstance(adj, dict):
        raise ValueError(  # noqa: TRY004 - bad file content, not a bad argument
            f"{where}: graph {index} has no node and adjacency dicts; not a networkx Graph pickle")
    ids = list(nodes)
    if any(type(u) is not int for u in ids):
        bad = next(u for u in ids if type(u) is not int)
        raise ValueError(f"{where}: graph {index} has a node id {bad!r} of type {type(bad).__name__}; the JSON "
                         f"format needs integer node ids")
    return ids, adj


def _graph_doc(g, where, index):
    """{num_nodes, edges}: each undirected edge once, in networkx's edge iteration order (nodes in insertion order,
    each node's neighbours in insertion order, an edge listed at its first endpoint)."""
    ids, adj = _node_ids(g, where, index)
    # Ids already 0..n-1 are kept; others are renumbered in insertion order (the loader needs 0..n-1).
    index_of = {u: u for u in ids} if sorted(ids) == list(range(len(ids))) else {u: i for i, u in enumerate(ids)}
    edges, done = [], set()
    for u, nbrs in adj.items():
        if u not in index_of or not isinstance(nbrs, dict):
            raise ValueError(f"{where}: graph {index}: adjacency entry {u!r} is not a node with a neighbour dict")
        for v in nbrs:
            if v not in index_of:
                raise ValueError(f"{where}: graph {index}: edge ({u!r}, {v!r}) ends outside the graph's nodes")
            if v not in done:
                edges.append([index_of[u], index_of[v]])
        done.add(u)
    return {"num_nodes": len(ids), "edges": edges}


def _id_list(value, where, q, key):
    if not isinstance(value, list) or any(type(c) is not int or c < 0 for c in value):
        raise ValueError(f"{where}: query {q}: {key!r} must be a list of corpus ids (non-negative ints)")
    return value


def isonet_pickle_to_json(data: bytes, name: str, where: str | None = None) -> bytes:
    """Converts one IsoNet++ split pickle (its bytes; ``name`` its file name, which says what it holds) to the
    JSON :func:`fastlayers.data.load_subgraph_split` reads, as compact UTF-8 bytes without a trailing newline
    (the form the pinned hashes are of). The pickle is read with :class:`RestrictedUnpickler`.

    Corpus / query files (a list of networkx Graphs) give ``{dataset, split, kind, source_file, num_graphs,
    graphs: [{num_nodes, edges}]}``; relation files (``{query: {"pos": [...], "neg": [...]}}`` with queries
    0..n-1 in order) give ``{dataset, split, kind, source_file, num_queries, num_corpus_graphs, relations:
    [{query, pos, neg}]}``, num_corpus_graphs being one more than the largest corpus id listed."""
    where = where or name
    layout = isonet_layout(name)
    if layout is None:
        raise ValueError(f"{where}: {name!r} is not an IsoNet++ split file name (e.g. aids240k_corpus_subgraphs.pkl, "
                         f"train_aids240k_query_subgraphs.pkl, train_aids240k_rel_nx_is_subgraph_iso.pkl)")
    dataset, split, kind, _ = layout
    source = f"large_dataset/splits/{name}" if split is None else f"large_dataset/splits/{split}/{name}"
    obj = load_restricted(data, where)
    doc = {"dataset": dataset, "split": split, "kind": kind, "source_file": source}
    if kind in ("corpus", "query"):
        if not isinstance(obj, list) or not all(isinstance(g, NxGraphStandIn) for g in obj):
            raise ValueError(f"{where}: expected a list of networkx Graphs, found {type(obj).__name__}")
        doc["num_graphs"] = len(obj)
        doc["graphs"] = [_graph_doc(g, where, i) for i, g in enumerate(obj)]
    else:
        if not isinstance(obj, dict) or list(obj) != list(range(len(obj))):
            raise ValueError(f"{where}: expected a dict keyed by query ids 0..n-1 in order")
        rel = []
        for q, v in obj.items():
            if not isinstance(v, dict) or "pos" not in v or "neg" not in v:
                raise ValueError(f"{where}: query {q}: expected a dict with 'pos' and 'neg' lists")
            rel.append({"query": q, "pos": _id_list(v["pos"], where, q, "pos"),
                        "neg": _id_list(v["neg"], where, q, "neg")})
        doc["num_queries"] = len(rel)
        doc["num_corpus_graphs"] = max((c + 1 for r in rel for c in r["pos"] + r["neg"]), default=0)
        doc["relations"] = rel
    return json.dumps(doc, separators=(",", ":")).encode()


def convert_isonet(src: str, root: str | None = None, verify: bool = True, progress: bool = True) -> list:
    """Converts IsoNet++ split pickles a user already has to JSON under ``root/subgraph/splits`` (root default
    ``default_root()``). ``src``: one .pkl file, or a folder searched recursively (e.g. the isonetpp repository's
    ``large_dataset``); files with other names are skipped. With ``verify`` a file whose name is pinned must
    convert to the pinned hash (ChecksumError, nothing written for it otherwise); unpinned names (e.g. ptc_mr)
    are converted unchecked. Returns the JSON paths written."""
    if not os.path.exists(src):
        raise FileNotFoundError(f"convert-isonet: {src} does not exist; pass a .pkl file or the folder holding the "
                                f"IsoNet++ pickles (the isonetpp repository's large_dataset/)")
    if os.path.isdir(src):
        found = sorted(os.path.join(d, n) for d, _, names in os.walk(src) for n in names if n.endswith(".pkl"))
    else:
        found = [src]
    todo = [(p, isonet_layout(os.path.basename(p))) for p in found]
    skipped = [p for p, layout in todo if layout is None]
    todo = [(p, layout) for p, layout in todo if layout is not None]
    if not todo:
        raise ValueError(f"convert-isonet: no IsoNet++ split pickles under {src} (names like "
                         f"aids240k_corpus_subgraphs.pkl or train/train_aids240k_query_subgraphs.pkl)")
    from tqdm import tqdm

    root = default_root() if root is None else root
    written = []
    for path, (_, _, _, relpath) in tqdm(todo, desc="convert-isonet", unit="file", disable=not progress):
        with open(path, "rb") as f:
            data = isonet_pickle_to_json(f.read(), os.path.basename(path), where=path)
        pinned = PINNED.get(relpath)
        if verify and pinned is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != pinned[1]:
                raise ChecksumError(f"{path}: converts to JSON with sha256 {actual}, expected {pinned[1]} (the "
                                    f"pinned isonetpp commit); nothing was written for it. Pass --no-verify to "
                                    f"convert a different version anyway")
        dest = os.path.join(root, relpath)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _write_atomic(dest, data)
        written.append(dest)
    for p in skipped:
        tqdm.write(f"skipped {p}: not an IsoNet++ split file name", file=sys.stderr)
    return written


# --- the table of datasets -----------------------------------------------------------------------------------

def _file(relpath, *sources):
    size, sha = PINNED[relpath]
    return DataFile(relpath, size, sha, tuple(sources))


def _geom_gcn(name):
    files = [_file(f"nodeclf/{name}/{f}", Source(f"{GEOM_GCN}/new_data/{name}/{f}"))
             for f in ("out1_graph_edges.txt", "out1_node_feature_label.txt")]
    files += [_file(f"nodeclf/{name}/{name}_split_0.6_0.2_{i}.npz",
                    Source(f"{GEOM_GCN}/splits/{name}_split_0.6_0.2_{i}.npz")) for i in range(10)]
    return tuple(files)


ISONET_DATASETS = ("aids", "mutag", "ptc_fm", "ptc_fr", "ptc_mm")


def _isonet_files():
    names = []
    for ds in ISONET_DATASETS:
        names.append(f"{ds}240k_corpus_subgraphs")
        for split in ("train", "val", "test"):
            names += [f"{split}/{split}_{ds}240k_query_subgraphs", f"{split}/{split}_{ds}240k_rel_nx_is_subgraph_iso"]
    return tuple(_file(f"subgraph/splits/{n}.json",
                       Source(f"{ISONETPP}/large_dataset/splits/{n}.pkl",
                              (functools.partial(isonet_pickle_to_json, name=os.path.basename(n) + ".pkl"),)))
                 for n in names)


# Where a file also exists at SNAP (the original publisher) that copy is the second source: the GitHub copy at the
# pinned commit is the one the pinned hash was computed from, SNAP's is expected to convert to the same bytes.
DATASETS = {
    "collegemsg": Dataset(
        "UC Irvine messages (SNAP CollegeMsg): 59,835 timed directed messages among 1,899 users; examples.nat",
        (_file("temporal/collegemsg.txt", Source(f"{TEMPORAL_CLUSTERING}/CollegeMsg.txt", (drop_header,)),
               Source(f"{SNAP}/CollegeMsg.txt.gz", (gunzip, drop_header))),)),
    "bitcoin_otc": Dataset(
        "Bitcoin OTC who-trusts-whom (SNAP soc-sign-bitcoinotc): 35,592 signed, timed ratings among 5,881 users",
        (_file("signed/bitcoin_otc.csv", Source(f"{SEMBA}/data/BitcoinOTC-1/raw/soc-sign-bitcoinotc.csv"),
               Source(f"{SNAP}/soc-sign-bitcoinotc.csv.gz", (gunzip,))),)),
    "texas": Dataset("Geom-GCN WebKB Texas: 183 pages, 1,703 binary features, 5 classes, 10 splits",
                     _geom_gcn("texas")),
    "wisconsin": Dataset("Geom-GCN WebKB Wisconsin: 251 pages, 1,703 binary features, 5 classes, 10 splits",
                         _geom_gcn("wisconsin")),
    "film": Dataset("Geom-GCN Film (Actor): 7,600 nodes, 932 sparse binary features, 5 classes, 10 splits",
                    _geom_gcn("film")),
    "heterophilous": Dataset(
        "Platonov et al. (ICLR 2023) Chameleon and Squirrel npz, filtered and unfiltered, 10 splits each",
        tuple(_file(f"nodeclf/heterophilous/{n}.npz", Source(f"{HETEROPHILOUS}/data/{n}.npz"))
              for n in ("chameleon_filtered", "squirrel_filtered", "chameleon", "squirrel"))),
    "isonet": Dataset(
        "IsoNet++ subgraph-matching splits (AIDS, MUTAG, PTC-FM/FR/MM): 800 corpus graphs and 180/45/75 "
        "train/val/test queries each; pickles converted to JSON",
        _isonet_files()),
}


# --- download ---------------------------------------------------------------------------------------------------

_CHUNK = 1 << 16
_TIMEOUT = 60


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _write_atomic(path, data: bytes):
    """Writes ``data`` to a temporary file beside ``path`` and renames it there: a reader sees all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def download(url: str, part: str, limit: int | None = None, progress: bool = True, desc: str = "") -> None:
    """Downloads ``url`` into ``part``, resuming after the bytes ``part`` already holds (HTTP Range).

    A server that ignores the Range header (or a file:// URL) sends the whole file, which then replaces the
    partial one. ``limit``: the most bytes the file may have (more means it is not the expected file:
    ChecksumError, and ``part`` is deleted). A connection that ends early raises DownloadError and keeps
    ``part`` for the next attempt."""
    from tqdm import tqdm

    offset = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fastlayers-fetch"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing after offset: the .part already holds the whole file
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from e
    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0
        elif offset:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if start is None or int(start.group(1)) != offset:
                # Appending would corrupt the file, and resuming again would meet the same answer.
                _remove(part)
                raise DownloadError(f"{url}: asked for bytes from {offset}, the server answered Content-Range "
                                    f"{response.headers.get('Content-Range')!r}; the partial download was "
                                    f"deleted: run the command again to start over")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        got = offset
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc, leave=False,
                     disable=not progress) as bar:
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
                    if limit is not None and got > limit:
                        break
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(f"{url}: connection lost after {got} bytes ({e}); the partial download "
                                    f"is kept in {part}: run the command again to resume") from e
    if limit is not None and got > limit:
        _remove(part)
        raise ChecksumError(f"{url}: more than the pinned {limit} bytes arrived, so it is not the expected file; "
                            f"the partial download was deleted")
    if total is not None and got < total:
        raise DownloadError(f"{url}: the connection closed after {got} of {total} bytes; the partial download is "
                            f"kept in {part}: run the command again to resume")


def _part_path(dest, url):
    # One .part per source, named after the URL's file, so a retry from another source never appends to it.
    return os.path.join(os.path.dirname(dest), os.path.basename(urllib.parse.urlparse(url).path) + ".part")


def fetch_file(f: DataFile, root: str, force: bool = False, progress: bool = True, mirror: str | None = None) -> str:
    """Makes ``root/f.relpath`` hold the pinned file: kept if already there with the right hash, else downloaded
    from the first source that works, converted, checked and renamed into place. Returns the path.

    ``mirror`` (default ``$FASTLAYERS_MIRROR``): a base URL holding the stored files in the data root's layout
    (e.g. ``file:///data/copy`` or an internal HTTP server), tried before the public sources; the pinned hash
    still decides."""
    dest = os.path.join(root, f.relpath)
    if os.path.exists(dest) and not force:
        actual = _sha256_file(dest)
        if actual == f.sha256:
            return dest
        raise ChecksumError(f"{dest} exists but its sha256 is {actual}, expected {f.sha256}: delete it (or pass "
                            f"--force) and fetch again")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    problems, mismatches = [], 0
    mirror = os.environ.get("FASTLAYERS_MIRROR") if mirror is None else mirror
    sources = f.sources
    if mirror:
        sources = (Source(mirror.rstrip("/") + "/" + urllib.parse.quote(f.relpath)),) + tuple(sources)
    for src in sources:
        part = _part_path(dest, src.url)
        try:
            download(src.url, part, None if src.convert else f.size, progress, f.relpath)
        except ChecksumError as e:
            problems.append(str(e))
            mismatches += 1
            continue
        except DownloadError as e:
            problems.append(str(e))
            continue
        try:
            if src.convert:
                with open(part, "rb") as fh:
                    data = src.apply(fh.read())
                actual = hashlib.sha256(data).hexdigest()
            else:
                actual = _sha256_file(part)
        except (ValueError, EOFError, OSError) as e:  # a corrupt .gz or pickle: the download is useless
            _remove(part)
            problems.append(f"{src.url}: could not convert the download ({e}); it was deleted")
            mismatches += 1
            continue
        if actual != f.sha256:
            _remove(part)
            problems.append(f"{f.relpath}: sha256 of the download from {src.url} is {actual}, expected "
                            f"{f.sha256}; the partial file was deleted and {dest} was not written")
            mismatches += 1
            continue
        if src.convert:
            _write_atomic(dest, data)
            _remove(part)
        else:
            os.replace(part, dest)
        return dest
    message = f"could not fetch {f.relpath}:\n  " + "\n  ".join(problems)
    if mismatches == len(sources):
        raise ChecksumError(message)
    raise DownloadError(message)


def fetch(name: str, root: str | None = None, force: bool = False, progress: bool = True,
          mirror: str | None = None) -> list:
    """Fetches dataset ``name`` (a key of :data:`DATASETS`) under ``root`` (default ``default_root()``); files
    already present with the pinned hash are kept; ``mirror`` as in :func:`fetch_file`. Returns the paths."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)} (or 'all'); "
                         f"`python -m fastlayers.data.fetch --list` describes them")
    from tqdm import tqdm

    root = default_root() if root is None else root
    out = []
    for f in tqdm(DATASETS[name].files, desc=name, unit="file", disable=not progress):
        out.append(fetch_file(f, root, force, progress, mirror))
    return out


# --- command line -----------------------------------------------------------------------------------------------

def _status(name, root):
    files = DATASETS[name].files
    have = sum(os.path.exists(os.path.join(root, f.relpath)) for f in files)
    return f"{have}/{len(files)} files present" if have else "not fetched"


def _list(root):
    print(f"data root: {root} (set by --root or $FASTLAYERS_DATA)")
    for name, ds in DATASETS.items():
        size = sum(f.size for f in ds.files)
        print(f"  {name:<14} {len(ds.files):>3} files {size / 1e6:6.2f} MB  [{_status(name, root)}]\n"
              f"                 {ds.description}")


def main(argv=None) -> int:
    """Entry point of ``python -m fastlayers.data.fetch``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["convert-isonet"]:
        ap = argparse.ArgumentParser(prog="python -m fastlayers.data.fetch convert-isonet",
                                     description="Convert IsoNet++ split pickles (without running pickle code) to "
                                                 "the JSON fastlayers.data.load_subgraph_split reads.")
        ap.add_argument("src", help="a .pkl file or a folder holding them (e.g. isonetpp's large_dataset/)")
        ap.add_argument("--root", default=None, help="data root (default: $FASTLAYERS_DATA or "
                                                     "~/.cache/fastlayers/data); JSON goes to ROOT/subgraph/splits")
        ap.add_argument("--no-verify", action="store_true", help="write JSON that differs from the pinned hashes")
        ap.add_argument("--quiet", action="store_true", help="no progress bar")
        args = ap.parse_args(argv[1:])
        paths = convert_isonet(args.src, args.root, verify=not args.no_verify, progress=not args.quiet)
        print(f"wrote {len(paths)} JSON files under {os.path.join(args.root or default_root(), 'subgraph')}")
        return 0
    ap = argparse.ArgumentParser(prog="python -m fastlayers.data.fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"dataset: {', '.join(DATASETS)}, or all")
    ap.add_argument("--root", default=None, help="data root (default: $FASTLAYERS_DATA or ~/.cache/fastlayers/data)")
    ap.add_argument("--list", action="store_true", help="describe the datasets and what --root already holds")
    ap.add_argument("--force", action="store_true", help="download again even where a file exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--mirror", default=None, help="base URL of a copy in the data root's layout, tried first "
                                                   "(default $FASTLAYERS_MIRROR); the pinned sha256 still decides")
    args = ap.parse_args(argv)
    root = default_root() if args.root is None else args.root
    if args.list:
        _list(root)
        return 0
    if not args.names:
        ap.error(f"name a dataset ({', '.join(DATASETS)}, or all); --list describes them")
    names = list(DATASETS) if "all" in args.names else args.names
    for n in names:
        if n not in DATASETS:
            ap.error(f"unknown dataset {n!r}: choose from {', '.join(DATASETS)}, or all")
    for n in names:
        paths = fetch(n, root, force=args.force, progress=not args.quiet, mirror=args.mirror)
        print(f"{n}: {len(paths)} files under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
