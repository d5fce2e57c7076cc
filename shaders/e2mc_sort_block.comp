#version 450
// Bitonic sort of long columns, the steps inside blocks of NMAX elements:
// one workgroup per (column, block) loads the block into shared memory and
// runs either every stage k <= NMAX (k == 0: sorts the blocks, alternating
// direction) or the steps j < NMAX of stage k (k > NMAX: after
// e2mc_sort_step has done the steps j >= NMAX).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint NMAX = 4096;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer K { float skey[]; }; // D x npad
layout(binding = 1) buffer R { uint srow[]; };  // D x npad

layout(push_constant) uniform Push {
	uint d, npad, k;
	uint kOff, rOff;
};

shared uvec2 kv[NMAX];

const uint BOUND = 0u; // unused here
#include "e2mc.glsl"

void main() {
	uint blocks = npad / NMAX;
	uint g = group_index();
	if (g >= d * blocks) {
		return;
	}
	uint col = g / blocks;
	uint start = (g % blocks) * NMAX; // within the column
	uint base = col * npad + start;
	uint t = gl_LocalInvocationID.x;
	for (uint i = t; i < NMAX; i += WG) {
		kv[i] = uvec2(floatBitsToUint(skey[kOff + base + i]), srow[rOff + base + i]);
	}
	barrier();
	if (k == 0u) {
		bitonic_shared(start, NMAX, 2u, NMAX, NMAX);
	} else {
		bitonic_shared(start, NMAX, k, k, NMAX / 2u);
	}
	for (uint i = t; i < NMAX; i += WG) {
		skey[kOff + base + i] = uintBitsToFloat(kv[i].x);
		srow[rOff + base + i] = kv[i].y;
	}
}
