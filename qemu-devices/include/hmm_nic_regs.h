/* SPDX-License-Identifier: GPL-2.0-or-later OR MIT */
/*
 * hmm-nic: register, table, queue and record layout.
 *
 * This header is the single source of truth for the hmm-nic device ABI,
 * compiled into the QEMU device model (qemu-devices/hw/misc/hmm-nic*.c) and
 * the guest driver (guest-images/nic-driver/); tests/unit/test_nic_abi.py
 * checks the user-visible queue layouts against the kernel's
 * <rdma/rdma_user_rxe.h> and <rdma/ib_user_verbs.h>. docs/hmm-nic.md
 * explains the design in prose.
 *
 * The device is an RDMA NIC (RC queue pairs) whose memory regions are
 * translated by the device MMU every hmmlab device shares (hmm_gpu_regs.h,
 * shared part): memory region N uses MMU context N, so a missing page
 * stalls the queue pair and posts a fault record, as mlx5 does for ODP.
 *
 * Its work and completion queues have the layout of the kernel's soft-RoCE
 * driver (rxe) user ABI, so the stock rdma-core rxe provider drives the
 * device unmodified: the driver allocates each queue as rxe does (a
 * struct rxe_queue_buf the process maps), and the device reads work
 * requests and writes completions there by DMA, through MMU context
 * HMM_NIC_RING_CTX, which the driver keeps fully mapped.
 *
 * All multi-byte fields are little-endian. BAR0 registers are 32 bits wide;
 * 64-bit quantities are split into _LO/_HI pairs (write LO first, HI last).
 */
#ifndef HMMLAB_NIC_REGS_H
#define HMMLAB_NIC_REGS_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

/* The device MMU's layouts (context descriptor, PTEs, fault and trace records). */
#ifndef HMM_ABI_SHARED_ONLY
#define HMM_ABI_SHARED_ONLY
#include "hmm_gpu_regs.h"
#undef HMM_ABI_SHARED_ONLY
#else
#include "hmm_gpu_regs.h"
#endif

/* PCI identity (0x1234: the vendor ID QEMU's own example devices use) */
#define HMM_NIC_PCI_VENDOR_ID		0x1234
#define HMM_NIC_PCI_DEVICE_ID		0x4e49	/* "NI" */
#define HMM_NIC_PCI_REVISION		0x01

#define HMM_NIC_BAR_MMIO		0	/* registers */
#define HMM_NIC_BAR_MSIX		1	/* MSI-X table and PBA */
#define HMM_NIC_MMIO_SIZE		0x1000

#define HMM_NIC_ID_MAGIC		0x484d4e43	/* "HMNC" */
#define HMM_NIC_VERSION_MAJOR		1
#define HMM_NIC_VERSION_MINOR		5	/* 1.1: RNR timer; 1.2: link; 1.3: CQ_RESET;
						   1.4: transport retries;
						   1.5: FLUSH, ATOMIC_WRITE */

/* ---- BAR0 registers ---------------------------------------------------- */
/* 0x000-0x03c: identity, reset, errors and interrupts, as on hmm-gpu */
#define HMM_NIC_REG_ID			0x000	/* RO: HMM_NIC_ID_MAGIC */
#define HMM_NIC_REG_VERSION		0x004	/* RO: major << 16 | minor */
#define HMM_NIC_REG_CAPS		0x008	/* RO: HMM_NIC_CAP_* */
#define HMM_NIC_REG_RESET		0x00c	/* WO: write HMM_NIC_RESET_MAGIC */
#define HMM_NIC_REG_STATUS		0x010	/* RO: HMM_NIC_STATUS_* */
#define HMM_NIC_REG_ERROR		0x014	/* RO: last HMM_NIC_ERR_* */
#define HMM_NIC_REG_ERROR_ADDR_LO	0x018	/* RO: address or index tied to ERROR */
#define HMM_NIC_REG_ERROR_ADDR_HI	0x01c
#define HMM_NIC_REG_INTR_STATUS		0x020	/* RW1C: HMM_NIC_INTR_* */
#define HMM_NIC_REG_INTR_MASK		0x024	/* RW: 1 = cause enabled */
#define HMM_NIC_REG_VEC_EQ		0x028	/* RW: MSI-X vector, event queue */
#define HMM_NIC_REG_VEC_ERR		0x02c	/* RW: MSI-X vector, errors */
#define HMM_NIC_REG_MAX_MSG		0x030	/* RO: largest message, bytes */
#define HMM_NIC_REG_NUM_VECTORS		0x034	/* RO: MSI-X vectors */
#define HMM_NIC_REG_SCRATCH		0x038	/* RW: no side effects */

/*
 * 0x080-0x0c4: the device MMU, at hmm-gpu's offsets and with its meaning
 * (context table, fault queue, replay and cancel). A context is the
 * translation of one memory region; context HMM_NIC_RING_CTX translates
 * the queues.
 */
