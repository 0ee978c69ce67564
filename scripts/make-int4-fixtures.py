#!/usr/bin/env python3
"""Writes the packed-int4 fixtures of crates/signature/tests/fixtures/.

Packs float weights into GPTQ and AWQ safetensors files with the reference tools' packers transcribed literally
into numpy (torch-free), and writes beside each file numpy's dequantisation of that same file, also transcribed
from the reference code:

- GPTQ: AutoGPTQ `QuantLinear.pack` (auto_gptq/nn_modules/qlinear/qlinear_cuda.py, v1 checkpoint format: zero
  points stored minus one, `g_idx` honoured, so `desc_act` works) and the torch dequantisation of the same file's
  `forward` (`zeros = ((qzeros >> wf) & 15) + 1`, `W^T = scales[g_idx] * (weight - zeros[g_idx])`).
- AWQ: AutoAWQ `WQLinear_GEMM.from_linear` (awq/modules/linear/gemm.py, order map [0, 2, 4, 6, 1, 3, 5, 7]) after
  `pseudo_quantize_tensor` (zero point on), and AutoAWQ's `dequantize_gemm` (awq/utils/packing_utils.py: unpack,
  reverse the order with [0, 4, 1, 5, 2, 6, 3, 7], mask with 15, `(iweight - izeros) * scales`).

Run (numpy and safetensors only):
    python3 -m venv /tmp/int4venv && /tmp/int4venv/bin/pip install numpy safetensors
    /tmp/int4venv/bin/python scripts/make-int4-fixtures.py crates/signature/tests/fixtures
The output is deterministic (fixed seed); the Rust test asserts the signature crate's dequantisation equals the
`*-expected.safetensors` values bit for bit.
"""

import os
import sys

import numpy as np
from safetensors.numpy import save_file

BITS = 4
MAXQ = 2**BITS - 1
WF = np.arange(0, 32, BITS, dtype=np.uint32)  # AutoGPTQ's self.wf / AutoAWQ's shifts


# --- GPTQ -------------------------------------------------------------------------------------------------------


def gptq_params(w, g_idx, groups, sym):
    """Per-group scale and zero ([out, G]) as AutoGPTQ's Quantizer.find_params computes them (RTN stand-in)."""
    out = w.shape[0]
    scale = np.zeros((out, groups), np.float32)
    zero = np.zeros((out, groups), np.float32)
    for g in range(groups):
        x = w[:, g_idx == g]
        xmin = np.minimum(x.min(axis=1), 0)
        xmax = np.maximum(x.max(axis=1), 0)
        if sym:
            xmax = np.maximum(np.abs(xmin), xmax)
            xmin = np.where(xmin < 0, -xmax, xmin)
        both_zero = (xmin == 0) & (xmax == 0)
        xmin = np.where(both_zero, -1, xmin)
        xmax = np.where(both_zero, 1, xmax)
        s = (xmax - xmin) / MAXQ
        z = np.full_like(s, (MAXQ + 1) / 2) if sym else np.round(-xmin / s)
        scale[:, g], zero[:, g] = s, z
    return scale, zero


