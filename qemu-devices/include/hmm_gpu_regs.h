/* SPDX-License-Identifier: GPL-2.0-or-later OR MIT */
/*
 * hmm-gpu: register, command and record layout.
 *
 * This header is the single source of truth for the device ABI. It is
 * compiled into the QEMU device model (qemu-devices/hw/misc/hmm-gpu.c), the
 * guest driver (guest-images/driver/) and checked against the Python trace
 * decoder (harness/dmatrace.py, tests/unit/test_abi.py). docs/device-abi.md
 * explains it in prose.
 *
 * All multi-byte fields are little-endian. BAR0 registers are 32 bits wide;
 * 64-bit quantities are split into _LO/_HI pairs (write LO first, HI last).
 */
#ifndef HMM_GPU_REGS_H
#define HMM_GPU_REGS_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

/* PCI identity (0x1234 is the vendor ID QEMU's own example devices use) */
#define HMM_GPU_PCI_VENDOR_ID		0x1234
#define HMM_GPU_PCI_DEVICE_ID		0x4d47
#define HMM_GPU_PCI_REVISION		0x01

#define HMM_GPU_BAR_MMIO		0	/* registers */
#define HMM_GPU_BAR_MSIX		1	/* MSI-X table and PBA */
#define HMM_GPU_MMIO_SIZE		0x1000

#define HMM_GPU_ID_MAGIC		0x484d4d47	/* "HMMG" */
#define HMM_GPU_VERSION_MAJOR		1
#define HMM_GPU_VERSION_MINOR		0

/* ---- BAR0 registers ---------------------------------------------------- */
#define HMM_GPU_REG_ID			0x000	/* RO: HMM_GPU_ID_MAGIC */
#define HMM_GPU_REG_VERSION		0x004	/* RO: major << 16 | minor */
#define HMM_GPU_REG_CAPS		0x008	/* RO: HMM_GPU_CAP_* */
#define HMM_GPU_REG_RESET		0x00c	/* WO: write HMM_GPU_RESET_MAGIC */
#define HMM_GPU_REG_STATUS		0x010	/* RO: HMM_GPU_STATUS_* */
#define HMM_GPU_REG_ERROR		0x014	/* RO: last HMM_GPU_ERR_* */
#define HMM_GPU_REG_ERROR_ADDR_LO	0x018	/* RO: address tied to ERROR */
#define HMM_GPU_REG_ERROR_ADDR_HI	0x01c
#define HMM_GPU_REG_INTR_STATUS		0x020	/* RW1C: HMM_GPU_INTR_* */
#define HMM_GPU_REG_INTR_MASK		0x024	/* RW: 1 = cause enabled */
#define HMM_GPU_REG_VEC_CPL		0x028	/* RW: MSI-X vector, completions */
#define HMM_GPU_REG_VEC_ERR		0x02c	/* RW: MSI-X vector, errors */
#define HMM_GPU_REG_MAX_XFER		0x030	/* RO: max bytes per command */
#define HMM_GPU_REG_NUM_VECTORS		0x034	/* RO: MSI-X vectors */
#define HMM_GPU_REG_SCRATCH		0x038	/* RW: no side effects */

/* Command queue: ring of struct hmm_gpu_cmd in guest memory */
#define HMM_GPU_REG_CMDQ_BASE_LO	0x040	/* RW while disabled, 64B aligned */
#define HMM_GPU_REG_CMDQ_BASE_HI	0x044
#define HMM_GPU_REG_CMDQ_SIZE		0x048	/* RW while disabled: entries, pow2 */
#define HMM_GPU_REG_CMDQ_HEAD		0x04c	/* RO: next entry the device reads */
#define HMM_GPU_REG_CMDQ_TAIL		0x050	/* doorbell: next entry driver fills */
#define HMM_GPU_REG_CMDQ_CTRL		0x054	/* RW: HMM_GPU_QCTRL_ENABLE */

/* Completion queue: ring of struct hmm_gpu_cpl in guest memory */
#define HMM_GPU_REG_CPLQ_BASE_LO	0x060
#define HMM_GPU_REG_CPLQ_BASE_HI	0x064
#define HMM_GPU_REG_CPLQ_SIZE		0x068	/* entries, pow2 */
#define HMM_GPU_REG_CPLQ_HEAD		0x06c	/* RW: driver consumed up to here */
#define HMM_GPU_REG_CPLQ_TAIL		0x070	/* RO: device produced up to here */
#define HMM_GPU_REG_CPLQ_CTRL		0x074	/* RW: HMM_GPU_QCTRL_ENABLE */

#define HMM_GPU_CAP_DMA_ENGINE		(1u << 0)	/* COPY/FILL on bus addrs */

#define HMM_GPU_RESET_MAGIC		0x52535421	/* "RST!" */

#define HMM_GPU_STATUS_READY		(1u << 0)
#define HMM_GPU_STATUS_BUSY		(1u << 1)	/* commands pending */
#define HMM_GPU_STATUS_FATAL		(1u << 2)	/* halted until reset */

#define HMM_GPU_INTR_CPL		(1u << 0)	/* completion posted */
#define HMM_GPU_INTR_ERROR		(1u << 1)	/* ERROR register set */

#define HMM_GPU_QCTRL_ENABLE		(1u << 0)

#define HMM_GPU_QUEUE_MIN_ENTRIES	2
#define HMM_GPU_QUEUE_MAX_ENTRIES	4096
#define HMM_GPU_MAX_XFER		(64u << 20)
#define HMM_GPU_NUM_VECTORS		2
#define HMM_GPU_VEC_CPL_DEFAULT		0
#define HMM_GPU_VEC_ERR_DEFAULT		1

