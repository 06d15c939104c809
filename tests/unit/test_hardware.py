"""CPU feature detection: bf16 only where the CPU has it natively, int8 acceleration with VNNI/AMX."""

from __future__ import annotations

from inspectline.hardware import cpu_capabilities, parse_cpuinfo

EPYC = """processor\t: 0
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 sha_ni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_avx2_only_cpu_gets_no_bf16_and_no_int8_acceleration():
    caps = parse_cpuinfo(EPYC, torch_capability="AVX2")
    assert caps.model == "AMD EPYC 7B13"
    assert (caps.family, caps.model_number) == ("25", "1")  # Zen 3, where a VM names only "AMD EPYC"
    assert caps.flags == {"avx2", "fma"}
    assert not caps.bf16 and not caps.int8_accelerated
    assert "avx2, fma" in caps.describe() and "AVX2" in caps.describe()


def test_amx_cpu_gets_bf16_and_int8():
    caps = parse_cpuinfo(SAPPHIRE_RAPIDS, torch_capability="AMX")
    assert caps.bf16 and caps.int8_accelerated
    assert caps.to_dict()["cpu_flags"] == sorted(
        ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"]
    )


def test_this_machine_is_described():
    caps = cpu_capabilities()
    assert caps.model and isinstance(caps.bf16, bool)