#define HMM_NIC_REG_CTX_BASE_LO		0x080	/* RW while MMU disabled, 64B aligned */
#define HMM_NIC_REG_CTX_BASE_HI		0x084
#define HMM_NIC_REG_CTX_COUNT		0x088	/* RW while MMU disabled: 1..MAX_MR */
#define HMM_NIC_REG_MMU_CTRL		0x08c	/* RW: HMM_NIC_ENABLE */
#define HMM_NIC_REG_TLB_ENTRIES		0x090	/* RO: device TLB capacity */
#define HMM_NIC_REG_FAULTQ_BASE_LO	0x0a0	/* RW while disabled, 64B aligned */
#define HMM_NIC_REG_FAULTQ_BASE_HI	0x0a4
#define HMM_NIC_REG_FAULTQ_SIZE		0x0a8	/* RW while disabled: entries, pow2 */
#define HMM_NIC_REG_FAULTQ_HEAD		0x0ac	/* RW: driver consumed up to here */
#define HMM_NIC_REG_FAULTQ_TAIL		0x0b0	/* RO: device produced up to here */
#define HMM_NIC_REG_FAULTQ_CTRL		0x0b4	/* RW: HMM_NIC_ENABLE */
#define HMM_NIC_REG_FAULT_REPLAY	0x0b8	/* WO: stalled queue pairs retry */
#define HMM_NIC_REG_FAULT_CANCEL	0x0bc	/* WO: a fault token: fail that WR */
#define HMM_NIC_REG_VEC_FAULT		0x0c0	/* RW: MSI-X vector, faults */
#define HMM_NIC_REG_STALLED		0x0c4	/* RO: queue pairs waiting on a fault */

/*
 * 0x100-0x13c: the object tables in guest memory. Each is written while the
 * NIC is disabled (NIC_CTRL); the device reads an entry when it needs it
 * and caches nothing across a doorbell, so the driver may change an entry
 * whose object is idle (QP in RESET, CQ or MR not referenced) at any time.
 */
#define HMM_NIC_REG_MR_BASE_LO		0x100	/* struct hmm_nic_mr[CTX_COUNT], 64B aligned */
#define HMM_NIC_REG_MR_BASE_HI		0x104
#define HMM_NIC_REG_QP_BASE_LO		0x108	/* struct hmm_nic_qp[QP_COUNT] */
#define HMM_NIC_REG_QP_BASE_HI		0x10c
#define HMM_NIC_REG_QP_COUNT		0x110	/* 1..MAX_QP */
#define HMM_NIC_REG_CQ_BASE_LO		0x118	/* struct hmm_nic_cq[CQ_COUNT] */
#define HMM_NIC_REG_CQ_BASE_HI		0x11c
#define HMM_NIC_REG_CQ_COUNT		0x120	/* 1..MAX_CQ */
#define HMM_NIC_REG_NIC_CTRL		0x124	/* RW: HMM_NIC_ENABLE */
/*
 * Enabling checks that the three bases are 64-byte aligned and the counts
 * in range (else ERR_QUEUE_CONFIG, stays disabled); enabling or disabling
 * starts every QP and CQ over (see "device state" below). The MR table has
 * CTX_COUNT entries.
 */

/* Event queue: ring of struct hmm_nic_eqe the device writes */
#define HMM_NIC_REG_EQ_BASE_LO		0x140	/* RW while disabled, 64B aligned */
#define HMM_NIC_REG_EQ_BASE_HI		0x144
#define HMM_NIC_REG_EQ_SIZE		0x148	/* RW while disabled: entries, pow2 */
#define HMM_NIC_REG_EQ_HEAD		0x14c	/* RW: driver consumed up to here (else ERR_QUEUE_CONFIG) */
#define HMM_NIC_REG_EQ_TAIL		0x150	/* RO: device produced up to here */
#define HMM_NIC_REG_EQ_CTRL		0x154	/* RW: HMM_NIC_ENABLE */

/* Doorbells and commands (write-only; each acts inside the write) */
#define HMM_NIC_REG_SQ_DOORBELL		0x180	/* QPN: new send WRs were produced */
#define HMM_NIC_REG_RQ_DOORBELL		0x184	/* QPN: new receive WRs (ends an RNR wait) */
#define HMM_NIC_REG_CQ_ARM		0x188	/* CQN | HMM_NIC_CQ_ARM_SOLICITED */
#define HMM_NIC_REG_CQ_RESET		0x18c	/* CQN: start the CQ over (1.3) */
/*
 * Zap with fence: write INV_CTX, INV_VA and INV_LEN, then INV_GO. When the
 * INV_GO write completes, no DMA the device issues afterwards uses a
 * translation of [VA, VA + LEN) in that context cached before it (as
 * hmm-gpu's TLB_INVALIDATE command's completion). LEN ~0: the whole context.
 */
