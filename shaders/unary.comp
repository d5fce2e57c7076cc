#version 450
// y[offY + i] = f(x[offX + i]) for i < n, f chosen by the specialization
// constant OP: 0 relu, 1 sigmoid, 2 exp, 3 log, 4 normal CDF, and (so that
// every function of erf.glsl is tested) 5 erf, 6 erfc, 7 normal density.
// y may be the same memory as x. Layout of the work as in binary.comp.
#include "common.glsl"
#include "erf.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint PER = 4;
layout(constant_id = 2) const uint OP = 0;
// V4: elements in fours through vec4 views, as binary.comp does.
layout(constant_id = 3) const bool V4 = false;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 0) readonly buffer X4 { vec4 x4[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
layout(binding = 1) writeonly buffer Y4 { vec4 y4[]; };
layout(push_constant) uniform Push {
	uint n;
	uint offX;
	uint offY;
};

// 1/(1+exp(-v)) without overflow: exp is only taken of -|v|, and the
// negative side is e/(1+e), which keeps its relative accuracy for v << 0.
float sigmoid(float v) {
	float e = e2_exp(-abs(v));
	float r = 1.0 / (1.0 + e);
	return v >= 0.0 ? r : e * r;
}

float f(float v) {
	switch (OP) {
	case 0: return v < 0.0 ? 0.0 : v; // NaN stays NaN
	case 1: return sigmoid(v);
	case 2: return e2_exp(v);
	case 3: return e2_log(v);
	case 4: return normal_cdf(v);
	case 5: return e2_erf(v);
	case 6: return e2_erfc(v);
	default: return normal_pdf(v);
	}
}

void main() {
	const uint n_ = n;
	uint base = group_index() * (WG * PER) + gl_LocalInvocationID.x;
	for (uint k = 0; k < PER; k++) {
		uint i = base + k * WG;
		if (!V4) {
			if (i < n_) {
				y[offY + i] = f(x[offX + i]);
			}
		} else if (4 * i + 3 < n_) {
			const vec4 v = x4[offX / 4 + i];
			y4[offY / 4 + i] = vec4(f(v.x), f(v.y), f(v.z), f(v.w));
		} else {
			for (uint e = 4 * i; e < n_; e++) {
				y[offY + e] = f(x[offX + e]);
			}
		}
	}
}
