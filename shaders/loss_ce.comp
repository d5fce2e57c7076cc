#version 450
// Cross-entropy of each row of logits x (rows of k elements) with its class
// label (labels[r], a class index held as a float, exact below 2^24):
//   lse[r] = m + log(s)               (the row's log-sum-exp, kept for the
//                                      backward pass: softmax = exp(x - lse))
//   nll[r] = (m - x[r, label]) + log(s)
// with m the row's maximum and s = sum exp(x - m) (rows.glsl). One dispatch
// covers a piece of rows whose x, labels, lse and nll each lie in one buffer
// segment. Layout of a workgroup as in rows.glsl.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint TY = 1;
layout(local_size_x_id = 0) in;
const uint TX = WG / TY;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer L { float labels[]; };
layout(binding = 2) writeonly buffer S { float lse[]; };
layout(binding = 3) writeonly buffer E { float nll[]; };
layout(push_constant) uniform Push {
	uint rows; // rows in this piece
	uint k;    // classes
	uint xoff;
	uint loff;
	uint soff;
	uint eoff;
};

shared float part[WG];

#include "rows.glsl"

void main() {
	uint tx = gl_LocalInvocationID.x % TX;
	uint ty = gl_LocalInvocationID.x / TX;
	uint r = group_index() * TX + tx;
	bool live = r < rows;
	uint xb = xoff + r * k;
	float m, s;
	row_stats(live, xb, tx, ty, m, s);
	if (live && ty == 0) {
		uint label = uint(labels[loff + r]);
		float ls = e2_log(s);
		lse[soff + r] = m + ls;
		nll[eoff + r] = (m - x[xb + label]) + ls;
	}
}
