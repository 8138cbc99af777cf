"""hmm_nic_regs.h's copies of the rxe user-queue layouts against the kernel's uAPI.

hmm-nic reads the work requests rdma-core's stock rxe provider writes and
writes the completions it polls (docs/hmm-nic.md), so every offset the device
and driver use must be rxe's. A C program includes the header next to
<rdma/rdma_user_rxe.h> and <rdma/ib_user_verbs.h> (linux-libc-dev, which gcc's
libc6-dev depends on) and prints both sides of each pair.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INCLUDE = REPO / "qemu-devices" / "include"

# (what, hmm-nic expression, kernel uAPI expression); each prints a number.
PAIRS = [
    ("send WR size", "sizeof(struct hmm_nic_send_wr)", "sizeof(struct rxe_send_wr)"),
    *[
        (f"send WR .{f}", f"offsetof(struct hmm_nic_send_wr, {f})",
         f"offsetof(struct rxe_send_wr, {k})")
        for f, k in [
            ("wr_id", "wr_id"),
            ("opcode", "opcode"),
            ("send_flags", "send_flags"),
            ("imm_data", "ex.imm_data"),
            ("wr.rdma.remote_addr", "wr.rdma.remote_addr"),
            ("wr.rdma.rkey", "wr.rdma.rkey"),
            ("wr.atomic.remote_addr", "wr.atomic.remote_addr"),
            ("wr.atomic.compare_add", "wr.atomic.compare_add"),
            ("wr.atomic.swap", "wr.atomic.swap"),
            ("wr.atomic.rkey", "wr.atomic.rkey"),
        ]
    ],
    ("send WQE: wr", "HMM_NIC_SWQE_WR", "offsetof(struct rxe_send_wqe, wr)"),
    ("send WQE: dma", "HMM_NIC_SWQE_DMA", "offsetof(struct rxe_send_wqe, dma)"),
    ("send WQE: sge", "HMM_NIC_SWQE_SGE", "offsetof(struct rxe_send_wqe, dma.sge)"),
    ("send WQE: inline", "HMM_NIC_SWQE_SGE", "offsetof(struct rxe_send_wqe, dma.inline_data)"),
    ("recv WQE: wr_id", "HMM_NIC_RWQE_WR_ID", "offsetof(struct rxe_recv_wqe, wr_id)"),
    ("recv WQE: dma", "HMM_NIC_RWQE_DMA", "offsetof(struct rxe_recv_wqe, dma)"),
    ("recv WQE: sge", "HMM_NIC_RWQE_SGE", "offsetof(struct rxe_recv_wqe, dma.sge)"),
    ("dma info size", "sizeof(struct hmm_nic_dma_info)", "sizeof(struct rxe_dma_info)"),
    *[
        (f"dma info .{f}", f"offsetof(struct hmm_nic_dma_info, {f})",
         f"offsetof(struct rxe_dma_info, {f})")
        for f in ("length", "resid", "cur_sge", "num_sge", "sge_offset")
    ],
    ("sge size", "sizeof(struct hmm_nic_sge)", "sizeof(struct rxe_sge)"),
    *[
        (f"sge .{f}", f"offsetof(struct hmm_nic_sge, {f})", f"offsetof(struct rxe_sge, {f})")
        for f in ("addr", "length", "lkey")
    ],
    ("queue: producer", "HMM_NIC_QBUF_PRODUCER",
     "offsetof(struct rxe_queue_buf, producer_index)"),
    ("queue: consumer", "HMM_NIC_QBUF_CONSUMER",
     "offsetof(struct rxe_queue_buf, consumer_index)"),
    ("queue: data", "HMM_NIC_QBUF_DATA", "offsetof(struct rxe_queue_buf, data)"),
    ("CQE size", "sizeof(struct hmm_nic_cqe)", "sizeof(struct ib_uverbs_wc)"),
    *[
        (f"CQE .{f}", f"offsetof(struct hmm_nic_cqe, {f})",
         f"offsetof(struct ib_uverbs_wc, {k})")
        for f, k in [
            ("wr_id", "wr_id"), ("status", "status"), ("opcode", "opcode"),
            ("vendor_err", "vendor_err"), ("byte_len", "byte_len"), ("imm_data", "ex.imm_data"),
            ("qp_num", "qp_num"), ("src_qp", "src_qp"), ("wc_flags", "wc_flags"),
            ("pkey_index", "pkey_index"), ("slid", "slid"), ("sl", "sl"),
            ("dlid_path_bits", "dlid_path_bits"), ("port_num", "port_num"),
        ]
    ],
    *[
        (f"WR opcode {n}", f"HMM_NIC_WR_{n}", f"IB_UVERBS_WR_{n}")
        for n in ("RDMA_WRITE", "RDMA_WRITE_WITH_IMM", "SEND", "SEND_WITH_IMM", "RDMA_READ",
                  "ATOMIC_CMP_AND_SWP", "ATOMIC_FETCH_AND_ADD")
    ],
    *[
        (f"WC opcode {n}", f"HMM_NIC_WC_OP_{n}", f"IB_UVERBS_WC_{n}")
        for n in ("SEND", "RDMA_WRITE", "RDMA_READ", "COMP_SWAP", "FETCH_ADD")
    ],
    *[
        (f"access {n}", f"HMM_NIC_ACCESS_{n}", f"IB_UVERBS_ACCESS_{n}")
        for n in ("LOCAL_WRITE", "REMOTE_WRITE", "REMOTE_READ", "REMOTE_ATOMIC")
    ],
    ("QP type RC", "HMM_NIC_QPT_RC", "IB_UVERBS_QPT_RC"),
]

# FLUSH and ATOMIC_WRITE (ABI 1.5): in the uAPI from 6.2 (the access bits,
# placement and selectivity, rxe's flush WR); compared when the build host's
# headers have them.
RXE_UAPI = Path("/usr/include/rdma/rdma_user_rxe.h")
FLUSH_PAIRS = [
    *[
        (f"send WR .{f}", f"offsetof(struct hmm_nic_send_wr, {f})",
         f"offsetof(struct rxe_send_wr, {f})")
        for f in ("wr.flush.remote_addr", "wr.flush.length", "wr.flush.rkey", "wr.flush.type",
                  "wr.flush.level")
    ],
    ("send WQE: atomic_wr", "HMM_NIC_SWQE_SGE", "offsetof(struct rxe_send_wqe, dma.atomic_wr)"),
    *[(f"WR opcode {n}", f"HMM_NIC_WR_{n}", f"IB_UVERBS_WR_{n}")
      for n in ("FLUSH", "ATOMIC_WRITE")],
    *[(f"WC opcode {n}", f"HMM_NIC_WC_OP_{n}", f"IB_UVERBS_WC_{n}")
      for n in ("FLUSH", "ATOMIC_WRITE")],
    *[(f"access {n}", f"HMM_NIC_ACCESS_{n}", f"IB_UVERBS_ACCESS_{n}")
      for n in ("FLUSH_GLOBAL", "FLUSH_PERSISTENT")],
    *[(f"flush {n}", f"HMM_NIC_FLUSH_{n}", f"IB_FLUSH_{n}")
      for n in ("GLOBAL", "PERSISTENT", "RANGE", "MR")],
]
HAS_FLUSH = RXE_UAPI.exists() and "flush" in RXE_UAPI.read_text()
if HAS_FLUSH:
    PAIRS += FLUSH_PAIRS


def c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <rdma/rdma_user_rxe.h>",
        "#include <rdma/ib_user_verbs.h>",
        "#include <rdma/ib_user_ioctl_verbs.h>",
        '#include "hmm_nic_regs.h"',
        "int main(void) {",
    ]
    for i, (_what, ours, theirs) in enumerate(PAIRS):
        lines.append(
            f'printf("{i} %llu %llu\\n", (unsigned long long)({ours}), '
            f"(unsigned long long)({theirs}));"
        )
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[int, int]]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler on PATH: the layouts cannot be compared")
    if not Path("/usr/include/rdma/rdma_user_rxe.h").exists():
        pytest.skip("no /usr/include/rdma/rdma_user_rxe.h (Debian: apt-get install linux-libc-dev)")
    d = tmp_path_factory.mktemp("nicabi")
    src = d / "nicabi.c"
    src.write_text(c_program())
    exe = d / "nicabi"
    cp = subprocess.run([cc, "-Wall", "-Werror", "-I", str(INCLUDE), "-o", str(exe), str(src)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, f"{src} does not compile:\n{cp.stderr}"
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout
    res = {}
    for line in out.splitlines():
        i, ours, theirs = line.split()
        res[int(i)] = (int(ours), int(theirs))
    return res


@pytest.mark.skipif(HAS_FLUSH, reason="compared in test_matches_kernel_uapi")
def test_flush_layouts_need_newer_uapi() -> None:
    pytest.skip(f"{RXE_UAPI} predates FLUSH and ATOMIC_WRITE (6.2): "
                f"{len(FLUSH_PAIRS)} layouts not compared")


@pytest.mark.parametrize("i", range(len(PAIRS)), ids=[p[0] for p in PAIRS])
def test_matches_kernel_uapi(layout: dict[int, tuple[int, int]], i: int) -> None:
    what, ours, theirs = PAIRS[i]
    got, want = layout[i]
    assert got == want, f"{what}: {ours} = {got}, {theirs} = {want}"

