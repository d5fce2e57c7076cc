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
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
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
	uint base = group_index() * (WG * PER) + gl_LocalInvocationID.x;
	for (uint k = 0; k < PER; k++) {
		uint i = base + k * WG;
		if (i < n) {
			y[offY + i] = f(x[offX + i]);
		}
	}
}
