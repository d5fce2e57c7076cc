#version 450
// First pass of the E2MC column path for columns longer than shared memory
// holds: per column (one workgroup), copy the values into a padded,
// column-major key array with their row indices, and write the centred
// bounded values and the column variance. e2mc_sort_block / e2mc_sort_step sort the
// keys, e2mc_spacing measures them.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint BOUND = 0;
layout(local_size_x_id = 0) in;
const uint NMAX = WG; // wg_sum's scratch

layout(binding = 0) readonly buffer Z { float z[]; };         // N x D
layout(binding = 1) writeonly buffer X { float x[]; };        // N x D, centred
layout(binding = 2) writeonly buffer V { float variance[]; }; // D
layout(binding = 3) buffer K { float skey[]; };               // D x npad
layout(binding = 4) writeonly buffer R { uint srow[]; };      // D x npad

layout(push_constant) uniform Push {
	uint n, d, npad;
	uint zOff, xOff, vOff, kOff, rOff;
};

shared uvec2 kv[NMAX];

#include "bound.glsl"
#include "e2mc.glsl"

void main() {
	uint col = group_index();
	if (col >= d) {
		return;
	}
	uint t = gl_LocalInvocationID.x;
	uint base = col * npad;
	float sum = 0.0;
	for (uint i = t; i < npad; i += WG) {
		float v = uintBitsToFloat(0x7f800000u);
		if (i < n) {
			v = z[zOff + i * d + col];
			sum += bound_value(BOUND, v);
		}
		skey[kOff + base + i] = v;
		srow[rOff + base + i] = i;
	}
	float mean = wg_sum(sum) / float(n);
	float sq = 0.0;
	for (uint i = t; i < n; i += WG) {
		float c = bound_value(BOUND, skey[kOff + base + i]) - mean; // own write
		x[xOff + i * d + col] = c;
		sq += c * c;
	}
	float ss = wg_sum(sq);
	if (t == 0u) {
		variance[vOff + col] = ss / float(n - 1u);
	}
}