#define HMM_NIC_REG_INV_CTX		0x190
#define HMM_NIC_REG_INV_VA_LO		0x194
#define HMM_NIC_REG_INV_VA_HI		0x198
#define HMM_NIC_REG_INV_LEN_LO		0x19c
#define HMM_NIC_REG_INV_LEN_HI		0x1a0
#define HMM_NIC_REG_INV_GO		0x1a4	/* WO: any value */

/*
 * The port (ABI 1.2). PORT_LID is the device's "lid" property: the address
 * the driver reports for the port (there is no subnet manager). A QP whose
 * dest_lid is 0 or PORT_LID is connected inside the device (loopback); any
 * other dest_lid is reached through the link, the device's "link" chardev
 * (a unix socket or 127.0.0.1 between two devices, in one QEMU or two).
 * LINK_STATUS says whether a peer device is connected, and its LID.
 */
#define HMM_NIC_REG_PORT_LID		0x1c0	/* RO */
#define HMM_NIC_REG_LINK_STATUS		0x1c4	/* RO: HMM_NIC_LINK_UP | peer LID << 16 */
#define HMM_NIC_LINK_UP			(1u << 0)

#define HMM_NIC_CAP_RC			(1u << 0)	/* RC SEND/RECV, WRITE, READ */
#define HMM_NIC_CAP_ATOMIC		(1u << 1)	/* CMP_AND_SWP, FETCH_AND_ADD */
#define HMM_NIC_CAP_ODP			(1u << 2)	/* MR faults (MMU) */
#define HMM_NIC_CAP_IMPLICIT		(1u << 3)	/* HMM_NIC_MR_IMPLICIT */
#define HMM_NIC_CAP_LINK		(1u << 4)	/* PORT_LID, LINK_STATUS, dest_lid */
#define HMM_NIC_CAP_FLUSH		(1u << 5)	/* WR_FLUSH, ACCESS_FLUSH_* (1.5) */
#define HMM_NIC_CAP_ATOMIC_WRITE	(1u << 6)	/* WR_ATOMIC_WRITE (1.5) */

#define HMM_NIC_RESET_MAGIC		0x52535421	/* "RST!" */

#define HMM_NIC_STATUS_READY		(1u << 0)
#define HMM_NIC_STATUS_BUSY		(1u << 1)	/* work requests pending */
#define HMM_NIC_STATUS_FATAL		(1u << 2)	/* halted until reset */

#define HMM_NIC_INTR_EQ			(1u << 0)	/* event posted */
#define HMM_NIC_INTR_ERROR		(1u << 1)	/* ERROR register set */
#define HMM_NIC_INTR_FAULT		(1u << 2)	/* fault record posted */

#define HMM_NIC_ENABLE			(1u << 0)
#define HMM_NIC_CQ_ARM_SOLICITED	(1u << 31)	/* else: next completion */

#define HMM_NIC_NUM_VECTORS		3
#define HMM_NIC_VEC_EQ_DEFAULT		0
#define HMM_NIC_VEC_ERR_DEFAULT		1
#define HMM_NIC_VEC_FAULT_DEFAULT	2
#define HMM_NIC_MAX_MR			4096	/* CTX_COUNT limit */
#define HMM_NIC_MAX_QP			1024
#define HMM_NIC_MAX_CQ			1024
#define HMM_NIC_MAX_MSG			(1u << 31)	/* IB's 2 GiB */
#define HMM_NIC_MAX_SGE			8	/* per WR */
#define HMM_NIC_MAX_INLINE		256	/* bytes */
#define HMM_NIC_TLB_SIZE		256
#define HMM_NIC_QUEUE_MIN_ENTRIES	2	/* event and fault queues */
#define HMM_NIC_QUEUE_MAX_ENTRIES	4096
#define HMM_NIC_RING_CTX		0	/* MMU context of the queues */

/*
 * Error codes: in REG_ERROR. Object errors (a bad table entry, a queue
 * that cannot be read) move that QP or CQ to the error state and post an
 * event; the device keeps running. Device-level errors (the event or fault
 * queue cannot be written) set STATUS_FATAL and stop it until RESET.
 */
