#version 450
// Weight gradient of a convolution for GPUs, with the shared-memory tiling
// of gemm_tiled.comp:
//   out[z][co][ci][kh][kw] = sum over the pixels (n, oh, ow) of chunk z of
//                            g[n][co][oh][ow] * x[n][ci][ih][iw],
//   ih = oh*SH + OHB + kh*DH, iw = ow*SW + OWB + kw*DW,
// where positions outside the input (the padding) read as zero. Chunk z
// covers images [ni*NB, ni*NB + NB) and rows [rc*RC, rc*RC + RC) of the
// piece (ni = z / ROWCHUNKS, rc = z % ROWCHUNKS); the host adds the chunks'
// sums (layers.Sum over z) unless there is one. The rows
// r = (ci*KH + kh)*KW + kw of the piece's input channels and kernel taps
// (KH = KKP / KWP, KW = KWP) are the GEMM's rows. Coordinates n, co, ci, oh,
// kh, kw are relative to the piece (OHB and OWB include its first row and
// tap); ih and iw are absolute. Offsets are relative to the bound buffer
// segments; xoff may wrap around 2^32 (the piece's input starts at row
// ROWLO), which unsigned arithmetic undoes.
//
// A workgroup computes BM weight rows by BN output channels of one chunk of
// pixels; per step of BK pixels it stages the input gathered at
// each row's tap (zeros in the padding) and the output gradient in shared
// memory, and every invocation accumulates TM x TN outputs in registers.
//
// Invocation t stages pixel k0 + t % BK of every step (BK divides WG), so it
// walks the chunk's pixels (n, oh, ow) by counters; neighbouring invocations
// stage neighbouring pixels, which are contiguous in both operands.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256; // (BM/TM) * (BN/TN) invocations
layout(constant_id = 1) const uint BM = 64;  // weight rows per workgroup
layout(constant_id = 2) const uint BN = 64;  // output channels per workgroup
layout(constant_id = 3) const uint BK = 16;  // pixels per step
layout(constant_id = 4) const uint TM = 4;
layout(constant_id = 5) const uint TN = 4;
layout(local_size_x_id = 0) in;

layout(push_constant) uniform Push {
	uint R;   // rows of the piece: input channels * KKP
	uint M;   // output channels of the piece
	uint KKP; // kernel taps of the piece, KH * KW
	uint KWP; // kernel columns of the piece
	uint xoff, goff, outoff;
	uint SXN, SXC;    // x strides of n and c
	uint WIN;         // input width (and row stride)
	int ROWLO, ROWHI; // input rows the piece may read; ROWLO > ROWHI: none
	uint SGN, SGC;    // g strides of n and co
	uint WO;          // output width (g's row stride)
	uint SH, SW;
	int OHB, OWB;     // input position of output pixel (0, 0) at kernel tap (0, 0)
	uint DH, DW;
	uint SOUTC, SOUTCI, SOUTKH, SOUTZ; // out strides of co, ci, kh and z (kw: 1)
	uint NP, RO;       // images and output rows of the piece
	uint NB, RC, ROWCHUNKS;
	uint tilesM;       // workgroups along r
	uint FLAGS;        // bit 0: add to out
};

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer G { float g[]; };
layout(binding = 2) buffer Out { float o[]; };

const uint LA = BM + 1, LB = BN + 1;
shared float As[BK * LA];
shared float Bs[BK * LB];

// Staged elements per invocation and operand.
const uint PA = BK * BM / WG, PB = BK * BN / WG;

