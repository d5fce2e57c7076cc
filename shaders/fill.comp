#version 450
// y[off + i] = value for i < n.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(local_size_x_id = 0) in;
layout(binding = 0) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint n;
	uint off;
	float value;
};

void main() {
	uint i = global_index(WG);
	if (i < n) {
		y[off + i] = value;
	}
}