enum hmm_nic_err {
	HMM_NIC_ERR_NONE		= 0,
	HMM_NIC_ERR_BAD_QPN		= 1,	/* doorbell for no such QP */
	HMM_NIC_ERR_BAD_CQN		= 2,	/* CQ_ARM or a QP's CQ out of range */
	HMM_NIC_ERR_QP_STATE		= 3,	/* doorbell for a QP not in RTS */
	HMM_NIC_ERR_BAD_WQE		= 4,	/* bad opcode, SGE count, length */
	HMM_NIC_ERR_QUEUE_READ		= 5,	/* a WQE or index could not be read */
	HMM_NIC_ERR_CQ_WRITE		= 6,	/* a CQE could not be written */
	HMM_NIC_ERR_CQ_OVERRUN		= 7,	/* completion for a full CQ: lost, the CQ drops the rest (EV_CQ_ERR) */
	HMM_NIC_ERR_BAD_TABLE		= 8,	/* an MR/QP/CQ entry is malformed */
	HMM_NIC_ERR_EQ_WRITE		= 9,	/* fatal; a full EQ: the event is lost (not fatal) */
	HMM_NIC_ERR_FAULTQ_WRITE	= 10,	/* fatal */
	HMM_NIC_ERR_QUEUE_CONFIG	= 11,	/* enabled with bad base/size; HEAD out of range */
	HMM_NIC_ERR_BAD_VECTOR		= 12,
	HMM_NIC_ERR_BAD_REGISTER	= 13,
	HMM_NIC_ERR_BAD_TOKEN		= 14,	/* FAULT_CANCEL of a token never issued */
	HMM_NIC_ERR_BUSY		= 15,	/* table or queue written while enabled */
	HMM_NIC_ERR_FAULT		= 16,	/* a WR failed on a cancelled fault */
	HMM_NIC_ERR_DMA			= 17,	/* a payload DMA to a translated page failed */
};

/* ---- memory regions ------------------------------------------------------ */
/*
 * Memory region N (the lkey/rkey N << 8 | tag) is described by entry N of
 * the MR table and translated by MMU context N (entry N of the context
 * table). The device checks the key's tag, the range and the access
 * before it translates; the page table's permission bits then decide, and
 * a missing or insufficient translation is a fault (ODP). A pinned MR is
 * one whose page table the driver fills up front: its faults are the
 * driver's to cancel.
 */
struct hmm_nic_mr {
	uint64_t	va;		/* first byte (ignored if IMPLICIT) */
	uint64_t	length;		/* bytes (ignored if IMPLICIT) */
	uint32_t	key;		/* the full lkey/rkey: index << 8 | tag */
	uint32_t	access;		/* HMM_NIC_ACCESS_* */
	uint32_t	flags;		/* HMM_NIC_MR_* */
	uint32_t	pdn;		/* protection domain */
};

#define HMM_NIC_KEY_INDEX(key)		((key) >> 8)

#define HMM_NIC_ACCESS_LOCAL_WRITE	(1u << 0)	/* IB_ACCESS_* values */
#define HMM_NIC_ACCESS_REMOTE_WRITE	(1u << 1)
#define HMM_NIC_ACCESS_REMOTE_READ	(1u << 2)
#define HMM_NIC_ACCESS_REMOTE_ATOMIC	(1u << 3)
#define HMM_NIC_ACCESS_FLUSH_GLOBAL	(1u << 8)	/* 1.5: FLUSH, placement GLOBAL */
#define HMM_NIC_ACCESS_FLUSH_PERSISTENT	(1u << 9)	/* 1.5: FLUSH, placement PERSISTENT */

#define HMM_NIC_MR_VALID		(1u << 0)
#define HMM_NIC_MR_ODP			(1u << 1)	/* faults are expected */
#define HMM_NIC_MR_IMPLICIT		(1u << 2)	/* covers the address space */

/*
 * Checks, in order, for each SGE (lkey, length > 0) and remote range
 * (rkey): key index not HMM_NIC_RING_CTX and < CTX_COUNT, MR_VALID, the
 * entry's key equal to the key (the tag), the MR's pdn the QP's (for an
 * rkey: the responder QP's), the range inside [va, va + length) unless
 * IMPLICIT, the access: LOCAL_WRITE for what the device writes locally
 * (RDMA_READ and atomic results, receive buffers), REMOTE_WRITE / _READ /
 * _ATOMIC in both the MR and the responder QP's `access`. A failed
 * requester check completes the WR with WC_LOC_PROT_ERR, a failed remote
 * one with WC_REM_ACCESS_ERR (vendor_err 0), and the QP goes to ERR. A
 * receive WQE that fails (bad SGE count, a key check, too short) completes
 * at the responder with WC_LOC_QP_OP_ERR / _LOC_PROT_ERR / _LOC_LEN_ERR
 * (that QP goes to ERR too) and the SEND with WC_REM_OP_ERR (too short:
 * WC_REM_INV_REQ_ERR). A misaligned atomic: WC_REM_INV_REQ_ERR. Malformed
 * send WQEs (ERR_BAD_WQE in ERROR and vendor_err): an opcode other than
 * 0..FETCH_AND_ADD, FLUSH and ATOMIC_WRITE, or INLINE with anything but
 * SEND/WRITE: WC_LOC_QP_OP_ERR; num_sge >
 * MAX_SGE or the SGEs beyond the WQE: WC_LOC_QP_OP_ERR; length != the
 * sum of the SGEs, > MAX_MSG, inline > MAX_INLINE, an atomic without
 * exactly one 8-byte SGE: WC_LOC_LEN_ERR; ERROR_ADDR is then
 * HMM_NIC_FAULT_CMD(qpn, index, 0) of the WQE. A payload DMA that fails
 * (a PTE pointing at no memory): WC_LOC_PROT_ERR / WC_REM_ACCESS_ERR,
 * vendor_err and ERROR ERR_DMA; a malformed context or PTE: the same with
 * ERR_BAD_TABLE.
 */

