#version 450
// One workgroup per embedding column, for columns whose rows fit shared
// memory: bound the column, sort it in shared memory (bitonic; ties ordered
// by row, as a stable sort orders them), and from the sorted column compute
// its m-spacing entropy and the entropy's gradient with respect to the
// bounded values, scattered back to the rows through the sort permutation.
// Also writes the centred bounded values (for the covariance) and the
// column's variance.
//
// The sort keys are the unbounded values (the bounds are increasing) and the
// spacings come from bound_diff, which keeps float32 relative precision in
// saturated tails; centring cannot change the entropy.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;    // invocations, a power of two
layout(constant_id = 1) const uint NMAX = 4096; // sortable rows, a power of two
layout(constant_id = 2) const uint BOUND = 0;   // see bound.glsl
layout(constant_id = 3) const bool GRAD = true;
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

void main() {
	uint col = group_index();
	if (col >= d) {
		return; // uniform over the workgroup
	}
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
	float total = wg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	if (t == 0u) {
		h[hOff + col] = total / float(n - m);
	}
}
