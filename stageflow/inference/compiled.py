"""Compiled graphs of the torch backend: `torch.compile` over the UNet and the VAE decode.

The `compile` setting (`off` or `inductor`) wraps the torch UNet's forward
and the VAE's decode in `torch.compile(backend="inductor", dynamic=False)`
after the weights load. Inductor specialises a graph to its input shapes,
so each new shape (batch, latent height and width: the "shape bucket")
compiles on its first call and reuses that graph after; the stage's
`warmup` makes the first call at the native size before SERVING, so that
compile lands in the start. `CompiledPart` times each first call at a new
shape (the compile and one run, as the caller sees it) and logs it
(`model.compiled`).

`channels_last` is a second, separate setting (`on`, `off` or `auto`): the
UNet and VAE modules in `torch.channels_last` memory format, and the latents
the UNet and the VAE decode are called with, eager or compiled (the VAE
encode's image input is left as it comes). `auto` (the stage default) turns it
on for the torch backend's diffusion models of at least
`CHANNELS_LAST_MIN_WEIGHT_BYTES`: at real scale (the 4.3 GB SD 1.5-size folder,
512 px, CPU) it ran a whole image in 0.92-0.93× eager's time, fp32 and bf16
alike, over two runs of bench/compile.py, within one level of the images; on
the fixtures (a few MiB) one run gave 0.96×, inside that machine's noise, so
they keep the layout their golden images were made with. The torch upscaler
(stageflow.inference.upscaler) takes `on` too, and decides its own `auto`: on,
in any dtype (it ran 1.26-2.05x faster in fp32 and more in bf16, with AMX and
without: bench/upscale_dtype.py).

What stays eager: the text encoders, the VAE encoder, and step caching's
partial UNet forward (`cache_interval` > 1 runs every step, full and cached,
through our own block-by-block forward of the uncompiled UNet). The
onnxruntime and tensorrt backends serve exported graphs, compiled already,
and refuse both settings at load. No torch at import.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stageflow.core.logging import get_logger

log = get_logger(__name__)

OFF = "off"
INDUCTOR = "inductor"
MODES = (OFF, INDUCTOR)

# A part's shape bucket: the shape of every tensor it is called with, in order.
ShapeKey = tuple[tuple[int, ...], ...]


def check_mode(name: str, field: str = "compile") -> str:
    if name not in MODES:
        raise ValueError(f"{field} must be one of {', '.join(MODES)}; got {name!r}")
    return name


ON = "on"
AUTO = "auto"
LAYOUTS = (AUTO, ON, OFF)
# From this size of weights `auto` picks channels_last (see the module's text).
CHANNELS_LAST_MIN_WEIGHT_BYTES = 256 * 2**20


def check_layout(value: str | bool, field: str = "channels_last") -> str:
    """The channels_last setting as `on`, `off` or `auto` (a bool: on or off)."""
    if isinstance(value, bool):
        return ON if value else OFF
    if value not in LAYOUTS:
        raise ValueError(f"{field} must be one of {', '.join(LAYOUTS)}; got {value!r}")
    return value


def choose_channels_last(setting: str, applies: bool, weight_bytes: int | None) -> tuple[bool, str]:
    """Whether a model runs in channels_last, and why. `applies`: the model has
    eager torch UNet and VAE modules (the torch backend's diffusion models);
    `weight_bytes`: its weights' size (None: unknown)."""
    setting = check_layout(setting)
    if setting != AUTO:
        return setting == ON, f"set: channels_last={setting}"
    if not applies:
        return False, "auto: off, no eager torch UNet or VAE here"
    if weight_bytes is None or weight_bytes < CHANNELS_LAST_MIN_WEIGHT_BYTES:
        size = "unknown" if weight_bytes is None else f"{weight_bytes / 2**20:.0f} MiB"
        return False, f"auto: off, weights {size} (on from 256 MiB)"
    return True, f"auto: on, weights {weight_bytes / 2**20:.0f} MiB (on from 256 MiB)"


@dataclass(frozen=True)
class GraphOptions:
    """How the torch backend runs its UNet and VAE: compiled or eager, and in
    which memory format."""

    compile: str = OFF
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_mode(self.compile)

    @property
    def default(self) -> bool:
        return self.compile == OFF and not self.channels_last


def shape_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ShapeKey:
    import torch
    from torch.utils._pytree import tree_leaves

    return tuple(
        tuple(leaf.shape) for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)
    )


def describe_shape(key: ShapeKey) -> str:
    """'2x4x8x8 () 2x77x32': each input's shape, a 0-d one (the timestep) as ()."""
    return " ".join("x".join(str(n) for n in shape) or "()" for shape in key)


class CompiledPart:
    """One part's call (the UNet's forward, the VAE's decode) as the graph
    options say: under torch.compile, its first argument in channels_last, or
    both. `compile_seconds` holds the time of each shape bucket's first call."""

    def __init__(self, name: str, fn: Callable[..., Any], options: GraphOptions) -> None:
        import torch

        self.name = name
        self.options = options
        self.compiled = options.compile == INDUCTOR
        self._fn = torch.compile(fn, backend="inductor", dynamic=False) if self.compiled else fn
        self.compile_seconds: dict[ShapeKey, float] = {}
        # Shapes torch ran eager on their first call: no new graph (past
        # torch._dynamo.config.recompile_limit graphs, torch stops compiling).
        self.eager_shapes: set[ShapeKey] = set()

    def __call__(self, first: Any, *args: Any, **kwargs: Any) -> Any:
        if self.options.channels_last:
            import torch

            first = first.contiguous(memory_format=torch.channels_last)
        if not self.compiled:
            return self._fn(first, *args, **kwargs)
        key = shape_key((first, *args), kwargs)
        if key in self.compile_seconds or key in self.eager_shapes:
            return self._fn(first, *args, **kwargs)
        from torch._dynamo.utils import counters

        # Process-wide: a compile in another thread at the same time counts here too.
        graphs = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        out = self._fn(first, *args, **kwargs)
        seconds = time.perf_counter() - start
        new_graphs = counters["stats"]["unique_graphs"] - graphs
        if new_graphs == 0:
            self.eager_shapes.add(key)
            log.warning(
                "model.compile_skipped",
                part=self.name,
                shape=describe_shape(key),
                reason="torch made no graph for this shape and runs it eager (past "
                "torch._dynamo.config.recompile_limit shapes, it stops compiling)",
            )
            return out
        self.compile_seconds[key] = seconds
        log.info(
            "model.compiled",
            part=self.name,
            seconds=round(seconds, 3),
            shape=describe_shape(key),
            graphs=new_graphs,
            channels_last=self.options.channels_last,
        )
        return out


def graph_part(name: str, fn: Callable[..., Any], options: GraphOptions) -> Callable[..., Any]:
    """`fn` itself with the default options (eager, contiguous: nothing in between),
    else a `CompiledPart` over it."""
    return fn if options.default else CompiledPart(name, fn, options)


def graphs_of(*parts: Any) -> tuple[CompiledPart, ...]:
    """Those of `parts` that are CompiledParts (DiffusionParts.graphs)."""
    return tuple(p for p in parts if isinstance(p, CompiledPart))


def compile_seconds(parts: Any) -> dict[str, float]:
    """'unet 2x4x8x8 ...' -> seconds, over the compiled parts of `parts`
    (DiffusionParts.graphs); empty when nothing is compiled."""
    out: dict[str, float] = {}
    for part in graphs_of(*getattr(parts, "graphs", ())):
        for key, seconds in part.compile_seconds.items():
            out[f"{part.name} {describe_shape(key)}"] = seconds
    return out
