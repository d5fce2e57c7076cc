#version 450
// The elementwise pass of batch normalisation over a piece [lo, lo + n) of
// x viewed as [N, C, S] (flat element g belongs to channel (g / S) % C).
// MODE (specialization constant):
//   0 forward:  y  = (x - shift) * scale + offset
//   1 backward: dx = gdy * dy + gx * (x - shift) + gconst
// with the per-channel rows of the statistics tensor (batchnorm_common.glsl).
// RELU (specialization constant) fuses the ReLU that follows the layer in
// ResNets and MLP heads: the forward writes max(y, 0); the backward takes
// dy only where that output m (bound at 4) is positive, as ReLU's backward
// does, so neither needs a pass of its own.
// x - shift is exact for the values of a channel with a large mean and a
// small spread (both lie within a factor of 2), so such a channel keeps its
// digits.
//
// VEC (specialization constant) moves vec4 units: 0 none (units of one
// element); 1 four neighbouring positions of one plane (S % 4 == 0); 2 four
// neighbouring channels of a row of [N, C] (S == 1, C % 4 == 0, their
// coefficients read as vec4 too). n, lo and the offsets of x, dy and y are
// then in units of 4 elements (the layer checks the alignment). Each
// invocation finds the channel of its first unit by two multiply-high
// divisions, loads that channel's coefficients and takes PER units: with
// VEC 0 and 1 a run of consecutive units, which mostly lie in one plane (it
// loads the coefficients again only where the run crosses into the next
// plane); with VEC 2 the units of the same four channels in PER
// consecutive rows (invocation t takes units blk*PER*C4 + j + k*C4 for
// k < PER, where blk = t / C4, j = t % C4 and C4 = C / 4).
#include "common.glsl"
#include "batchnorm_common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint PER = 4;
layout(constant_id = 2) const uint MODE = 0;
layout(constant_id = 3) const uint VEC = 0;
layout(constant_id = 4) const uint RELU = 0;
layout(local_size_x_id = 0) in;
const uint UNIT = VEC == 0 ? 1 : 4;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 0) readonly buffer XV { vec4 xv[]; };
layout(binding = 1) readonly buffer DY { float dy[]; };
layout(binding = 1) readonly buffer DYV { vec4 dyv[]; };
layout(binding = 2) readonly buffer Stats { float stats[]; };
layout(binding = 2) readonly buffer StatsV { vec4 statsv[]; };
layout(binding = 3) writeonly buffer Y { float y[]; };
layout(binding = 3) writeonly buffer YV { vec4 yv[]; };
layout(binding = 4) readonly buffer M { float m[]; };
layout(binding = 4) readonly buffer MV { vec4 mv[]; };
layout(push_constant) uniform Push {
	uint n;
	uint lo; // the piece's first unit in x
	uint xoff;
	uint dyoff;
	uint yoff;
	uint statsoff;
	uint C;
	uint S;
	uint smagic, sshift; // divMagic(S)
	uint cmagic, cshift; // divMagic(C)
	uint moff; // RELU backward: the mask's offset, in units like dyoff
};

// Row r of the statistics of the unit's channel c (VEC 2: of its four).
vec4 stat(uint r, uint c) {
	uint at = statsoff + r * C + c;
	return VEC == 2 ? statsv[at / 4] : vec4(stats[at]);
}

void main() {
	uint t = global_index(WG);
	uint i, step;
	if (VEC == 2) {
		uint c4 = C / 4;
		uint blk = t / c4;
		i = blk * PER * c4 + (t - blk * c4);
		step = c4;
	} else {
		i = t * PER;
		step = 1;
	}
	if (i >= n) {
		return;
	}
	uint end = min(n, i + PER * step);
	uint g = (lo + i) * UNIT;
	uint q = fastdiv(g, smagic, sshift);
	uint pos = g - q * S;
	uint c = q - fastdiv(q, cmagic, cshift) * C;
	vec4 shift, a, b, k;
	for (bool fresh = true; i < end; i += step) {
		if (fresh) {
			shift = stat(ST_SHIFT, c);
			if (MODE == 0) {
				a = stat(ST_SCALE, c);
				b = stat(ST_OFFSET, c);
			} else {
				k = stat(ST_GDY, c);
				a = stat(ST_GX, c);
				b = stat(ST_GCONST, c);
			}
			fresh = false;
		}
		vec4 v = (VEC == 0 ? vec4(x[xoff + i]) : xv[xoff + i]) - shift;
		vec4 r = v * a + b;
		if (MODE == 1) {
			vec4 d = VEC == 0 ? vec4(dy[dyoff + i]) : dyv[dyoff + i];
			if (RELU != 0) {
				vec4 out_ = VEC == 0 ? vec4(m[moff + i]) : mv[moff + i];
				d = mix(vec4(0.0), d, greaterThan(out_, vec4(0.0)));
			}
			r += k * d;
		} else if (RELU != 0) {
			r = mix(r, vec4(0.0), lessThan(r, vec4(0.0))); // NaN stays NaN, as in PyTorch
		}
		if (VEC == 0) {
			y[yoff + i] = r.x;
		} else {
			yv[yoff + i] = r;
		}
		if (VEC != 2) {
			pos += UNIT;
			if (pos >= S) { // the next plane
				pos = 0;
				c = c + 1 == C ? 0 : c + 1;
				fresh = true;
			}
		}
	}
}