/* ---- queue pairs and completion queues ----------------------------------- */
/*
 * A queue buffer: rxe's struct rxe_queue_buf. The device never trusts the
 * copies of log2_elem_size and index_mask in it (the process can write
 * them); it uses the table entry's. The producer of a queue writes
 * producer_index, its consumer consumer_index, each a free-running index
 * masked by index_mask.
 */
#define HMM_NIC_QBUF_PRODUCER		128	/* offset of producer_index */
#define HMM_NIC_QBUF_CONSUMER		256	/* offset of consumer_index */
#define HMM_NIC_QBUF_DATA		384	/* offset of the first element */

struct hmm_nic_qp {
	uint64_t	sq_va;		/* send queue buffer (RING_CTX address) */
	uint64_t	rq_va;		/* receive queue buffer (RING_CTX address) */
	uint32_t	sq_mask;	/* index_mask: entries - 1 */
	uint32_t	rq_mask;
	uint8_t		sq_log2_elem;	/* log2 of the WQE size */
	uint8_t		rq_log2_elem;
	uint8_t		state;		/* enum hmm_nic_qp_state */
	uint8_t		type;		/* HMM_NIC_QPT_RC */
	uint32_t	send_cqn;
	uint32_t	recv_cqn;
	uint32_t	dest_qpn;	/* connected peer (loopback: same device) */
	uint32_t	pdn;
	uint32_t	access;		/* HMM_NIC_ACCESS_REMOTE_*: what peers may do */
	uint32_t	flags;		/* HMM_NIC_QP_* */
	uint8_t		rnr_retry;	/* 7: forever */
	uint8_t		min_rnr_timer;	/* IB encoding: how long peers wait (RNR) */
	uint16_t	dest_lid;	/* 0 or PORT_LID: loopback; else the link */
	uint8_t		retry_cnt;	/* 1.4: resends when no peer QP answers */
	uint8_t		timeout;	/* 1.4: IB local ACK timeout, 4.096 us << n */
	uint16_t	rsvd0;
	uint32_t	rsvd1;
};

enum hmm_nic_qp_state {
	HMM_NIC_QPS_RESET		= 0,
	HMM_NIC_QPS_INIT		= 1,
	HMM_NIC_QPS_RTR			= 2,
	HMM_NIC_QPS_RTS			= 3,
	HMM_NIC_QPS_ERR			= 6,	/* IB_QPS_ERR */
};

#define HMM_NIC_QPT_RC			2	/* IB_QPT_RC */
#define HMM_NIC_RNR_RETRY_FOREVER	7

#define HMM_NIC_QP_SIG_ALL		(1u << 0)	/* every send WR completes */

/*
 * Device state of a QP: its send and receive consumer indices (what it has
 * consumed of each queue: the device writes them to the buffers' consumer
 * indices too, but never reads them back) and whether it moved the QP to
 * ERR. All of it starts over (indices 0) at RESET, whenever NIC_CTRL
 * changes, and whenever the device reads the QP's entry in state RESET or
 * INIT (doorbells read it; so does a peer's request): a driver that takes
 * a QP through RESET rings RQ_DOORBELL while it is in INIT (as posting its
 * first receives does). A CQ's producer index, arming and error start
 * over at RESET, whenever NIC_CTRL changes, when the device finds the CQ
 * entry without CQ_VALID, and on CQ_RESET of its CQN (1.3). A driver
 * writes CQ_RESET after it fills the entry of a new CQ: a CQN freed and
 * taken again before the device read the entry in between would otherwise
 * go on at the old CQ's producer index.
 *
 * SQ_DOORBELL of a QP in RESET, INIT or RTR: ERR_QP_STATE. RQ_DOORBELL of
 * a QP in RESET: ERR_QP_STATE. A doorbell of a QP in ERR flushes its
 * queues (every WQE completes with WC_WR_FLUSH_ERR). The device writes
 * HMM_NIC_QPS_ERR to a QP's `state` when it moves the QP to ERR (and posts
 * EV_QP_FATAL); a driver's own move to ERR posts no event.
 *
 * RNR: a SEND or RDMA_WRITE_WITH_IMM whose peer has no receive WQE waits
 * (nothing moved) for the peer's min_rnr_timer (the IB encoding, as
 * IB_QP_MIN_RNR_TIMER: 1 is 0.01 ms, 14 is 1.28 ms, 0 is 655.36 ms) or
 * until RQ_DOORBELL of the peer, whichever comes first, then tries again
 * (rxe's provider has no receive doorbell: the timer is what ends a user
 * QP's wait). rnr_retry 7 tries forever, 1-6 that many times; when no try
 * is left (at once for rnr_retry 0) the WR completes with
 * WC_RNR_RETRY_EXC_ERR. A peer QP (on this device, or on the linked one
 * when dest_lid names it) beyond QP_COUNT, not in RTR/RTS,
 * malformed or connected to another QP (its dest_qpn is not the
 * requester: RC is one to one) does not answer; as a real requester
 * resends a request nobody acknowledged, the device tries again after the
 * QP's local ACK `timeout` (4.096 us << timeout; 0, infinite in IB, is
 * taken as the longest, 31), `retry_cnt` times, then completes the WR with
 * WC_RETRY_EXC_ERR (1.4; before, at once). So a client may start sending
 * just before its peer reaches RTR, as perftest's do.
 */

