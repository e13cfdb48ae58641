"""SAEs by name: SAELens's directory of pretrained SAEs (`pretrained_saes.yaml`, shipped inside SAELens).

    sae:RELEASE/SAE_ID:F123         sae:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical:F123
    neuronpedia:MODEL/SOURCE/INDEX  neuronpedia:gemma-2-2b/12-gemmascope-res-16k/1234 (the same SAE, feature 1234)

SAE ids contain slashes themselves, so a name is split after the longest release name it starts with.
Neuronpedia ids are looked up in the same directory (its entries carry one per SAE id). Loading goes
through `SAE.from_pretrained(release, sae_id)`, which downloads into the Hugging Face hub cache once.

Nothing here imports SAELens (or torch) at module level: the CLI imports the target kinds to print
help. The first name looked up imports SAELens and reads its directory (seconds); a folder never does.
When the hub cannot be reached (no network, or `HF_HUB_OFFLINE=1`) and the SAE is not in the cache,
loading fails at once with one line saying what to download and how to use a local copy instead.
"""

from __future__ import annotations

import difflib
import functools
import glob
import os

from ..errors import TargetError
from . import hub

INSTALL = "pip install 'reverie[sae]'"


def directory() -> dict:
    """SAELens's directory of pretrained SAEs: release name -> lookup (repo_id, model, saes_map, neuronpedia_id)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as e:
        raise TargetError(f"SAEs by name need SAELens ({e}): {INSTALL}") from None
    return get_pretrained_saes_directory()


def close(word: str, choices, n: int = 5) -> str:
    """ ", close: a, b, c" (the nearest of `choices`), or "" when none is near."""
    near = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f"; close: {', '.join(near)}" if near else ""


def split_name(name: str) -> tuple[str, str]:
    """(release, sae_id) of `RELEASE/SAE_ID`, split after the longest release name that `name` starts with."""
    try:
        releases = directory()
    except TargetError as e:
        raise TargetError(f"there is no SAE folder {name}, and {e}") from None
    known = [r for r in releases if name.startswith(r + "/")]
    if not known:
        head = name.partition("/")[0]
        if head in releases:
            ids = list(releases[head].saes_map)
            raise TargetError(
                f"{head} is a SAELens release of {len(ids)} SAEs: name one as {head}/SAE_ID, e.g. {head}/{ids[0]}"
            )
        raise TargetError(f"{head!r} is neither an SAE folder nor a SAELens release{close(head, releases)}")
    release = max(known, key=len)
    sae_id = name[len(release) + 1 :]
    ids = releases[release].saes_map
    if sae_id not in ids:
        raise TargetError(f"{release} has no SAE {sae_id!r}{close(sae_id, ids)} ({len(ids)} SAEs in all)")
    return release, sae_id


def neuronpedia(text: str) -> tuple[str, str, int]:
    """(release, sae_id, feature) of a Neuronpedia feature `MODEL/SOURCE/INDEX`, through SAELens's directory."""
    source, _, index = text.rpartition("/")
    if not source or not (index.isascii() and index.isdigit()):
        raise TargetError(
            f"cannot parse neuronpedia:{text}: use neuronpedia:MODEL/SOURCE/INDEX, "
            "e.g. neuronpedia:gemma-2-2b/12-gemmascope-res-16k/1234"
        )
    ids = {
        np_id: (release, sae_id)
        for release, lookup in directory().items()
        for sae_id, np_id in lookup.neuronpedia_id.items()
        if np_id
    }
    if source not in ids:
        raise TargetError(f"no SAE in SAELens's directory has the Neuronpedia id {source!r}{close(source, ids)}")
    return (*ids[source], int(index))


def model_of(release: str) -> str:
    """The model a release's SAEs were trained on (the directory's `model` field)."""
    return directory()[release].model


def hub_model(name: str) -> str:
    """A model name as `--model` takes it: TransformerLens's official hub id where it knows one
    (gemma-2-2b -> google/gemma-2-2b), else the name itself (also without TransformerLens)."""
    if "/" in name:
        return name
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # not installed, an unknown name (ValueError), another version: the name
        return name


def cached(repo_id: str, path: str) -> bool:
    """Whether `path` (a folder or file in the repo) is in the local Hugging Face hub cache."""
    repo = os.path.join(hub.cache_folder(), "models--" + repo_id.replace("/", "--"), "snapshots")
    return any(
        os.path.exists(os.path.join(snapshot, path)) for snapshot in glob.glob(os.path.join(glob.escape(repo), "*"))
    )


def offline_message(release: str, sae_id: str, feature: int) -> str:
    lookup = directory()[release]
    path = lookup.saes_map[sae_id]
    return (
        f"sae:{release}/{sae_id}:F{feature}: this SAE is not downloaded and the Hugging Face hub cannot be "
        f"reached: download {path} from the hub repo {lookup.repo_id} where there is a network "
        f"(SAE.from_pretrained({release!r}, {sae_id!r}) in SAELens), save it with sae.save_model(FOLDER), "
        f"copy FOLDER here and use sae:FOLDER:F{feature}"
    )


def load(release: str, sae_id: str, feature: int = 0):
    """A pretrained SAE as a SAELens `SAE` object, through `SAE.from_pretrained` (the hub cache, or a download).

    Offline and not cached: one TargetError line at once, naming the repo and path to download
    (`feature` only goes into that line). The last two SAEs loaded are kept: a spec is parsed more than once."""
    lookup = directory()[release]
    offline = bool(hub.offline())
    if offline and not cached(lookup.repo_id, lookup.saes_map[sae_id]):
        raise TargetError(offline_message(release, sae_id, feature))
    try:
        return pretrained(release, sae_id, offline)
    except NotCached:
        raise TargetError(offline_message(release, sae_id, feature)) from None


class NotCached(Exception):
    """Offline, and SAELens found the SAE only partly (or not at all) in the cache."""


@functools.lru_cache(maxsize=2)
def pretrained(release: str, sae_id: str, offline: bool):
    from sae_lens import SAE

    try:
        with hub.cache_only(offline):  # read it from the cache without retrying the network
            sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:  # the hub's, SAELens's and the converters' errors, as one line
        if offline:
            raise NotCached() from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TargetError(f"sae:{release}/{sae_id}: SAELens cannot load it ({first})") from None
    return sae[0] if isinstance(sae, tuple) else sae  # SAELens < 6 returned (sae, cfg, sparsity)
