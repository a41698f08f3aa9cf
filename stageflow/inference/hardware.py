"""What this host's CPU can run fast: its instruction-set flags, read, not assumed.

`dtype=auto` serves bf16 on the torch backend only where the CPU has bf16
arithmetic of its own: AMX (Sapphire Rapids and later: `amx_bf16` on
`amx_tile`) or AVX-512 BF16 (Cooper Lake, Zen 4 and later: `avx512_bf16`).
Elsewhere torch emulates bf16 by widening to float32 and rounding back,
which is slower than fp32 and less exact, so auto keeps fp32. The flags come
from /proc/cpuinfo (Linux's own list of what CPUID reported); torch's
dispatch level (`torch.backends.cpu.get_cpu_capability()`) is asked too, as
a process can be pinned below what the CPU has (ATEN_CPU_CAPABILITY=avx2).

bf16 pays only where the weights' matrix products dominate a call: a model
too small for that (the test fixtures) runs slower in bf16 even on such a
CPU, so auto also asks how many bytes of weights the model has
(`BF16_MIN_WEIGHT_BYTES`).

Pure and cheap: no torch import at module level, every decision a function of
texts and strings, so the unit tests feed it other machines' cpuinfo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stageflow.inference import precision

CPUINFO = Path("/proc/cpuinfo")

# The flags with bf16 arithmetic in hardware (amx_tile alone holds tiles, no maths).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# What the reason and Describe show of the CPU: the bf16 flags and what they build on.
SHOWN_FLAGS = ("amx_tile", "amx_bf16", "avx512f", "avx512_bf16")
# Measured on an AVX-512 BF16 CPU (docs/benchmarks.md, docs/quality.md): the 4.3 GB
# SD 1.5-size folder runs its UNet step 1.1-1.9x faster in bf16 and its VAE decode
# ~2x; the 5-7 MB fixtures run 1.24-1.35x slower (casts and per-call overhead).
# auto takes bf16 from this much weight up: a threshold placed between the two
# measured sizes (every SD-class model is far above it, every fixture far below),
# not a measured crossover.
BF16_MIN_WEIGHT_BYTES = 256 * 2**20
# torch dispatch levels below which its bf16 kernels cannot use AVX-512 BF16.
_NO_AVX512_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX", "AVX2")


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's flags in a /proc/cpuinfo text (x86 `flags`, Arm
    `Features`); empty when it has neither."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """This host's CPU flags; empty where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        return parse_flags(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def torch_capability() -> str:
    """torch's CPU dispatch level ("AVX512", "AVX2", "DEFAULT", ...); "" without torch."""
    try:
        import torch
    except ImportError:
        return ""
    return str(torch.backends.cpu.get_cpu_capability())


@dataclass(frozen=True)
class CpuBf16:
    """What decides whether bf16 is native here."""

    # The SHOWN_FLAGS the CPU reports, in that order.
    features: tuple[str, ...]
    # torch's dispatch level; "" when unknown.
    capability: str

    @property
    def native(self) -> str:
        """The flag that makes bf16 native ("amx_bf16", "avx512_bf16"), "" when none does."""
        return self.native_of(BF16_FLAGS)

    def native_of(self, flags: tuple[str, ...]) -> str:
        """The first of `flags` that this CPU has and torch can use, "" when none."""
        if self.capability.upper() in _NO_AVX512_CAPABILITIES:
            return ""
        return next((f for f in flags if f in self.features), "")

    def words(self) -> str:
        shown = ", ".join(self.features) or "none of " + "/".join(BF16_FLAGS)
        return f"CPU flags: {shown}; torch CPU capability {self.capability or 'unknown'}"


def cpu_bf16(flags: frozenset[str], capability: str) -> CpuBf16:
    return CpuBf16(tuple(f for f in SHOWN_FLAGS if f in flags), capability)


def detect() -> CpuBf16:
    """This host's answer (reads /proc/cpuinfo and asks torch)."""
    return cpu_bf16(cpu_flags(), torch_capability())