struct hmm_nic_cq {
	uint64_t	va;		/* completion queue buffer (RING_CTX address) */
	uint32_t	mask;		/* index_mask */
	uint8_t		log2_elem;	/* log2 of the CQE slot size (>= 48 bytes) */
	uint8_t		flags;		/* HMM_NIC_CQ_VALID */
	uint16_t	rsvd0;
	uint32_t	rsvd1[4];
};

#define HMM_NIC_CQ_VALID		(1u << 0)

/*
 * Send WQE: the head of rxe's struct rxe_send_wqe, which the stock rxe
 * provider writes; the device reads the work request and the DMA
 * description (SGEs or inline data) and ignores the rest, which is rxe's
 * kernel-side bookkeeping.
 */
struct hmm_nic_send_wr {
	uint64_t	wr_id;
	uint32_t	reserved;
	uint32_t	opcode;		/* IB_UVERBS_WR_* */
	uint32_t	send_flags;	/* IB_SEND_* */
	uint32_t	imm_data;	/* big-endian on the wire */
	union {
		struct {
			uint64_t	remote_addr;
			uint32_t	rkey;
			uint32_t	reserved;
		} rdma;			/* also ATOMIC_WRITE's */
		struct {
			uint64_t	remote_addr;
			uint32_t	length;	/* unused: dma.length is the range's */
			uint32_t	rkey;
			uint8_t		type;	/* HMM_NIC_FLUSH_GLOBAL | _PERSISTENT */
			uint8_t		level;	/* HMM_NIC_FLUSH_RANGE or _MR */
		} flush;
		struct {
			uint64_t	remote_addr;
			uint64_t	compare_add;
			uint64_t	swap;
			uint32_t	rkey;
			uint32_t	reserved;
		} atomic;
		uint8_t		raw[120];	/* rxe's union (ud's address vector) */
	} wr;
};

struct hmm_nic_sge {
	uint64_t	addr;
	uint32_t	length;
	uint32_t	lkey;
};

/* rxe's struct rxe_dma_info, without its flexible array */
struct hmm_nic_dma_info {
	uint32_t	length;		/* bytes the WR moves */
	uint32_t	resid;
	uint32_t	cur_sge;
	uint32_t	num_sge;
	uint32_t	sge_offset;
	uint32_t	reserved;
	/* then: struct hmm_nic_sge sge[num_sge], or inline data */
};

/* Offsets in a send WQE (rxe_send_wqe) and a receive WQE (rxe_recv_wqe). */
#define HMM_NIC_SWQE_WR			0	/* struct hmm_nic_send_wr */
#define HMM_NIC_SWQE_DMA		184	/* struct hmm_nic_dma_info */
#define HMM_NIC_SWQE_SGE		208	/* sge[] or inline data */
#define HMM_NIC_RWQE_WR_ID		0
#define HMM_NIC_RWQE_DMA		16	/* struct hmm_nic_dma_info */
#define HMM_NIC_RWQE_SGE		40

#define HMM_NIC_WR_RDMA_WRITE		0	/* IB_UVERBS_WR_* */
#define HMM_NIC_WR_RDMA_WRITE_WITH_IMM	1
#define HMM_NIC_WR_SEND			2
#define HMM_NIC_WR_SEND_WITH_IMM	3
#define HMM_NIC_WR_RDMA_READ		4
#define HMM_NIC_WR_ATOMIC_CMP_AND_SWP	5
#define HMM_NIC_WR_ATOMIC_FETCH_AND_ADD	6
#define HMM_NIC_WR_FLUSH		14	/* 1.5 */
#define HMM_NIC_WR_ATOMIC_WRITE		15	/* 1.5 */

/* FLUSH: placement types (a mask, IB_FLUSH_*) and selectivity levels */
#define HMM_NIC_FLUSH_GLOBAL		(1u << 0)
#define HMM_NIC_FLUSH_PERSISTENT	(1u << 1)
#define HMM_NIC_FLUSH_RANGE		0
#define HMM_NIC_FLUSH_MR		1

