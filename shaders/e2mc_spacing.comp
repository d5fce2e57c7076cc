#version 450
// Last pass of the E2MC column path for long columns: per column (one
// workgroup), the m-spacing entropy of the sorted keys and its gradient,
// scattered to the rows (see e2mc_column.comp, which does the same for
// columns that fit shared memory).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const bool GRAD = true;
layout(constant_id = 2) const uint BOUND = 0;
layout(local_size_x_id = 0) in;
const uint NMAX = WG; // wg_sum's scratch

layout(binding = 0) readonly buffer K { float skey[]; };  // D x npad, sorted
layout(binding = 1) readonly buffer R { uint srow[]; };   // D x npad
layout(binding = 2) writeonly buffer H { float h[]; };    // D
layout(binding = 3) writeonly buffer G { float g[]; };    // N x D

layout(push_constant) uniform Push {
	uint n, d, npad, m;
	float eps, scale, gcoef;
	uint kOff, rOff, hOff, gOff;
};

shared uvec2 kv[NMAX];

uint colBase;
#define SORTED_KEY(i) skey[kOff + colBase + (i)]
#define SORTED_ROW(i) srow[rOff + colBase + (i)]
#include "e2mc.glsl"

void main() {
	uint col = group_index();
	if (col >= d) {
		return;
	}
	colBase = col * npad;
	float total = wg_sum(column_spacings(n, m, scale, eps, GRAD, gcoef, gOff + col, d));
	if (gl_LocalInvocationID.x == 0u) {
		h[hOff + col] = total / float(n - m);
	}
}
