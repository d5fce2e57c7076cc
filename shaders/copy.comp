#version 450
// Copies into a contiguous destination; MODE (specialization constant):
//   0 gather: for each index (i_0, ..., i_RANK-1) of a box of sizes box[],
//     d[doff + sum i_k dstride[k]] = src[sum i_k sstride[k]], where src is
//     bound as a window over NSEG consecutive buffer segments (as in
//     reduce.comp) starting at the box's first source element;
//   1 contiguous, scalar: d[doff + i] = s0[soff + i];
//   2 contiguous, vec4: the same through vec4 views of bindings 1 and 7
//     (soff and doff multiples of 4), the last n % 4 elements as scalars.
// Each invocation moves PER elements (or vec4s), at stride WG so that
// neighbouring invocations touch neighbouring addresses.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint PER = 4;
layout(constant_id = 2) const uint MODE = 0;
layout(constant_id = 3) const uint RANK = 2;
layout(constant_id = 4) const uint NSEG = 1;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer S0 { float s0[]; };
layout(binding = 1) readonly buffer S1 { float s1[]; };
layout(binding = 2) readonly buffer S2 { float s2[]; };
layout(binding = 3) readonly buffer S3 { float s3[]; };
layout(binding = 4) readonly buffer S4 { float s4[]; };
layout(binding = 5) readonly buffer S5 { float s5[]; };
layout(binding = 6) writeonly buffer D { float d[]; };
layout(binding = 1) readonly buffer S1V { vec4 s1v[]; };
layout(binding = 7) writeonly buffer DV { vec4 dv[]; };
layout(push_constant) uniform Push {
	uint n;
	uint doff;
	uint soff;
	uint end0, end1, end2, end3, end4;
	uint box[6];
	uint sstride[6];
	uint dstride[6];
};

float load(uint e) {
	if (NSEG == 1 || e < end0) return s0[soff + e];
	if (NSEG == 2 || e < end1) return s1[e - end0];
	if (NSEG == 3 || e < end2) return s2[e - end1];
	if (NSEG == 4 || e < end3) return s3[e - end2];
	if (NSEG == 5 || e < end4) return s4[e - end3];
	return s5[e - end4];
}

// The source and destination elements of box element l (row-major).
uvec2 locate(uint l) {
	uvec2 at = uvec2(0);
	for (uint k = RANK; k > 1; k--) {
		uint q = l / box[k - 1];
		uint i = l - q * box[k - 1];
		at += i * uvec2(sstride[k - 1], dstride[k - 1]);
		l = q;
	}
	return at + l * uvec2(sstride[0], dstride[0]);
}

void main() {
	uint base = group_index() * (WG * PER) + gl_LocalInvocationID.x;
	if (MODE == 0) {
		for (uint k = 0; k < PER; k++) {
			uint i = base + k * WG;
			if (i < n) {
				uvec2 at = locate(i);
				d[doff + at.y] = load(at.x);
			}
		}
	} else if (MODE == 1) {
		for (uint k = 0; k < PER; k++) {
			uint i = base + k * WG;
			if (i < n) {
				d[doff + i] = s0[soff + i];
			}
		}
	} else {
		uint n4 = n / 4;
		for (uint k = 0; k < PER; k++) {
			uint i = base + k * WG;
			if (i < n4) {
				dv[doff / 4 + i] = s1v[soff / 4 + i];
			}
		}
		uint t = n4 * 4 + group_index() * WG + gl_LocalInvocationID.x;
		if (group_index() == 0 && t < n) {
			d[doff + t] = s0[soff + t];
		}
	}
}
