#version 450
// Reductions over the middle axis of x viewed as [outer, n, inner]:
//   OP 0: y[o, i] = sum_k x[o, k, i] / div                 (sum, mean)
//   OP 1: y[o, i] = sum_k (x[o, k, i] - mean)^2 / div      (variance; two
//         passes over the slice: its mean first, then the centred squares)
// One dispatch covers a piece of [outer, inner] outputs. A workgroup is TX x TY
// invocations (TX = WG / TY): TX neighbouring outputs (neighbouring inner
// indices, so loads coalesce when inner > 1), each summed by TY invocations
// that stride over n (so loads coalesce along a row when inner == 1). Each
// invocation sums its share with Kahan compensation, and the TY partial sums
// are added pairwise in shared memory: float32 results stay within a few ulp
// of the exact sum, independent of n.
//
// x is bound as a window over NSEG (1 to 6) consecutive buffer segments, so
// that a slice may cross segment boundaries: element e of the piece (relative
// to its first element) is x0[xoff + e] for e < end0, x1[e - end0] for
// e < end1, and so on (each later segment is bound from its start).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint TY = 1;
layout(constant_id = 2) const uint OP = 0;
layout(constant_id = 3) const uint NSEG = 1;
layout(local_size_x_id = 0) in;
const uint TX = WG / TY;

layout(binding = 0) readonly buffer X0 { float x0[]; };
layout(binding = 1) readonly buffer X1 { float x1[]; };
layout(binding = 2) readonly buffer X2 { float x2[]; };
layout(binding = 3) readonly buffer X3 { float x3[]; };
layout(binding = 4) readonly buffer X4 { float x4[]; };
layout(binding = 5) readonly buffer X5 { float x5[]; };
layout(binding = 6) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint outer;  // outer indices in this piece
	uint inner;  // inner indices in this piece
	uint n;      // length of each reduced slice
	uint stride; // x's element stride along n (its full inner size)
	uint xouter; // x's element stride between outer indices (n * stride)
	uint xoff;
	uint end0, end1, end2, end3, end4;
	uint yoff;
	uint youter; // y's stride between outer indices (x's full inner size)
	float div;   // the result is divided by div: 1, n, or n - correction
};

shared float part[WG];

float load(uint e) {
	if (NSEG == 1 || e < end0) return x0[xoff + e];
	if (NSEG == 2 || e < end1) return x1[e - end0];
	if (NSEG == 3 || e < end2) return x2[e - end1];
	if (NSEG == 4 || e < end3) return x3[e - end2];
	if (NSEG == 5 || e < end4) return x4[e - end3];
	return x5[e - end4];
}

// Kahan-compensated sum of the invocation's share of a slice: k = ty, ty+TY, ...
// With centre set (OP 1, second pass), sums (x - centre)^2 instead.
float slice_sum(bool live, uint base, uint ty, bool centred, float centre) {
	precise float s = 0.0;
	precise float c = 0.0;
	if (live) {
		for (uint k = ty; k < n; k += TY) {
			float v = load(base + k * stride);
			if (centred) {
				v -= centre;
				v *= v;
			}
			precise float t1 = v - c;
			precise float t2 = s + t1;
			c = (t2 - s) - t1;
			s = t2;
		}
	}
	return s - c;
}

// Adds the TY partial sums of each output pairwise; every invocation gets the
// total of its output.
float combine(float v, uint tx, uint ty) {
	if (TY == 1) {
		return v;
	}
	uint at = ty * TX + tx;
	part[at] = v;
	barrier();
	for (uint h = TY / 2; h > 0; h /= 2) {
		if (ty < h) {
			part[at] += part[at + h * TX];
		}
		barrier();
	}
	float r = part[tx];
	barrier(); // part is reused by the next combine
	return r;
}

void main() {
	uint tx = gl_LocalInvocationID.x % TX;
	uint ty = gl_LocalInvocationID.x / TX;
	uint p = group_index() * TX + tx;
	bool live = p < outer * inner;
	uint o = p / inner;
	uint i = p - o * inner;
	uint base = o * xouter + i;

	float total = combine(slice_sum(live, base, ty, false, 0.0), tx, ty);
	if (OP == 1) {
		float mean = total / float(n);
		total = combine(slice_sum(live, base, ty, true, mean), tx, ty);
	}
	if (live && ty == 0) {
		y[yoff + o * youter + i] = total / div;
	}
}
