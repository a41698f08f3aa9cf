"""dtype=auto reads the CPU's bf16 flags: other machines' /proc/cpuinfo texts in,
the precision and its reason out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stageflow.inference import hardware, precision

# The first processor's block, as Linux writes it (trimmed to the lines read
# and a few around them). Sapphire Rapids: AMX and AVX-512 BF16.
INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 fma avx avx2 avx512f \
avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile \
amx_int8 avx_vnni
bugs\t\t: spectre_v1 spectre_v2
"""
# This machine (AMD EPYC, Zen 4): AVX-512 BF16, no AMX.
AMD_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush \
mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl \
xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid \
sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor \
lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap \
avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 \
xsaves avx512_bf16 clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes \
vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
bugs\t\t: sysret_ss_attrs null_seg spectre_v1 spectre_v2
"""
# Skylake-SP: AVX-512 but no bf16 at all.
INTEL_SKYLAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq \
avx512cd avx512bw avx512vl
"""
# Haswell: neither AVX-512 nor bf16.
INTEL_HASWELL = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2
"""


def _choose(
    cpuinfo: str, capability: str = "AVX512", setting: str = "auto"
) -> precision.DtypeChoice:
    cpu = hardware.cpu_bf16(hardware.parse_flags(cpuinfo), capability)
    return hardware.choose_cast_dtype(setting, cpu)


def test_amx_picks_bf16_and_names_the_flag() -> None:
    choice = _choose(INTEL_SPR)
    assert (choice.dtype, choice.setting) == ("bf16", "auto")
    assert choice.reason.startswith("auto: bf16, the CPU has amx_bf16")
    assert choice.cpu_features == ("amx_tile", "amx_bf16", "avx512f", "avx512_bf16")
    assert choice.cpu_capability == "AVX512"


def test_avx512_bf16_without_amx_picks_bf16() -> None:
    choice = _choose(AMD_EPYC)
    assert choice.dtype == "bf16"
    assert "the CPU has avx512_bf16" in choice.reason
    assert choice.cpu_features == ("avx512f", "avx512_bf16")


def test_auto_keeps_fp32_for_weights_too_small_for_bf16_to_pay() -> None:
    cpu = hardware.cpu_bf16(hardware.parse_flags(AMD_EPYC), "AVX512")
    small = hardware.choose_cast_dtype("auto", cpu, weight_bytes=5_477_860)  # tiny-sd
    assert small.dtype == "fp32"
    assert small.reason == (
        "auto: fp32, 5 MiB of weights is too small for bf16 to pay "
        "(bf16 from 256 MiB; the CPU has avx512_bf16)"
    )
    big = hardware.choose_cast_dtype("auto", cpu, weight_bytes=4_265_073_812)  # SD 1.5 size
    assert big.dtype == "bf16" and "the CPU has avx512_bf16" in big.reason
    at = hardware.choose_cast_dtype("auto", cpu, weight_bytes=hardware.BF16_MIN_WEIGHT_BYTES)
    assert at.dtype == "bf16"
    # Without bf16 in hardware the size does not matter: fp32, for the CPU's reason.
    haswell = hardware.cpu_bf16(hardware.parse_flags(INTEL_HASWELL), "AVX2")
    assert (
        "no native bf16" in hardware.choose_cast_dtype("auto", haswell, weight_bytes=2**33).reason
    )
    # An explicit bf16 is taken whatever the size.
    assert hardware.choose_cast_dtype("bf16", cpu, weight_bytes=1).dtype == "bf16"


@pytest.mark.parametrize(
    ("cpuinfo", "features", "capability"),
    [(INTEL_SKYLAKE, ("avx512f",), "AVX512"), (INTEL_HASWELL, (), "AVX2")],
)
def test_a_cpu_without_bf16_keeps_fp32(
    cpuinfo: str, features: tuple[str, ...], capability: str
) -> None:
    choice = _choose(cpuinfo, capability)
    assert choice.dtype == "fp32"
    assert choice.reason.startswith("auto: fp32, no native bf16 on this CPU")
    assert choice.cpu_features == features
    assert f"torch CPU capability {capability}" in choice.reason


def test_torch_pinned_below_avx512_keeps_fp32_on_a_bf16_cpu() -> None:
    # ATEN_CPU_CAPABILITY=avx2: torch's kernels do not use what the CPU has.
    choice = _choose(AMD_EPYC, capability="AVX2")
    assert choice.dtype == "fp32"
    assert "avx512_bf16" in choice.reason and "AVX2" in choice.reason


def test_amx_tile_alone_is_not_bf16() -> None:
    choice = _choose("flags\t: sse2 avx2 amx_tile amx_int8\n", capability="AVX2")
    assert choice.dtype == "fp32"


def test_an_explicit_setting_is_kept_and_says_so() -> None:
    for setting in precision.DTYPES:
        choice = _choose(INTEL_HASWELL, "AVX2", setting=setting)
        assert (choice.dtype, choice.setting) == (setting, setting)
        assert choice.reason.startswith(f"set: dtype={setting}")
    emulated = _choose(INTEL_HASWELL, "AVX2", setting="bf16")
    assert "no native bf16" in emulated.reason and "slower than fp32" in emulated.reason
    native = _choose(AMD_EPYC, setting="bf16")
    assert native.reason == "set: dtype=bf16"


def test_a_model_that_casts_to_fp32_only_gets_fp32_from_auto() -> None:
    cpu = hardware.cpu_bf16(hardware.parse_flags(INTEL_SPR), "AVX512")
    choice = hardware.choose_cast_dtype("auto", cpu, castable=("fp32",))
    assert choice.dtype == "fp32" and "auto serves this model in fp32 only" in choice.reason


def test_auto_on_a_gpu_is_fp32_and_ignores_the_cpu() -> None:
    cpu = hardware.cpu_bf16(hardware.parse_flags(INTEL_SPR), "AVX512")
    choice = hardware.choose_cast_dtype("auto", cpu, device="cuda:0")
    assert (choice.dtype, choice.cpu_features) == ("fp32", ())
    assert "cuda:0" in choice.reason


def test_an_unknown_setting_is_refused_with_the_allowed_ones() -> None:
    cpu = hardware.cpu_bf16(frozenset(), "")
    with pytest.raises(ValueError, match="fp32, fp16, bf16, auto; got 'bfloat16'"):
        hardware.choose_cast_dtype("bfloat16", cpu)


def test_unreadable_or_flagless_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert hardware.cpu_flags(tmp_path / "absent") == frozenset()
    assert hardware.parse_flags("processor\t: 0\nmodel name\t: something\n") == frozenset()
    # Arm writes `Features`.
    assert "bf16" in hardware.parse_flags("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")


def test_the_module_imports_no_torch_at_module_level() -> None:
    # Its top-level statements, read: torch is imported only inside torch_capability.
    tree = ast.parse(Path(hardware.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert "torch" not in imported and "stageflow" in imported


def test_this_host_is_read_for_real() -> None:
    """The detection on this machine agrees with its own /proc/cpuinfo."""
    if not hardware.CPUINFO.is_file():
        pytest.skip("no /proc/cpuinfo on this host")
    flags = hardware.cpu_flags()
    assert flags  # a Linux cpuinfo always lists flags
    cpu = hardware.detect()
    assert set(cpu.features) == {f for f in hardware.SHOWN_FLAGS if f in flags}
    assert cpu.capability  # torch is installed here


def test_exported_models_take_their_own_dtype() -> None:
    auto = precision.exported_choice("auto", "fp16", "/m")
    assert (auto.dtype, auto.setting, auto.cpu_features) == ("fp16", "auto", ())
    assert "export's own dtype" in auto.reason
    assert precision.exported_choice("fp32", "fp16", "/m").dtype == "fp16"
    with pytest.raises(ValueError, match="is a fp32 export; dtype bf16 needs"):
        precision.exported_choice("bf16", "fp32", "/m")


def test_the_upscalers_rule_takes_bf16_with_amx_at_any_size_and_fp32_without() -> None:
    rule = hardware.UPSCALER_AUTO_BF16
    spr = hardware.cpu_bf16(hardware.parse_flags(INTEL_SPR), "AVX512")
    amx = hardware.choose_cast_dtype("auto", spr, weight_bytes=200_000, auto_bf16=rule)
    assert amx.dtype == "bf16" and amx.reason.startswith("auto: bf16, the CPU has amx_bf16")
    epyc = hardware.cpu_bf16(hardware.parse_flags(AMD_EPYC), "AVX512")
    avx512 = hardware.choose_cast_dtype("auto", epyc, weight_bytes=2**30, auto_bf16=rule)
    assert avx512.dtype == "fp32"
    assert "takes bf16 with amx_bf16 (the CPU has avx512_bf16 only" in avx512.reason
    # The default rule is unchanged: any native bf16, from 256 MiB.
    assert hardware.choose_cast_dtype("auto", epyc, weight_bytes=2**30).dtype == "bf16"
    # A set dtype is taken whatever the rule.
    assert hardware.choose_cast_dtype("bf16", epyc, auto_bf16=rule).dtype == "bf16"
