#version 450
// Gather convolution for CPU Vulkan devices (lavapipe): the forward
// convolution and both backward passes (layers/conv.go maps each onto it),
// as an implicit GEMM with the pixels as rows, the output channels as
// columns and (tap, channel) as the sum; see include/conv_gather.glsl for
// the exact sum.
//
// Register blocking without shared memory, as in gemm.comp (which explains
// the llvmpipe costs behind each choice): a workgroup is one 8-wide subgroup
// computing TM pixels by WG*TN output channels. The operands are read through
// texel buffers and take the roles that make llvmpipe's reads cheap: the
// weights, rearranged by conv_wtrans.comp so that the output channels are
// contiguous (and padded to a multiple of 4), are the per-lane operand,
// fetched as vec4; the input pixels are the broadcast operand, lane l
// fetching pixel 8q+l and subgroupBroadcast handing it to every lane. The
// taps are the outer loops: a pixel's position, and whether it lies in the
// padding, is worked out once per tap, and the inner loop over channels is
// a plain strided GEMM step, CU channels per iteration so that each
// accumulator is written once per CU channels (its products added in
// order: the float32 sum of a one-channel loop).
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
layout(constant_id = 4) const uint CU = 2;       // channels per iteration
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer Out { float y[]; };
layout(binding = 1) readonly buffer Bias { float bias[]; };
layout(binding = 8) uniform textureBuffer In; // float texels
layout(binding = 9) uniform textureBuffer Wt; // vec4 texels

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
			for (uint c = 0; c < c_; c += CU) {
				// Channels past C read as zeros in both operands.
				vec4 bv[CU][TN / 4];
				[[unroll]] for (uint u = 0; u < CU; u++) {
					[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) {
						bv[u][jq] = c + u < c_ ? texelFetch(Wt, int(wcol[jq] + wtap + (c + u) * wsc4)) : vec4(0.0);
					}
				}
				[[unroll]] for (uint q = 0; q < QN; q++) {
					float av[CU];
					[[unroll]] for (uint u = 0; u < CU; u++) {
						av[u] = c + u < c_ ? texelFetch(In, int(abase[q] + (c + u) * sinc)).x * amask[q] : 0.0;
					}
					if (BCAST) {
#define ROW(L) { \
	float s[CU]; \
	[[unroll]] for (uint u = 0; u < CU; u++) { s[u] = subgroupBroadcast(av[u], L); } \
	[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) { \
		vec4 t = vec4(acc[8 * q + L][4 * jq], acc[8 * q + L][4 * jq + 1], acc[8 * q + L][4 * jq + 2], acc[8 * q + L][4 * jq + 3]); \
		[[unroll]] for (uint u = 0; u < CU; u++) { t += s[u] * bv[u][jq]; } \
		acc[8 * q + L][4 * jq] = t.x; \
		acc[8 * q + L][4 * jq + 1] = t.y; \
		acc[8 * q + L][4 * jq + 2] = t.z; \
		acc[8 * q + L][4 * jq + 3] = t.w; } }
						ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
					} else {
						[[unroll]] for (uint jq = 0; jq < TN / 4; jq++) {
							vec4 t = vec4(acc[q][4 * jq], acc[q][4 * jq + 1], acc[q][4 * jq + 2], acc[q][4 * jq + 3]);
							[[unroll]] for (uint u = 0; u < CU; u++) {
								t += av[u] * bv[u][jq];
							}
							acc[q][4 * jq] = t.x;
							acc[q][4 * jq + 1] = t.y;
							acc[q][4 * jq + 2] = t.z;
							acc[q][4 * jq + 3] = t.w;
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
