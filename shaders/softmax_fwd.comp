#version 450
// Softmax (OP 0) or log-softmax (OP 1) of each row of x, a matrix of rows of
// k elements, written to y (the same shape; it may not be x):
//   softmax:     y = exp(x - m) / s
//   log-softmax: y = (x - m) - log(s)
// with m the row's maximum and s = sum exp(x - m) (rows.glsl), so nothing
// overflows. One dispatch covers a piece of rows that lies in one buffer
// segment of x and of y. Layout of a workgroup as in rows.glsl.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint TY = 1;
layout(constant_id = 2) const uint OP = 0;
layout(local_size_x_id = 0) in;
const uint TX = WG / TY;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint rows; // rows in this piece
	uint k;    // row length
	uint xoff;
	uint yoff;
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
	if (!live) {
		return;
	}
	uint yb = yoff + r * k;
	if (OP == 0) {
		for (uint c = ty; c < k; c += TY) {
			y[yb + c] = e2_exp(x[xb + c] - m) / s;
		}
	} else {
		float ls = e2_log(s);
		for (uint c = ty; c < k; c += TY) {
			y[yb + c] = (x[xb + c] - m) - ls;
		}
	}
}
