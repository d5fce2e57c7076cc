#version 450
// Writes up to 30 class labels, given in the push constants, into y as
// floats: y[off + i] = float(v[i]) for i < n. The labels of a cross-entropy
// reach the device through the stream this way, ordered with the recorded
// work around them: a host upload into a fresh tensor could land in memory
// that work recorded earlier (and released in the stream) still uses when
// the stream runs.
layout(constant_id = 0) const uint WG = 32;
layout(local_size_x_id = 0) in;

layout(binding = 0) writeonly buffer Y { float y[]; };
layout(push_constant) uniform Push {
	uint n;
	uint off;
	uint v[30];
};

void main() {
	uint i = gl_LocalInvocationID.x;
	if (i < n) {
		y[off + i] = float(v[i]);
	}
}
