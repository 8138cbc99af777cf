"""The Python DMA trace decoder against the C header, compiled with gcc.

A C program includes qemu-devices/include/hmm_gpu_regs.h and prints the size
and offset of every trace struct field and the value of every constant the
decoder uses; the header is also read for the member and enumerator lists,
so a field or enum value added to the header but not to the decoder fails.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.checks import dmatrace

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "qemu-devices" / "include" / "hmm_gpu_regs.h"

STRUCTS = {
    "hmm_gpu_trace_hdr": (dmatrace.HDR_FORMAT, dmatrace.HDR_FIELDS),
    "hmm_gpu_trace_rec": (dmatrace.REC_FORMAT, dmatrace.REC_FIELDS),
    "hmm_gpu_ctx_desc": (dmatrace.CTX_DESC_FORMAT, dmatrace.CTX_DESC_FIELDS),
    "hmm_gpu_fault_rec": (dmatrace.FAULT_REC_FORMAT, dmatrace.FAULT_REC_FIELDS),
}


def python_layout(fmt: str, fields: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """{field: (offset, size)} from a struct format like "<QII"."""
    order = fmt[0]
    assert order == "<", "trace records are little-endian"
    codes = re.findall(r"\d*[a-zA-Z]", fmt[1:])  # "7s" is one field (a byte array)
    assert "".join(codes) == fmt[1:] and len(codes) == len(fields), (codes, fields)
    out = {}
    for i, name in enumerate(fields):
        prefix = order + "".join(codes[:i])
        out[name] = (struct.calcsize(prefix), struct.calcsize(order + codes[i]))
    return out


def c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        '#include "hmm_gpu_regs.h"',
        "int main(void) {",
    ]
    for sname, (_fmt, fields) in STRUCTS.items():
        lines.append(f'printf("sizeof {sname} %zu\\n", sizeof(struct {sname}));')
        for f in fields:
            lines.append(
                f'printf("field {sname}.{f} %zu %zu\\n", offsetof(struct {sname}, {f}), '
                f"sizeof(((struct {sname} *)0)->{f}));"
            )
    for cname in dmatrace.C_CONSTANTS:
        lines.append(f'printf("const %s %llu\\n", "{cname}", (unsigned long long)({cname}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, ...]]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "the ABI check needs gcc (apt-get install gcc)"
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "abi.c", d / "abi"
    src.write_text(c_program())
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(exe),
                    str(src)], check=True, timeout=60, capture_output=True)
    out = subprocess.run([str(exe)], check=True, timeout=10, capture_output=True, text=True).stdout
    values: dict[str, tuple[int, ...]] = {}
    for line in out.splitlines():
        kind, name, *nums = line.split()
        values[f"{kind} {name}"] = tuple(int(n) for n in nums)
    return values


def header_struct_members(name: str) -> list[str]:
    text = HEADER.read_text()
    body = re.search(r"struct " + name + r"\s*\{(.*?)\};", text, re.S)
    assert body, f"struct {name} not found in {HEADER}"
    return re.findall(r"^\s*\w+\s+(\w+)(?:\[\d+\])?;", body.group(1), re.M)


def header_enum(name: str) -> list[str]:
    body = re.search(r"enum " + name + r"\s*\{(.*?)\};", HEADER.read_text(), re.S)
    assert body, f"enum {name} not found"
    return re.findall(r"^\s*(\w+)\s*=", body.group(1), re.M)


def header_defines(prefix: str) -> list[str]:
    return re.findall(r"^#define\s+(" + prefix + r"\w*)\s", HEADER.read_text(), re.M)


@pytest.mark.parametrize("sname", list(STRUCTS))
def test_struct_sizes(sname: str, c_values: dict[str, tuple[int, ...]]) -> None:
    fmt, _ = STRUCTS[sname]
    assert c_values[f"sizeof {sname}"] == (struct.calcsize(fmt),)


@pytest.mark.parametrize("sname", list(STRUCTS))
def test_field_offsets_and_sizes(sname: str, c_values: dict[str, tuple[int, ...]]) -> None:
    fmt, fields = STRUCTS[sname]
    for field, (off, size) in python_layout(fmt, fields).items():
        assert c_values[f"field {sname}.{field}"] == (off, size), f"{sname}.{field}"


@pytest.mark.parametrize("sname", list(STRUCTS))
def test_decoder_knows_every_header_field(sname: str) -> None:
    assert tuple(header_struct_members(sname)) == STRUCTS[sname][1]


def test_constants(c_values: dict[str, tuple[int, ...]]) -> None:
    for cname, value in dmatrace.C_CONSTANTS.items():
        assert c_values[f"const {cname}"] == (int(value),), cname


def test_decoder_knows_every_enum_value() -> None:
    in_header = set(header_enum("hmm_gpu_trace_engine") + header_enum("hmm_gpu_trace_kind")
                    + header_defines("HMM_GPU_DIR_") + header_defines("HMM_GPU_TRACE_"))
    assert in_header, "header parsing found nothing"
    assert in_header <= set(dmatrace.C_CONSTANTS), in_header - set(dmatrace.C_CONSTANTS)


def test_trace_record_is_v2_64_bytes(c_values: dict[str, tuple[int, ...]]) -> None:
    assert dmatrace.TRACE_VERSION == 2 and dmatrace.REC_SIZE == 64
    assert dmatrace.REC_V1_SIZE == 40  # the old layout, still decoded
    assert c_values["sizeof hmm_gpu_trace_rec"] == (64,)


def test_pte_bits_in_header() -> None:
    in_header = set(header_defines("HMM_GPU_PTE_"))
    assert in_header and in_header <= set(dmatrace.C_CONSTANTS), (
        in_header - set(dmatrace.C_CONSTANTS))


def test_enum_classes_match_constants() -> None:
    assert {e.name for e in dmatrace.Engine} == {"QUEUE", "COPY", "MMU", "MIGRATE"}
    assert {k.name for k in dmatrace.Kind if k.is_event} == {"EV_TLB_INV", "EV_REPLAY",
                                                              "EV_CANCEL", "EV_CLOCK_SYNC"}
    assert {f"HMM_GPU_ENGINE_{e.name}" for e in dmatrace.Engine} | {
        f"HMM_GPU_TRACE_{k.name}" for k in dmatrace.Kind} | {
        f"HMM_GPU_DIR_{d.name}" for d in dmatrace.Dir} <= set(dmatrace.C_CONSTANTS)


# ---- hmm-nic: the same records, its own engine numbers (hmm_nic_regs.h) ------------

NIC_HEADER = REPO / "qemu-devices" / "include" / "hmm_nic_regs.h"


def test_nic_engines_match_the_header(tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "the ABI check needs gcc (apt-get install gcc)"
    lines = ["#include <stdio.h>", "#include <stdint.h>", '#include "hmm_nic_regs.h"',
             "int main(void) {"]
    lines += [f'printf("{c} %llu\\n", (unsigned long long)({c}));'
              for c in dmatrace.NIC_C_CONSTANTS]
    lines += ["return 0;", "}"]
    src, exe = tmp_path / "nic.c", tmp_path / "nic"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", "-I", str(NIC_HEADER.parent), "-o",
                    str(exe), str(src)], check=True, timeout=60, capture_output=True)
    out = subprocess.run([str(exe)], check=True, timeout=10, capture_output=True,
                         text=True).stdout
    got = {name: int(v) for name, v in (line.split() for line in out.splitlines())}
    assert got == dmatrace.NIC_C_CONSTANTS


def test_decoder_knows_every_nic_engine() -> None:
    body = re.search(r"enum hmm_nic_trace_engine\s*\{(.*?)\};", NIC_HEADER.read_text(), re.S)
    assert body, f"enum hmm_nic_trace_engine not found in {NIC_HEADER}"
    in_header = set(re.findall(r"^\s*(\w+)\s*=", body.group(1), re.M))
    assert in_header and in_header == set(dmatrace.NIC_C_CONSTANTS), (
        in_header ^ set(dmatrace.NIC_C_CONSTANTS))


def test_numpy_record_dtype_matches_the_header(c_values: dict[str, tuple[int, ...]]) -> None:
    """The bulk decoder's dtype: every field at the C offset with the C size, one
    record per sizeof(struct hmm_gpu_trace_rec)."""
    dt = dmatrace.rec_dtype()
    assert dt.itemsize == c_values["sizeof hmm_gpu_trace_rec"][0]
    assert dt == dmatrace.REC_DTYPE
    for name in dt.names or ():
        fdt, off = dt.fields[name][:2]
        assert (off, fdt.itemsize) == c_values[f"field hmm_gpu_trace_rec.{name}"], name
        assert fdt.kind == "u" and fdt.byteorder in ("<", "|", "="), name
    # every field of the header but the reserved bytes is decoded
    assert set(dt.names or ()) == set(header_struct_members("hmm_gpu_trace_rec")) - {"rsvd"}


def test_numpy_v1_dtype_is_the_old_layout() -> None:
    v1 = dmatrace.rec_dtype(1)
    assert v1.itemsize == dmatrace.REC_V1_SIZE
    assert python_layout(dmatrace.REC_V1_FORMAT, v1.names or ()) == {
        n: (v1.fields[n][1], v1.fields[n][0].itemsize) for n in v1.names or ()}
