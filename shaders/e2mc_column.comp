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
// This kernel sorts the column in shared memory, every compare-exchange step
// there (GPUs: many invocations, cheap shared memory); e2mc_column_reg.comp
// sorts in registers and subgroup shuffles for CPU devices.
#include "e2mc_column.glsl"

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
	sort_shared(col);
	float total = wg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	if (gl_LocalInvocationID.x == 0u) {
		h[hOff + col] = total / float(n - m);
	}
}
