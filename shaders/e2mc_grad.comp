#version 450
// The gradient of one view's E2MC terms with respect to its embeddings:
//   dz = bound'(z) * (cc * (M - vscale * X * diag(C)) - ce * Gent)
// where X is the centred bounded batch, M = X C with C = XᵀX/(N-1) (or with
// C's diagonal already zeroed, vscale = 0), diag(C) the column variances and
// Gent the entropy gradient of e2mc_column.comp.
// With cc = cov_coeff * 4 / (D (N-1)) the first term is cov_coeff times the
// covariance loss's gradient; ce = ent_coeff / 2.
#include "common.glsl"
#include "bound.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint BOUND = 0;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Z { float z[]; };
layout(binding = 1) readonly buffer M { float mx[]; };
layout(binding = 2) readonly buffer X { float x[]; };
layout(binding = 3) readonly buffer V { float variance[]; };
layout(binding = 4) readonly buffer G { float gent[]; };
layout(binding = 5) writeonly buffer DZ { float dz[]; };

layout(push_constant) uniform Push {
	uint n;  // elements, N * D
	uint d;  // columns
	float cc;
	float ce;
	float vscale; // 1 when M includes C's diagonal (Gram path), 0 when not
	uint zOff, mOff, xOff, vOff, gOff, dzOff;
};

void main() {
	uint i = global_index(WG);
	if (i >= n) {
		return;
	}
	uint col = i % d;
	float cov = mx[mOff + i] - vscale * x[xOff + i] * variance[vOff + col];
	dz[dzOff + i] = bound_slope(BOUND, z[zOff + i]) * (cc * cov - ce * gent[gOff + i]);
}
