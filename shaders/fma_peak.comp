#version 450
// Peak fused multiply-add throughput, for tools/vkbench. Each invocation runs
// CHAINS independent vec4 chains x = fma(x, m, a) for `iters` iterations
// (4*CHAINS FMAs, 8*CHAINS flops per iteration) and writes the sum of its
// chains to y[off + i], so the work cannot be optimised away. m and a come
// from push constants so nothing folds at compile time; with m near 1 and a
// small the values stay finite. Independent chains hide the FMA latency; vec4
// keeps GPUs and lavapipe's SIMD lanes busy.
#include "common.glsl"

#define CHAINS 8

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;
layout(binding = 0) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint n;     // invocations that write
	uint off;   // element offset of y in the bound segment
	uint iters; // iterations of each chain
	float m;    // multiplier
	float a;    // addend
};

void main() {
	uint i = global_index(WG);
	float s = float(i & 1023u) * (1.0 / 1024.0);
	vec4 x[CHAINS];
	for (int c = 0; c < CHAINS; c++) {
		x[c] = vec4(s) + vec4(0.0, 0.25, 0.5, 0.75) + float(c);
	}
	vec4 mv = vec4(m), av = vec4(a);
	for (uint k = 0u; k < iters; k++) {
		for (int c = 0; c < CHAINS; c++) {
			x[c] = fma(x[c], mv, av);
		}
	}
	vec4 sum = vec4(0.0);
	for (int c = 0; c < CHAINS; c++) {
		sum += x[c];
	}
	if (i < n) {
		y[off + i] = dot(sum, vec4(1.0));
	}
}