/*
 * FLUSH and ATOMIC_WRITE (1.5; CAP_FLUSH, CAP_ATOMIC_WRITE) as the stock rxe
 * provider writes them and rxe executes them. Neither has SGEs: num_sge
 * other than 0 or INLINE is WC_LOC_QP_OP_ERR (ERR_BAD_WQE).
 *
 * ATOMIC_WRITE: the 8 bytes at HMM_NIC_SWQE_SGE (rxe's dma.atomic_wr) go to
 * wr.rdma.remote_addr of wr.rdma.rkey; dma.length must be 8 (else
 * WC_LOC_LEN_ERR, ERR_BAD_WQE). At the responder: the address 8-byte
 * aligned (else WC_REM_INV_REQ_ERR), then an RDMA WRITE's checks: key, PD,
 * range, REMOTE_WRITE in the responder QP's and the MR's access (else
 * WC_REM_ACCESS_ERR). The value is written by one 8-byte DMA. A missing
 * page faults (responder side) and stalls the QP as a WRITE does; the
 * replay writes the value (writing it again is the same as once).
 * Completes with WC_OP_ATOMIC_WRITE, byte_len 8.
 *
 * FLUSH: wr.flush.remote_addr, wr.flush.rkey, type (a non-empty mask of
 * FLUSH_GLOBAL / FLUSH_PERSISTENT) and level (FLUSH_RANGE: [remote_addr,
 * remote_addr + dma.length); FLUSH_MR: the whole MR, remote_addr and the
 * length ignored). Another type or level: WC_LOC_QP_OP_ERR (ERR_BAD_WQE).
 * dma.length is a range, not a message: MAX_MSG does not bound it. At the
 * responder: ACCESS_FLUSH_GLOBAL (type GLOBAL) and ACCESS_FLUSH_PERSISTENT
 * (type PERSISTENT) in the QP's and the MR's access, the key and PD
 * checks, and for FLUSH_RANGE the range inside the MR; else
 * WC_REM_ACCESS_ERR. Guest memory has no cache in front of it that the
 * device could write back: what the device wrote is globally visible,
 * and as persistent as that memory is, once its write completed. The
 * device then translates every page of the range (READ access), as rxe
 * maps an ODP range before it flushes it: a page that is not there faults
 * (responder side) and stalls the QP; the replay goes on from the first
 * page not yet translated; a cancel completes the FLUSH with
 * WC_REM_ACCESS_ERR, vendor_err ERR_FAULT. FLUSH_MR of an IMPLICIT MR
 * translates nothing (the address space has no extent). Completes with
 * WC_OP_FLUSH, byte_len dma.length.
 */

#define HMM_NIC_SEND_SIGNALED		(1u << 1)	/* IB_SEND_SIGNALED */
#define HMM_NIC_SEND_SOLICITED		(1u << 2)	/* IB_SEND_SOLICITED */
#define HMM_NIC_SEND_INLINE		(1u << 3)	/* IB_SEND_INLINE */

/* Completion: struct ib_uverbs_wc, the slot format rxe's user CQs use. */
struct hmm_nic_cqe {
	uint64_t	wr_id;
	uint32_t	status;		/* HMM_NIC_WC_* (enum ib_wc_status) */
	uint32_t	opcode;		/* HMM_NIC_WC_OP_* (IB_UVERBS_WC_*) */
	uint32_t	vendor_err;	/* HMM_NIC_ERR_* behind a failure */
	uint32_t	byte_len;
	uint32_t	imm_data;
	uint32_t	qp_num;
	uint32_t	src_qp;
	uint32_t	wc_flags;	/* IB_WC_WITH_IMM ... */
	uint16_t	pkey_index;
	uint16_t	slid;
	uint8_t		sl;
	uint8_t		dlid_path_bits;
	uint8_t		port_num;
	uint8_t		reserved;
};

#define HMM_NIC_WC_SUCCESS		0
#define HMM_NIC_WC_LOC_LEN_ERR		1
#define HMM_NIC_WC_LOC_QP_OP_ERR	2
#define HMM_NIC_WC_LOC_PROT_ERR		4
#define HMM_NIC_WC_WR_FLUSH_ERR		5
#define HMM_NIC_WC_REM_INV_REQ_ERR	9
#define HMM_NIC_WC_REM_ACCESS_ERR	10
#define HMM_NIC_WC_REM_OP_ERR		11
#define HMM_NIC_WC_RETRY_EXC_ERR	12
#define HMM_NIC_WC_RNR_RETRY_EXC_ERR	13
#define HMM_NIC_WC_FATAL_ERR		19

#define HMM_NIC_WC_OP_SEND		0
#define HMM_NIC_WC_OP_RDMA_WRITE	1
#define HMM_NIC_WC_OP_RDMA_READ		2
#define HMM_NIC_WC_OP_COMP_SWAP		3
#define HMM_NIC_WC_OP_FETCH_ADD		4
#define HMM_NIC_WC_OP_FLUSH		8	/* 1.5 */
#define HMM_NIC_WC_OP_ATOMIC_WRITE	9	/* 1.5 */
#define HMM_NIC_WC_OP_RECV		128	/* IB_UVERBS_WC_RECV */
#define HMM_NIC_WC_OP_RECV_RDMA_WITH_IMM 129

