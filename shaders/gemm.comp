#version 450
// GEMM for CPU Vulkan devices (lavapipe), batched and strided:
//   C[z][m][n] = alpha * sum_k A[z][m][k] * B[z][k][n] + beta * C[z][m][n]
// over a piece [0, M) x [0, N) x [0, K) of an op, with every operand
// addressed by element strides (a transposed operand just swaps them), so
// one kernel serves all four transpose combinations.
//
// Register blocking without shared memory. A workgroup computes TM rows by
// WG*TN columns; invocation i owns columns i, i+WG, i+2*WG, ... so that the
// lanes of a subgroup read neighbouring elements of B. llvmpipe (Mesa 22.3)
// turns every SSBO load into a loop over the lanes, with a bounds check per
// lane, and it implements cross-lane operations with such loops as well; the
// cost of a GEMM is the number of those loops per multiply-add. Each lane
// loads TN values of B per step of K, which serve TM rows. A's values are the
// same for every lane: with BCAST, lane l loads row 8q+l and
// subgroupBroadcast hands each row to all lanes (a broadcast costs about a
// third of a load on llvmpipe); without it (subgroups other than 8 wide) all
// lanes load the same element. Barriers and shared memory cost more than they
// save on llvmpipe; gemm_tiled.comp is the GPU kernel.
//
// llvmpipe ends any loop after 65535 iterations, so the host cuts long K into
// several dispatches (which also blocks the float32 sum).
#extension GL_EXT_control_flow_attributes : enable
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_ballot : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 8;       // invocations per workgroup
layout(constant_id = 1) const uint TM = 24;      // rows per workgroup
layout(constant_id = 2) const uint TN = 16;      // columns per invocation
layout(constant_id = 3) const bool BCAST = true; // needs WG == subgroup size == 8, TM % 8 == 0
// BV4: B is read as vec4 along N: invocation i owns column groups 4i..4i+3,
// 4i+4*WG..., which llvmpipe loads with a quarter of the per-lane overhead.
// Needs TN % 4 == 0, B's unit stride along N, and boff, sbk, sbz and N all
// multiples of 4 (the host checks).
layout(constant_id = 4) const bool BV4 = false;
// BK4: B is read as vec4 along K (B's unit stride along K, as a transposed
// B has), K advancing 4 per iteration. Needs boff, sbn, sbz and K all
// multiples of 4 (the host checks).
layout(constant_id = 5) const bool BK4 = false;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 1) readonly buffer B4 { vec4 b4[]; }; // the same buffer, for BV4 and BK4
layout(binding = 2) buffer C { float c[]; };

layout(push_constant) uniform Push {
	uint M, N, K;         // extent of this piece
	uint aoff, boff, coff; // element offsets of the piece's origin in the bound segments
	uint sam, sak;        // A element (m, k) at aoff + m*sam + k*sak
	uint sbk, sbn;        // B element (k, n) at boff + k*sbk + n*sbn
	uint scm, scn;        // C element (m, n) at coff + m*scm + n*scn
	uint saz, sbz, scz;   // batch strides (0 for an operand shared by every batch)
	uint tilesM;          // workgroups along M
	float alpha, beta;    // beta == 0: C is written without being read; alpha == 0: no product
};

// Column of C that slot j of invocation lane owns in column tile tn.
uint column(uint tn, uint lane, uint j) {
	if (BV4) {
		return tn * WG * TN + 4 * lane + (j / 4) * 4 * WG + j % 4;
	}
	return tn * WG * TN + lane + j * WG;
}

