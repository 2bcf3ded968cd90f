"""The streaming loader trainers import: capshard shards to batches with explicit positives.

>>> loader = make_loader("shards/sample", split="train", batch_size=64, captions_per_image=5)
>>> # or: make_loader("shards/sample", LoaderOptions(split="train", batch_size=64, captions_per_image=5))
>>> for epoch in range(10):
...     loader.set_epoch(epoch)
...     for batch in loader:
...         mask = positive_mask(batch)        # [P, C] bool, for a multi-positive InfoNCE

Batches follow DESIGN.md ("Loader contract"): ``image`` ``[P, 3, H, W]`` uint8 (each
image once; or the stacked / listed outputs of ``image_transform``), ``caption`` (C
strings, or the stacked outputs of ``caption_transform``, the strings then in
``caption_text``), ``caption_image`` ``[C]``, ``image_group`` ``[P]``, ``match_id``
``[C]``, ``image_id`` (P strings) and ``caption_id`` (C ids or None).
``batch_size`` counts images ``P``.

Captions: ``captions_per_image=1`` gives one caption per image, a different one each
epoch (all of an image's ``n`` captions in ``n`` epochs). ``K > 1`` gives ``K``
distinct captions of each image when it has ``K``; an image with fewer gives all it
has (``caption_shortfall="fewer"``, the default) or repeats them cyclically up to
``K`` (``"repeat"``, so ``C = K·P`` always; a repeated caption is a positive of its
copy, never a negative). ``"all"`` gives every caption.

Epochs, ranks, workers (see :mod:`pipeline.loader.plan`): the shards are permuted per
epoch, each rank of ``W`` owns ``N // W`` consecutive samples of that order (at most
``W - 1`` samples of the split left out per epoch, different ones each epoch; no
padding), and with ``drop_last`` (default) up to ``batch_size - 1`` more per rank. So
every rank yields exactly ``len(loader)`` batches, no image twice per epoch across all
ranks, and no image twice in a batch. Each DataLoader worker reads its own stretch of
shards and shuffles it in windows of ``shuffle_window`` images. The batches are a
function of (seed, epoch, rank, world size, batch size, workers, window). Rank and
world size come from ``torch.distributed`` when it is initialised. ``set_epoch``
works like ``DistributedSampler.set_epoch``.

Resume: ``state_dict()`` records the epoch and the batches yielded in it (JSON-safe);
``load_state_dict`` makes the next iteration yield exactly the batches the
uninterrupted loader would have yielded after those. Each worker starts at the shuffle
window of its first remaining batch: shards before it are not opened, samples before
it in its first shard cost only their tar headers, and nothing already yielded is
decoded again. The state checks that the shards and the options that shape the epoch
are the same.

Errors: a sample that cannot be used (corrupt image, bad JSON, truncated shard, an image
whose bytes fail the sha256 its ``KEY.json`` records) is skipped and counted in
:attr:`CaptionLoader.counters` (``handler="warn"``, the default, also logs it; ``"skip"``
does not; ``"raise"`` raises; or a webdataset-style callable). A batch with a skipped
sample is one image short; batches are never dropped. No sample whose image fails its
checksum is ever yielded: it is checked before it is decoded
(:mod:`pipeline.loader.integrity`).

A bad shard -- missing, of another size than the manifest's, or whose sha256 is not the
manifest's for a reason other than damaged images -- follows one policy, ``on_bad_shard``:
``"raise"`` (the default) raises :class:`~pipeline.loader.integrity.BadShardError` (an
:class:`~pipeline.errors.IntegrityError`) before any sample of that shard is yielded;
``"skip"`` drops the shard's samples and counts them as ``shard_missing``,
``shard_size`` or ``shard_checksum``. The default is to raise, as webdataset's default
handler and MosaicML Streaming's hash validation do: a bad shard means the files on disk
are not the build the manifest describes, and losing a whole shard silently changes the
epoch; ``"skip"`` is the opt-in for jobs that prefer to train on what is left. Missing
and wrong-size local shards are found by ``make_loader`` itself (raise) or logged there
(skip).

An epoch without a batch is refused (:class:`~pipeline.errors.UsageError`, naming the
split, images, ranks and batch size) unless ``allow_empty=True``.
"""

from ..captions_per_image import CaptionsPerImage
from ..losses import positive_mask
from .core import CaptionLoader, make_loader
from .decode import SampleError
from .integrity import BadShardError
from .options import LoaderOptions

__all__ = [
    "BadShardError",
    "CaptionLoader",
    "CaptionsPerImage",
    "LoaderOptions",
    "SampleError",
    "make_loader",
    "positive_mask",
]
