#version 450
// The last step of a GPU convolution whose GEMM was split along its sum
// (layers/conv_im2col.go): adds the S partial products
// part[s][m][p] (p = n*HW + q over the NP pixels of NB images) and the
// bias, and writes the result in the convolution's layout:
//   y[n][m][q] = sum over s of part[s][m][n*HW + q] (+ bias[m]).
// Workgroup row y is channel m; neighbouring invocations read and write
// neighbouring pixels.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Part { float part[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
layout(binding = 2) readonly buffer Bias { float bias[]; };

layout(push_constant) uniform Push {
	uint NP, HW, S;
	uint poff, yoff, boff;
	uint SPS, SYN; // strides of part's slices and of y's images
	uint FLAGS;    // 1: add the bias
};

void main() {
	const uint p = gl_WorkGroupID.x * WG + gl_LocalInvocationID.x;
	if (p >= NP) {
		return;
	}
	const uint m = gl_WorkGroupID.y;
	const uint q = p % HW, n = p / HW;
	uint at = poff + m * NP + p;
	float v = 0.0;
	for (uint s = 0; s < S; s++) {
		v += part[at];
		at += SPS;
	}
	if ((FLAGS & 1u) != 0) {
		v += bias[boff + m];
	}
	y[yoff + n * SYN + m * HW + q] = v;
}