void main() {
	// Read the push constants once: llvmpipe reloads them at every use.
	const uint m_ = M, n_ = N, k_ = K, tiles = tilesM;
	const uint sak_ = sak, sbk_ = sbk;
	const uint g = group_index();
	const uint tm = g % tiles, tn = g / tiles;
	const uint z = gl_WorkGroupID.z;
	const uint lane = gl_LocalInvocationID.x;
	if (tn * WG * TN >= n_) {
		return; // surplus workgroup of the 2-D grid
	}

	// Base index of the rows of A and columns of B; rows and columns past the
	// edge are clamped (read, computed, never stored). With BV4, bbase holds
	// vec4 indices of the column groups.
	uint bbase[TN];
	[[unroll]] for (uint j = 0; j < TN; j++) {
		if (BV4) {
			bbase[j] = (boff + z * sbz + min(column(tn, lane, j), n_ - 4)) / 4;
		} else if (BK4) {
			bbase[j] = (boff + z * sbz + min(column(tn, lane, j), n_ - 1) * sbn) / 4;
		} else {
			bbase[j] = boff + z * sbz + min(column(tn, lane, j), n_ - 1) * sbn;
		}
	}
	const uint sbk4 = sbk_ / 4;
	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	// One step of K: the B values of this lane's columns at k + kk into bv.
#define LOAD_B(k, kk) \
	float bv[TN]; \
	if (BK4) { \
		[[unroll]] for (uint j = 0; j < TN; j++) { bv[j] = bq[j][kk]; } \
	} else if (BV4) { \
		[[unroll]] for (uint j = 0; j < TN; j += 4) { \
			const vec4 v = b4[bbase[j] + (k + kk) * sbk4]; \
			bv[j] = v.x; bv[j + 1] = v.y; bv[j + 2] = v.z; bv[j + 3] = v.w; \
		} \
	} else { \
		[[unroll]] for (uint j = 0; j < TN; j++) { bv[j] = b[bbase[j] + (k + kk) * sbk_]; } \
	}
	const uint KS = BK4 ? 4 : 1;

	if (BCAST) {
		uint abase[(TM + 7) / 8]; // (TM + 7) / 8: no empty array where BCAST is off
		[[unroll]] for (uint q = 0; q < TM / 8; q++) {
			abase[q] = aoff + z * saz + min(tm * TM + 8 * q + gl_SubgroupInvocationID, m_ - 1) * sam;
		}
		for (uint k = 0; k < k_; k += KS) {
			vec4 bq[TN];
			if (BK4) {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					bq[j] = b4[bbase[j] + k / 4];
				}
			}
			[[unroll]] for (uint kk = 0; kk < KS; kk++) {
				LOAD_B(k, kk)
				[[unroll]] for (uint q = 0; q < TM / 8; q++) {
					const float av = a[abase[q] + (k + kk) * sak_];
#define ROW(L) { \
	const float x = subgroupBroadcast(av, L); \
	[[unroll]] for (uint j = 0; j < TN; j++) { acc[8 * q + L][j] += x * bv[j]; } }
					ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
				}
			}
		}
	} else {
		uint abase[TM];
		[[unroll]] for (uint i = 0; i < TM; i++) {
			abase[i] = aoff + z * saz + min(tm * TM + i, m_ - 1) * sam;
		}
		for (uint k = 0; k < k_; k += KS) {
			vec4 bq[TN];
			if (BK4) {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					bq[j] = b4[bbase[j] + k / 4];
				}
			}
			[[unroll]] for (uint kk = 0; kk < KS; kk++) {
				LOAD_B(k, kk)
				[[unroll]] for (uint i = 0; i < TM; i++) {
					const float av = a[abase[i] + (k + kk) * sak_];
					[[unroll]] for (uint j = 0; j < TN; j++) {
						acc[i][j] += av * bv[j];
					}
				}
			}
		}
	}
#undef LOAD_B

	const float alpha_ = alpha, beta_ = beta;
	const uint cbase = coff + z * scz;
	[[unroll]] for (uint i = 0; i < TM; i++) {
		const uint m = tm * TM + i;
		[[unroll]] for (uint j = 0; j < TN; j++) {
			const uint n = column(tn, lane, j);
			if (m < m_ && n < n_) {
				const uint at = cbase + m * scm + n * scn;
				float v = alpha_ == 0.0 ? 0.0 : alpha_ * acc[i][j];
				if (beta_ != 0.0) {
					v += beta_ * c[at];
				}
				c[at] = v;
			}
		}
	}
}
