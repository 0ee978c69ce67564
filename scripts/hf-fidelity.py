#!/usr/bin/env python3
"""Fidelity checks of hubsim against the official Python client, huggingface_hub.

Run through scripts/hf-fidelity.sh, which starts the server on a folder of repos (the small zoo by default) with a
small page size and sets HF_ENDPOINT, HF_HUB_DISABLE_TELEMETRY, HF_HUB_DISABLE_XET and a throwaway HF_HOME before
this script imports huggingface_hub (the endpoint is read once, at import).

Every expectation is computed from the files on disk, independently of the server: sizes, sha256 of LFS files, git
blob ids of small files, safetensors headers, and the creation dates in ground_truth.json. The last line is
"N passed, M failed"; the exit status is 0 only when nothing failed.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import traceback
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


class Zoo:
    """The folder the server serves, read directly."""

    def __init__(self, root: Path):
        self.root = root
        self.repos = sorted(
            f"{org.name}/{repo.name}" for org in root.iterdir() if org.is_dir() for repo in org.iterdir() if repo.is_dir()
        )
        truth = root / "ground_truth.json"
        self.created = {}
        if truth.exists():
            for m in json.loads(truth.read_text())["models"]:
                self.created[m["model"]] = m["created_at"]

    def files(self, repo: str) -> dict:
        base = self.root / repo
        return {str(p.relative_to(base)): p for p in sorted(base.rglob("*")) if p.is_file()}

    def single(self) -> str:
        return next(r for r in self.public() if (self.root / r / "model.safetensors").exists())

    def sharded(self) -> str:
        return next(r for r in self.public() if (self.root / r / "model.safetensors.index.json").exists())

    def public(self) -> list:
        return [r for r in self.repos if r not in GATED and r not in PRIVATE]

    def org_with_most(self) -> str:
        counts = {}
        for r in self.public():
            counts[r.split("/")[0]] = counts.get(r.split("/")[0], 0) + 1
        return max(sorted(counts), key=counts.get)


ZOO: Zoo
API: HfApi
PAGE_SIZE: int
GATED: list
PRIVATE: list
TOKEN: str


@check
def list_models_by_author_across_pages():
    author = ZOO.org_with_most()
    want = [r for r in ZOO.repos if r.startswith(author + "/") and r not in PRIVATE]
    expect(len(want) > PAGE_SIZE, f"{author} has {len(want)} repos, need more than a page ({PAGE_SIZE})")
    got = [m.id for m in API.list_models(author=author)]
    expect(sorted(got) == want, f"list_models(author={author}) gave {got}, want {want}")
    capped = [m.id for m in API.list_models(author=author, limit=PAGE_SIZE + 1)]
    expect(len(capped) == PAGE_SIZE + 1 and set(capped) <= set(want), f"limit={PAGE_SIZE + 1} gave {capped}")


@check
def list_models_sorted_with_expand():
    models = list(API.list_models(sort="last_modified", expand=["createdAt", "lastModified", "sha", "safetensors"]))
    ids = [m.id for m in models]
    visible = [r for r in ZOO.repos if r not in PRIVATE]
    expect(sorted(ids) == visible, f"all repos once: {len(ids)} vs {len(visible)}")
    stamps = [m.last_modified for m in models]
    expect(all(a >= b for a, b in zip(stamps, stamps[1:])), "sorted by last_modified, newest first")
    for m in models:
        expect(m.sha is not None and len(m.sha) == 40, f"{m.id} sha")
        expect(m.author is None and m.tags is None, f"{m.id}: only the expanded fields")
        if m.id in ZOO.created:
            want = ZOO.created[m.id].replace("Z", "+00:00")
            expect(m.created_at.isoformat() == want, f"{m.id} created_at {m.created_at.isoformat()} != {want}")
        base = ZOO.root / m.id
        if (base / "model.safetensors").exists() or (base / "model.safetensors.index.json").exists():
            expect(m.safetensors is not None and m.safetensors.total > 0, f"{m.id} safetensors")


@check
def model_info_files_metadata_matches_files():
    for repo in [ZOO.single(), ZOO.sharded()]:
        info = API.model_info(repo, files_metadata=True)
        files = ZOO.files(repo)
        expect(sorted(s.rfilename for s in info.siblings) == sorted(files), f"{repo} siblings")
        for s in info.siblings:
            data = files[s.rfilename].read_bytes()
            expect(s.size == len(data), f"{repo}/{s.rfilename} size {s.size} != {len(data)}")
            if s.rfilename.endswith(".safetensors"):
                expect(s.lfs is not None, f"{s.rfilename} is LFS")
                expect(s.lfs.sha256 == hashlib.sha256(data).hexdigest(), f"{s.rfilename} sha256")
                expect(s.lfs.size == len(data), f"{s.rfilename} lfs size")
            else:
                expect(s.lfs is None, f"{s.rfilename} is a git file")
                expect(s.blob_id == git_oid(data), f"{s.rfilename} blob id")
        expect(info.sha and len(info.sha) == 40, "commit sha")
        expect(info.card_data is not None and info.card_data.get("license"), f"{repo} card license")
        params = sum(
            math.prod(t["shape"])
            for name in files
            if name.endswith(".safetensors")
            for key, t in local_header(files[name]).items()
            if key != "__metadata__"
        )
        expect(info.safetensors is not None and info.safetensors.total == params, f"{repo} parameter total")
        if info.card_data.get("base_model"):
            base = info.card_data["base_model"]
            base = base if isinstance(base, list) else [base]
            expect(all(f"base_model:{b}" in info.tags for b in base), f"{repo} base_model tags {info.tags}")


@check
def hf_hub_download_bytes_equal_files():
    for repo in [ZOO.single(), ZOO.sharded()]:
        files = ZOO.files(repo)
        commit = API.model_info(repo).sha
        for name, path in files.items():
            got = Path(hf_hub_download(repo, name))
            expect(got.read_bytes() == path.read_bytes(), f"{repo}/{name} bytes")
            expect(f"snapshots/{commit}/" in str(got), f"cache path pinned to the commit: {got}")
        # By commit, too.
        name = next(iter(files))
        got = Path(hf_hub_download(repo, name, revision=commit))
        expect(got.read_bytes() == files[name].read_bytes(), f"{repo}/{name} at {commit}")


@check
def get_safetensors_metadata_matches_headers():
    single = ZOO.single()
    meta = API.get_safetensors_metadata(single)
    expect(not meta.sharded, "single file is not sharded")
    header = local_header(ZOO.root / single / "model.safetensors")
    fm = meta.files_metadata["model.safetensors"]
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    expect(set(fm.tensors) == set(tensors), "tensor names")
    for name, t in tensors.items():
        got = fm.tensors[name]
        expect(
            (got.dtype, got.shape, got.data_offsets) == (t["dtype"], t["shape"], tuple(t["data_offsets"])),
            f"{name}: {got} vs {t}",
        )
    expect(fm.metadata == header.get("__metadata__", {}), "__metadata__")

    sharded = ZOO.sharded()
    meta = API.get_safetensors_metadata(sharded)
    expect(meta.sharded, "sharded")
    index = json.loads((ZOO.root / sharded / "model.safetensors.index.json").read_text())
    expect(meta.weight_map == index["weight_map"], "weight map")
    for shard in set(index["weight_map"].values()):
        header = local_header(ZOO.root / sharded / shard)
        got = meta.files_metadata[shard]
        for name, t in header.items():
            if name != "__metadata__":
                expect(got.tensors[name].shape == t["shape"], f"{shard}:{name} shape")
                expect(list(got.tensors[name].data_offsets) == t["data_offsets"], f"{shard}:{name} offsets")
    total = sum(meta.parameter_count.values())
    want = sum(
        math.prod(t["shape"])
        for shard in set(index["weight_map"].values())
        for k, t in local_header(ZOO.root / sharded / shard).items()
        if k != "__metadata__"
    )
    expect(total == want, f"parameter count {total} != {want}")


@check
def sharded_safetensors_metadata_in_one_call():
    if not hasattr(API, "get_sharded_safetensors_metadata"):
        raise AssertionError(f"huggingface_hub {huggingface_hub.__version__} has no get_sharded_safetensors_metadata")
    sharded = ZOO.sharded()
    one = API.get_sharded_safetensors_metadata(sharded)
    many = API.get_safetensors_metadata(sharded)
    expect(one.weight_map == many.weight_map, "same weight map")
    expect(one.parameter_count == many.parameter_count, "same parameter count")


@check
def tree_and_paths_info():
    repo = ZOO.sharded()
    files = ZOO.files(repo)
    entries = list(API.list_repo_tree(repo, recursive=True))
    got = {e.path: e for e in entries if e.__class__.__name__ == "RepoFile"}
    expect(sorted(got) == sorted(files), "tree lists every file (across pages)")
    for path, e in got.items():
        data = files[path].read_bytes()
        expect(e.size == len(data), f"{path} size")
        if path.endswith(".safetensors"):
            expect(e.lfs is not None and e.lfs.sha256 == hashlib.sha256(data).hexdigest(), f"{path} lfs")
        else:
            expect(e.blob_id == git_oid(data), f"{path} blob id")
    infos = API.get_paths_info(repo, ["config.json", "does-not-exist"])
    expect([i.path for i in infos] == ["config.json"], "paths-info skips missing paths")


@check
def snapshot_download_is_complete():
    repo = ZOO.single()
    folder = Path(snapshot_download(repo))
    for name, path in ZOO.files(repo).items():
        expect((folder / name).read_bytes() == path.read_bytes(), f"snapshot {name}")


@check
def errors_map_to_client_exceptions():
    repo = ZOO.single()
    cases = [
        (lambda: API.model_info("nobody/nothing"), RepositoryNotFoundError),
        (lambda: hf_hub_download(repo, "no-such-file.json"), EntryNotFoundError),
        (lambda: API.model_info(repo, revision="0" * 40), RevisionNotFoundError),
        (lambda: hf_hub_download(repo, "config.json", revision="v0.0.0"), RevisionNotFoundError),
    ]
    for call, error in cases:
        try:
            call()
        except error:
            continue
        except Exception as e:  # noqa: BLE001 - report what came instead
            raise AssertionError(f"expected {error.__name__}, got {type(e).__name__}: {e}") from e
        raise AssertionError(f"expected {error.__name__}, got no error")
    expect(API.file_exists(repo, "config.json") and not API.file_exists(repo, "nope.json"), "file_exists")
    expect(API.repo_exists(repo) and not API.repo_exists("nobody/nothing"), "repo_exists")


@check
def gated_repo_needs_an_accepted_token():
    if not GATED:
        raise AssertionError("no gated repo configured")
    repo = GATED[0]
    expect(API.model_info(repo).gated == "manual", "gated metadata is public")
    for token in [None, "hf_not_accepted"]:
        try:
            hf_hub_download(repo, "config.json", token=token if token else False)
        except GatedRepoError:
            pass
        else:
            raise AssertionError(f"token={token}: expected GatedRepoError")
    got = Path(hf_hub_download(repo, "config.json", token=TOKEN, force_download=True))
    expect(got.read_bytes() == (ZOO.root / repo / "config.json").read_bytes(), "accepted token downloads")


@check
def private_repo_is_invisible_without_token():
    if not PRIVATE:
        raise AssertionError("no private repo configured")
    repo = PRIVATE[0]
    try:
        API.model_info(repo, token=False)
    except RepositoryNotFoundError:
        pass
    else:
        raise AssertionError("private repo visible anonymously")
    expect(API.model_info(repo, token=TOKEN).private is True, "visible with an accepted token")


def main():
    global ZOO, API, PAGE_SIZE, GATED, PRIVATE, TOKEN
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--page-size", required=True, type=int)
    parser.add_argument("--gated", action="append", default=[])
    parser.add_argument("--private", action="append", default=[])
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if not endpoint.startswith("http://127.0.0.1:"):
        sys.exit(f"HF_ENDPOINT must point at a loopback hubsim, got {endpoint!r}")
    ZOO, PAGE_SIZE, GATED, PRIVATE, TOKEN = Zoo(args.root), args.page_size, args.gated, args.private, args.token
    API = HfApi(endpoint=endpoint, token=False)
    print(f"huggingface_hub {huggingface_hub.__version__} against {endpoint} ({len(ZOO.repos)} repos)")
    passed = failed = 0
    for fn in CHECKS:
        try:
            fn()
        except Exception:  # noqa: BLE001 - every failure is reported, then the next check runs
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print(f"ok   {fn.__name__}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
