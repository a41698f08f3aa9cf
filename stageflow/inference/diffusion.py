"""Stable Diffusion stage models: txt2img (base) and img2img/inpaint (refine).

Both load a diffusers folder through `sd_parts.load_torch_parts` and drive it
with our own loop in `stageflow.inference.denoise`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from stageflow.core import limits
from stageflow.core.errors import FailedPrecondition, InvalidArgument
from stageflow.inference import denoise as loop
from stageflow.inference import masks
from stageflow.inference.base import LocalModel
from stageflow.inference.interface import (
    CancelledFn,
    Latents,
    LatentSpace,
    ModelDescription,
    ProgressFn,
    RefineMode,
    RefineParams,
    StageInputs,
    StageKind,
    StageOutput,
    StageParams,
    Txt2ImgParams,
    check_side,
    param_ranges,
)
from stageflow.inference.ocr import TextReader
from stageflow.inference.prompt_domain import PromptDomain, read_folder_domain
from stageflow.inference.repository import native_side
from stageflow.inference.text_pass import aligned_box, check_text_params, run_text_pass
from stageflow.inference.typography import padded_box

if TYPE_CHECKING:
    from stageflow.inference.sd_parts import DiffusionParts


class _DiffusionModel(LocalModel):
    graph_parts: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: DiffusionParts | None = None
        # What the folder says about itself, read at load: the side its UNet was
        # trained at (txt2img's default size) and its prompt domain.
        self._native: int | None = None
        self._domain: PromptDomain | None = None

    @property
    def parts(self) -> DiffusionParts:
        if self._parts is None:
            raise FailedPrecondition(f"model {self.name} is not loaded")
        return self._parts

    def _load_weights(self) -> None:
        # The backend imports its runtime here: diffusers (torch) costs seconds, and
        # `import stageflow.inference.registry` (CLI, servicers) should not pay it.
        self._parts = self.runtime.diffusion(self.path, self.backend_options)
        self._native = native_side(self.path)
        self._domain = read_folder_domain(self.path)

    def _release_weights(self) -> None:
        self._parts = None

    def validate(self, params: StageParams) -> None:
        self._check_step_cache(getattr(params, "cache_interval", 1))
        super().validate(params)

    def _check_step_cache(self, interval: int) -> None:
        """Step caching runs a partial UNet forward over the torch UNet's blocks;
        a compiled UNet (ONNX Runtime, TensorRT) is one graph: interval 1 only."""
        if interval != 1 and self._parts is not None and self._parts.step_cache is None:
            raise InvalidArgument(
                "cache_interval",
                f"must be 1 on the {self.backend} backend, got {interval}: step caching "
                "reruns part of the UNet, which only the torch backend can split",
            )

    def _param_ranges(self) -> dict[str, tuple[float, float]]:
        ranges = param_ranges(self.params_type)
        if self.parts.step_cache is None:
            ranges["cache_interval"] = (1, 1)
        return ranges

    def _warm_up(self) -> None:
        """Two guided UNet calls and one decode at the native size: the first
        calls at a shape are the slow ones (ONNX Runtime grows its arena, then
        records its memory pattern; torch faults its weights' pages in), and
        they happen here, before the stage reports SERVING."""
        parts = self.parts
        multiple = parts.vae_scale_factor * 2 ** (parts.unet_levels - 1)
        side = min(max(self._native or multiple, multiple), self.max_side // multiple * multiple)
        latent = side // parts.vae_scale_factor
        with torch.inference_mode():
            cond = loop.encode_prompts(parts, "", "", True, (side, side))
            sample = torch.zeros(2, parts.latent_channels, latent, latent)
            for t in (999, 1):
                parts.predict_noise(sample, torch.tensor(t), cond)
            loop.decode_latents(parts, sample[:1], self.vae_tiling)

    @property
    def latent_space(self) -> LatentSpace:
        """The latents this model makes and takes (latent hand-off)."""
        parts = self.parts
        return LatentSpace(
            parts.family, parts.latent_channels, parts.vae_scale_factor, parts.scaling_factor
        )

    def describe(self) -> ModelDescription:
        parts = self.parts
        # Latents must halve cleanly at every UNet level (and compiled graphs need it).
        multiple = parts.vae_scale_factor * 2 ** (parts.unet_levels - 1)
        return ModelDescription(
            kind=self.kind,
            identity=self.identity,
            min_side=multiple,
            max_side=self.max_side,
            size_multiple=multiple,
            param_ranges=self._param_ranges(),
            param_defaults=self._size_defaults(multiple),
            vocabulary=tuple(self._domain.vocabulary) if self._domain else (),
            domain_description=self._domain.description if self._domain else "",
            latent_space=self.latent_space.key,
        )

    def _size_defaults(self, multiple: int) -> dict[str, float]:
        """txt2img's unset width and height: the folder's native side (one
        owner for every caller that gives none), kept inside the sizes it accepts."""
        if self.kind != StageKind.TXT2IMG or self._native is None:
            return {}
        side = min(max(self._native, multiple), self.max_side // multiple * multiple)
        return {"width": side, "height": side}


class Txt2ImgModel(_DiffusionModel):
    kind: ClassVar[StageKind] = StageKind.TXT2IMG
    params_type: ClassVar[type] = Txt2ImgParams

    def validate(self, params: StageParams) -> None:
        super().validate(params)
        assert isinstance(params, Txt2ImgParams)
        desc = self.describe()
        check_side("width", params.width, desc)
        check_side("height", params.height, desc)

    def run(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        output = self.run_with_report(params, inputs, progress, cancelled)
        if output.latents is not None:
            raise FailedPrecondition("denoising_end < 1 outputs latents: call run_with_report")
        return output.image

    def run_with_report(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> StageOutput:
        """The image, or with denoising_end < 1 the latents at that point."""
        self.validate(params)
        assert isinstance(params, Txt2ImgParams)
        return self._generate([params], progress, cancelled)[0]

    def batch_key(self, params: StageParams) -> Hashable | None:
        # Prompts, negative prompts and seeds may differ within a batch.
        assert isinstance(params, Txt2ImgParams)
        return (
            params.width,
            params.height,
            params.steps,
            params.guidance_scale,
            params.cache_interval,
        ) + ((params.denoising_end,) if params.denoising_end < 1 else ())

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        """`run` over a batch dimension: each request's latents from its own seeded
        generator and its own text embeddings, so each image equals its single
        run up to float summation order (the UNet sees a bigger batch)."""
        batch = [p for p in params_list if isinstance(p, Txt2ImgParams)]
        if not batch or len(batch) != len(params_list):
            raise InvalidArgument("params", "run_batch takes one or more Txt2ImgParams")
        first = batch[0]
        for params in batch:
            self.validate(params)
            if self.batch_key(params) != self.batch_key(first):
                raise InvalidArgument(
                    "params",
                    "a batch needs equal width, height, steps, guidance, cache_interval, "
                    "denoising_end",
                )
        return self._generate(batch, progress, cancelled)

    def _generate(
        self, batch: Sequence[Txt2ImgParams], progress: ProgressFn, cancelled: CancelledFn
    ) -> list[StageOutput]:
        """Requests of one batch key from noise: images, or latents at denoising_end."""
        first = batch[0]
        size = (first.height, first.width)
        with torch.inference_mode():
            parts = self.parts
            guided = loop.uses_guidance(first.guidance_scale)
            texts = [
                loop.encode_prompts(parts, p.prompt, p.negative_prompt, guided, size) for p in batch
            ]
            text = loop.batch_embeddings(texts, guided)
            scheduler = parts.new_scheduler()
            timesteps = loop.end_timesteps(scheduler, first.steps, first.denoising_end)
            f = parts.vae_scale_factor
            shape = (1, parts.latent_channels, first.height // f, first.width // f)
            latents = torch.cat(
                [loop.randn(shape, loop.seeded_generator(p.seed), parts) for p in batch]
            )
            latents = latents * scheduler.init_noise_sigma
            latents = loop.denoise(
                parts,
                scheduler,
                latents,
                timesteps,
                text,
                first.guidance_scale,
                progress,
                cancelled,
                predict_noise=loop.noise_predictor(parts, first.cache_interval),
            )
            if first.denoising_end < 1:
                return [StageOutput(self._latents(one, first)) for one in latents.split(1)]
            return [
                StageOutput(loop.decode_image(parts, one, self.vae_tiling))
                for one in latents.split(1)
            ]

    def _latents(self, latents: torch.Tensor, params: Txt2ImgParams) -> Latents:
        array = latents.detach().to("cpu", torch.float32).numpy().copy()
        return Latents(array, self.latent_space, params.denoising_end, params.steps)


class RefineModel(_DiffusionModel):
    """img2img, or inpaint with a plain 4-channel UNet (latent blending)."""

    kind: ClassVar[StageKind] = StageKind.REFINE
    params_type: ClassVar[type] = RefineParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader: TextReader | None = None

    def validate(self, params: StageParams) -> None:
        super().validate(params)
        assert isinstance(params, RefineParams)
        if params.denoising_start > 0:
            _check_continuation(params)
        elif problem := limits.refine_steps_problem(params.steps, params.strength):
            raise InvalidArgument("strength", problem)
        for name in ("mask_box", "text_box"):
            box = getattr(params, name)
            if box is not None and not (
                0 <= box.left < box.right <= 1 and 0 <= box.top < box.bottom <= 1
            ):
                raise InvalidArgument(
                    name, "needs 0 <= left < right <= 1 and 0 <= top < bottom <= 1"
                )
        if params.text:
            check_text_params(params)

    def validate_inputs(self, params: StageParams, inputs: StageInputs) -> None:
        assert isinstance(params, RefineParams)
        if inputs.latents is not None or params.denoising_start > 0:
            self._validate_latents(params, inputs)
            return
        image = inputs.image
        if image is None:
            raise InvalidArgument("image", "is required: the refine stage reads an input image")
        desc = self.describe()
        check_side("image", image.width, desc)
        check_side("image", image.height, desc)
        if inputs.mask is not None and inputs.mask.size != image.size:
            raise InvalidArgument(
                "mask", f"must be the image's size {image.size}, got {inputs.mask.size}"
            )
        if params.text and inputs.mask is not None:
            raise InvalidArgument(
                "mask", "must be unset with text: the pass inpaints the text's mask"
            )
        if params.text:
            return
        if params.mode == RefineMode.INPAINT and inputs.mask is None and params.mask_box is None:
            raise InvalidArgument("mask", "inpaint needs a mask image or mask_box")

    def run(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        return self.run_with_report(params, inputs, progress, cancelled).image

    def run_with_report(
        self,
        params: StageParams,
        inputs: StageInputs,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> StageOutput:
        self.validate(params)
        self.validate_inputs(params, inputs)
        assert isinstance(params, RefineParams)
        if inputs.latents is not None:
            return StageOutput(self._continue(params, inputs.latents, progress, cancelled))
        assert inputs.image is not None
        image = inputs.image.convert("RGB")
        if params.text:

            def harmonise(
                drawn: Image.Image, mask: Image.Image, seed: int, step: ProgressFn
            ) -> Any:
                return self._inpaint_region(params, drawn, mask, seed, step, cancelled)

            return run_text_pass(image, params, harmonise, self.text_reader, progress)
        pixel_mask = None
        if params.mode == RefineMode.INPAINT:
            pixel_mask = self._pixel_mask(params, inputs, image.size)
        return StageOutput(
            self._refine(params, image, pixel_mask, params.seed, progress, cancelled)
        )

    def batch_key(self, params: StageParams) -> Hashable | None:
        # The typography pass is OCR-checked attempts with their own seeds: one
        # request at a time. Prompts, seeds, images and masks may differ in a
        # batch; images of different sizes run as consecutive sub-batches.
        assert isinstance(params, RefineParams)
        if params.text or params.denoising_start > 0:
            return None
        return (
            params.mode,
            params.steps,
            params.strength,
            params.guidance_scale,
            params.cache_interval,
        )

    def run_batch(
        self,
        params_list: Sequence[StageParams],
        inputs_list: Sequence[StageInputs],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[StageOutput]:
        """img2img or inpaint of several images; those of one size run as one
        UNet batch, each from its own seeded draws, so each output equals its
        single run up to float summation order."""
        batch = [p for p in params_list if isinstance(p, RefineParams)]
        if not batch or len(batch) != len(params_list) or len(batch) != len(inputs_list):
            raise InvalidArgument("params", "run_batch takes one RefineParams per input")
        key = self.batch_key(batch[0])
        for params, inputs in zip(batch, inputs_list, strict=True):
            self.validate(params)
            self.validate_inputs(params, inputs)
            if key is None or self.batch_key(params) != key:
                raise InvalidArgument(
                    "params",
                    "a batch needs no text and equal mode, steps, strength, guidance, "
                    "cache_interval",
                )
        images = [inputs.image.convert("RGB") for inputs in inputs_list if inputs.image]
        pixel_masks = [
            self._pixel_mask(params, inputs, image.size)
            if params.mode == RefineMode.INPAINT
            else None
            for params, inputs, image in zip(batch, inputs_list, images, strict=True)
        ]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        outputs: dict[int, Image.Image] = {}
        total = len(by_size)
        for done, indices in enumerate(by_size.values()):
            # The batch's steps: each size's sub-batch runs the same count.
            def step(i: int, n: int, offset: int = done) -> None:
                progress(offset * n + i, total * n)

            refined = self._refine_many(
                [batch[i] for i in indices],
                [images[i] for i in indices],
                [pixel_masks[i] for i in indices],
                step,
                cancelled,
            )
            outputs.update(zip(indices, refined, strict=True))
        return [StageOutput(outputs[i]) for i in range(len(images))]

    @property
    def text_reader(self) -> TextReader:
        if self._reader is None:
            # One OCR thread: the stage's torch threads already use the cores.
            self._reader = TextReader(threads=1)
        return self._reader

    def _inpaint_region(
        self,
        params: RefineParams,
        image: Image.Image,
        mask: Image.Image,
        seed: int,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        """Inpaint only a crop around the mask ("only masked" inpainting): the
        text band of an upscaled image costs a fraction of the whole image."""
        ink = mask.getbbox()
        if ink is None:
            return image
        # Context around the mask, so the pass sees what the text sits on.
        context = self.parts.vae_scale_factor * 2
        crop = aligned_box(
            padded_box(ink, image.size, context), image.size, self.describe().size_multiple
        )
        region = self._refine(params, image.crop(crop), mask.crop(crop), seed, progress, cancelled)
        out = image.copy()
        out.paste(region, crop[:2])
        return out

    def _refine(
        self,
        params: RefineParams,
        image: Image.Image,
        pixel_mask: Image.Image | None,
        seed: int,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        """img2img over `image`, or inpaint where `pixel_mask` (already blurred) is set."""
        params = dataclasses.replace(params, seed=seed)
        return self._refine_many([params], [image], [pixel_mask], progress, cancelled)[0]

    def _refine_many(
        self,
        batch: Sequence[RefineParams],
        images: Sequence[Image.Image],
        pixel_masks: Sequence[Image.Image | None],
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> list[Image.Image]:
        """`_refine` over a batch dimension: images of one size, equal mode,
        steps, strength and guidance; each its own prompt, seed and mask."""
        first = batch[0]
        inpaint = pixel_masks[0] is not None
        with torch.inference_mode():
            parts = self.parts
            guided = loop.uses_guidance(first.guidance_scale)
            size = (images[0].height, images[0].width)
            texts = [
                loop.encode_prompts(parts, p.prompt, p.negative_prompt, guided, size) for p in batch
            ]
            text = loop.batch_embeddings(texts, guided)
            scheduler = parts.new_scheduler()
            timesteps = loop.strength_timesteps(scheduler, first.steps, first.strength)
            init, noises = [], []
            for params, image in zip(batch, images, strict=True):
                gen = loop.seeded_generator(params.seed)
                # Draw order (posterior sample, then noise) is diffusers' img2img order.
                init.append(loop.encode_image(parts, image, gen))
                noises.append(loop.randn(init[-1].shape, gen, parts))
            init_latents, noise = torch.cat(init), torch.cat(noises)
            if inpaint and first.strength >= 1.0:
                # As diffusers' inpaint pipeline: full strength starts from pure noise.
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(init_latents, noise, timesteps[:1])

            after_step: loop.AfterStep | None = None
            if inpaint:
                factor = parts.vae_scale_factor
                blend_mask = torch.cat(
                    [masks.latent_mask(m, factor) for m in pixel_masks if m is not None]
                ).to(parts.device, parts.dtype)

                def keep_unmasked(i: int, latents: torch.Tensor) -> torch.Tensor:
                    # Keep the unmasked area on the input's own noising trajectory.
                    known = init_latents
                    if i < len(timesteps) - 1:
                        known = scheduler.add_noise(init_latents, noise, timesteps[i + 1 : i + 2])
                    return (1 - blend_mask) * known + blend_mask * latents

                after_step = keep_unmasked

            latents = loop.denoise(
                parts,
                scheduler,
                latents,
                timesteps,
                text,
                first.guidance_scale,
                progress,
                cancelled,
                after_step,
                loop.noise_predictor(parts, first.cache_interval),
            )
            decoded = [loop.decode_image(parts, one, self.vae_tiling) for one in latents.split(1)]
        return [
            masks.composite(out, image, mask) if mask is not None else out
            for out, image, mask in zip(decoded, images, pixel_masks, strict=True)
        ]

    def _validate_latents(self, params: RefineParams, inputs: StageInputs) -> None:
        """A latent hand-off's input: latents of this model's latent space and
        sizes, with a denoising_start to resume at (and no image or mask)."""
        latents = inputs.latents
        if latents is None:
            raise InvalidArgument(
                "denoising_start", "needs a latents input (latent hand-off); 0 for an image input"
            )
        if params.denoising_start <= 0:
            raise InvalidArgument(
                "denoising_start", "must be in (0, 1) with a latents input: where to resume"
            )
        if inputs.image is not None or inputs.mask is not None:
            raise InvalidArgument("image", "must be unset with a latents input")
        own = self.latent_space
        if latents.space != own:
            raise FailedPrecondition(
                f"latents: {latents.space.describe()}; this model takes {own.describe()}"
            )
        desc = self.describe()
        width, height = latents.size
        check_side("latents", width, desc)
        check_side("latents", height, desc)

    def _continue(
        self,
        params: RefineParams,
        latents: Latents,
        progress: ProgressFn,
        cancelled: CancelledFn,
    ) -> Image.Image:
        """Latent hand-off: the rest of the `steps` schedule from denoising_start
        over the base's latents, no noise added and no random draw (diffusers'
        img2img pipelines given latents and denoising_start), then the decode."""
        width, height = latents.size
        with torch.inference_mode():
            parts = self.parts
            guided = loop.uses_guidance(params.guidance_scale)
            text = loop.encode_prompts(
                parts, params.prompt, params.negative_prompt, guided, (height, width)
            )
            scheduler = parts.new_scheduler()
            timesteps = loop.start_timesteps(scheduler, params.steps, params.denoising_start)
            start = torch.from_numpy(latents.array).to(parts.device, parts.dtype)
            out = loop.denoise(
                parts,
                scheduler,
                start,
                timesteps,
                text,
                params.guidance_scale,
                progress,
                cancelled,
                predict_noise=loop.noise_predictor(parts, params.cache_interval),
            )
            return loop.decode_image(parts, out, self.vae_tiling)

    @staticmethod
    def _pixel_mask(
        params: RefineParams, inputs: StageInputs, size: tuple[int, int]
    ) -> Image.Image:
        if inputs.mask is not None:
            mask = inputs.mask
        else:
            assert params.mask_box is not None
            mask = masks.mask_from_box(params.mask_box, size)
        return masks.blur_mask(mask, params.inpaint_mask_blur)


def _check_continuation(params: RefineParams) -> None:
    """denoising_start continues a latent hand-off: img2img, no overlay text."""
    if params.text:
        raise InvalidArgument("denoising_start", "must be 0 with overlay text")
    if params.mode != RefineMode.IMG2IMG:
        raise InvalidArgument("denoising_start", "continues img2img only; must be 0 to inpaint")
