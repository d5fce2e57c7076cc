#version 450
// Gather convolution for CPU Vulkan devices (lavapipe): the forward
// convolution and both backward passes (layers/conv.go maps each onto it),
// as an implicit GEMM with the pixels as rows, the output channels as
// columns and (tap, channel) as the sum; see include/conv_gather.glsl for
// the exact sum.
//
// Register blocking without shared memory, as in gemm.comp: a workgroup is
// one 8-wide subgroup computing TM pixels by WG*TN output channels. The
// operands take the roles that make llvmpipe's loads cheap: the weights,
// rearranged by conv_wtrans.comp so that the output channels are contiguous
// (and padded to a multiple of 4), are the per-lane operand, read as vec4;
// the input pixels are the broadcast operand, lane l loading pixel 8q+l and
// subgroupBroadcast handing it to every lane (see gemm.comp for why). The
// taps are the outer loops: a pixel's position, and whether it lies in the
// padding, is worked out once per tap, and the inner loop over channels is
// a plain strided GEMM step (one masked load per 8 pixels, TN/4 vec4 loads,
// TM*TN multiply-adds).
//
// llvmpipe ends any loop after 65535 iterations: the host keeps C below that.
#extension GL_EXT_control_flow_attributes : enable
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_ballot : enable
#include "common.glsl"
#include "conv_gather.glsl"

layout(constant_id = 0) const uint WG = 8;       // invocations per workgroup
layout(constant_id = 1) const uint TM = 16;      // pixels per workgroup
layout(constant_id = 2) const uint TN = 8;       // output channels per invocation, a multiple of 4
layout(constant_id = 3) const bool BCAST = true; // needs WG == subgroup size == 8, TM % 8 == 0
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer In { float x[]; };
layout(binding = 1) readonly buffer Wt { vec4 w4[]; };
layout(binding = 2) buffer Out { float y[]; };
layout(binding = 3) readonly buffer Bias { float bias[]; };

// Pixels a lane loads: TM/8 with the broadcast, all TM without.
const uint QN = BCAST ? TM / 8 : TM;

void main() {
	// Read the push constants once: llvmpipe reloads them at every use.
	const uint npix = NPIX, ri = RI, wj = WJ, m_ = M, c_ = C, tiles = tilesM, shift = SHIFT;
	const uint sinc = SINC, win = WIN, wsc4 = WSC / 4;
	const int rowlo = ROWLO, rowhi = ROWHI, dth = DTH, dtw = DTW;
	const uint g = group_index();
	const uint tm = g % tiles, tn = g / tiles;
	const uint lane = gl_LocalInvocationID.x;
	// Columns are counted from the quad that holds the piece's first
	// channel: column a is output channel a - shift.
	if (tn * WG * TN >= m_ + shift) {
		return; // surplus workgroup of the 2-D grid
	}

	// The pixels this lane loads: image base, and input row and column of
	// tap (0, 0). Pixels past the end repeat the last one (computed, not
	// stored).
	uint pbase[QN];
	int prow[QN], pcol[QN];
	[[unroll]] for (uint q = 0; q < QN; q++) {
		const uint p = min(tm * TM + (BCAST ? 8 * q + lane : q), npix - 1);
		const uint j = p % wj, t = p / wj;
		pbase[q] = inoff + (t / ri) * SINN;
		prow[q] = int((t % ri) * SH) + OH0;
		pcol[q] = int(j * SW) + OW0;
	}
	// The lane's output channels: quads 4*lane + 4*WG*jq of the tile,
	// clamped to the last quad (the weights are zero-padded to whole quads).
	const uint lastq = (m_ + shift + 3) / 4 - 1;
	uint wcol[TN / 4];
	[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) {
		wcol[jq] = woff / 4 + min(tn * WG * TN / 4 + lane + jq * WG, lastq);
	}

	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	for (uint th = 0; th < TH; th++) {
		for (uint tw = 0; tw < TW; tw++) {
			// Where each pixel reads at this tap; in the padding it reads
			// a clamped position (inside the bound piece) times zero.
			uint abase[QN];
			float amask[QN];
			[[unroll]] for (uint q = 0; q < QN; q++) {
				const int ih = prow[q] + int(th) * dth, iw = pcol[q] + int(tw) * dtw;
				const bool ok = ih >= rowlo && ih <= rowhi && iw >= 0 && iw < int(win);
				abase[q] = pbase[q] + uint(min(max(ih, rowlo), rowhi)) * win + uint(clamp(iw, 0, int(win) - 1));
				amask[q] = ok ? 1.0 : 0.0;
			}
			const uint wtap = (th * WSH + tw * WSW) / 4;
			for (uint c = 0; c < c_; c++) {
				vec4 bv[TN / 4];
				[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) {
					bv[jq] = w4[wcol[jq] + wtap + c * wsc4];
				}
				[[unroll]] for (uint q = 0; q < QN; q++) {
					const float av = x[abase[q] + c * sinc] * amask[q];
					if (BCAST) {
#define ROW(L) { \
	const float s = subgroupBroadcast(av, L); \
	[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) { \
		acc[8 * q + L][4 * jq] += s * bv[jq].x; \
		acc[8 * q + L][4 * jq + 1] += s * bv[jq].y; \
		acc[8 * q + L][4 * jq + 2] += s * bv[jq].z; \
		acc[8 * q + L][4 * jq + 3] += s * bv[jq].w; } }
						ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
					} else {
						[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) {
							acc[q][4 * jq] += av * bv[jq].x;
							acc[q][4 * jq + 1] += av * bv[jq].y;
							acc[q][4 * jq + 2] += av * bv[jq].z;
							acc[q][4 * jq + 3] += av * bv[jq].w;
						}
					}
				}
			}
		}
	}

	const uint flags = FLAGS;
	const uint soutc = SOUTC;
	[[unroll]] for (uint i = 0; i < TM; i++) {
		const uint p = tm * TM + i;
		if (p < npix) {
			const uint j = p % wj, t = p / wj;
			const uint at = outoff + (t / ri) * SOUTN + (t % ri) * SOUTI + j * SOUTJ;
			[[unroll]] for (uint jj = 0; jj < TN; jj++) {
				const uint a = tn * WG * TN + 4 * lane + (jj / 4) * 4 * WG + jj % 4;
				const uint m = a - shift; // wraps for a < shift
				if (m < m_) {
					float v = acc[i][jj];
					if ((flags & 2u) != 0) {
						v += bias[boff + m];
					}
					if ((flags & 1u) != 0) {
						v += y[at + m * soutc];
					}
					y[at + m * soutc] = v;
				}
			}
		}
	}
}
