#version 450
// 2-D pooling of x [planes, H, W] into y [planes, Ho, Wo] (planes = N*C),
// as torch's max_pool2d (OP 0; padding counts as -inf; the first maximum
// wins ties, a NaN wins over any number) and avg_pool2d (OP 1;
// count_include_pad: the sum over the window, padding counting as 0, over
// kh*kw). ceil_mode is false, so every window lies inside the padded input
// and touches at least one value (the padding is at most half the kernel).
// With SAVE set, max pooling also writes the argmax of each window (its
// index h*W + w within the plane, as PyTorch's indices) for the backward
// pass.
//
// One invocation per output of a box of planes [0, planes) x output rows
// [oh0, oh0 + rows), whose first output is y[yoff] (and idx[ioff]). The box
// reads x from row r0 of its first plane on, through a window of two buffer
// segments (a window's rows may straddle a segment boundary, a row never
// does): element e of the window (e = (q*H + h - r0)*W + w) is x0[xoff + e]
// before xend, x1[e - xend] after.
#include "common.glsl"
#include "batchnorm_common.glsl" // fastdiv

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint OP = 0;
layout(constant_id = 2) const uint SAVE = 0;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer X0 { float x0[]; };
layout(binding = 1) readonly buffer X1 { float x1[]; };
layout(binding = 2) writeonly buffer Y { float y[]; };
layout(binding = 3) writeonly buffer I { uint idx[]; };
layout(push_constant) uniform Push {
	uint planes;
	uint rows;
	int oh0;
	int r0;
	int H, W, Wo;
	int kh, kw, sh, sw, ph, pw;
	uint xoff;
	uint xend;
	uint yoff;
	uint ioff;
	uint womagic, woshift; // divMagic(Wo)
	uint rmagic, rshift;   // divMagic(rows)
};

float load(uint e) {
	return e < xend ? x0[xoff + e] : x1[e - xend];
}

void main() {
	uint i = global_index(WG);
	if (i >= planes * rows * uint(Wo)) {
		return;
	}
	uint t = fastdiv(i, womagic, woshift);
	int ow = int(i - t * uint(Wo));
	uint q = fastdiv(t, rmagic, rshift);
	int oh = oh0 + int(t - q * rows);
	int h0 = oh * sh - ph;
	int w0 = ow * sw - pw;
	int h1 = min(h0 + kh, H);
	int w1 = min(w0 + kw, W);
	h0 = max(h0, 0);
	w0 = max(w0, 0);
	int base = (int(q) * H - r0) * W;
	if (OP == 0) {
		float m = -1.0 / 0.0;
		int at = h0 * W + w0;
		for (int h = h0; h < h1; h++) {
			for (int w = w0; w < w1; w++) {
				float v = load(uint(base + h * W + w));
				if (v > m || isnan(v)) {
					m = v;
					at = h * W + w;
				}
			}
		}
		y[yoff + i] = m;
		if (SAVE != 0) {
			idx[ioff + i] = uint(at);
		}
	} else {
		float sum = 0.0;
		for (int h = h0; h < h1; h++) {
			for (int w = w0; w < w1; w++) {
				sum += load(uint(base + h * W + w));
			}
		}
		y[yoff + i] = sum / float(kh * kw);
	}
}
