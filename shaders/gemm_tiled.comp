#version 450
// GEMM for GPUs, batched and strided, with the push constants of gemm.comp:
//   C[z][m][n] = alpha * sum_k A[z][m][k] * B[z][k][n] + beta * C[z][m][n]
// A workgroup computes a BM x BN tile of C. Per step of BK along K it
// stages a BK x BM slice of A and a BK x BN slice of B in shared memory
// (zeros past the edges), and every invocation accumulates TM x TN outputs
// in registers: rows ty + i*(BM/TM), columns tx + j*(BN/TN), so neighbouring
// invocations read neighbouring shared words.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256; // (BM/TM) * (BN/TN) invocations
layout(constant_id = 1) const uint BM = 64;
layout(constant_id = 2) const uint BN = 64;
layout(constant_id = 3) const uint BK = 16;
layout(constant_id = 4) const uint TM = 4;
layout(constant_id = 5) const uint TN = 4;
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
};

// Rows of the slices are padded by one word: the stores of an operand whose
// unit stride runs along K walk down a column, which would hit one bank.
const uint LA = BM + 1, LB = BN + 1;
shared float As[BK * LA];
shared float Bs[BK * LB];

void main() {
	const uint WN = BN / TN, WM = BM / TM;
	const uint g = group_index();
	const uint tm = g % tilesM, tn = g / tilesM;
	const uint z = gl_WorkGroupID.z;
	const uint m0 = tm * BM, n0 = tn * BN;
	if (n0 >= N) {
		return; // surplus workgroup of the 2-D grid: the whole group leaves
	}
	const uint t = gl_LocalInvocationID.x;
	const uint tx = t % WN, ty = t / WN;
	const uint abase = aoff + z * saz, bbase = boff + z * sbz;

	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	for (uint k0 = 0; k0 < K; k0 += BK) {
		// Stage the slices; consecutive invocations walk the operand's
		// unit-stride dimension so that their reads coalesce.
		for (uint e = t; e < BK * BM; e += WG) {
			uint kk, mm;
			if (sak == 1) {
				kk = e % BK;
				mm = e / BK;
			} else {
				mm = e % BM;
				kk = e / BM;
			}
			const uint m = m0 + mm, k = k0 + kk;
			As[kk * LA + mm] = (m < M && k < K) ? a[abase + m * sam + k * sak] : 0.0;
		}
		for (uint e = t; e < BK * BN; e += WG) {
			uint kk, nn;
			if (sbn == 1) {
				nn = e % BN;
				kk = e / BN;
			} else {
				kk = e % BK;
				nn = e / BK;
			}
			const uint n = n0 + nn, k = k0 + kk;
			Bs[kk * LB + nn] = (n < N && k < K) ? b[bbase + k * sbk + n * sbn] : 0.0;
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

	const uint cbase = coff + z * scz;
	[[unroll]] for (uint i = 0; i < TM; i++) {
		const uint m = m0 + ty + i * WM;
		[[unroll]] for (uint j = 0; j < TN; j++) {
			const uint n = n0 + tx + j * WN;
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
