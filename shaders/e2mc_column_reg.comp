#version 450
// The per-column kernel of e2mc_column.comp (same bindings, push constants
// and results) with the sort in registers, for CPU devices (lavapipe), where
// each shared-memory access is a loop over the lanes and registers are
// vectors: each invocation holds REG consecutive elements of the column in
// registers (private arrays indexed by constants once the loops over them are
// unrolled). Steps whose partners lie in the same invocation run in
// registers, those whose partners lie in another lane of the subgroup by
// subgroupShuffleXor, and only the rest (partners in another subgroup)
// through shared memory. The column is padded to WG * REG = NMAX rows.
#extension GL_KHR_shader_subgroup_basic : enable
#extension GL_KHR_shader_subgroup_shuffle : enable
#extension GL_KHR_shader_subgroup_arithmetic : enable
#extension GL_EXT_control_flow_attributes : enable

layout(constant_id = 4) const uint REG = 32; // elements per invocation in registers
#include "e2mc_column.glsl"

// This invocation's elements: REG consecutive positions of the column, from
// u * REG (u: see sort_registers).
float rkey[REG];
uint rrow[REG];

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

void main() {
	uint col = group_index();
	if (col >= d) {
		return; // uniform over the workgroup
	}
	sort_registers(col);
	float total = reg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	if (gl_LocalInvocationID.x == 0u) {
		h[hOff + col] = total / float(n - m);
	}
}
