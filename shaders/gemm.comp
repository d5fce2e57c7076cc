#version 450
// GEMM for CPU Vulkan devices (lavapipe), batched and strided:
//   C[z][m][n] = alpha * sum_k A[z][m][k] * B[z][k][n] + beta * C[z][m][n]
// over a piece [0, M) x [0, N) x [0, K) of an op, with every operand
// addressed by element strides (a transposed operand just swaps them), so
// one kernel serves all four transpose combinations.
//
// Register blocking without shared memory. A workgroup computes TM rows by
// WG*TN columns; invocation i owns columns i, i+WG, i+2*WG, ... so that the
// lanes of a subgroup read neighbouring elements of B. What llvmpipe makes
// of this decides the speed (read from its generated code, GALLIVM_DEBUG=asm):
// - A and B are read through uniform texel buffers: llvmpipe compiles a
//   storage-buffer load into one scalar load per lane, each behind a branch
//   on the lane's mask and one on the buffer's bound, but a texel fetch into
//   branch-free vector code (a vec4 fetch: eight 16-byte loads and a
//   transpose). B is fetched as vec4 along N (BV4) or along K (BK4) where
//   the layout allows.
// - A's values are the same for every lane: with BCAST, lane l fetches row
//   8q+l and subgroupBroadcast hands each row to all lanes; without it
//   (subgroups other than 8 wide) all lanes fetch the same element.
// - The accumulators (TM*TN vectors) live on the stack, and every write to
//   a variable inside a loop is blended with the loop's mask: a write costs
//   a load, a blend and a store besides the multiply and add. So each
//   iteration covers KU steps of K and writes each accumulator once, after
//   adding its KU products in order (the float32 sum of a one-step loop).
// Barriers and shared memory cost more than they save on llvmpipe;
// gemm_tiled.comp is the GPU kernel.
//
// llvmpipe ends any loop after 65535 iterations, so the host cuts long K into
// several dispatches (which also blocks the float32 sum).
#extension GL_EXT_control_flow_attributes : enable
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_ballot : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 8;       // invocations per workgroup
layout(constant_id = 1) const uint TM = 16;      // rows per workgroup
layout(constant_id = 2) const uint TN = 16;      // columns per invocation
layout(constant_id = 3) const bool BCAST = true; // needs WG == subgroup size == 8, TM % 8 == 0
// BV4: B is fetched as vec4 along N: invocation i owns column groups
// 4i..4i+3, 4i+4*WG, ... Needs TN % 4 == 0, B's unit stride along N, and
// boff, sbk, sbz and N all multiples of 4 (the host checks).
layout(constant_id = 4) const bool BV4 = false;
// BK4: B is fetched as vec4 along K (B's unit stride along K, as a
// transposed B has). Needs boff, sbn, sbz and K all multiples of 4.
layout(constant_id = 5) const bool BK4 = false;
// KU: steps of K per iteration (the host sets 4 with BK4: one vec4 of B).
layout(constant_id = 6) const uint KU = 4;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer C { float c[]; };
layout(binding = 8) uniform textureBuffer A;  // float texels
layout(binding = 9) uniform textureBuffer B;  // float texels, vec4 with BV4 or BK4

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

float fetchA(uint i) {
	return texelFetch(A, int(i)).x;
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

	// Texel index of the columns of B; columns past the edge are clamped
	// (read, computed, never stored). BV4 and BK4 count vec4 texels.
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
	// Rows of A this lane fetches: with BCAST one per group of 8 rows (row
	// 8q + lane), else every row (the same for all lanes). Rows past the
	// edge are clamped like B's columns.
	const uint NA = BCAST ? (TM + 7) / 8 : TM;
	uint abase[NA];
	[[unroll]] for (uint q = 0; q < NA; q++) {
		const uint row = BCAST ? 8 * q + gl_SubgroupInvocationID : q;
		abase[q] = aoff + z * saz + min(tm * TM + row, m_ - 1) * sam;
	}
	float acc[TM][TN];
	[[unroll]] for (uint i = 0; i < TM; i++) {
		[[unroll]] for (uint j = 0; j < TN; j++) {
			acc[i][j] = 0.0;
		}
	}

	for (uint k = 0; k < k_; k += KU) {
		// B at steps k .. k+KU-1 of this lane's columns; steps past K are
		// zeros in A and B (so a non-finite value cannot leak into them).
		float bv[KU][TN];
		[[unroll]] for (uint u = 0; u < KU; u++) {
			const bool in_k = k + u < k_;
			if (BK4) {
				if (u == 0) {
					// One vec4 along K covers all KU (== 4) steps.
					[[unroll]] for (uint j = 0; j < TN; j++) {
						const vec4 v = texelFetch(B, int(bbase[j] + k / 4));
						bv[0][j] = v.x; bv[1][j] = v.y; bv[2][j] = v.z; bv[3][j] = v.w;
					}
				}
			} else if (BV4) {
				[[unroll]] for (uint j = 0; j < TN; j += 4) {
					const vec4 v = in_k ? texelFetch(B, int(bbase[j] + (k + u) * sbk4)) : vec4(0.0);
					bv[u][j] = v.x; bv[u][j + 1] = v.y; bv[u][j + 2] = v.z; bv[u][j + 3] = v.w;
				}
			} else {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					bv[u][j] = in_k ? texelFetch(B, int(bbase[j] + (k + u) * sbk_)).x : 0.0;
				}
			}
		}
		[[unroll]] for (uint q = 0; q < NA; q++) {
			float av[KU];
			[[unroll]] for (uint u = 0; u < KU; u++) {
				av[u] = k + u < k_ ? fetchA(abase[q] + (k + u) * sak_) : 0.0;
			}
			if (BCAST) {
				// subgroupBroadcast takes a constant lane: one macro per lane.
#define ROW(L) { \
	float x[KU]; \
	[[unroll]] for (uint u = 0; u < KU; u++) { x[u] = subgroupBroadcast(av[u], L); } \
	[[unroll]] for (uint j = 0; j < TN; j++) { \
		float s = acc[8 * q + L][j]; \
		[[unroll]] for (uint u = 0; u < KU; u++) { s += x[u] * bv[u][j]; } \
		acc[8 * q + L][j] = s; \
	} }
				ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
			} else {
				[[unroll]] for (uint j = 0; j < TN; j++) {
					float s = acc[q][j];
					[[unroll]] for (uint u = 0; u < KU; u++) {
						s += av[u] * bv[u][j];
					}
					acc[q][j] = s;
				}
			}
		}
	}

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
