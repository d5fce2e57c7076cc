#version 450
// Zeroes the diagonal of a D x D matrix in place: the covariance path of
// E2MC keeps only the off-diagonal covariances, so that the loss is their
// sum of squares directly (subtracting the diagonal's squares from the whole
// matrix's would cancel catastrophically when the diagonal dominates).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer C { float c[]; };

layout(push_constant) uniform Push {
	uint d;
	uint cOff;
};

void main() {
	uint i = global_index(WG);
	if (i < d) {
		c[cOff + i * (d + 1u)] = 0.0;
	}
}
