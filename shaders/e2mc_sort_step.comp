#version 450
// One step (k, j) of the bitonic sort of long columns, for j >= the block
// size of e2mc_sort_block: one invocation per compare-exchange pair, in
// global memory. Ties are ordered by row, as in e2mc.glsl.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer K { float skey[]; }; // D x npad
layout(binding = 1) buffer R { uint srow[]; };  // D x npad

layout(push_constant) uniform Push {
	uint pairs; // d * npad / 2
	uint npad, k, j;
	uint kOff, rOff;
};

void main() {
	uint p = global_index(WG);
	if (p >= pairs) {
		return;
	}
	uint half_ = npad / 2u;
	uint col = p / half_;
	uint q = p % half_;
	uint a = ((q & ~(j - 1u)) << 1u) | (q & (j - 1u));
	uint b = a + j;
	bool up = (a & k) == 0u;
	uint base = col * npad;
	float ka = skey[kOff + base + a], kb = skey[kOff + base + b];
	uint ra = srow[rOff + base + a], rb = srow[rOff + base + b];
	bool bFirst = kb < ka || (kb == ka && rb < ra);
	if (bFirst == up) {
		skey[kOff + base + a] = kb;
		skey[kOff + base + b] = ka;
		srow[rOff + base + a] = rb;
		srow[rOff + base + b] = ra;
	}
}
