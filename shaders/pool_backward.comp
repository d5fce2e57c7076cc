#version 450
// The backward pass of pool_forward.comp: dx [planes, H, W] from dy
// [planes, Ho, Wo], gathered rather than scattered (no atomics): each input
// element sums the output gradients of the windows that hold it, for max
// pooling (OP 0) only those whose saved argmax is this element, for average
// pooling (OP 1) each divided by kh*kw.
//
// One invocation per element of a box of planes [0, planes) x input rows
// [h0, h0 + rows), whose first element is dx[dxoff]. The box reads dy and
// the argmax idx from output row o0 of its first plane on, each through a
// window of two buffer segments: element e (e = (q*Ho + oh - o0)*Wo + ow)
// is dy0[dyoff + e] before dyend, dy1[e - dyend] after (idx likewise).
#include "common.glsl"
#include "batchnorm_common.glsl" // fastdiv

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint OP = 0;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer DY0 { float dy0[]; };
layout(binding = 1) readonly buffer DY1 { float dy1[]; };
layout(binding = 2) readonly buffer I0 { uint idx0[]; };
layout(binding = 3) readonly buffer I1 { uint idx1[]; };
layout(binding = 4) writeonly buffer DX { float dx[]; };
layout(push_constant) uniform Push {
	uint planes;
	uint rows;
	int h0;
	int o0;
	int W, Ho, Wo;
	int kh, kw, sh, sw, ph, pw;
	uint dxoff;
	uint dyoff, dyend;
	uint ioff, iend;
	uint wmagic, wshift;   // divMagic(W)
	uint rmagic, rshift;   // divMagic(rows)
	uint shmagic, shshift; // divMagic(sh)
	uint swmagic, swshift; // divMagic(sw)
};

// The first and last output index whose window (stride s, kernel k,
// padding p) holds input index v, clipped to [0, n); m and l are divMagic(s).
ivec2 windows(int v, int k, int s, int p, int n, uint m, uint l) {
	int a = v + p - k + 1;
	int first = a <= 0 ? 0 : int(fastdiv(uint(a + s - 1), m, l));
	return ivec2(first, min(n - 1, int(fastdiv(uint(v + p), m, l))));
}

void main() {
	uint i = global_index(WG);
	if (i >= planes * rows * uint(W)) {
		return;
	}
	uint t = fastdiv(i, wmagic, wshift);
	int w = int(i - t * uint(W));
	uint q = fastdiv(t, rmagic, rshift);
	int h = h0 + int(t - q * rows);
	ivec2 oh = windows(h, kh, sh, ph, Ho, shmagic, shshift);
	ivec2 ow = windows(w, kw, sw, pw, Wo, swmagic, swshift);
	int base = (int(q) * Ho - o0) * Wo;
	uint self = uint(h * W + w);
	float sum = 0.0;
	for (int r = oh.x; r <= oh.y; r++) {
		for (int c = ow.x; c <= ow.y; c++) {
			uint e = uint(base + r * Wo + c);
			if (OP == 1 || (e < iend ? idx0[ioff + e] : idx1[e - iend]) == self) {
				sum += e < dyend ? dy0[dyoff + e] : dy1[e - dyend];
			}
		}
	}
	dx[dxoff + i] = OP == 0 ? sum : sum / float(kh * kw);
}
