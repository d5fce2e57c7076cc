#version 450
// Elementwise maps over a matrix of rows of d elements that also read
// per-row values: y[r, c] = f(a[r, c], b[r, c], u[r], v[r], w[r], z[r]),
// f chosen by the specialization constant OP. A vector given with stride 0
// holds one value for every row (a scalar such as a loss gradient).
//   0 L2 normalise:        a / max(sqrt(u), eps)          u: sum of squares
//   1 its backward:        (a - b v) / n if n = sqrt(u) >= eps, else a / eps
//                          a: gradient, b: output, v: row dot of a and b
//                          (F.normalize's clamp_min passes no gradient to
//                          the norm where it clamps)
//   2 cosine similarity:   a / (max(sqrt(u), eps) max(sqrt(v), eps))
//                          a: row dot products (d = 1), u, v: sums of squares
//   3 its backward:        w (b / (na nb) - z a / na^2), na = max(sqrt(u), eps),
//                          nb = max(sqrt(v), eps); a: this input, b: the
//                          other, u, v: their sums of squares, w: output
//                          gradient, z: cosine (torch 1.13 clamps each norm
//                          without a gradient through the clamp)
//   4 softmax backward:    b (a - u)         a: gradient, b: softmax, u: row dot
//   5 log-softmax bwd:     a - exp(b) u      a: gradient, b: log-softmax, u: row sum of a
//   6 cross-entropy bwd:   alpha w (exp(a - u) - [c == v])
//                          a: logits, u: log-sum-exp, v: label, w: gradient
//   7 scale by a value:    alpha u a
//   8 broadcast a value:   alpha u
// One dispatch covers n consecutive elements, the first at column `first` of
// its row; every vector is bound at the piece's first row. y may be the same
// memory as a or b (each element is read, then written, by one invocation).
#include "common.glsl"
#include "erf.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint OP = 0;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer A { float a[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(binding = 2) readonly buffer U { float u[]; };
layout(binding = 3) readonly buffer V { float v[]; };
layout(binding = 4) readonly buffer W { float w[]; };
layout(binding = 5) readonly buffer Z { float z[]; };
layout(binding = 6) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint n;     // elements in this piece
	uint d;     // row length
	uint first; // column of the piece's first element
	uint offA, offB, offY;
	uint offU, offV, offW, offZ;
	uint su, sv, sw, sz; // 1: a value per row; 0: one value for all rows
	float alpha;
	float eps;
};

float clamped_norm(float ss) { return max(sqrt(ss), eps); }

// Each operand is loaded only by the operations that use it: the unused
// bindings of an operation hold whatever the caller bound there.
float f(uint i, uint r, uint c) {
	switch (OP) {
	case 0:
		return a[offA + i] / clamped_norm(u[offU + r * su]);
	case 1: {
		float nrm = sqrt(u[offU + r * su]);
		if (nrm >= eps) {
			return (a[offA + i] - b[offB + i] * v[offV + r * sv]) / nrm;
		}
		return a[offA + i] / eps;
	}
	case 2:
		return a[offA + i] / (clamped_norm(u[offU + r * su]) * clamped_norm(v[offV + r * sv]));
	case 3: {
		float na = clamped_norm(u[offU + r * su]);
		float nb = clamped_norm(v[offV + r * sv]);
		return w[offW + r * sw] * (b[offB + i] / (na * nb) - z[offZ + r * sz] * a[offA + i] / (na * na));
	}
	case 4:
		return b[offB + i] * (a[offA + i] - u[offU + r * su]);
	case 5:
		return a[offA + i] - e2_exp(b[offB + i]) * u[offU + r * su];
	case 6: {
		float hit = c == uint(v[offV + r * sv]) ? 1.0 : 0.0;
		return alpha * w[offW + r * sw] * (e2_exp(a[offA + i] - u[offU + r * su]) - hit);
	}
	case 7:
		return alpha * u[offU + r * su] * a[offA + i];
	default:
		return alpha * u[offU + r * su];
	}
}

void main() {
	uint i = global_index(WG);
	if (i < n) {
		uint t = first + i;
		uint r = t / d;
		y[offY + i] = f(i, r, t - r * d);
	}
}
