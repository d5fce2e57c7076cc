#version 450
// Rearranges convolution weights w[m][c][kk] (any strides of m and c, kk
// contiguous) into wt[c][kk][m] with m contiguous and padded with zeros to
// whole quads: the layout the gather convolutions read (as vec4 on CPU
// devices). layers.Conv2dBackwardWeight also rearranges the output gradient
// g[n][co][pixel] this way, to gt[n][pixel][co].
//
// One piece of NC x NKK x NM elements: invocation e writes row (c, kk) =
// (e / NKK, e % NKK) of wt, looping over its NM elements, so the index
// arithmetic (integer division is slow on CPU devices) is paid once per row,
// and neighbouring invocations read neighbouring kk. With V4 (toff, TSC,
// TSK and NM multiples of 4) a row is written as vec4: lavapipe checks the
// lane's mask and the buffer's bound once per store, so four elements a
// store cost a quarter of one each.
#extension GL_EXT_control_flow_attributes : enable
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const bool V4 = false;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer W { float w[]; };
layout(binding = 1) writeonly buffer T { float t[]; };
layout(binding = 1) writeonly buffer T4 { vec4 t4[]; };

layout(push_constant) uniform Push {
	uint NC, NKK, NM;  // extent of the piece
	uint woff, toff;   // offsets of element (0, 0, 0) in the bound segments
	uint SWM, SWC;     // w strides of m and c
	uint TSC, TSK;     // wt strides of c and kk
	int MVALID;        // m < MVALID are weights, the rest padding
};

void main() {
	const uint e = global_index(WG);
	if (e >= NC * NKK) {
		return;
	}
	const uint kk = e % NKK, c = e / NKK;
	const uint src = woff + c * SWC + kk, swm = SWM;
	const uint dst = toff + c * TSC + kk * TSK;
	const uint nm = NM, nv = uint(clamp(MVALID, 0, int(nm)));
	if (V4) {
		for (uint m = 0; m < nm; m += 4) {
			vec4 v = vec4(0.0);
			[[unroll]] for (uint u = 0; u < 4; u++) {
				if (m + u < nv) {
					v[u] = w[src + (m + u) * swm];
				}
			}
			t4[(dst + m) / 4] = v;
		}
		return;
	}
	for (uint m = 0; m < nv; m++) {
		t[dst + m] = w[src + m * swm];
	}
	for (uint m = nv; m < nm; m++) {
		t[dst + m] = 0.0;
	}
}
