#version 450
// GEMM for GPUs, batched and strided, with the push constants of gemm.comp:
//   C[z][m][n] = alpha * sum_k A[z][m][k] * B[z][k][n] + beta * C[z][m][n]
// and two more: batch z may be split as z = zo * zq + zi, its operands then
// at zo * (batch stride) + zi * (inner stride) (the slices of each image's
// pixels of a 1x1 convolution's weight gradient); zq = 1 for plain batches.
// A workgroup computes a BM x BN tile of C. Per step of BK along K it
// stages a BK x BM slice of A and a BK x BN slice of B in shared memory
// (zeros past the edges), loaded into registers one step ahead, and every
// invocation accumulates TM x TN outputs in registers: rows ty*TM + i,
// columns tx*TN + j. Those are contiguous in the slices, so an invocation
// reads its TM values of A and TN of B as vec4s (TM and TN are multiples of
// 4): with one scalar shared load per two multiply-adds (4x4) the kernel
// was bound by shared-memory loads, which NVIDIA GPUs issue at a quarter of
// the rate of multiply-adds.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256; // (BM/TM) * (BN/TN) invocations
layout(constant_id = 1) const uint BM = 64;
layout(constant_id = 2) const uint BN = 64;
layout(constant_id = 3) const uint BK = 16;
layout(constant_id = 4) const uint TM = 4; // a multiple of 4
layout(constant_id = 5) const uint TN = 4; // a multiple of 4
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 2) buffer C { float c[]; };

layout(push_constant) uniform Push {
	uint M, N, K;
	uint aoff, boff, coff;
	uint sam, sak;
	uint sbk, sbn;
	uint scm, scn;
	uint saz, sbz, scz;
	uint tilesM;
	float alpha, beta;
	uint zq;
	uint saq, sbq, scq;
};

// Rows of the slices are padded by one vec4: the stores of an operand whose
// unit stride runs along K walk down a column, which would hit one bank.
const uint LA4 = BM / 4 + 1, LB4 = BN / 4 + 1;
shared vec4 As[BK * LA4];
shared vec4 Bs[BK * LB4];

// Staged elements per invocation and operand (the last pass may have idle
// invocations when WG does not divide the slice).
const uint PA = (BK * BM + WG - 1) / WG, PB = (BK * BN + WG - 1) / WG;

void main() {
	const uint WN = BN / TN;
	const uint g = group_index();
	const uint tm = g % tilesM, tn = g / tilesM;
	const uint zo = gl_WorkGroupID.z / zq, zi = gl_WorkGroupID.z - zo * zq;
	const uint m0 = tm * BM, n0 = tn * BN;
	if (n0 >= N) {
		return; // surplus workgroup of the 2-D grid: the whole group leaves
	}
	const uint t = gl_LocalInvocationID.x;
	const uint tx = t % WN, ty = t / WN;

	// The elements each invocation stages, fixed for the whole loop:
	// consecutive invocations walk the operand's unit-stride dimension so
	// that their reads coalesce. sA/sB are the shared-memory slots (or
	// none: ~0u), gA/gB the element at k0 = 0, kA/kB its step along K.
	uint sA[PA], gA[PA], kA[PA];
	uint sB[PB], gB[PB], kB[PB];
	[[unroll]] for (uint u = 0; u < PA; u++) {
		const uint e = t + u * WG;
		uint kk, mm;
		if (sak == 1) {
			kk = e % BK;
			mm = e / BK;
		} else {
			mm = e % BM;
			kk = e / BM;
		}
		const bool ok = e < BK * BM && m0 + mm < M;
		sA[u] = e < BK * BM ? (kk * LA4 + mm / 4) * 4 + mm % 4 : ~0u;
		gA[u] = ok ? aoff + zo * saz + zi * saq + (m0 + mm) * sam + kk * sak : ~0u;
		kA[u] = kk;
	}
	[[unroll]] for (uint u = 0; u < PB; u++) {
		const uint e = t + u * WG;
		uint kk, nn;
		if (sbn == 1) {
			nn = e % BN;
			kk = e / BN;
		} else {
			kk = e % BK;
			nn = e / BK;
		}
		const bool ok = e < BK * BN && n0 + nn < N;
		sB[u] = e < BK * BN ? (kk * LB4 + nn / 4) * 4 + nn % 4 : ~0u;
		gB[u] = ok ? boff + zo * sbz + zi * sbq + kk * sbk + (n0 + nn) * sbn : ~0u;
		kB[u] = kk;
	}

	// The slices are loaded into registers one step of K ahead: the next
	// slice's global loads are issued before the current slice's
	// multiply-adds, which hide their latency.
	float ra[PA], rb[PB];
	[[unroll]] for (uint u = 0; u < PA; u++) {
		ra[u] = (gA[u] != ~0u && kA[u] < K) ? a[gA[u]] : 0.0;
	}
	[[unroll]] for (uint u = 0; u < PB; u++) {
		rb[u] = (gB[u] != ~0u && kB[u] < K) ? b[gB[u]] : 0.0;
	}

	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	for (uint k0 = 0; k0 < K; k0 += BK) {
		[[unroll]] for (uint u = 0; u < PA; u++) {
			if (sA[u] != ~0u) {
				As[sA[u] / 4][sA[u] % 4] = ra[u];
			}
		}
		[[unroll]] for (uint u = 0; u < PB; u++) {
			if (sB[u] != ~0u) {
				Bs[sB[u] / 4][sB[u] % 4] = rb[u];
			}
		}
		barrier();
		const uint k1 = k0 + BK;
		if (k1 < K) {
			[[unroll]] for (uint u = 0; u < PA; u++) {
				ra[u] = (gA[u] != ~0u && k1 + kA[u] < K) ? a[gA[u] + k1 * sak] : 0.0;
			}
			[[unroll]] for (uint u = 0; u < PB; u++) {
				rb[u] = (gB[u] != ~0u && k1 + kB[u] < K) ? b[gB[u] + k1 * sbk] : 0.0;
			}
		}
		[[unroll]] for (uint kk = 0; kk < BK; kk++) {
			vec4 av[TM / 4];
			vec4 bv[TN / 4];
			[[unroll]] for (uint i = 0; i < TM / 4; i++) {
				av[i] = As[kk * LA4 + ty * (TM / 4) + i];
			}
			[[unroll]] for (uint j = 0; j < TN / 4; j++) {
				bv[j] = Bs[kk * LB4 + tx * (TN / 4) + j];
			}
			[[unroll]] for (uint i = 0; i < TM; i++) {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					acc[i][j] += av[i / 4][i % 4] * bv[j / 4][j % 4];
				}
			}
		}
		barrier();
	}

	const uint cbase = coff + zo * scz + zi * scq;
	[[unroll]] for (uint i = 0; i < TM; i++) {
		const uint m = m0 + ty * TM + i;
		[[unroll]] for (uint j = 0; j < TN; j++) {
			const uint n = n0 + tx * TN + j;
			if (m < M && n < N) {
				const uint at = cbase + m * scm + n * scn;
				float v = alpha == 0.0 ? 0.0 : alpha * acc[i][j];
				if (beta != 0.0) {
					v += beta * c[at];
				}
				c[at] = v;
			}
		}
	}
}