/*
 * Error codes: in REG_ERROR and in hmm_gpu_cpl.status. Per-command errors
 * complete that command with the code and raise INTR_ERROR; the queue keeps
 * running. Queue-level errors (the device cannot trust its rings) also set
 * STATUS_FATAL and stop the engine until RESET.
 */
enum hmm_gpu_err {
	HMM_GPU_ERR_NONE		= 0,
	HMM_GPU_ERR_BAD_OPCODE		= 1,	/* per command */
	HMM_GPU_ERR_BAD_LENGTH		= 2,	/* per command: 0 or > MAX_XFER */
	HMM_GPU_ERR_BAD_FLAGS		= 3,	/* per command: reserved bits set */
	HMM_GPU_ERR_DMA_READ		= 4,	/* per command: data read failed */
	HMM_GPU_ERR_DMA_WRITE		= 5,	/* per command: data write failed */
	HMM_GPU_ERR_OVERLAP		= 6,	/* per command: COPY src/dst overlap */
	HMM_GPU_ERR_CMDQ_FETCH		= 16,	/* fatal: command fetch failed */
	HMM_GPU_ERR_CPLQ_WRITE		= 17,	/* fatal: completion write failed */
	HMM_GPU_ERR_QUEUE_CONFIG	= 18,	/* fatal: bad base/size/enable */
	HMM_GPU_ERR_DOORBELL		= 19,	/* fatal: TAIL/HEAD >= SIZE */
	HMM_GPU_ERR_BAD_VECTOR		= 20,	/* VEC_* >= NUM_VECTORS: ignored */
	HMM_GPU_ERR_BAD_REGISTER	= 21,	/* bad offset/size/RO write */
};

/* ---- Command ring entry (64 bytes) ------------------------------------ */
enum hmm_gpu_opcode {
	HMM_GPU_OP_NOP			= 0,
	HMM_GPU_OP_COPY			= 1,	/* src bus addr -> dst bus addr */
	HMM_GPU_OP_FILL			= 2,	/* 64-bit pattern -> dst */
};

#define HMM_GPU_CMD_F_IRQ		(1u << 0)	/* MSI-X on completion */
#define HMM_GPU_CMD_F_MASK		HMM_GPU_CMD_F_IRQ

struct hmm_gpu_cmd {
	uint8_t		opcode;		/* enum hmm_gpu_opcode */
	uint8_t		flags;		/* HMM_GPU_CMD_F_* */
	uint16_t	rsvd0;
	uint32_t	ctx;		/* context id, echoed in trace */
	uint64_t	cmd_id;		/* opaque, echoed in completion/trace */
	uint64_t	src;		/* COPY: source bus address */
	uint64_t	dst;		/* destination bus address */
	uint64_t	len;		/* bytes, 1..MAX_XFER */
	uint64_t	pattern;	/* FILL: repeated little-endian */
	uint64_t	rsvd1[2];
};

/* ---- Completion ring entry (32 bytes) --------------------------------- */
struct hmm_gpu_cpl {
	uint64_t	cmd_id;
	uint32_t	status;		/* enum hmm_gpu_err */
	uint16_t	opcode;
	uint16_t	phase;		/* flips each time the ring wraps; starts 1 */
	uint64_t	bytes;		/* bytes transferred */
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
};

/* ---- Host-side DMA trace stream (chardev "dmatrace") ------------------ */
#define HMM_GPU_TRACE_MAGIC		0x31435254474d4d48ull	/* "HMMGTRC1" */
#define HMM_GPU_TRACE_VERSION		1

/* Written once at the start of the stream. */
struct hmm_gpu_trace_hdr {
	uint64_t	magic;
	uint32_t	version;
	uint32_t	rec_size;	/* sizeof(struct hmm_gpu_trace_rec) */
	uint32_t	devfn;		/* PCI devfn of the emitting device */
	uint32_t	rsvd;
};

enum hmm_gpu_trace_engine {
	HMM_GPU_ENGINE_QUEUE		= 0,	/* command fetch, completion */
	HMM_GPU_ENGINE_COPY		= 1,	/* COPY/FILL data movement */
};

enum hmm_gpu_trace_kind {
	HMM_GPU_TRACE_CMD_FETCH		= 0,
	HMM_GPU_TRACE_CPL_WRITE		= 1,
	HMM_GPU_TRACE_DATA		= 2,
};

#define HMM_GPU_DIR_READ		0	/* device reads memory */
#define HMM_GPU_DIR_WRITE		1	/* device writes memory */

/* One record per pci_dma_read/write the device issues (40 bytes). */
struct hmm_gpu_trace_rec {
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
	uint64_t	addr;		/* bus address (IOVA under a vIOMMU) */
	uint64_t	len;
	uint64_t	cmd_id;
	uint32_t	ctx;
	uint8_t		engine;		/* enum hmm_gpu_trace_engine */
	uint8_t		kind;		/* enum hmm_gpu_trace_kind */
	uint8_t		dir;		/* HMM_GPU_DIR_* */
	uint8_t		result;		/* MemTxResult, 0 = OK */
};

/* The layouts above are ABI: both sides must agree on them byte for byte. */
_Static_assert(sizeof(struct hmm_gpu_cmd) == 64, "hmm_gpu_cmd size");
_Static_assert(sizeof(struct hmm_gpu_cpl) == 32, "hmm_gpu_cpl size");
_Static_assert(sizeof(struct hmm_gpu_trace_hdr) == 24, "trace hdr size");
_Static_assert(sizeof(struct hmm_gpu_trace_rec) == 40, "trace rec size");

#endif /* HMM_GPU_REGS_H */
