/*
 * hmm-common: the on-wire layouts every hmmlab device shares
 *
 * The device MMU's context descriptors, page-table entries and fault
 * records, and the DMA trace stream. They are defined once, in the shared
 * part of hw/misc/hmm_gpu_regs.h, under the HMM_GPU_ names the guest driver
 * and the host tools know them by; HMM_ABI_SHARED_ONLY keeps that header's
 * GPU part (registers, opcodes, VRAM) out of the library.
 *
 * Copyright (c) 2026 hmmlab contributors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_MISC_HMM_COMMON_ABI_H
#define HW_MISC_HMM_COMMON_ABI_H

/* for the library's own files: a device includes its ABI header itself */
#ifdef HMMLAB_GPU_REGS_H
#error "hmm-common must not see the hmm-gpu registers and opcodes"
#endif

#define HMM_ABI_SHARED_ONLY
#include "hw/misc/hmm_gpu_regs.h"
#undef HMM_ABI_SHARED_ONLY

#endif
