#version 450
// One workgroup per embedding column, for columns whose rows fit shared
// memory: bound the column, sort it (bitonic; ties ordered by row, as a
// stable sort orders them), and from the sorted column compute its m-spacing
// entropy and the entropy's gradient with respect to the bounded values,
// scattered back to the rows through the sort permutation. Also writes the
// centred bounded values (for the covariance) and the column's variance.
//
// The sort keys are the unbounded values (the bounds are increasing) and the
// spacings come from bound_diff, which keeps float32 relative precision in
// saturated tails; centring cannot change the entropy.
//
// Two ways to sort, chosen by specialization:
//   REG == 0: the column in shared memory, every compare-exchange step there
//     (GPUs: many invocations, cheap shared memory).
//   REG > 0: each invocation holds REG consecutive elements of the column in
//     registers (private arrays indexed by constants once the loops over them
//     are unrolled). Steps whose partners lie in the same invocation run in
//     registers, those whose partners lie in another lane of the subgroup by
//     subgroupShuffleXor, and only the rest (partners in another subgroup)
//     through shared memory. The column is padded to WG * REG = NMAX rows.
//     For CPU devices (lavapipe), where each shared-memory access is a loop
//     over the lanes and registers are vectors.
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_shuffle : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;    // invocations, a power of two
layout(constant_id = 1) const uint NMAX = 4096; // sortable rows, a power of two
layout(constant_id = 2) const uint BOUND = 0;   // see bound.glsl
layout(constant_id = 3) const bool GRAD = true;
layout(constant_id = 4) const uint REG = 0;     // elements per invocation in registers; 0: shared sort
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Z { float z[]; };          // N x D
layout(binding = 1) writeonly buffer X { float x[]; };         // N x D, centred
layout(binding = 2) writeonly buffer H { float h[]; };         // D entropies
layout(binding = 3) writeonly buffer V { float variance[]; };  // D column variances
layout(binding = 4) writeonly buffer G { float g[]; };         // N x D, d(mean H)/d(bounded)

layout(push_constant) uniform Push {
	uint n;        // rows
	uint d;        // columns
	uint npad;     // rows padded to a power of two, <= NMAX
	uint m;        // spacing window
	float eps;
	float scale;   // (n + 1) / m
	float gcoef;   // scale / (n - m) / d
	uint zOff, xOff, hOff, vOff, gOff;
};

shared uvec2 kv[NMAX];

#define SORTED_KEY(i) uintBitsToFloat(kv[i].x)
#define SORTED_ROW(i) kv[i].y
#include "bound.glsl"
#include "e2mc.glsl"

// The register path's elements: this invocation's REG consecutive positions
// of the column, from u * REG (u: see sort_registers).
const uint RN = REG == 0u ? 1u : REG;
float rkey[RN];
uint rrow[RN];

// reg_sum is wg_sum for the register path: a subgroup sum when the
// workgroup is one subgroup.
float reg_sum(float v) {
	if (gl_NumSubgroups == 1u) {
		return subgroupAdd(v);
	}
	return wg_sum(v);
}

// take_other replaces element r by (ok, orow) when that one belongs there:
// first says whether position r keeps the earlier of the pair.
void take_other(uint r, float ok, uint orow, bool first) {
	float mk = rkey[r];
	bool oFirst = ok < mk || (ok == mk && orow < rrow[r]);
	if (oFirst == first) {
		rkey[r] = ok;
		rrow[r] = orow;
	}
}

