#version 450
// y[offY + i] = op(a[offA + i], b[offB + i]) for i < n. The operation is the
// specialization constant OP, so each op is its own pipeline with no branch:
//   0 add a+b, 1 sub a-b, 2 mul a*b, 3 scale alpha*a, 4 axpy a+alpha*b,
//   5 relu gradient a*(b > 0) (a the output gradient, b relu's output),
//   6 add then relu max(a+b, 0) (a residual connection and its ReLU),
//   7 relu gradient as 5, written to y and to a second output z (the two
//     inputs' gradients of a residual add with its ReLU, each taken over
//     by its own input).
// y may be the same memory as a or b (each element is read, then written, by
// one invocation). Each workgroup covers WG*PER consecutive elements; element
// k of an invocation is at stride WG, so neighbouring invocations touch
// neighbouring addresses. With V4 (offA, offB and offY multiples of 4) the
// elements go in fours through vec4 views (a ragged end one at a time):
// lavapipe checks the lane's mask and the buffer's bound once per vec4.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint PER = 4;
layout(constant_id = 2) const uint OP = 0;
layout(constant_id = 3) const bool V4 = false;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 0) readonly buffer A4 { vec4 a4[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 1) readonly buffer B4 { vec4 b4[]; };
layout(binding = 2) writeonly buffer Y { float y[]; };
layout(binding = 2) writeonly buffer Y4 { vec4 y4[]; };
layout(binding = 3) writeonly buffer Z { float z[]; };
layout(binding = 3) writeonly buffer Z4 { vec4 z4[]; };
layout(push_constant) uniform Push {
	uint n;
	uint offA;
	uint offB;
	uint offY;
	float alpha;
	uint offZ; // OP 7
};

float op(float u, float v) {
	switch (OP) {
	case 0: return u + v;
	case 1: return u - v;
	case 2: return u * v;
	case 3: return alpha * u;
	case 4: return u + alpha * v;
	case 6: return u + v < 0.0 ? 0.0 : u + v; // NaN stays NaN, as in PyTorch
	default: return v > 0.0 ? u : 0.0; // 5 and 7
	}
}

void put(uint i, float r) {
	y[offY + i] = r;
	if (OP == 7) {
		z[offZ + i] = r;
	}
}

void main() {
	const uint n_ = n;
	uint base = group_index() * (WG * PER) + gl_LocalInvocationID.x;
	for (uint k = 0; k < PER; k++) {
		uint i = base + k * WG;
		if (!V4) {
			if (i < n_) {
				put(i, op(a[offA + i], b[offB + i]));
			}
		} else if (4 * i + 3 < n_) {
			const vec4 u = a4[offA / 4 + i], v = b4[offB / 4 + i];
			const vec4 r = vec4(op(u.x, v.x), op(u.y, v.y), op(u.z, v.z), op(u.w, v.w));
			y4[offY / 4 + i] = r;
			if (OP == 7) {
				z4[offZ / 4 + i] = r;
			}
		} else {
			for (uint e = 4 * i; e < n_; e++) {
				put(e, op(a[offA + e], b[offB + e]));
			}
		}
	}
}