#define HMM_NIC_WC_WITH_IMM		(1u << 1)	/* IB_WC_WITH_IMM */

/* ---- events -------------------------------------------------------------- */
/* Event queue entry (32 bytes). */
struct hmm_nic_eqe {
	uint32_t	type;		/* HMM_NIC_EV_* */
	uint32_t	num;		/* CQN or QPN */
	uint32_t	err;		/* HMM_NIC_ERR_* for error events */
	uint32_t	rsvd0;
	uint64_t	timestamp_ns;	/* QEMU virtual clock */
	uint64_t	rsvd1;
};

#define HMM_NIC_EV_CQ			1	/* a completion on an armed CQ */
#define HMM_NIC_EV_CQ_ERR		2	/* the CQ overran or is unwritable */
#define HMM_NIC_EV_QP_FATAL		3	/* the QP went to ERR */

/*
 * Faults use the shared struct hmm_gpu_fault_rec: ctx is the MR index (the
 * key's index), va the faulting page, access and reason as on hmm-gpu,
 * engine HMM_NIC_ENGINE_MMU, and cmd_id says which work request stalled:
 * HMM_NIC_FAULT_CMD(qpn, index, responder). qpn and index always name the
 * requester's WR (the QP that stalls and its send queue slot); responder
 * is 1 if the access that faulted was the responder's (the remote MR of an
 * RDMA or atomic, or the receive buffer of a SEND), 0 if the requester's
 * own SGE. FAULT_REPLAY: the WR goes on from the first byte not yet moved
 * (an atomic that executed is not executed again: only its result is
 * written). FAULT_CANCEL: the WR completes with WC_REM_ACCESS_ERR
 * (responder) or WC_LOC_PROT_ERR, vendor_err ERR_FAULT, and the QP goes to
 * ERR. A fault in the queues' context (RING_CTX) does not stall: the
 * driver keeps the queues mapped, so it is ERR_QUEUE_READ / ERR_CQ_WRITE.
 */
#define HMM_NIC_FAULT_CMD(qpn, index, resp) \
	(((uint64_t)(resp) << 63) | ((uint64_t)(qpn) << 32) | (uint32_t)(index))
#define HMM_NIC_FAULT_QPN(cmd_id)	((uint32_t)((cmd_id) >> 32) & 0x7fffffffu)
#define HMM_NIC_FAULT_INDEX(cmd_id)	((uint32_t)(cmd_id))
#define HMM_NIC_FAULT_RESPONDER(cmd_id)	((unsigned int)((cmd_id) >> 63))

/*
 * Trace engines of this device (struct hmm_gpu_trace_rec.engine); kinds
 * are the shared HMM_GPU_TRACE_*:
 *   QUEUE CMD_FETCH  reads of table entries (MR/QP/CQ: ctx 0, va 0) and of
 *                    WQEs, producer and consumer indices (ctx RING_CTX, va
 *                    the queue address)
 *   QUEUE CPL_WRITE  CQEs, consumer/producer index writes, EQEs (aux the
 *                    event type), the `state` byte of a QP moved to ERR
 *   REQ   DATA       the requester's payload (ctx the MR, va its address)
 *   RESP  DATA       the responder's payload (remote MR, receive buffers)
 *   MMU   CTX_FETCH, PTW, FAULT_WRITE and the events, as on hmm-gpu
 * cmd_id is HMM_NIC_FAULT_CMD() of the WR the access belongs to (CQEs of
 * a receive: the SEND's, responder 1); 0 for EQEs and CQ_ARM.
 */
enum hmm_nic_trace_engine {
	HMM_NIC_ENGINE_QUEUE		= 0,	/* WQE fetch, CQE and event writes */
	HMM_NIC_ENGINE_REQ		= 1,	/* requester: payload it reads/writes */
	HMM_NIC_ENGINE_MMU		= 2,	/* walks, fault records */
	HMM_NIC_ENGINE_RESP		= 4,	/* responder: payload on incoming requests */
};

#ifdef __cplusplus
#define HMM_NIC_STATIC_ASSERT static_assert
#else
#define HMM_NIC_STATIC_ASSERT _Static_assert
#endif

HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_mr) == 32, "mr size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_qp) == 64, "qp size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_cq) == 32, "cq size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_send_wr) == 144, "send wr size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_sge) == 16, "sge size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_dma_info) == 24, "dma info size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_cqe) == 48, "cqe size");
HMM_NIC_STATIC_ASSERT(sizeof(struct hmm_nic_eqe) == 32, "eqe size");

#endif /* HMMLAB_NIC_REGS_H */
