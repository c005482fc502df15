"""The ``views`` augmenter: batched SimCLR/BYOL/multi-crop views on the training device.

Each transform is a vectorised operation over the views it applies to,
with parameters drawn per sample (:mod:`jef.augment.params`), applied in the
order of SimCLR and BYOL: random resized crop and horizontal flip (one
separable bilinear resample), colour jitter (the samples that drew the same
order of its four operations together), grayscale, Gaussian blur,
solarisation (each on the samples that drew it), normalisation. On a CPU the
batch goes through in chunks of a few images, so that these memory-bound
operations work in the cache, and with numba installed each chunk goes
through the fused kernels of :mod:`jef.augment.cpu_kernels` (option
``cpu_backend``) instead of the eager operations; on an accelerator the
batch is one chunk of eager operations.

References:
    [1] Chen et al., A Simple Framework for Contrastive Learning of Visual
        Representations (SimCLR), 2020, arXiv:2002.05709, app. A.
    [2] Grill et al., Bootstrap Your Own Latent (BYOL), 2020, arXiv:2006.07733, app. B.
    [3] Caron et al., Unsupervised Learning of Visual Features by Contrasting
        Cluster Assignments (SwAV, multi-crop), 2020, arXiv:2006.09882.
"""

import contextlib
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jef.augment import cpu_kernels, ops
from jef.augment.options import ViewsOptions
from jef.augment.params import ViewParams, sample_params
from jef.components import RunContext

__all__ = ["ViewsAugmenter", "build_views"]

#: Parameter name in :func:`sample_params` -> probability option.
#: Bytes of views and source pixels per chunk on a CPU: a few MiB stay in a server CPU's cache.
CPU_CHUNK_BYTES = 4 << 20

_PROBS = {"flip": "flip_p", "jitter": "jitter_p", "gray": "grayscale_p", "blur": "blur_p",
          "solarize": "solarize_p"}