void main() {
	const uint WN = BN / TN, WM = BM / TM;
	const uint gi = group_index();
	const uint tm = gi % tilesM, tn = gi / tilesM;
	const uint r0 = tm * BM, c0 = tn * BN;
	if (c0 >= M) {
		return; // surplus workgroup of the 2-D grid: the whole group leaves
	}
	const uint z = gl_WorkGroupID.z;
	const uint t = gl_LocalInvocationID.x;
	const uint tx = t % WN, ty = t / WN;
	const uint win = WIN, wo = WO;
	const uint ni = z / ROWCHUNKS, rc = z % ROWCHUNKS;
	const uint nA = ni * NB, nB = min(NP, nA + NB);
	const uint rA = rc * RC, rB = min(RO, rA + RC);

	// The rows and channels this invocation stages: u-th at t / BK + u * (WG / BK).
	const uint kk = t % BK;
	uint xrow[PA];
	int offh[PA], offw[PA];
	bool rok[PA];
	[[unroll]] for (uint u = 0; u < PA; u++) {
		const uint r = r0 + t / BK + u * (WG / BK);
		rok[u] = r < R;
		const uint rr = min(r, R - 1);
		const uint ci = rr / KKP, k2 = rr % KKP;
		xrow[u] = xoff + ci * SXC;
		offh[u] = int((k2 / KWP) * DH) + OHB;
		offw[u] = int((k2 % KWP) * DW) + OWB;
	}
	uint gcol[PB];
	bool cok[PB];
	[[unroll]] for (uint u = 0; u < PB; u++) {
		const uint c = c0 + t / BK + u * (WG / BK);
		cok[u] = c < M;
		gcol[u] = goff + min(c, M - 1) * SGC;
	}

	// This invocation's pixel: (n, oh, ow), starting at pixel kk of the chunk.
	uint n = nA, oh = rA, ow = kk;
	while (ow >= wo && n < nB) {
		ow -= wo;
		oh++;
		if (oh >= rB) {
			oh = rA;
			n++;
		}
	}

	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	const uint K = (nB > nA && rB > rA) ? (nB - nA) * (rB - rA) * wo : 0;
	for (uint k0 = 0; k0 < K; k0 += BK) {
		const bool pok = n < nB;
		[[unroll]] for (uint u = 0; u < PA; u++) {
			float a = 0.0;
			const int ih = int(oh * SH) + offh[u], iw = int(ow * SW) + offw[u];
			if (pok && rok[u] && ih >= ROWLO && ih <= ROWHI && iw >= 0 && iw < int(win)) {
				a = x[xrow[u] + n * SXN + uint(ih) * win + uint(iw)];
			}
			As[kk * LA + t / BK + u * (WG / BK)] = a;
		}
		[[unroll]] for (uint u = 0; u < PB; u++) {
			float b = 0.0;
			if (pok && cok[u]) {
				b = g[gcol[u] + n * SGN + oh * wo + ow];
			}
			Bs[kk * LB + t / BK + u * (WG / BK)] = b;
		}
		// Advance by BK pixels.
		ow += BK;
		while (ow >= wo && n < nB) {
			ow -= wo;
			oh++;
			if (oh >= rB) {
				oh = rA;
				n++;
			}
		}
		barrier();
		[[unroll]] for (uint k = 0; k < BK; k++) {
			float av[TM];
			float bv[TN];
			[[unroll]] for (uint i = 0; i < TM; i++) {
				av[i] = As[k * LA + ty + i * WM];
			}
			[[unroll]] for (uint j = 0; j < TN; j++) {
				bv[j] = Bs[k * LB + tx + j * WN];
			}
			[[unroll]] for (uint i = 0; i < TM; i++) {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					acc[i][j] += av[i] * bv[j];
				}
			}
		}
		barrier();
	}

	const uint base = outoff + z * SOUTZ;
	[[unroll]] for (uint i = 0; i < TM; i++) {
		const uint r = r0 + ty + i * WM;
		const uint k2 = r % KKP;
		const uint rbase = base + (r / KKP) * SOUTCI + (k2 / KWP) * SOUTKH + k2 % KWP;
		[[unroll]] for (uint j = 0; j < TN; j++) {
			const uint c = c0 + tx + j * WN;
			if (r < R && c < M) {
				const uint at = rbase + c * SOUTC;
				float v = acc[i][j];
				if ((FLAGS & 1u) != 0) {
					v += o[at];
				}
				o[at] = v;
			}
		}
	}
}
