#version 450
// Adds a per-channel bias in place: y[o, ch, i] += b[ch] for y viewed as
// [outer, c, inner] (a Linear's [N, out] output: inner = 1; a convolution's
// [N, C, H, W]: inner = H * W). One dispatch covers n consecutive elements of
// y, the first of them at flat position `first` within a [c, inner] block
// (so the channel of element i is ((first + i) / inner) % c); b is bound
// whole.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer Y { float y[]; };
layout(binding = 1) readonly buffer B { float b[]; };
layout(push_constant) uniform Push {
	uint n;
	uint yoff;
	uint boff;
	uint first;
	uint c;
	uint inner;
};

void main() {
	uint i = global_index(WG);
	if (i < n) {
		uint ch = ((first + i) / inner) % c;
		y[yoff + i] += b[boff + ch];
	}
}