def choose_cast_dtype(
    setting: str,
    cpu: CpuBf16,
    device: str = "cpu",
    castable: tuple[str, ...] = precision.DTYPES,
    weight_bytes: int | None = None,
    auto_bf16: AutoBf16 | None = None,
) -> precision.DtypeChoice:
    """The precision a backend that casts at load (torch) serves `setting` in, and why.

    `castable`: what auto may cast the model to; `weight_bytes`: the size of the
    model's weights (None: unknown, the CPU decides); `auto_bf16`: where auto
    takes bf16 for this model (default: any native bf16, from 256 MiB of weights)."""
    precision.check_setting(setting)
    rule = auto_bf16 or AutoBf16()
    if not device.startswith("cpu"):
        return _off_cpu(setting, device)
    if setting != precision.AUTO:
        return _choice(setting, setting, _set_reason(setting, cpu), cpu)
    if precision.BF16 not in castable:
        only = "/".join(castable)
        reason = f"auto: fp32, auto serves this model in {only} only (set dtype to cast it)"
        return _choice(precision.FP32, setting, reason, cpu)
    native = cpu.native_of(rule.flags)
    if native and weight_bytes is not None and weight_bytes < rule.min_weight_bytes:
        reason = (
            f"auto: fp32, {_mib(weight_bytes)} of weights is too small for bf16 to pay "
            f"(bf16 from {_mib(rule.min_weight_bytes)}; the CPU has {native})"
        )
        return _choice(precision.FP32, setting, reason, cpu)
    if native:
        return _choice(
            precision.BF16, setting, f"auto: bf16, the CPU has {native} ({cpu.words()})", cpu
        )
    if cpu.native:
        reason = (
            f"auto: fp32, this model takes bf16 with {'/'.join(rule.flags)} "
            f"(the CPU has {cpu.native} only; {cpu.words()})"
        )
        return _choice(precision.FP32, setting, reason, cpu)
    reason = f"auto: fp32, no native bf16 on this CPU ({cpu.words()})"
    return _choice(precision.FP32, setting, reason, cpu)


@dataclass(frozen=True)
class AutoBf16:
    """Where dtype=auto serves a model in bf16: the CPU has one of `flags` and the
    model at least `min_weight_bytes` of weights."""

    flags: tuple[str, ...] = BF16_FLAGS
    min_weight_bytes: int = BF16_MIN_WEIGHT_BYTES


# The torch upscalers (Real-ESRGAN x4plus, animevideov3, the fixture) ran faster in
# bf16 at every size tried on an AMX CPU; through the services the real-scale job's
# upscale stage ran 3.7x faster in bf16 with channels_last, its final image 35.8 dB
# from fp32 (docs/benchmarks.md, bench/perimage.py). Without AMX (oneDNN capped at
# AVX-512 BF16) bf16 ran slower than fp32 (bench/upscale_dtype.py): fp32 there.
UPSCALER_AUTO_BF16 = AutoBf16(flags=("amx_bf16",), min_weight_bytes=0)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**20:.2f} MiB"


def _choice(dtype: str, setting: str, reason: str, cpu: CpuBf16) -> precision.DtypeChoice:
    return precision.DtypeChoice(dtype, setting, reason, cpu.features, cpu.capability)


def _off_cpu(setting: str, device: str) -> precision.DtypeChoice:
    """On a GPU the CPU's flags say nothing: auto stays fp32, a set dtype is taken."""
    if setting == precision.AUTO:
        reason = f"auto: fp32 on {device} (auto chooses by CPU features; set dtype on a GPU)"
        return precision.DtypeChoice(precision.FP32, setting, reason)
    return precision.DtypeChoice(setting, setting, f"set: dtype={setting}")


def _set_reason(dtype: str, cpu: CpuBf16) -> str:
    if dtype == precision.BF16 and not cpu.native:
        return (
            f"set: dtype={dtype}; no native bf16 on this CPU ({cpu.words()}): torch emulates "
            "it, slower than fp32"
        )
    return f"set: dtype={dtype}"
