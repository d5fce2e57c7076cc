#version 450
// Partial sums of squares for the layer-wise trust ratios of LARS and LARC.
// Over a piece of n elements of a parameter p and its gradient g, workgroup k
// of the dispatch (of `groups` workgroups) sums the elements
// i = k*WG + j, k*WG + j + groups*WG, ... and writes
//   part[off + 2k]     = sum p^2
//   part[off + 2k + 1] = sum (g + c*p)^2
// where c is the weight decay of LARS's update norm, or 0 for LARC's gradient
// norm. optim_step.comp adds the partials of a parameter in a fixed order, so
// the norms, and so the steps, are the same bits on every run.
//
// Each invocation sums its share with Kahan compensation and the workgroup
// adds the WG shares pairwise in shared memory: the squares are all positive,
// so the partials are accurate to a few ulp whatever the length.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256; // a power of two
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer P { float p[]; };
layout(binding = 1) readonly buffer G { float g[]; };
layout(binding = 2) writeonly buffer Part { float part[]; };
layout(push_constant) uniform Push {
	uint n;
	uint offP;
	uint offG;
	uint offPart;
	uint groups; // workgroups of this dispatch
	float c;
};

shared float sp[WG];
shared float su[WG];

void main() {
	uint j = gl_LocalInvocationID.x;
	uint k = gl_WorkGroupID.x;
	precise float s1 = 0.0, c1 = 0.0, s2 = 0.0, c2 = 0.0;
	for (uint i = k * WG + j; i < n; i += groups * WG) {
		float pv = p[offP + i];
		float u = g[offG + i] + c * pv;
		precise float t1 = pv * pv - c1;
		precise float t2 = s1 + t1;
		c1 = (t2 - s1) - t1;
		s1 = t2;
		precise float t3 = u * u - c2;
		precise float t4 = s2 + t3;
		c2 = (t4 - s2) - t3;
		s2 = t4;
	}
	sp[j] = s1 - c1;
	su[j] = s2 - c2;
	barrier();
	for (uint h = WG / 2; h > 0; h /= 2) {
		if (j < h) {
			sp[j] += sp[j + h];
			su[j] += su[j + h];
		}
		barrier();
	}
	if (j == 0) {
		part[offPart + 2 * k] = sp[0];
		part[offPart + 2 * k + 1] = su[0];
	}
}
