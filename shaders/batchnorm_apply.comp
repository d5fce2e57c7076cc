#version 450
// The elementwise pass of batch normalisation over a piece [lo, lo + n) of
// x viewed as [N, C, S] (flat element g belongs to channel (g / S) % C).
// MODE (specialization constant):
//   0 forward:  y  = (x - shift) * scale + offset
//   1 backward: dx = gdy * dy + gx * (x - shift) + gconst
// with the per-channel rows of the statistics tensor (batchnorm_common.glsl).
// x - shift is exact for the values of a channel with a large mean and a
// small spread (both lie within a factor of 2), so such a channel keeps its
// digits. Each invocation takes PER consecutive elements, which mostly lie in
// one channel: it loads that channel's coefficients once and again only where
// its run crosses into the next channel.
#include "common.glsl"
#include "batchnorm_common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint PER = 4;
layout(constant_id = 2) const uint MODE = 0;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) readonly buffer DY { float dy[]; };
layout(binding = 2) readonly buffer Stats { float stats[]; };
layout(binding = 3) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint n;
	uint lo; // the piece's first element in x
	uint xoff;
	uint dyoff;
	uint yoff;
	uint statsoff;
	uint C;
	uint S;
	uint smagic, sshift; // divMagic(S)
	uint cmagic, cshift; // divMagic(C)
};

void main() {
	uint i = global_index(WG) * PER;
	if (i >= n) {
		return;
	}
	uint g = lo + i;
	uint q = fastdiv(g, smagic, sshift);
	uint r = g - q * S;
	uint c = q - fastdiv(q, cmagic, cshift) * C;
	uint end = min(n, i + PER);
	float shift, a, b, k;
	for (bool fresh = true; i < end; i++) {
		if (fresh) {
			uint st = statsoff + c;
			shift = stats[st + ST_SHIFT * C];
			if (MODE == 0) {
				a = stats[st + ST_SCALE * C];
				b = stats[st + ST_OFFSET * C];
			} else {
				k = stats[st + ST_GDY * C];
				a = stats[st + ST_GX * C];
				b = stats[st + ST_GCONST * C];
			}
			fresh = false;
		}
		float v = x[xoff + i] - shift;
		if (MODE == 0) {
			y[yoff + i] = v * a + b;
		} else {
			y[yoff + i] = k * dy[dyoff + i] + (v * a + b);
		}
		if (++r == S) {
			r = 0;
			c = c + 1 == C ? 0 : c + 1;
			fresh = true;
		}
	}
}