def gptq_pack(W, scales, zeros, g_idx):
    """AutoGPTQ QuantLinear.pack (qlinear_cuda.py), 4-bit branch; W is [out, in], scales/zeros [out, G]."""
    infeatures = W.shape[1]
    scales = scales.T.copy()  # [G, out]
    zeros = zeros.T.copy()
    scale_zeros = zeros * scales
    scales_half = scales.astype(np.float16)
    intweight = []
    for idx in range(infeatures):
        g = g_idx[idx]
        intweight.append(
            np.round((W[:, idx] + scale_zeros[g]) / scales_half[g].astype(np.float32)).astype(np.int32)[:, None]
        )
    intweight = np.concatenate(intweight, axis=1)
    intweight = intweight.T.copy()
    intweight = intweight.astype(np.uint32)

    i = 0
    row = 0
    qweight = np.zeros((intweight.shape[0] // 32 * BITS, intweight.shape[1]), dtype=np.uint32)
    while row < qweight.shape[0]:
        for j in range(i, i + (32 // BITS)):
            qweight[row] |= intweight[j] << np.uint32(BITS * (j - i))
        i += 32 // BITS
        row += 1
    qweight = qweight.astype(np.int32)

    zeros = zeros - 1
    zeros = zeros.astype(np.int64).astype(np.uint32)  # numpy's wrap of -1, as `.numpy().astype(np.uint32)`
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * BITS), dtype=np.uint32)
    i = 0
    col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + (32 // BITS)):
            qzeros[:, col] |= zeros[:, j] << np.uint32(BITS * (j - i))
        i += 32 // BITS
        col += 1
    qzeros = qzeros.astype(np.int32)
    return qweight, qzeros, scales_half, g_idx.astype(np.int32)


def gptq_dequantize(qweight, qzeros, scales, g_idx):
    """AutoGPTQ's torch path (qlinear_cuda.py forward, 4-bit): the [out, in] weight, in float32."""
    qzeros = qzeros.view(np.uint32)
    qweight = qweight.view(np.uint32)
    zeros = (qzeros[:, :, None] >> WF[None, None, :]).astype(np.int64) & MAXQ
    zeros = zeros + 1
    zeros = zeros.reshape(scales.shape)
    weight = (qweight[:, None, :] >> WF[None, :, None]).astype(np.int64) & MAXQ
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    g = g_idx.astype(np.int64)
    weights = scales[g].astype(np.float32) * (weight - zeros[g]).astype(np.float32)
    return weights.T.copy()  # [in, out] -> [out, in]


# --- AWQ --------------------------------------------------------------------------------------------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def awq_pseudo_quantize(w, group_size):
    """AutoAWQ pseudo_quantize_tensor, zero_point=True: fake-quantised w, scales and zeros ([out, G])."""
    org_shape = w.shape
    w = w.reshape(-1, group_size)
    max_val = w.max(axis=1, keepdims=True)
    min_val = w.min(axis=1, keepdims=True)
    scales = np.maximum(max_val - min_val, 1e-5) / MAXQ
    # The GEMM module stores scales in fp16; quantising with the fp16 scale keeps the fixture exact.
    scales = scales.astype(np.float16).astype(np.float32)
    zeros = np.clip(-np.round(min_val / scales), 0, MAXQ)
    w = (np.clip(np.round(w / scales) + zeros, 0, MAXQ) - zeros) * scales
    return w.reshape(org_shape), scales.reshape(org_shape[0], -1), zeros.reshape(org_shape[0], -1)


def awq_pack(W, scales, zeros, group_size):
    """AutoAWQ WQLinear_GEMM.from_linear, 4-bit: W [out, in] (fake-quantised), scales/zeros [out, G]."""
    in_features = W.shape[1]
    pack_num = 32 // BITS
    scales = scales.T.copy()
    zeros = zeros.T.copy()
    scale_zeros = zeros * scales
    scales_half = scales.astype(np.float16)
    intweight = []
    for idx in range(in_features):
        intweight.append(
            np.round(
                (W[:, idx] + scale_zeros[idx // group_size]) / scales_half[idx // group_size].astype(np.float32)
            ).astype(np.int32)[:, None]
        )
    intweight = np.concatenate(intweight, axis=1)
    intweight = intweight.T.copy().astype(np.uint32)
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 32 * BITS), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        order_map = AWQ_ORDER
        for i in range(pack_num):
            qweight_col = intweight[:, col * pack_num + order_map[i]]
            qweight[:, col] |= qweight_col << np.uint32(i * BITS)
    zeros = zeros.astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * BITS), dtype=np.uint32)
    for col in range(zeros.shape[1] // pack_num):
        for i in range(pack_num):
            qzero_col = zeros[:, col * pack_num + AWQ_ORDER[i]]
            qzeros[:, col] |= qzero_col << np.uint32(i * BITS)
    return qweight.astype(np.int32), qzeros.astype(np.int32), scales_half


def awq_dequantize(qweight, qzeros, scales, group_size):
    """AutoAWQ dequantize_gemm: unpack_awq, reverse_awq_order, mask, (iweight - izeros) * scales; [out, in]."""
    iweights = (qweight.view(np.uint32)[:, :, None] >> WF[None, None, :]).astype(np.int64)
    iweights = iweights.reshape(iweights.shape[0], -1)
    izeros = (qzeros.view(np.uint32)[:, :, None] >> WF[None, None, :]).astype(np.int64)
    izeros = izeros.reshape(izeros.shape[0], -1)
    reverse_order = np.arange(iweights.shape[-1]).reshape(-1, 32 // BITS)[:, AWQ_REVERSE_ORDER].reshape(-1)
    izeros = izeros[:, reverse_order]
    iweights = iweights[:, reverse_order]
    iweights = iweights & MAXQ
    izeros = izeros & MAXQ
    s = np.repeat(scales.astype(np.float32), group_size, axis=0)
    z = np.repeat(izeros, group_size, axis=0)
    return ((iweights - z).astype(np.float32) * s).T.copy()  # [in, out] -> [out, in]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "crates/signature/tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20240601)

    gptq, gptq_expected = {}, {}
    # (module, out, in, group size, symmetric, act-order)
    for module, out, inp, g, sym, desc_act in [
        ("model.layers.0.self_attn.q_proj", 32, 64, 16, True, False),
        ("model.layers.0.mlp.down_proj", 64, 96, 32, False, True),
    ]:
        W = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
        groups = -(-inp // g)
        if desc_act:
            perm = rng.permutation(inp)
            invperm = np.argsort(perm)
            g_idx = (invperm // g).astype(np.int64)
        else:
            g_idx = np.arange(inp) // g
        if not sym:
            # Group 0 of outputs 0..3 all positive: zero point 0, stored as -1 (the v1 format's edge case, which
            # the literal packer spreads into the word's higher nibbles).
            W[:4, g_idx == 0] = np.abs(W[:4, g_idx == 0])
        scale, zero = gptq_params(W, g_idx, groups, sym)
        qweight, qzeros, scales, g_idx32 = gptq_pack(W, scale, zero, g_idx)
        gptq[f"{module}.qweight"] = qweight
        gptq[f"{module}.qzeros"] = qzeros
        gptq[f"{module}.scales"] = scales
        gptq[f"{module}.g_idx"] = g_idx32
        gptq_expected[f"{module}.weight"] = gptq_dequantize(qweight, qzeros, scales, g_idx32)
    gptq["model.norm.weight"] = np.ones(64, np.float16)
    save_file(gptq, os.path.join(out_dir, "gptq.safetensors"), metadata={"format": "pt"})
    save_file(gptq_expected, os.path.join(out_dir, "gptq-expected.safetensors"), metadata={"format": "pt"})

    awq, awq_expected = {}, {}
    for module, out, inp, g in [
        ("model.layers.0.self_attn.q_proj", 32, 64, 16),
        ("model.layers.0.mlp.up_proj", 64, 32, 16),
    ]:
        W = (rng.standard_normal((out, inp)) * 0.05).astype(np.float32)
        Wq, scale, zero = awq_pseudo_quantize(W, g)
        qweight, qzeros, scales = awq_pack(Wq, scale, zero, g)
        awq[f"{module}.qweight"] = qweight
        awq[f"{module}.qzeros"] = qzeros
        awq[f"{module}.scales"] = scales
        awq_expected[f"{module}.weight"] = awq_dequantize(qweight, qzeros, scales, g)
    awq["model.norm.weight"] = np.ones(64, np.float16)
    save_file(awq, os.path.join(out_dir, "awq.safetensors"), metadata={"format": "pt"})
    save_file(awq_expected, os.path.join(out_dir, "awq-expected.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
