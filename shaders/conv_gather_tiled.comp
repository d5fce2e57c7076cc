#version 450
// Gather convolution for GPUs: the forward convolution and the backward pass
// for the input as an implicit GEMM (include/conv_gather.glsl has the sum),
// where an operand crosses a buffer segment and the GEMM convolutions
// (layers/conv_im2col.go) cannot bind it whole,
// with the shared-memory tiling of gemm_tiled.comp. A workgroup computes BM
// output channels by BN pixels; per step of BK along the sum over (tap,
// channel) it stages a BK x BM slice of the rearranged weights and a BK x BN
// slice of input pixels (zeros in the padding and past the edges) in shared
// memory, and every invocation accumulates TM x TN outputs in registers.
//
// Each invocation stages the same pixel and the same output channel at every
// step (BM == BN, both dividing WG), so it works out its pixel's position
// once and walks the sum's (tap, channel) index by counters instead of
// dividing. Neighbouring invocations stage neighbouring pixels (contiguous
// input at stride 1) and neighbouring channels of the weights.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"
#include "conv_gather.glsl"

layout(constant_id = 0) const uint WG = 256; // (BM/TM) * (BN/TN) invocations
layout(constant_id = 1) const uint BM = 64;  // output channels per workgroup
layout(constant_id = 2) const uint BN = 64;  // pixels per workgroup; BN == BM
layout(constant_id = 3) const uint BK = 16;
layout(constant_id = 4) const uint TM = 4;
layout(constant_id = 5) const uint TN = 4;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer In { float x[]; };
layout(binding = 1) readonly buffer Wt { float w[]; };
layout(binding = 2) buffer Out { float y[]; };
layout(binding = 3) readonly buffer Bias { float bias[]; };

const uint LA = BM + 1, LB = BN + 1;
shared float As[BK * LA];
shared float Bs[BK * LB];

// Staged elements per invocation and operand.
const uint PER = BK * BM / WG;

void main() {
	const uint WN = BN / TN, WM = BM / TM;
	const uint g = group_index();
	const uint tp = g % tilesM, tn = g / tilesM;
	const uint p0 = tp * BN, m0 = tn * BM;
	if (m0 >= M) {
		return; // surplus workgroup of the 2-D grid: the whole group leaves
	}
	const uint t = gl_LocalInvocationID.x;
	const uint tx = t % WN, ty = t / WN;
	const uint win = WIN;

	// The pixel and the output channel this invocation stages.
	const uint e0 = t % BM;
	const uint p = p0 + e0;
	const bool pok = p < NPIX;
	const uint pc = min(p, NPIX - 1);
	const uint pj = pc % WJ, pt = pc / WJ;
	const uint pbase = inoff + (pt / RI) * SINN;
	const int prow = int((pt % RI) * SH) + OH0, pcol = int(pj * SW) + OW0;
	const uint m = m0 + e0;
	const bool mok = m < M;
	const uint wbase = woff + SHIFT + min(m, M - 1);

	// The (tap, channel) position of each staged element: k = k0 + kk,
	// kk = t / BM + u * (WG / BM), walked as (th, tw, c).
	uint cu[PER], twu[PER], thu[PER];
	[[unroll]] for (uint u = 0; u < PER; u++) {
		const uint k = t / BM + u * (WG / BM);
		cu[u] = k % C;
		const uint tap = k / C;
		twu[u] = tap % TW;
		thu[u] = tap / TW;
	}

	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	const uint K = TH * TW * C;
	for (uint k0 = 0; k0 < K; k0 += BK) {
		[[unroll]] for (uint u = 0; u < PER; u++) {
			const uint kk = t / BM + u * (WG / BM);
			float a = 0.0, b = 0.0;
			if (thu[u] < TH) {
				if (mok) {
					a = w[wbase + cu[u] * WSC + thu[u] * WSH + twu[u] * WSW];
				}
				const int ih = prow + int(thu[u]) * DTH, iw = pcol + int(twu[u]) * DTW;
				if (pok && ih >= ROWLO && ih <= ROWHI && iw >= 0 && iw < int(win)) {
					b = x[pbase + cu[u] * SINC + uint(ih) * win + uint(iw)];
				}
			}
			As[kk * LA + e0] = a;
			Bs[kk * LB + e0] = b;
			// Advance by BK along the sum.
			cu[u] += BK;
			while (cu[u] >= C && thu[u] < TH) {
				cu[u] -= C;
				twu[u]++;
				if (twu[u] == TW) {
					twu[u] = 0;
					thu[u]++;
				}
			}
		}
		barrier();
		[[unroll]] for (uint kk = 0; kk < BK; kk++) {
			float av[TM];
			float bv[TN];
			[[unroll]] for (uint i = 0; i < TM; i++) {
				av[i] = As[kk * LA + ty + i * WM];
			}
			[[unroll]] for (uint j = 0; j < TN; j++) {
				bv[j] = Bs[kk * LB + tx + j * WN];
			}
			[[unroll]] for (uint i = 0; i < TM; i++) {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					acc[i][j] += av[i] * bv[j];
				}
			}
		}
		barrier();
	}

	[[unroll]] for (uint j = 0; j < TN; j++) {
		const uint pp = p0 + tx + j * WN;
		if (pp < NPIX) {
			const uint jj = pp % WJ, tt = pp / WJ;
			const uint at = outoff + (tt / RI) * SOUTN + (tt % RI) * SOUTI + jj * SOUTJ;
			[[unroll]] for (uint i = 0; i < TM; i++) {
				const uint mm = m0 + ty + i * WM;
				if (mm < M) {
					float v = acc[i][j];
					if ((FLAGS & 2u) != 0) {
						v += bias[boff + mm];
					}
					if ((FLAGS & 1u) != 0) {
						v += y[at + mm * SOUTC];
					}
					y[at + mm * SOUTC] = v;
				}
			}
		}
	}
}