// sort_registers loads, measures and sorts the column held in registers and
// leaves it sorted in kv[0, NMAX).
void sort_registers(uint col) {
	// u numbers the invocations subgroup by subgroup, so that lanes of a
	// subgroup hold neighbouring blocks of the column.
	uint lane = gl_SubgroupInvocationID;
	uint u = gl_SubgroupID * gl_SubgroupSize + lane;
	uint first = u * REG;
	float sum = 0.0;
	[[unroll]] for (uint r = 0u; r < REG; r++) {
		uint i = first + r;
		float v = uintBitsToFloat(0x7f800000u); // +inf pads sort last
		if (i < n) {
			v = z[zOff + i * d + col];
			sum += bound_value(BOUND, v);
		}
		rkey[r] = v;
		rrow[r] = i;
	}
	float mean = reg_sum(sum) / float(n);
	float sq = 0.0;
	[[unroll]] for (uint r = 0u; r < REG; r++) {
		uint i = first + r;
		if (i < n) {
			float c = bound_value(BOUND, rkey[r]) - mean;
			x[xOff + i * d + col] = c;
			sq += c * c;
		}
	}
	float ss = reg_sum(sq);
	if (gl_LocalInvocationID.x == 0u) {
		variance[vOff + col] = ss / float(n - 1u);
	}

	uint span = REG * gl_SubgroupSize; // elements held by one subgroup
	for (uint k = 2u; k <= NMAX; k <<= 1u) {
		uint j = k >> 1u;
		// Partners in other subgroups: through shared memory.
		for (; j >= span; j >>= 1u) {
			barrier();
			[[unroll]] for (uint r = 0u; r < REG; r++) {
				kv[first + r] = uvec2(floatBitsToUint(rkey[r]), rrow[r]);
			}
			barrier();
			[[unroll]] for (uint r = 0u; r < REG; r++) {
				uint i = first + r;
				uvec2 o = kv[i ^ j];
				take_other(r, uintBitsToFloat(o.x), o.y, ((i & k) == 0u) == ((i & j) == 0u));
			}
		}
		// Partners in other lanes of this subgroup.
		for (; j >= REG; j >>= 1u) {
			uint s = j / REG;
			bool lower = (lane & s) == 0u;
			[[unroll]] for (uint r = 0u; r < REG; r++) {
				float ok = subgroupShuffleXor(rkey[r], s);
				uint orow = subgroupShuffleXor(rrow[r], s);
				take_other(r, ok, orow, (((first + r) & k) == 0u) == lower);
			}
		}
		// Partners in this invocation: j < REG, a constant once unrolled.
		[[unroll]] for (uint jj = REG >> 1u; jj > 0u; jj >>= 1u) {
			if (jj < k) {
				[[unroll]] for (uint r = 0u; r < REG; r++) {
					if ((r & jj) == 0u) {
						bool up = ((first + r) & k) == 0u;
						float ka = rkey[r], kb = rkey[r + jj];
						uint ra = rrow[r], rb = rrow[r + jj];
						bool bFirst = kb < ka || (kb == ka && rb < ra);
						if (bFirst == up) {
							rkey[r] = kb;
							rrow[r] = rb;
							rkey[r + jj] = ka;
							rrow[r + jj] = ra;
						}
					}
				}
			}
		}
	}
	barrier();
	[[unroll]] for (uint r = 0u; r < REG; r++) {
		kv[first + r] = uvec2(floatBitsToUint(rkey[r]), rrow[r]);
	}
	barrier();
}

// sort_shared loads, measures and sorts the column in shared memory.
void sort_shared(uint col) {
	uint t = gl_LocalInvocationID.x;
	float sum = 0.0;
	for (uint i = t; i < npad; i += WG) {
		float v = uintBitsToFloat(0x7f800000u); // +inf pads sort last
		if (i < n) {
			v = z[zOff + i * d + col];
			sum += bound_value(BOUND, v);
		}
		kv[i].x = floatBitsToUint(v);
	}
	float mean = wg_sum(sum) / float(n);
	float sq = 0.0;
	for (uint i = t; i < n; i += WG) {
		float c = bound_value(BOUND, uintBitsToFloat(kv[i].x)) - mean;
		x[xOff + i * d + col] = c;
		sq += c * c;
	}
	float ss = wg_sum(sq);
	if (t == 0u) {
		variance[vOff + col] = ss / float(n - 1u);
	}
	for (uint i = t; i < npad; i += WG) {
		kv[i].y = i;
	}
	barrier();
	bitonic_shared(0u, npad, 2u, npad, npad);
}

void main() {
	uint col = group_index();
	if (col >= d) {
		return; // uniform over the workgroup
	}
	float total;
	if (REG > 0u) {
		sort_registers(col);
		total = reg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	} else {
		sort_shared(col);
		total = wg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	}
	if (gl_LocalInvocationID.x == 0u) {
		h[hOff + col] = total / float(n - m);
	}
}