class ViewsAugmenter(nn.Module):
    """Makes ``n_global`` global then ``n_local`` local views of a batch, per-sample random.

    Random parameters are a function of the *global* batch: with
    ``world_size`` processes, each handing the same generator state (the
    training loop seeds it alike on every process) and its ``B`` images, every
    process draws the parameters of ``world_size · B`` images and keeps the rows
    of its own, ``[rank·B, (rank+1)·B)``. A run on ``W`` processes thus makes
    the views one process makes on the global batch, and images on different
    processes never share their random parameters.

    Args:
        options: The recipe; SimCLR's CIFAR-10 views by default [1].
        in_channels: Channels of the images it will see, when known, to
            check the normalisation statistics at construction.
        image_size: Side of the input images, the view size when ``options.size`` is None.
        rank: This process's index (the factory reads ``RunContext.rank``).
        world_size: Number of processes (``RunContext.world_size``); 1 standalone.

    Attributes:
        options: The options it was built with.
        n_global: Global views (side ``size``), first in the output.
        n_local: Local views (side ``local_size``).
        n_views: ``n_global + n_local``.
        size: Side of the global views and of :meth:`eval_view`'s output.
        local_size: Side of the local views.
    """

    def __init__(self, options: ViewsOptions | None = None, *, in_channels: int | None = None,
                 image_size: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"views augmenter: rank must be in [0, world_size), got rank={rank}, "
                             f"world_size={world_size}")
        self.rank, self.world_size = rank, world_size
        o = options if options is not None else ViewsOptions()
        if o.size is None:
            if image_size is None:
                raise ValueError("views augmenter: size is null and no image size was given; set size")
            o = attrs.evolve(o, size=image_size)
        self.options = o
        self.n_global, self.n_local = o.n_global, o.n_local
        self.n_views = o.n_global + o.n_local
        self.size, self.local_size = o.size, o.resolved_local_size
        if in_channels is not None:
            if in_channels not in (1, 3):
                raise ValueError(f"views augmenter: supports 1- or 3-channel images, got in_channels={in_channels}")
            o.channel_stats(in_channels)
        # Per-view probabilities as small CPU tensors: parameters are drawn on the CPU.
        self._probs = {key: torch.tensor(o.per_view(name)) for key, name in _PROBS.items()}
        self._blur = any(p > 0.0 for p in o.per_view("blur_p"))
        if o.cpu_backend == "numba":
            cpu_kernels.compiled()  # fail at construction, with the install hint, when numba is missing
        self._fused_cpu = o.cpu_backend == "numba" or (o.cpu_backend == "auto" and cpu_kernels.available())

    def extra_repr(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return (f"n_global={self.n_global}, n_local={self.n_local}, size={self.size}, "
                f"local_size={self.local_size}{shard}")

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Random views of a batch.

        Args:
            images: ``[B, C, H, W]``, ``C`` in {1, 3}, uint8 in 0..255 or float
                in ``[0, 1]``, on any device.
            generator: Source of every random parameter (same seed, same
                views); None uses the global RNG. With several processes it
                must be in the same state on each (see the class docstring).

        Returns:
            ``n_views`` float32 tensors on ``images``' device: ``n_global`` of
            shape ``[B, C, size, size]`` then ``n_local`` of shape
            ``[B, C, local_size, local_size]``; normalised unless
            ``options.normalize`` is false (then in ``[0, 1]``).
        """
        with torch.no_grad(), _full_precision(images):
            return self._views(ops.check_images(images), generator)

    def _views(self, x: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        o = self.options
        groups = ((0, self.n_global, self.size, o.scale), (self.n_global, self.n_views, self.local_size, o.local_scale))
        views: list[Tensor] = []
        for start, stop, size, scale in groups:
            if stop == start:
                continue
            params = sample_params(
                {key: p[start:stop] for key, p in self._probs.items()}, n_views=stop - start,
                batch=x.shape[0] * self.world_size, aspect=x.shape[-1] / x.shape[-2], scale=scale, ratio=o.ratio,
                jitter_strength=(o.brightness, o.contrast, o.saturation, o.hue), blur_sigma=o.blur_sigma,
                generator=generator)
            if self.world_size > 1:
                params = params.shard(self.rank, self.world_size)
            views.extend(self._group(x, params, stop - start, size).split(x.shape[0]))
        return views

    def _group(self, x: Tensor, params: ViewParams, n_views: int, size: int) -> Tensor:
        # On a CPU the work goes through the cache a few images at a time: these
        # operations are memory-bound, and a pass over a tensor in cache costs a
        # fraction of one over a freshly allocated batch-sized tensor. On an
        # accelerator the whole batch is one chunk (fewer, larger kernels).
        batch = x.shape[0]
        out = torch.empty(n_views, batch, x.shape[1], size, size, device=x.device)
        chunk = batch
        fused = self._fused_cpu and x.device.type == "cpu"
        if x.device.type == "cpu":
            per_image = n_views * x.shape[1] * (size * size + x.shape[-1] * x.shape[-2]) * 4
            # The fused kernels run chunks on torch's threads: at least one chunk per thread.
            parallel = -(-batch // torch.get_num_threads()) if fused else batch
            chunk = max(1, min(batch, CPU_CHUNK_BYTES // per_image, parallel))
        spans = [(start, min(start + chunk, batch)) for start in range(0, batch, chunk)]
        if fused:
            cpu_kernels.map_chunks(lambda start, stop: self._fused_transform(
                x[start:stop], params.images(start, stop), size, out[:, start:stop]), spans)
            return out.view(n_views * batch, x.shape[1], size, size)
        for start, stop in spans:
            views = self.transform(x[start:stop], params.images(start, stop), size)
            out[:, start:stop] = self._normalize(views, inplace=True).view(n_views, stop - start, *views.shape[1:])
        return out.view(n_views * batch, x.shape[1], size, size)

    def _fused_transform(self, x: Tensor, params: ViewParams, size: int, out: Tensor) -> None:
        # transform + normalisation through the fused CPU kernels, written into out [V, b, C, size, size].
        cpu = params.to(torch.device("cpu"))
        views = cpu_kernels.crop_resample(x, cpu.theta, size)
        rgb = views.shape[1] == 3
        drawn, order = self._jitter_plan(cpu)
        cpu_kernels.colour(views, cpu.jitter, order, drawn, cpu.gray, saturation=rgb,
                           hue=rgb and self.options.hue > 0.0)
        if self._blur:
            kernels = ops.gaussian_kernels(cpu.sigma, cpu.blur, ops.blur_kernel_size(size, self.options.blur_kernel))
            cpu_kernels.blur(views, kernels, cpu.blur)
        channels = views.shape[1]
        if self.options.normalize:
            mean, std = (torch.tensor(s, dtype=torch.float32) for s in self.options.channel_stats(channels))
        else:
            mean, std = torch.zeros(channels), torch.ones(channels)
        cpu_kernels.finish(views, cpu.solarize, self.options.solarize_threshold, mean, std, out)

    def transform(self, x: Tensor, params: ViewParams, size: int) -> Tensor:
        """Apply drawn parameters to images; no normalisation.

        Each transform runs only on the samples it applies to (those of
        each jitter order together), gathered and written back by index. The
        subsets are chosen on the CPU, from the parameters as drawn, so that
        nothing waits for the device.

        Args:
            x: ``[B, C, H, W]`` uint8 images or float32 images in ``[0, 1]``.
            params: Parameters of ``V`` views, on any device (the CPU, where
                they are drawn, avoids copying them back).
            size: Output side.

        Returns:
            ``[V * B, C, size, size]`` float32 in ``[0, 1]``, view-major.
        """
        cpu = params.to(torch.device("cpu"))
        out = ops.crop_resample(x, cpu.theta, size)
        out = self._jitter(out, cpu)
        if out.shape[1] == 3:
            out = _where(out, cpu.gray, lambda sub, _: ops.grayscale(sub))
        if self._blur:  # no work at all when blur is off for every view
            k = ops.blur_kernel_size(size, self.options.blur_kernel)
            sigma = cpu.sigma.to(out.device)
            out = _where(out, cpu.blur, lambda sub, rows: ops.gaussian_blur(sub, ops.gaussian_kernels(
                sigma[rows], torch.ones_like(rows, dtype=torch.bool), k)))
        threshold = self.options.solarize_threshold
        return _where(out, cpu.solarize, lambda sub, _: torch.where(sub >= threshold, 1.0 - sub, sub))

    def _jitter_plan(self, params: ViewParams) -> tuple[Tensor, Tensor]:
        # The samples jittered (those that drew no jitter have identity factors
        # and are left alone) and the order of each one's four operations.
        drawn = (params.jitter != params.jitter.new_tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1)
        order = params.order if self.options.jitter_random_order else torch.arange(4).expand_as(params.order)
        return drawn, order

    def _jitter(self, x: Tensor, params: ViewParams) -> Tensor:
        # Colour jitter as torchvision's ColorJitter [1]: each operation with a
        # per-sample factor, in a random order per sample, without a loop over
        # samples: the samples that drew the same order are transformed
        # together, one call per operation.
        rgb = x.shape[1] == 3
        runs = (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation if rgb else None,
                ops.adjust_hue if rgb and self.options.hue > 0.0 else None)
        drawn, order = self._jitter_plan(params)
        code = torch.where(drawn, order @ torch.tensor([64, 16, 4, 1]), -1)
        factors = params.jitter.to(x.device)
        for value in code.unique().tolist():
            if value < 0:
                continue
            sequence = [value // 64, value // 16 % 4, value // 4 % 4, value % 4]

            def jitter(sub: Tensor, rows: Tensor, sequence: list[int] = sequence) -> Tensor:
                f = factors.index_select(0, rows)
                for op in sequence:
                    if runs[op] is not None:
                        sub = runs[op](sub, f[:, op])
                return sub

            x = _where(x, code == value, jitter)
        return x

    def _normalize(self, x: Tensor, *, inplace: bool = False) -> Tensor:
        if not self.options.normalize:
            return x
        mean, std = self.options.channel_stats(x.shape[1])
        return ops.normalize(x, x.new_tensor(mean), x.new_tensor(std), inplace=inplace)

    def eval_view(self, images: Tensor) -> Tensor:
        """Deterministic test-time view: centre square, resized to ``size``, normalised.

        Args:
            images: ``[B, C, H, W]`` uint8 or float in ``[0, 1]``, on any device.

        Returns:
            ``[B, C, size, size]`` float32 on ``images``' device.
        """
        with torch.no_grad(), _full_precision(images):
            return self._eval_view(ops.to_float(images, who="views augmenter (eval_view)"))

    def _eval_view(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        side = min(h, w)
        if h != w:
            top, left = (h - side) // 2, (w - side) // 2
            x = x[..., top:top + side, left:left + side]
        if side != self.size:
            # Antialiased when shrinking, as torchvision's Resize, the usual test-time transform.
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=side > self.size).clamp_(0.0, 1.0)
        return self._normalize(x)


def _where(x: Tensor, mask: Tensor, fn: Callable[..., Tensor]) -> Tensor:
    """``x`` with the rows where ``mask`` (a CPU bool tensor) replaced by ``fn(those_rows, their_indices)``.

    The whole batch is passed as it is (no gather, no scatter) when every
    row is selected, and nothing is done when none is.
    """
    rows = mask.nonzero().squeeze(1)
    count = rows.numel()
    if count == 0:
        return x
    first, last = int(rows[0]), int(rows[-1])  # a CPU tensor: no device read
    rows = rows.to(x.device)
    if count == x.shape[0]:
        return fn(x, rows).contiguous()  # materialise expanded results (grayscale) before later in-place writes
    if last - first + 1 == count:  # a run of rows (e.g. one view of a chunk): a slice is a view, not a gather
        x[first:last + 1] = fn(x[first:last + 1], rows)
        return x
    return x.index_copy_(0, rows, fn(x.index_select(0, rows), rows))


def _full_precision(images: Tensor) -> contextlib.AbstractContextManager:
    # The training step may run under autocast; views stay float32 so that
    # mixed precision starts at the backbone, not inside the blur and resample.
    if images.device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(images.device.type, enabled=False)
    return contextlib.nullcontext()


def build_views(options: ViewsOptions, ctx: RunContext) -> ViewsAugmenter:
    """Factory of the ``views`` augmenter; reads ``ctx.in_channels`` (to check ``mean``/``std``),
    ``ctx.image_size`` (the view size when ``size`` is null) and ``ctx.rank``/``ctx.world_size`` (its rows of
    the global batch's random parameters)."""
    # Without the data (`jef config show`) the channels may be a stand-in: mean/std are checked when training.
    return ViewsAugmenter(options, in_channels=None if ctx.dry_run else ctx.in_channels, image_size=ctx.image_size,
                          rank=ctx.rank, world_size=ctx.world_size)
